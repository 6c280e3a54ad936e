"""Connecting to Temporal the same way everywhere: client, worker, API and replayer."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig


async def connect(address: str | None = None, namespace: str | None = None) -> Client:
    """Connect using the SDK's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
    TLS, API key, profiles); an explicit address or namespace wins."""
    config = ClientConfig.load_client_connect_config()
    if address:
        config["target_host"] = address
    if namespace:
        config["namespace"] = namespace
    config.setdefault("target_host", "127.0.0.1:7233")
    return await Client.connect(**config, data_converter=pydantic_data_converter)
