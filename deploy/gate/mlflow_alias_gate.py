"""Move an MLflow alias only after the regression gate passed the version it will point at.

    python mlflow_alias_gate.py --registered-model support-bot --alias champion --version 3 \
        [--gateway-model support-bot] [--candidate 3]

Asks Stanch's `POST /v1/gate` (STANCH_API_URL, a token with the role `gate` in GATE_TOKEN)
whether version 3 repeats any past incident's harm, tags the MLflow model version with the
verdict (`stanch.gate`), and calls `MlflowClient.set_registered_model_alias` only on `pass`.
Exits 0 when the alias moved, 1 when the gate failed (each regressing case named), 2 when it
was inconclusive or could not run: the alias stays where it was.

MLflow's client reads MLFLOW_TRACKING_URI as usual. `--candidate` is the version as the Stanch
gateway names it, when that differs from the MLflow version.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx

GATE_TIMEOUT_SECONDS = 300.0


def gate_verdict(api_url: str, token: str, model: str, candidate: str, *, http: httpx.Client | None = None) -> dict[str, Any]:
    """The gate's verdict on the candidate; raises RuntimeError when the gate could not run."""
    client = http or httpx.Client(timeout=GATE_TIMEOUT_SECONDS)
    response = client.post(
        f"{api_url.rstrip('/')}/v1/gate",
        json={"model": model, "candidate": candidate},
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code != 200:
        raise RuntimeError(f"the regression gate could not run (HTTP {response.status_code}): {response.text[:500]}")
    verdict: dict[str, Any] = response.json()
    return verdict


def move_alias_if_gate_passes(
    mlflow: Any, registered_model: str, alias: str, version: str, verdict: dict[str, Any], out: Any = sys.stdout
) -> int:
    """Tag the version with the verdict; move the alias only on pass. The exit code."""
    mlflow.set_model_version_tag(registered_model, version, "stanch.gate", verdict["verdict"])
    for case in verdict.get("cases", []):
        if case["result"] == "regressed":
            print(f"regressed: case {case['case_key']} (incident {case['incident_id']}): {case['reason']}", file=out)
    if verdict["verdict"] != "pass":
        print(f"{verdict['verdict']}: {verdict.get('note', '')}; alias {alias} of {registered_model} NOT moved", file=out)
        return 1 if verdict["verdict"] == "fail" else 2
    mlflow.set_registered_model_alias(registered_model, alias, version)
    print(f"pass: {verdict.get('note', '')}; alias {alias} of {registered_model} now points at version {version}", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registered-model", required=True, help="the MLflow registered model")
    parser.add_argument("--alias", required=True, help="the alias to move, e.g. champion")
    parser.add_argument("--version", required=True, help="the MLflow model version the alias should point at")
    parser.add_argument("--gateway-model", help="the model as the Stanch gateway names it (default: the registered model)")
    parser.add_argument("--candidate", help="the version as the Stanch gateway names it (default: --version)")
    args = parser.parse_args(argv)
    api_url, token = os.environ.get("STANCH_API_URL"), os.environ.get("GATE_TOKEN")
    if not api_url or not token:
        print("set STANCH_API_URL (the Stanch API) and GATE_TOKEN (a token with the role `gate`)", file=sys.stderr)
        return 2
    try:
        verdict = gate_verdict(api_url, token, args.gateway_model or args.registered_model, args.candidate or args.version)
    except (RuntimeError, httpx.HTTPError) as failure:
        print(f"{failure}; the alias {args.alias} stays where it was", file=sys.stderr)
        return 2
    from mlflow import MlflowClient  # only here: the gate check above needs no MLflow

    return move_alias_if_gate_passes(MlflowClient(), args.registered_model, args.alias, args.version, verdict)


if __name__ == "__main__":
    sys.exit(main())
