"""Connecting to Temporal the same way everywhere: client, worker, API and replayer.

Every one of them uses `data_converter()`: pydantic models in and out, and — when encryption
is configured — the payload codec, so what one writes the others can read.
"""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
)
from temporalio.envconfig import ClientConfig

from stanch.config.settings import Settings
from stanch.temporal.codec import EncryptionCodec, load_encryption_keys


def data_converter(settings: Settings | None = None) -> DataConverter:
    """The one data converter of an installation: pydantic, plus the payload codec if configured.

    Settings default to the environment's. Malformed keys raise `EncryptionKeyError`: better
    to refuse to start than to write plaintext an operator meant to be encrypted."""
    keys = load_encryption_keys(settings or Settings.from_env())
    if keys is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        # Failure messages and stack traces can quote a prompt or an output: encrypt them too.
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


DEFAULT_ADDRESS = "127.0.0.1:7233"

# Whether this process opened a Temporal client: see `stanch.cli.main.run`.
clients_opened = 0


def configured_address(address: str | None = None) -> str:
    """The host:port `connect(address)` would reach, without connecting (as `configured_namespace`)."""
    if address:
        return address
    try:
        return str(ClientConfig.load_client_connect_config().get("target_host") or DEFAULT_ADDRESS)
    except Exception:  # a broken env config surfaces at connect time, with its own message
        return DEFAULT_ADDRESS


def configured_namespace(namespace: str | None = None) -> str:
    """The namespace `connect(namespace=namespace)` would use, without connecting: the one given,
    else the SDK's environment configuration (TEMPORAL_NAMESPACE, the TEMPORAL_PROFILE of
    temporal.toml), else Temporal's "default". A connected client knows it: `client.namespace`."""
    if namespace:
        return namespace
    try:
        return str(ClientConfig.load_client_connect_config().get("namespace") or "default")
    except Exception:  # a broken env config surfaces at connect time, with its own message
        return "default"


async def connect(address: str | None = None, namespace: str | None = None, settings: Settings | None = None) -> Client:
    """Connect using the SDK's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
    TLS, API key, TEMPORAL_PROFILE in temporal.toml); an explicit address or namespace wins.
    Pass a namespace only when someone chose it (a flag): None leaves it to the profile."""
    global clients_opened
    clients_opened += 1
    config = ClientConfig.load_client_connect_config()
    if address:
        config["target_host"] = address
    if namespace:
        config["namespace"] = namespace
    config.setdefault("target_host", DEFAULT_ADDRESS)
    return await Client.connect(**config, data_converter=data_converter(settings))
