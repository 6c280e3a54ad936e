"""Connecting to Temporal the same way everywhere: client, worker, API and replayer.

Every one of them uses `data_converter()`: pydantic models in and out, and — when encryption
is configured — the payload codec, so what one writes the others can read.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig

from stanch.config import Settings


def data_converter(settings: Settings | None = None) -> DataConverter:
    """The one data converter of an installation: pydantic, plus the payload codec if configured."""
    # Issue 5 adds the AES-GCM codec here, switched on by the settings.
    return pydantic_data_converter


async def connect(address: str | None = None, namespace: str | None = None, settings: Settings | None = None) -> Client:
    """Connect using the SDK's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
    TLS, API key, profiles); an explicit address or namespace wins."""
    config = ClientConfig.load_client_connect_config()
    if address:
        config["target_host"] = address
    if namespace:
        config["namespace"] = namespace
    config.setdefault("target_host", "127.0.0.1:7233")
    return await Client.connect(**config, data_converter=data_converter(settings))
