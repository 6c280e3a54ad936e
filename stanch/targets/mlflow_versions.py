"""A fine-tuned model registered in MLflow as a new version of its registered model.

MLflow wants a version's source to lie in a run's artifacts, so Stanch

1. finds or creates its experiment (`stanch-fine-tunes` unless told otherwise);
2. finds the run an earlier attempt created for this key, or creates one, tagged with the key;
3. uploads a small JSON file describing the fine-tuned model (never a credential) into the
   run's artifacts through the tracking server's artifact proxy, and ends the run;
4. creates the model version from that folder, tagged `stanch.incident`,
   `stanch.fine_tuned_model`, `stanch.gateway_version` and the key's digest.

A retry with the same key finds the version (by the digest tag) and creates none twice. No
alias moves: serving the new version is a runbook step of its own.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from stanch.targets.base import TargetError
from stanch.targets.mlflow_ledger import TAG_INCIDENT, digest
from stanch.targets.mlflow_registry import RegistrySession

TAG_KEY = "stanch.finetune_key"  # the sha256 digest of the step's idempotency key
TAG_FINE_TUNED_MODEL, TAG_GATEWAY_VERSION = "stanch.fine_tuned_model", "stanch.gateway_version"
DEFAULT_EXPERIMENT = "stanch-fine-tunes"
ARTIFACT_FOLDER = "stanch-fine-tune"
ARTIFACT_FILE = "fine_tune.json"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts/"
_RETRYABLE_STATUSES = {408, 429}


class FineTunedModel(BaseModel):
    """What a fine-tune produced, as the MLflow version records it (in its JSON artifact and tags)."""

    model_config = ConfigDict(extra="forbid")

    incident_id: str = Field(min_length=1)
    fine_tuned_model: str = Field(min_length=1, description="the upstream model name the trainer gave the result")
    base_url: str | None = Field(None, description="the upstream serving it (credentials and query dropped)")
    job_id: str = Field(min_length=1, description="the trainer's fine-tuning job")
    trainer: str | None = None
    base_version: str = Field(description="the gateway version it was fine-tuned from")
    base_model: str | None = Field(None, description="that version's upstream model")
    gateway_version: str = Field(min_length=1, description="the version the gateway registered it as")

    def description(self) -> dict[str, Any]:
        return {"stanch": "fine-tune", **self.model_dump(), "base_url": without_credentials(self.base_url)}


def without_credentials(url: str | None) -> str | None:
    """The URL without user:password and query string: either may carry a key."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def register_fine_tune(
    registry: RegistrySession, name: str, model: FineTunedModel, idempotency_key: str, *, experiment: str = DEFAULT_EXPERIMENT
) -> dict[str, Any]:
    """The new version of registered model `name` (created once per key): its number, status, run and source."""
    key_tag = digest(idempotency_key)
    await registry.get_model(name)  # an unknown registered model is refused before a run is made
    made = next((v for v in await registry.versions(name) if tags_of(v).get(TAG_KEY) == key_tag), None)
    if made is None:
        experiment_id = await experiment_id_of(registry, experiment)
        run = await find_run(registry, experiment_id, key_tag) or await create_run(registry, experiment_id, model, key_tag)
        source = f"{run['artifact_uri'].rstrip('/')}/{ARTIFACT_FOLDER}"
        artifact = json.dumps(model.description(), indent=2).encode()
        await upload_artifact(registry, run["artifact_uri"], f"{ARTIFACT_FOLDER}/{ARTIFACT_FILE}", artifact)
        if run.get("status") != "FINISHED":
            body = {"run_id": run["run_id"], "status": "FINISHED", "end_time": int(time.time() * 1000)}
            await registry.call("POST", "/runs/update", body=body, what=f"end run {run['run_id']}")
        tags = {TAG_INCIDENT: model.incident_id, TAG_FINE_TUNED_MODEL: model.fine_tuned_model, TAG_GATEWAY_VERSION: model.gateway_version}
        body = {
            "name": name,
            "source": source,
            "run_id": run["run_id"],
            "description": f"fine-tuned by Stanch for incident {model.incident_id} (job {model.job_id})",
            "tags": [{"key": k, "value": v} for k, v in {**tags, TAG_KEY: key_tag}.items()],
        }
        created = await registry.call("POST", "/model-versions/create", body=body, what=f"create a version of {name!r}")
        made = created.get("model_version", {})
    return {
        "registered_model": name,
        "registry_version": str(made.get("version")),
        "registry_status": made.get("status"),
        "registry_run_id": made.get("run_id"),
        "registry_source": made.get("source"),
    }


def tags_of(version: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in version.get("tags", [])}


async def experiment_id_of(registry: RegistrySession, experiment: str) -> str:
    """The experiment's id, created if missing (another worker creating it meanwhile is fine)."""
    try:
        found = await registry.call("GET", "/experiments/get-by-name", params={"experiment_name": experiment}, what="find experiment")
        return str(found["experiment"]["experiment_id"])
    except TargetError as error:
        if error.retryable:
            raise
    try:
        created = await registry.call("POST", "/experiments/create", body={"name": experiment}, what=f"create experiment {experiment!r}")
        return str(created["experiment_id"])
    except TargetError as error:
        if error.retryable:
            raise
    found = await registry.call("GET", "/experiments/get-by-name", params={"experiment_name": experiment}, what="find experiment")
    return str(found["experiment"]["experiment_id"])


async def find_run(registry: RegistrySession, experiment_id: str, key_tag: str) -> dict[str, Any] | None:
    """The run an earlier attempt created for this key, if any."""
    body = {"experiment_ids": [experiment_id], "filter": f"tags.`{TAG_KEY}` = '{key_tag}'", "max_results": 1}
    found = await registry.call("POST", "/runs/search", body=body, what="look for the fine-tune's run")
    runs = found.get("runs") or []
    return runs[0]["info"] if runs else None


async def create_run(registry: RegistrySession, experiment_id: str, model: FineTunedModel, key_tag: str) -> dict[str, Any]:
    tags = {TAG_KEY: key_tag, TAG_INCIDENT: model.incident_id, TAG_FINE_TUNED_MODEL: model.fine_tuned_model}
    body = {
        "experiment_id": experiment_id,
        "run_name": f"stanch-fine-tune-{model.incident_id}",
        "start_time": int(time.time() * 1000),
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
    }
    created = await registry.call("POST", "/runs/create", body=body, what="create a run for the fine-tune")
    return dict(created["run"]["info"])


async def upload_artifact(registry: RegistrySession, artifact_uri: str, path: str, content: bytes) -> None:
    """PUT the file through the tracking server's artifact proxy (`mlflow server`'s default)."""
    scheme, _, rest = artifact_uri.partition(":")
    if scheme != "mlflow-artifacts":
        raise TargetError(
            f"the run's artifacts live at {artifact_uri!r}, which Stanch cannot write through MLflow at {registry.base_url}: "
            "serve artifacts through the tracking server (`mlflow server` without --no-serve-artifacts)",
            retryable=False,
        )
    root = urlsplit(rest).path if rest.startswith("//") else rest  # mlflow-artifacts://host:port/path or mlflow-artifacts:/path
    url = ARTIFACTS_API + f"{root.strip('/')}/{path}"
    what = f"upload {path} to {artifact_uri}"
    try:
        response = await registry.http.put(url, content=content, headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise TargetError(f"MLflow at {registry.base_url} unreachable while trying to {what}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 400:
        retryable = response.status_code >= 500 or response.status_code in _RETRYABLE_STATUSES
        raise TargetError(f"MLflow at {registry.base_url} refused to {what}: HTTP {response.status_code}", retryable=retryable)
