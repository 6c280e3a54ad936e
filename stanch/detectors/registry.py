"""One registry of output detectors, for confirm, verify, the gateway's blocking and the
regression gate alike.

    detectors = Detectors(runbook.detectors)           # the built-ins plus the runbook's own
    detectors.check_names(["pii", "llama_guard"])     # ValueError for an id nobody defined
    scan = await detectors.scan(["pii", "llama_guard"], output, prompt)
    if scan.harmful: ...                               # a detector found harm
    elif not scan.decided: ...                         # a service could not say: a human decides

A detector that calls a service never raises: a timeout, a refused connection, an HTTP error
or an answer it cannot read becomes `Undecided`, with a reason a responder can act on. "Could
not decide" is never "clean".
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Mapping

import httpx

from stanch.config.network import tls_verification
from stanch.detectors import regex
from stanch.detectors.regex import DetectorHit, mask
from stanch.detectors.results import Scan, Undecided
from stanch.detectors.service import ask_judge, ask_moderation
from stanch.detectors.specs import BUILTIN_DETECTORS, DetectorSpec, JudgeSpec, ModerationSpec, RegexSpec, detector_id_problem

__all__ = ["Detectors", "DetectorHit", "Scan", "Undecided"]


def _custom_pattern_hits(detector_id: str, spec: RegexSpec, text: str, prompt: str) -> list[DetectorHit]:
    hits: list[DetectorHit] = []
    for pattern in spec.patterns:
        for match in re.finditer(pattern, text):
            value = match.group(0)
            if not value or (spec.skip_echoes and prompt and value.strip() in prompt):
                continue
            hit = DetectorHit(detector=detector_id, evidence=f"{spec.label} {mask(value)}")
            if hit not in hits:
                hits.append(hit)
    return hits


class Detectors:
    """The built-in regex detectors plus the ones a runbook or the gateway's config defines.

    `env` is where API keys and base URLs named by `*_env` fields are read, at call time (the
    process environment by default); a key is never stored on a spec, nor shown in a result.
    """

    def __init__(
        self,
        specs: Mapping[str, DetectorSpec] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        specs = dict(specs or {})
        problems = [problem for detector_id in specs if (problem := detector_id_problem(detector_id))]
        if problems:
            raise ValueError("; ".join(problems))
        self._specs: dict[str, DetectorSpec] = {name: RegexSpec.model_validate({"builtin": name}) for name in sorted(BUILTIN_DETECTORS)}
        self._specs.update(specs)
        self._env = env if env is not None else os.environ
        self._transport = transport  # tests hand in an httpx.MockTransport; None: the network

    @property
    def known(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, detector_id: str) -> DetectorSpec:
        return self._specs[self.check_names([detector_id])[0]]

    def check_names(self, names: Iterable[str]) -> list[str]:
        """The names as a list; ValueError naming any detector that is not known, and the known ones."""
        names = list(names)
        unknown = sorted(set(names) - set(self._specs))
        if unknown:
            raise ValueError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(self.known)}")
        return names

    def calls_a_service(self, names: Iterable[str]) -> bool:
        """Whether scanning with these needs I/O (`scan`), or `scan_regex` sees them all."""
        return any(not isinstance(self._specs[name], RegexSpec) for name in self.check_names(names))

    def scan_regex(self, names: Iterable[str], text: str, prompt: str = "") -> Scan:
        """Only the named regex detectors, no I/O: cheap enough for every chunk of a stream.
        Named detectors that call a service are left out (neither hit nor undecided)."""
        scan = Scan()
        for name in dict.fromkeys(self.check_names(names)):
            spec = self._specs[name]
            if isinstance(spec, RegexSpec):
                scan.hits += self._regex_hits(name, spec, text, prompt)
        return scan

    async def scan(self, names: Iterable[str], text: str, prompt: str = "") -> Scan:
        """Run the named detectors on a model's output; the services are asked concurrently."""
        names = list(dict.fromkeys(self.check_names(names)))
        scan = self.scan_regex(names, text, prompt)
        services = [name for name in names if not isinstance(self._specs[name], RegexSpec)]
        if services:
            async with httpx.AsyncClient(transport=self._transport, verify=tls_verification()) as client:
                calls = []
                for name in services:
                    spec = self._specs[name]
                    if isinstance(spec, ModerationSpec):
                        calls.append(ask_moderation(client, name, spec, self._env, text))
                    elif isinstance(spec, JudgeSpec):
                        calls.append(ask_judge(client, name, spec, self._env, text, prompt))
                for result in await asyncio.gather(*calls):
                    scan += result
        return scan

    def _regex_hits(self, name: str, spec: RegexSpec, text: str, prompt: str) -> list[DetectorHit]:
        if spec.builtin is None:
            return _custom_pattern_hits(name, spec, text, prompt)
        # A built-in under another id reports that id, so a runbook's checks see their own names.
        return [DetectorHit(detector=name, evidence=hit.evidence) for hit in regex.detect([spec.builtin], text, prompt)]
