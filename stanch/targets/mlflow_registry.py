"""MLflow Model Registry's REST API, as the MLflow target uses it: read a registered model and
its versions, move an alias, set tags. Every failure is a TargetError naming what was being
done; connection errors, 5xx, 408 and 429 are retryable, anything else is not."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from stanch.targets.base import TargetError

API = "/api/2.0/mlflow"
_RETRYABLE_CLIENT_STATUSES = {408, 429}


def by_number(version: Mapping[str, Any]) -> int:
    return int(version["version"])


class RegistrySession:
    """One operation's conversation with a registry: `async with` closes its HTTP client."""

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def __aenter__(self) -> Self:
        await self.http.__aenter__()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        await self.http.__aexit__(kind, error, trace)

    async def call(self, method: str, path: str, *, what: str, params: dict | None = None, body: dict | None = None) -> dict[str, Any]:
        try:
            response = await self.http.request(method, API + path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise TargetError(f"MLflow at {self.base_url} unreachable while trying to {what}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()
            except ValueError:
                error = {"message": response.text[:300]}
            code, message = error.get("error_code", f"HTTP {response.status_code}"), error.get("message", "")
            retryable = response.status_code >= 500 or response.status_code in _RETRYABLE_CLIENT_STATUSES
            if response.status_code in (401, 403):
                message = f"credentials refused ({message}); check token_env/token_file or username/password_env"
            raise TargetError(f"MLflow at {self.base_url} refused to {what}: {code}: {message}", retryable=retryable)
        return response.json() if response.content else {}

    async def get_model(self, name: str) -> dict[str, Any]:
        body = await self.call("GET", "/registered-models/get", params={"name": name}, what=f"read registered model {name!r}")
        model = body.get("registered_model", {})
        return {
            "aliases": {a["alias"]: a["version"] for a in model.get("aliases", [])},
            "tags": {t["key"]: t.get("value", "") for t in model.get("tags", [])},
        }

    async def versions(self, name: str) -> list[dict[str, Any]]:
        quoted = f'"{name}"' if "'" in name else f"'{name}'"
        versions: list[dict[str, Any]] = []
        token = None
        while True:
            params = {"filter": f"name={quoted}", "max_results": "1000", **({"page_token": token} if token else {})}
            body = await self.call("GET", "/model-versions/search", params=params, what=f"list the versions of {name!r}")
            versions += body.get("model_versions", [])
            token = body.get("next_page_token")
            if not token:
                return sorted(versions, key=by_number)

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        body = {"name": name, "alias": alias, "version": version}
        await self.call("POST", "/registered-models/alias", body=body, what=f"move alias {alias!r} of {name!r} to version {version}")

    async def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        body = {"name": name, "version": version, "key": key, "value": value}
        await self.call("POST", "/model-versions/set-tag", body=body, what=f"tag version {version} of {name!r} {key}={value}")

    async def set_model_tag(self, name: str, key: str, value: str) -> None:
        body = {"name": name, "key": key, "value": value}
        await self.call("POST", "/registered-models/set-tag", body=body, what=f"set tag {key} on {name!r}")
