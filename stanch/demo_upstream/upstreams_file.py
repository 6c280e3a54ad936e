"""The gateway's upstreams file, pointing every demo model at this server.

`stanch demo-upstream --write-upstreams PATH` writes it so `stanch up` (and a tester) can start
the gateway in front of the demo models without writing YAML by hand. Each family is one
gateway model: v1 the stable release and the fallback, v2 the update with its share of traffic.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from stanch.demo_upstream.models import FAMILIES

# The update's share of traffic in percent: support-bot's is a canary, the others fully rolled out.
UPDATE_WEIGHTS = {"support-bot": 50}
FULLY_ROLLED_OUT = 100
# Features the gateway can switch off per model (disable_feature).
FEATURES = {"support-bot": ["web-search"], "agent-bot": ["tools"]}


def upstreams_document(base_url: str, api_key_env: str | None) -> dict[str, Any]:
    """The upstreams file as data: `base_url` is this server's OpenAI base (ending in /v1);
    with `api_key_env`, every entry names the key by reference (`$NAME`), never by value."""
    base_url = base_url.rstrip("/")
    key = {"api_key": f"${api_key_env}"} if api_key_env else {}
    models: dict[str, Any] = {}
    for family, members in FAMILIES.items():
        versions: dict[str, Any] = {}
        for member in members:
            entry: dict[str, Any] = {"base_url": base_url, "model": member.name, **key}
            if member.version != "1":
                entry["weight"] = UPDATE_WEIGHTS.get(family, FULLY_ROLLED_OUT)
            versions[member.version] = entry
        if family == "guard":
            models[family] = {"release": "1", "versions": versions}
            continue
        models[family] = {
            "release": "1",
            "fallback": {"version": "1"},
            "features": FEATURES.get(family, []),
            "versions": versions,
            "trainer": {"base_url": base_url, **key},
        }
    return {"models": models}


def write_upstreams_file(path: Path, base_url: str, api_key_env: str | None) -> None:
    """Write the file atomically: a gateway reading it never sees half of it."""
    header = f"# written by `stanch demo-upstream`: the demo models, served at {base_url.rstrip('/')}\n"
    text = header + yaml.safe_dump(upstreams_document(base_url, api_key_env), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
