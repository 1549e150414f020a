"""Connection settings for Kafka clients: the worker's faust app and the plain aiokafka tools."""

from __future__ import annotations

import ssl
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from ..config import Settings, describe
from ..errors import ConfigError


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if "SSL" not in settings.security_protocol:
        return None
    cafile = str(settings.ssl_cafile) if settings.ssl_cafile else None
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if settings.ssl_certfile:
        keyfile = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
        context.load_cert_chain(str(settings.ssl_certfile), keyfile)
    elif settings.ssl_keyfile:
        raise ConfigError(f"{describe('ssl_keyfile')} needs {describe('ssl_certfile')} too")
    return context


def _require_sasl_login(settings: Settings) -> tuple[str, str]:
    if settings.sasl_username is None or settings.sasl_password is None:
        raise ConfigError(
            f"{settings.security_protocol} needs {describe('sasl_username')} and "
            f"{describe('sasl_password')}"
        )
    return settings.sasl_username, settings.sasl_password


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    context = ssl_context(settings)
    if "SASL" in settings.security_protocol:
        username, password = _require_sasl_login(settings)
        return faust.SASLCredentials(
            username=username,
            password=password,
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments shared by AIOKafkaProducer and AIOKafkaConsumer."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.broker,
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if "SASL" in settings.security_protocol:
        username, password = _require_sasl_login(settings)
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return options


class _FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust 0.15 passes a fixed fetch_max_wait_ms=1500 with no setting to change it; the
        # consumer reads this attribute when it starts, which happens after this returns.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class _FetchWaitConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _FetchWaitConsumerThread:
        return _FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with the consumer's fetch wait taken from the settings."""

    Consumer = _FetchWaitConsumer

    def __init__(self, url: Any, app: faust.App, *, fetch_max_wait_ms: int) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms
