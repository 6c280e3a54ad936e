"""Where Stanch keeps its files and how its processes find each other, read from the environment.

Every process (`stanch up` and the worker, API and gateway it starts) builds the same
`Settings.from_env()`, so one set of environment variables wires a whole installation.
Temporal's own connection settings (TLS, API key, profiles) stay with the SDK's environment
configuration; see `stanch.temporal.client.connect`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

# The task queue incident workflows and their activities run on, unless STANCH_TASK_QUEUE says otherwise.
DEFAULT_TASK_QUEUE = "stanch-incidents"
DATA_DIRS = ("evidence", "reviews", "regression", "notifications", "logs")
# Board event streams (server-sent events): each holds a connection and polls Temporal, so
# one user (a board left open in many tabs) or a crowd cannot take the API's connections.
BOARD_STREAMS_PER_USER = 8
BOARD_STREAMS_TOTAL = 256
# Then the stream ends and the board reconnects: a proxy or a revoked role never keeps one forever.
BOARD_STREAM_MAX_SECONDS = 900.0


def default_runbooks_dir() -> Path:
    """`$STANCH_RUNBOOKS` if set, else the `runbooks/` folder shipped beside the package."""
    configured = os.environ.get("STANCH_RUNBOOKS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "runbooks"


LogFormat = Literal["text", "json"]
LOG_FORMAT_VARIABLE = "STANCH_LOG_FORMAT"


class LogFormatError(ValueError):
    """STANCH_LOG_FORMAT holds something other than text or json."""


def parse_log_format(value: object) -> LogFormat:
    """STANCH_LOG_FORMAT as every process reads it (the gateway too): text or json, in any case;
    unset or blank is text."""
    text = "" if value is None else str(value)
    normalized = text.strip().lower() or "text"
    if normalized not in ("text", "json"):
        raise LogFormatError(f"{LOG_FORMAT_VARIABLE}={text!r}: use text or json")
    return cast(LogFormat, normalized)


class SettingsError(ValueError):
    """An environment variable Stanch reads holds a value it cannot use; the message names it."""


def _truthy(value: str) -> bool:
    return value.strip().lower() not in {"0", "false", "no", "off", ""}


class Settings(BaseModel):
    home: Path = Field(default_factory=lambda: Path("~/.stanch").expanduser(), description="STANCH_HOME")
    task_queue: str = Field(DEFAULT_TASK_QUEUE, description="STANCH_TASK_QUEUE")
    incident_prefix: str = Field(
        "",
        pattern=r"^[a-z0-9-]*$",
        description="STANCH_INCIDENT_PREFIX: put before every incident id (`stanch up --temporal-address` sets its own)",
    )
    temporal_address: str | None = Field(None, description="TEMPORAL_ADDRESS; unset: the SDK's env config")
    # Unset: whatever Temporal's env config says (a temporal.toml profile's namespace, else "default"):
    # a connected client knows the one in use, `client.namespace`.
    temporal_namespace: str | None = Field(None, description="TEMPORAL_NAMESPACE; unset: the SDK's env config (profile)")
    gateway_url: str = Field("http://127.0.0.1:8300", description="STANCH_GATEWAY_URL")
    gateway_admin_token: SecretStr | None = Field(None, description="STANCH_GATEWAY_ADMIN_TOKEN: the reference gateway's /admin/* token")
    trainer_url: str | None = Field(
        None, description="STANCH_TRAINER_URL: an OpenAI fine-tuning API root (/v1 included), the default `trainer` target; unset: none"
    )
    trainer_api_key: SecretStr | None = Field(None, description="STANCH_TRAINER_API_KEY: the trainer's API key")
    api_url: str = Field("http://127.0.0.1:8200", description="STANCH_API_URL")
    runbooks_dir: Path = Field(default_factory=default_runbooks_dir, description="STANCH_RUNBOOKS")
    ui_url: str = Field("http://127.0.0.1:8233", description="STANCH_TEMPORAL_UI")
    prometheus_url: str | None = Field(None, description="STANCH_PROMETHEUS_URL")
    upsert_search_attributes: bool = Field(True, description="STANCH_UPSERT_SEARCH_ATTRIBUTES")
    intake_auth: Path | None = Field(None, description="STANCH_INTAKE_AUTH; unset: HOME/intake-auth.yaml")
    responders: Path | None = Field(None, description="STANCH_RESPONDERS; unset: HOME/responders.yaml")
    notify_config: Path | None = Field(None, description="STANCH_NOTIFY; unset: HOME/notify.yaml")
    targets: Path | None = Field(None, description="STANCH_TARGETS; unset: HOME/targets.yaml (absent: the gateway only)")
    board_streams_per_user: int = Field(BOARD_STREAMS_PER_USER, ge=1, description="STANCH_BOARD_STREAMS_PER_USER")
    board_streams_total: int = Field(BOARD_STREAMS_TOTAL, ge=1, description="STANCH_BOARD_STREAMS_TOTAL")
    board_stream_max_seconds: float = Field(BOARD_STREAM_MAX_SECONDS, gt=0, description="STANCH_BOARD_STREAM_MAX_SECONDS")
    # Encryption is off unless one of these is set or HOME/encryption-keys exists; see stanch.temporal.codec.
    encryption_keys: SecretStr | None = Field(None, description="STANCH_ENCRYPTION_KEYS: 'kid:base64key,...', the first encrypts")
    encryption_keys_file: Path | None = Field(None, description="STANCH_ENCRYPTION_KEYS_FILE; unset: HOME/encryption-keys if it exists")
    # repr=False: the URL may hold a password, and a Settings may end up in a log.
    database_url: str | None = Field(
        None, repr=False, description="STANCH_DATABASE_URL: the records database; unset: SQLite at HOME/stanch.db"
    )
    artefacts_url: str | None = Field(
        None, description="STANCH_ARTEFACTS: file:///folder or s3://bucket/prefix (credentials: AWS_* variables); unset: HOME/artefacts"
    )
    # Worker versioning (docs/VERSIONING.md): both or neither.
    deployment_name: str | None = Field(None, description="STANCH_DEPLOYMENT_NAME: the worker deployment; with STANCH_BUILD_ID")
    build_id: str | None = Field(None, description="STANCH_BUILD_ID: this build's id in the deployment; with STANCH_DEPLOYMENT_NAME")
    worker_health_port: int | None = Field(None, ge=1, le=65535, description="STANCH_WORKER_HEALTH_PORT: the worker's /healthz and /readyz")
    worker_shutdown_seconds: float = Field(30.0, ge=0, description="STANCH_WORKER_SHUTDOWN_SECONDS: SIGTERM lets activities run this long")
    worker_metrics_address: str | None = Field(
        None,
        pattern=r"^[^:/]+:\d{1,5}$",
        description="STANCH_WORKER_METRICS_ADDRESS: host:port where the worker serves the Temporal SDK's Prometheus metrics; unset: none",
    )
    log_format: LogFormat = Field(
        "text", description="STANCH_LOG_FORMAT: text, or json (one JSON object per line, with incident_id and stage)"
    )
    trace_propagate_hosts: list[str] = Field(
        default_factory=list,
        description="STANCH_TRACE_PROPAGATE_HOSTS: comma-separated host or host:port that also get traceparent and baggage "
        "(Stanch's gateway and API always do); every other host gets none",
    )

    @field_validator("log_format", mode="before")
    @classmethod
    def _one_log_format_parser(cls, value: object) -> LogFormat:
        return parse_log_format(value)

    @field_validator("trace_propagate_hosts", mode="before")
    @classmethod
    def _comma_separated_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip().lower() for host in value.split(",") if host.strip()]
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables; anything unset keeps its default."""
        env = os.environ if env is None else env
        names = {
            "home": "STANCH_HOME",
            "task_queue": "STANCH_TASK_QUEUE",
            "incident_prefix": "STANCH_INCIDENT_PREFIX",
            "temporal_address": "TEMPORAL_ADDRESS",
            "temporal_namespace": "TEMPORAL_NAMESPACE",
            "gateway_url": "STANCH_GATEWAY_URL",
            "gateway_admin_token": "STANCH_GATEWAY_ADMIN_TOKEN",
            "trainer_url": "STANCH_TRAINER_URL",
            "trainer_api_key": "STANCH_TRAINER_API_KEY",
            "api_url": "STANCH_API_URL",
            "runbooks_dir": "STANCH_RUNBOOKS",
            "ui_url": "STANCH_TEMPORAL_UI",
            "prometheus_url": "STANCH_PROMETHEUS_URL",
            "intake_auth": "STANCH_INTAKE_AUTH",
            "responders": "STANCH_RESPONDERS",
            "notify_config": "STANCH_NOTIFY",
            "targets": "STANCH_TARGETS",
            "board_streams_per_user": "STANCH_BOARD_STREAMS_PER_USER",
            "board_streams_total": "STANCH_BOARD_STREAMS_TOTAL",
            "board_stream_max_seconds": "STANCH_BOARD_STREAM_MAX_SECONDS",
            "encryption_keys": "STANCH_ENCRYPTION_KEYS",
            "encryption_keys_file": "STANCH_ENCRYPTION_KEYS_FILE",
            "database_url": "STANCH_DATABASE_URL",
            "artefacts_url": "STANCH_ARTEFACTS",
            "deployment_name": "STANCH_DEPLOYMENT_NAME",
            "build_id": "STANCH_BUILD_ID",
            "worker_health_port": "STANCH_WORKER_HEALTH_PORT",
            "worker_shutdown_seconds": "STANCH_WORKER_SHUTDOWN_SECONDS",
            "worker_metrics_address": "STANCH_WORKER_METRICS_ADDRESS",
            "log_format": "STANCH_LOG_FORMAT",
            "trace_propagate_hosts": "STANCH_TRACE_PROPAGATE_HOSTS",
        }
        values: dict[str, object] = {field: env[var] for field, var in names.items() if env.get(var)}
        if "home" in values:
            values["home"] = Path(str(values["home"])).expanduser()
        if "runbooks_dir" in values:
            values["runbooks_dir"] = Path(str(values["runbooks_dir"])).expanduser()
        for path_field in ("intake_auth", "responders", "encryption_keys_file"):
            if path_field in values:
                values[path_field] = Path(str(values[path_field])).expanduser()
        if "notify_config" in values:
            values["notify_config"] = Path(str(values["notify_config"])).expanduser()
        if "targets" in values:
            values["targets"] = Path(str(values["targets"])).expanduser()
        if env.get("STANCH_UPSERT_SEARCH_ATTRIBUTES"):
            values["upsert_search_attributes"] = _truthy(env["STANCH_UPSERT_SEARCH_ATTRIBUTES"])
        try:
            return cls(**values)
        except ValidationError as invalid:
            raise SettingsError(_named_problems(invalid, names)) from None

    @property
    def trace_propagation_hosts(self) -> list[str]:
        """Where an outgoing request carries the trace (traceparent, baggage): Stanch's own gateway
        and API (host:port), and STANCH_TRACE_PROPAGATE_HOSTS. Never a third party by default."""
        own = [_authority(self.gateway_url), _authority(self.api_url)]
        return list(dict.fromkeys(host for host in [*own, *self.trace_propagate_hosts] if host))

    def data_dir(self, name: str) -> Path:
        """A folder under home (created on first use) for one kind of record Stanch keeps."""
        if name not in DATA_DIRS:
            raise ValueError(f"unknown data folder {name!r}; known: {', '.join(DATA_DIRS)}")
        path = self.home / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def responders_path(self) -> Path:
        return self.responders if self.responders is not None else self.home / "responders.yaml"

    @property
    def intake_auth_path(self) -> Path:
        """The intake authentication file: STANCH_INTAKE_AUTH, else HOME/intake-auth.yaml."""
        return self.intake_auth if self.intake_auth is not None else self.home / "intake-auth.yaml"

    @property
    def notify_config_path(self) -> Path:
        """The notification channels file: STANCH_NOTIFY, else HOME/notify.yaml (absent: console only)."""
        return self.notify_config if self.notify_config is not None else self.home / "notify.yaml"

    @property
    def encryption_keys_path(self) -> Path:
        """The encryption keys file: STANCH_ENCRYPTION_KEYS_FILE, else HOME/encryption-keys."""
        return self.encryption_keys_file if self.encryption_keys_file is not None else self.home / "encryption-keys"

    @property
    def targets_path(self) -> Path:
        """The control planes runbooks act on: STANCH_TARGETS, else HOME/targets.yaml (absent: the gateway only)."""
        return self.targets if self.targets is not None else self.home / "targets.yaml"

    @property
    def evidence_dir(self) -> Path:
        return self.data_dir("evidence")

    @property
    def reviews_dir(self) -> Path:
        return self.data_dir("reviews")

    @property
    def regression_dir(self) -> Path:
        return self.data_dir("regression")

    @property
    def notifications_dir(self) -> Path:
        return self.data_dir("notifications")

    @property
    def logs_dir(self) -> Path:
        return self.data_dir("logs")

    def child_env(self) -> dict[str, str]:
        """The environment variables that hand these settings to a child process."""
        env = {
            "STANCH_HOME": str(self.home),
            "STANCH_TASK_QUEUE": self.task_queue,
            "STANCH_GATEWAY_URL": self.gateway_url,
            "STANCH_API_URL": self.api_url,
            "STANCH_RUNBOOKS": str(self.runbooks_dir),
            "STANCH_TEMPORAL_UI": self.ui_url,
            "STANCH_UPSERT_SEARCH_ATTRIBUTES": "true" if self.upsert_search_attributes else "false",
        }
        if self.incident_prefix:
            env["STANCH_INCIDENT_PREFIX"] = self.incident_prefix
        if self.temporal_address:
            env["TEMPORAL_ADDRESS"] = self.temporal_address
        if self.temporal_namespace:
            env["TEMPORAL_NAMESPACE"] = self.temporal_namespace
        if self.prometheus_url:
            env["STANCH_PROMETHEUS_URL"] = self.prometheus_url
        if self.trainer_url:
            env["STANCH_TRAINER_URL"] = self.trainer_url
        if self.intake_auth is not None:
            env["STANCH_INTAKE_AUTH"] = str(self.intake_auth)
        if self.responders is not None:
            env["STANCH_RESPONDERS"] = str(self.responders)
        if self.notify_config is not None:
            env["STANCH_NOTIFY"] = str(self.notify_config)
        if self.targets is not None:
            env["STANCH_TARGETS"] = str(self.targets)
        # The keys themselves go to the children that way too: every process of one
        # installation must encrypt and decrypt alike.
        if self.encryption_keys is not None:
            env["STANCH_ENCRYPTION_KEYS"] = self.encryption_keys.get_secret_value()
        if self.encryption_keys_file is not None:
            env["STANCH_ENCRYPTION_KEYS_FILE"] = str(self.encryption_keys_file)
        if self.database_url:
            env["STANCH_DATABASE_URL"] = self.database_url
        # A URL, never a secret: a bucket's credentials reach children as the AWS_* variables they inherit.
        if self.artefacts_url:
            env["STANCH_ARTEFACTS"] = self.artefacts_url
        if self.log_format != "text":
            env["STANCH_LOG_FORMAT"] = self.log_format
        if self.trace_propagate_hosts:
            env["STANCH_TRACE_PROPAGATE_HOSTS"] = ",".join(self.trace_propagate_hosts)
        return env


def _authority(url: str) -> str:
    """host:port of a URL, the port filled in from the scheme; "" when it has no host."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname:
        return ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname.lower()}:{port}"


def _named_problems(invalid: ValidationError, variables: Mapping[str, str]) -> str:
    """One line per bad variable, naming it: `STANCH_X='value': what is wrong`."""
    lines = []
    for error in invalid.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = variables.get(field, field)
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ValueError) and str(cause).startswith(variable):
            lines.append(str(cause))  # a validator of ours already named the variable
        else:
            lines.append(f"{variable}={error.get('input')!r}: {error['msg']}")
    return "\n".join(lines)
