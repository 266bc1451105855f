"""Kafka security settings reach every client: the options, and the clients the factories make."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.auth import SASLCredentials, SSLCredentials
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import ValidationError

from stream.runtime.clients import (
    faust_credentials,
    kafka_admin,
    kafka_consumer,
    kafka_producer,
    security_options,
)
from stream.settings import Settings

ROOT = Path(__file__).parent.parent
TLS = Path(__file__).parent / "data" / "tls"
CERT, KEY = TLS / "client.pem", TLS / "client.key"
SASL = {"kafka_sasl_username": "alice", "kafka_sasl_password": "s3cret-pw"}
FILES = {"kafka_ssl_cafile": CERT, "kafka_ssl_certfile": CERT, "kafka_ssl_keyfile": KEY}

PROTOCOLS: dict[str, dict[str, Any]] = {
    "PLAINTEXT": {},
    "SSL": FILES,
    "SASL_PLAINTEXT": {**SASL, "kafka_sasl_mechanism": "SCRAM-SHA-512"},
    "SASL_SSL": {**SASL, **FILES, "kafka_sasl_mechanism": "SCRAM-SHA-256"},
}


def secured(protocol: str) -> Settings:
    return Settings(kafka_security_protocol=protocol, **PROTOCOLS[protocol])


def test_kafka_clients_are_made_only_by_the_factories() -> None:
    """A client constructed anywhere else would miss the security settings."""
    raw = re.compile(r"\b(AIOKafkaProducer|AIOKafkaConsumer|KafkaAdminClient)\(")
    makers = {path.relative_to(ROOT).as_posix() for path in (ROOT / "stream").rglob("*.py")
              if raw.search(path.read_text())}
    assert makers == {"stream/runtime/clients.py"}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_security_options_for_each_protocol(protocol: str) -> None:
    settings = secured(protocol)
    options = security_options(settings)
    assert options.pop("security_protocol") == protocol
    context = options.pop("ssl_context", None)
    if protocol.endswith("SSL"):
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert [dict(pair[0] for pair in ca["subject"]) for ca in context.get_ca_certs()] == [
            {"commonName": "streamrank-test"}]
    else:
        assert context is None
    expected_sasl = {
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret-pw",
    } if protocol.startswith("SASL_") else {}
    assert options == expected_sasl


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_kafka_python_takes_every_option(protocol: str) -> None:
    assert set(security_options(secured(protocol))) <= set(KafkaAdminClient.DEFAULT_CONFIG)


def _client_security(client: Any) -> dict[str, Any]:
    return {"security_protocol": client._security_protocol,
            "ssl_context": client._ssl_context is not None,
            "sasl_mechanism": client._sasl_mechanism if client._sasl_plain_username else None,
            "sasl_plain_username": client._sasl_plain_username,
            "sasl_plain_password": client._sasl_plain_password}


def _expected(settings: Settings) -> dict[str, Any]:
    sasl = settings.kafka_security_protocol.startswith("SASL_")
    return {"security_protocol": settings.kafka_security_protocol,
            "ssl_context": settings.kafka_security_protocol.endswith("SSL"),
            "sasl_mechanism": settings.kafka_sasl_mechanism if sasl else None,
            "sasl_plain_username": "alice" if sasl else None,
            "sasl_plain_password": "s3cret-pw" if sasl else None}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_producer_and_consumer_factories_pass_the_security_options(protocol: str) -> None:
    settings = secured(protocol)
    producer = kafka_producer(settings, "127.0.0.1:1", client_id="ours-p")
    consumer = kafka_consumer(settings, "127.0.0.1:1", "topic-a", client_id="ours-c")
    try:
        assert isinstance(producer, AIOKafkaProducer) and isinstance(consumer, AIOKafkaConsumer)
        assert _client_security(producer.client) == _expected(settings)
        assert _client_security(consumer._client) == _expected(settings)
        # The caller's own options still reach the clients.
        assert (producer.client._client_id, consumer._client._client_id) == ("ours-p", "ours-c")
    finally:
        await producer.stop()
        await consumer.stop()


def test_admin_factory_connects_with_the_settings(bootstrap: str) -> None:
    admin = kafka_admin(Settings(), bootstrap)
    try:
        assert admin.config["security_protocol"] == "PLAINTEXT"
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def test_admin_factory_speaks_sasl_when_told_to(bootstrap: str) -> None:
    """The embedded broker has no SASL: a client that really asks for it cannot connect, where
    the same factory on PLAINTEXT (above) can."""
    with pytest.raises(KafkaError):
        kafka_admin(secured("SASL_PLAINTEXT"), bootstrap, bootstrap_timeout_ms=1000)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_faust_gets_the_same_credentials(protocol: str) -> None:
    from stream.app import create_app

    settings = secured(protocol)
    credentials = create_app(settings, "127.0.0.1:1").conf.broker_credentials
    assert type(credentials) is type(faust_credentials(settings))
    if protocol == "PLAINTEXT":
        assert credentials is None
    elif protocol == "SSL":
        assert isinstance(credentials, SSLCredentials)
        assert isinstance(credentials.context, ssl.SSLContext)
    else:
        assert isinstance(credentials, SASLCredentials)
        assert credentials.protocol.value == protocol
        assert credentials.mechanism.value == settings.kafka_sasl_mechanism
        assert (credentials.username, credentials.password) == ("alice", "s3cret-pw")
        assert (credentials.ssl_context is not None) == protocol.endswith("SSL")


@pytest.mark.parametrize(("settings", "message"), [
    ({"kafka_security_protocol": "SASL_SSL"}, "needs STREAMRANK_KAFKA_SASL_USERNAME"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "alice"},
     "needs STREAMRANK_KAFKA_SASL_USERNAME and STREAMRANK_KAFKA_SASL_PASSWORD"),
    (SASL, "STREAMRANK_KAFKA_SASL_* are set, but STREAMRANK_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ({"kafka_ssl_cafile": CERT}, "STREAMRANK_KAFKA_SSL_* are set, but"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", **SASL, "kafka_ssl_cafile": CERT},
     "does not use TLS"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": KEY},
     "STREAMRANK_KAFKA_SSL_KEYFILE needs STREAMRANK_KAFKA_SSL_CERTFILE"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": TLS / "missing.pem"},
     "Path does not point to a file"),
    ({"kafka_security_protocol": "SASL_SSL", **SASL, "kafka_sasl_mechanism": "GSSAPI"},
     "Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"),
])
def test_half_configured_security_is_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(**settings)
    assert message in str(error.value)
