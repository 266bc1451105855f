"""The worker's Faust app, which starts only what a worker uses, and its web server, which can
share its port with the other processes of one worker.

Faust's aiohttp driver binds one site without ``SO_REUSEPORT``, so a second process on the same
port fails to start. This driver adds the option, and a second site on a port of the process's
own: behind a shared port, a probe or a Prometheus scrape reaches one process at random, and
``/health`` or ``/metrics`` of a given process needs an address of its own.
"""

from __future__ import annotations

from typing import Any

import faust
from aiohttp.web import TCPSite
from faust.app.base import BootStrategy
from faust.web.drivers.aiohttp import Web


class SharedPortWeb(Web):
    def __init__(self, app: faust.App, reuse_port: bool, process_port: int | None,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.reuse_port = reuse_port
        self.process_port = process_port

    def _new_transport_tcp(self) -> TCPSite:
        conf = self.app.conf
        return TCPSite(self._runner, conf.web_bind, conf.web_port,
                       ssl_context=conf.web_ssl_context, reuse_port=self.reuse_port)

    async def start_server(self) -> None:
        await super().start_server()
        if self.process_port is not None:
            conf = self.app.conf
            await TCPSite(self._runner, conf.web_bind, self.process_port,
                          ssl_context=conf.web_ssl_context).start()


class _ServicesOnly(BootStrategy):
    """Faust's own consumer and producer serve its agents and tables, which a worker has
    none of: its roles run consumers and producers of their own. Left on, the consumer joins
    a group of its own before the roles start, which cost every start ~5 s on the embedded
    broker."""

    enable_kafka_consumer = False
    enable_kafka_producer = False


class WorkerApp(faust.App):
    """A Faust app for the worker's lifecycle, services and web views, served by
    :class:`SharedPortWeb` (``STREAMRANK_WEB_REUSE_PORT``, ``STREAMRANK_PROCESS_PORT``)."""

    BootStrategy = _ServicesOnly

    def __init__(self, *args: Any, reuse_port: bool = False, process_port: int | None = None,
                 **kwargs: Any) -> None:
        self._reuse_port = reuse_port
        self._process_port = process_port
        super().__init__(*args, **kwargs)

    def _new_web(self) -> SharedPortWeb:
        return SharedPortWeb(self, self._reuse_port, self._process_port)
