"""Connecting to Temporal the same way everywhere: client, worker, API and replayer.

Every one of them uses `data_converter()`: pydantic models in and out, and — when encryption
is configured — the payload codec, so what one writes the others can read.
"""

from __future__ import annotations

import dataclasses
import os

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
)
from temporalio.envconfig import ClientConfigProfile, ClientConnectConfig
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from stanch.config.settings import Settings
from stanch.telemetry.tracing import temporal_interceptors
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

# Whether this process started the SDK's Rust runtime (a client, or a replayer of histories):
# see `stanch.cli.main.run`.
clients_opened = 0


def note_sdk_runtime_started() -> None:
    """A replayer runs on the SDK's Rust runtime as a client does: the CLI leaves without teardown."""
    global clients_opened
    clients_opened += 1


class TemporalConfigError(RuntimeError):
    """Temporal's environment configuration cannot be used: a temporal.toml that does not
    parse, a TLS certificate or key file that cannot be read. Nothing was tried on the network,
    so the message names the configuration, not an address."""


class TemporalConnectError(RuntimeError):
    """Connecting to Temporal failed (nothing answers, TLS or API key refused); the SDK's words
    are the message. Raised only by `connect`, so a caller tells it from a later failure."""

    def __init__(self, address: str, cause: BaseException) -> None:
        self.address = address
        super().__init__(str(cause) or type(cause).__name__)


def env_config_source() -> str:
    """Where the SDK's environment configuration comes from, as an operator would look for it."""
    profile = os.environ.get("TEMPORAL_PROFILE") or "default"
    config_file = os.environ.get("TEMPORAL_CONFIG_FILE") or "the default temporal.toml (~/.config/temporalio/temporal.toml)"
    return f"profile {profile!r} of {config_file}, and the TEMPORAL_* variables"


def _profile() -> ClientConfigProfile:
    """The profile Temporal's environment configuration chooses, env overrides applied; its
    certificate files are not read yet (see `load_connect_config`)."""
    try:
        return ClientConfigProfile.load()
    except Exception as exc:  # the SDK raises whatever its TOML reader raises
        raise TemporalConfigError(f"Temporal's environment configuration ({env_config_source()}) cannot be read: {exc}") from exc


def load_connect_config() -> ClientConnectConfig:
    """What `connect` passes to the SDK, certificate files read: `TemporalConfigError` naming
    the configuration when any of it cannot be used. Call it early to refuse before connecting."""
    profile = _profile()
    try:
        return profile.to_client_connect_config()
    except OSError as exc:  # a TLS file named by the profile or TEMPORAL_TLS_* that cannot be read
        raise TemporalConfigError(
            f"Temporal's environment configuration ({env_config_source()}) names a TLS file that cannot be read: {exc}"
        ) from exc


def configured_address(address: str | None = None) -> str:
    """The host:port `connect(address)` would reach, without connecting (as `configured_namespace`).
    Read without the certificate files, so a bad one does not hide the profile's address."""
    if address:
        return address
    try:
        return _profile().address or DEFAULT_ADDRESS
    except TemporalConfigError:  # `load_connect_config` and `connect` say what is wrong with it
        return DEFAULT_ADDRESS


def configured_namespace(namespace: str | None = None) -> str:
    """The namespace `connect(namespace=namespace)` would use, without connecting: the one given,
    else the SDK's environment configuration (TEMPORAL_NAMESPACE, the TEMPORAL_PROFILE of
    temporal.toml), else Temporal's "default". A connected client knows it: `client.namespace`."""
    if namespace:
        return namespace
    try:
        return _profile().namespace or "default"
    except TemporalConfigError:  # a broken env config surfaces at connect time, with its own message
        return "default"


async def connect(
    address: str | None = None, namespace: str | None = None, settings: Settings | None = None, runtime: Runtime | None = None
) -> Client:
    """Connect using the SDK's environment configuration (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
    TLS, API key, TEMPORAL_PROFILE in temporal.toml); an explicit address or namespace wins.
    Pass a namespace only when someone chose it (a flag): None leaves it to the profile.
    A configuration that cannot be used raises `TemporalConfigError`, naming it; a failed
    connection `TemporalConnectError` (both RuntimeErrors, as the SDK's own failure is).
    `runtime` carries the SDK's telemetry (the worker's metrics endpoint); None: the default."""
    global clients_opened
    clients_opened += 1
    config = load_connect_config()
    if address:
        config["target_host"] = address
    if namespace:
        config["namespace"] = namespace
    config.setdefault("target_host", DEFAULT_ADDRESS)
    converter = data_converter(settings)  # malformed encryption keys are not a connect failure
    try:
        # Tracing on (stanch.telemetry.tracing): its interceptor; a worker built on the client inherits it.
        return await Client.connect(**config, data_converter=converter, runtime=runtime, interceptors=temporal_interceptors())
    except (RuntimeError, OSError) as exc:
        raise TemporalConnectError(config["target_host"], exc) from exc


# An incident's clocks (time to acknowledge, contain, restore, close) run from a fraction of a
# second (automatic containment) to days (a serious incident waits for its report): the SDK's
# default buckets stop at 10 s, which would put every human-paced incident in +Inf.
INCIDENT_CLOCK_BUCKETS_SECONDS = (
    0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200, 604800,
)  # fmt: skip
INCIDENT_CLOCKS = (
    "stanch_incident_time_to_acknowledge",
    "stanch_incident_time_to_contain",
    "stanch_incident_time_to_restore",
    "stanch_incident_time_to_close",
    # A drill's clocks (`stanch drill`), apart from production's: the same human-paced range.
    "stanch_drill_time_to_acknowledge",
    "stanch_drill_time_to_contain",
    "stanch_drill_time_to_restore",
)


def incident_clock_buckets() -> dict[str, list[float]]:
    """Bucket overrides for the incident clocks. The runtime matches an override on the name the
    histogram was created with, before it adds `_seconds`: both spellings are listed."""
    buckets = [float(bound) for bound in INCIDENT_CLOCK_BUCKETS_SECONDS]
    return {name: buckets for clock in INCIDENT_CLOCKS for name in (clock, f"{clock}_seconds")}


def metrics_runtime(settings: Settings) -> Runtime | None:
    """A runtime whose SDK metrics (workflow and activity task latencies, slots, polls, failures)
    and Stanch's own (incident clocks, actions, notifications) Prometheus scrapes at
    `settings.worker_metrics_address`; None when it is unset. One per process: the SDK binds the
    address when the runtime is made."""
    if not settings.worker_metrics_address:
        return None
    # Prometheus naming: counters end in _total, durations are seconds.
    prometheus = PrometheusConfig(
        bind_address=settings.worker_metrics_address,
        counters_total_suffix=True,
        unit_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides=incident_clock_buckets(),
    )
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus))
