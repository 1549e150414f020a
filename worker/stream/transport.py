"""Connection settings for Kafka clients: the worker's faust app and the plain aiokafka tools.

faust's aiokafka transport as the worker runs it is `faust_private.FetchWaitTransport`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from ..client_security import client_ssl_context, sasl_login
from ..config import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The clients' TLS context (`worker.client_security`): a one-line ConfigError for any
    file it names that cannot serve."""
    return client_ssl_context(settings)


async def create_topics(
    client_options: Mapping[str, Any], topics: Sequence[str], partitions: int
) -> None:
    """Creates topics (replication factor 1); raises aiokafka's error for the first refused."""
    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, partitions, 1) for name in topics])
    finally:
        await admin.close()
    # aiokafka returns per-topic failures inside the response instead of raising them.
    # Entries are (topic, error_code) or, from v1 on, (topic, error_code, error_message).
    for topic, code, *message in response.topic_errors:
        if code:
            raise for_code(code)(f"creating topic {topic!r}: {' '.join(map(str, message))}")


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    context = ssl_context(settings)
    if "SASL" in settings.security_protocol:
        username, password = sasl_login(settings)
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
        username, password = sasl_login(settings)
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return options
