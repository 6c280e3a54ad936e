"""The detectors the gateway blocks by: the registry confirm and verify use, built from what a
block action carries (the ids, and the specs of any service detector among them)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter

from stanch.detectors.registry import Detectors
from stanch.detectors.results import Scan
from stanch.detectors.specs import DetectorSpec

_SPEC = TypeAdapter(DetectorSpec)


def detectors_for(specs: Mapping[str, Any]) -> Detectors:
    """A registry of the built-ins plus these specs (JSON objects or JSON text); ValueError names a bad one."""
    parsed = {}
    for detector_id, spec in specs.items():
        try:
            parsed[detector_id] = _SPEC.validate_python(json.loads(spec) if isinstance(spec, str) else spec)
        except ValueError as exc:
            raise ValueError(f"detector {detector_id!r}: {exc}") from exc
    return Detectors(parsed)


def block_detectors(rows: list[Any]) -> tuple[list[str], Detectors]:
    """The detector ids of these block rows and a registry that knows each of them."""
    names = [row["detector"] for row in rows if row["detector"]]
    specs = {row["detector"]: row["detector_spec"] for row in rows if row["detector"] and row["detector_spec"]}
    return names, detectors_for(specs)


def first_hit(scan: Scan) -> str | None:
    return scan.hits[0].detector if scan.hits else None
