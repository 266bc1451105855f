"""The floor under ``POST /rank`` on this machine: the least any Python service does for the
same request, served from a process of its own and called by the same client as the worker.

Per request it reads the body with orjson, makes one Redis round trip for the user's stored
value, gathers the candidates' rows from an array in memory (the worker's item cache does the
same), runs the same model with plain onnxruntime, and answers the top ``n`` as a
:class:`schemas.RankingResult` encoded with orjson, on aiohttp, the web server under Faust's.
No validation, no features, no metrics: what is left is the web server, one Redis round trip,
the model and the kernel's loopback sockets, none of which streamrank can remove. The serial
bar of issue 15 can be judged against it: a bar below this floor is the machine's.

Run as ``python -m bench.scoring.floor PORT MANIFEST REDIS_URL USER_KEY_PREFIX``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import redis.asyncio as aioredis
from aiohttp import web

from bench.harness import open_run_store
from models.scorer import CPU, MANIFEST_FILE, Manifest
from schemas import SCHEMA_VERSION
from stream.errors import BenchFailed, BrokerUnavailable
from stream.runtime.broker import free_port, wait_for_port
from stream.settings import Settings


def floor_app(manifest: Manifest, redis_url: str, user_key_prefix: str) -> web.Application:
    """The bare handler. The model runs on the CPU, without spinning, with onnxruntime's
    default threads: a single worker's own (``--processes N`` splits the cores instead)."""
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(manifest.model_path), options, providers=[CPU])
    rows = np.random.default_rng(0).standard_normal((1024, len(manifest.feature_names)),
                                                    dtype=np.float32)
    slots: dict[str, int] = {}
    store = aioredis.Redis.from_url(redis_url)
    outputs, input_name = [manifest.output_name], manifest.input_name
    tasks = manifest.task_names

    async def rank(request: web.Request) -> web.Response:
        nonlocal rows
        body = orjson.loads(await request.read())
        candidates: list[str] = body["candidates"]
        await store.get(user_key_prefix + body["user_id"])
        index = [slots.setdefault(item, len(slots)) for item in candidates]
        if len(slots) > len(rows):
            rows = np.resize(rows, (2 * len(slots), rows.shape[1]))
        probs = session.run(outputs, {input_name: rows[index]})[0]
        values = probs[:, 0]
        n = min(int(body.get("n", 20)), len(values))
        top = np.argsort(-values)[:n]
        items = [{"schema_version": SCHEMA_VERSION, "item_id": candidates[i], "value": value,
                  "probs": dict(zip(tasks, item_probs, strict=True))}
                 for i, value, item_probs in zip(top.tolist(), values[top].tolist(),
                                                 probs[top].tolist(), strict=True)]
        return web.Response(body=orjson.dumps({
            "schema_version": SCHEMA_VERSION, "ts": time.time(),
            "request_id": body["request_id"], "user_id": body["user_id"], "items": items,
            "ads": [], "model_version": manifest.version, "stats_version": "trained",
            "latency_ms": 0.0}), content_type="application/json")

    app = web.Application()
    app.router.add_post("/rank", rank)
    return app


@contextlib.contextmanager
def floor_server(manifest: Manifest, settings: Settings, log_path: Path) -> Iterator[int]:
    """The floor in a child process, serving the worker's model and reading its store; its
    port once it listens."""
    assert settings.redis_url is not None, "the floor reads the Redis the worker reads"
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.scoring.floor", str(port),
             str(manifest.model_path.with_name(MANIFEST_FILE)), settings.redis_url,
             asyncio.run(_user_key_prefix(settings))], stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port("127.0.0.1", port, timeout_s=60.0, process=process)
        except BrokerUnavailable as exc:
            raise BenchFailed(f"the floor server did not start ({exc}); see {log_path}") from exc
        yield port
    finally:
        process.kill()
        process.wait()


async def _user_key_prefix(settings: Settings) -> str:
    """Where the store keeps users' counters: in its first tag, the only one of a store with
    one key slot (the default); with more, some users' keys miss, and the round trip stays."""
    store = await open_run_store(settings)
    try:
        return store.prefix(0, "u")
    finally:
        await store.close()


def main(argv: list[str]) -> None:
    port, manifest, redis_url, user_key_prefix = argv
    web.run_app(floor_app(Manifest.load(Path(manifest)), redis_url, user_key_prefix),
                host="127.0.0.1", port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
