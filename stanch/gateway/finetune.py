"""Fine-tune jobs: a long-running hotfix that produces a corrected model version.

The demo "training" is a timed loop that reports progress; what matters is the contract: the
job is started once per idempotency key, its progress lives in SQLite, a gateway restart
resumes it from the stored progress, and the new version plus the job's success commit in one
transaction so a crash can never create the version twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from stanch.gateway.actions import ActionRejected
from stanch.gateway.store import GatewayStore, job_entry, utc_now

log = logging.getLogger(__name__)

JOB_KINDS = ("finetune",)
_TICKS = 10  # progress updates per job


def job_id_for(idempotency_key: str) -> str:
    # Derived from the key so the same request names the same job on any gateway replica.
    return "ft-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


class FinetuneRunner:
    def __init__(self, store: GatewayStore, duration_s: float = 3.0) -> None:
        self.store = store
        self.duration_s = duration_s
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Create the job for this key (or find it) and make sure it is running here."""
        existing = self.store.query("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,))
        if existing:
            self._ensure_running(existing[0]["job_id"], existing[0]["status"])
            return job_entry(existing[0])
        if kind not in JOB_KINDS:
            raise ActionRejected(f"unknown job kind {kind!r}; supported kinds: {', '.join(JOB_KINDS)}")
        model_row = self.store.model_row(model)
        if model_row is None:
            raise ActionRejected(f"unknown model {model!r}; known models: {', '.join(self.store.model_names())}")
        unknown = set(params) - {"base_version"}
        if unknown:
            raise ActionRejected(
                f"bad params for job kind {kind!r}: unexpected {', '.join(sorted(unknown))}; only base_version is accepted"
            )
        base = str(params.get("base_version") or model_row["release_version"])
        if self.store.version_row(model, base) is None:
            raise ActionRejected(f"model {model!r} has no version {base!r} to fine-tune from")

        job_id = job_id_for(idempotency_key)
        now = utc_now()
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, idempotency_key, model, kind, params, status, progress, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', 0.0, ?, ?)",
                (job_id, idempotency_key, model, kind, json.dumps({"base_version": base}), now, now),
            )
        self._ensure_running(job_id, "running")
        row = self.store.job_row(job_id)
        assert row is not None
        return job_entry(row)

    def resume_unfinished(self) -> list[str]:
        """Restart every job a previous gateway process left queued or running."""
        rows = self.store.query("SELECT job_id, status FROM jobs WHERE status IN ('queued', 'running')")
        for row in rows:
            self._ensure_running(row["job_id"], row["status"])
        return [row["job_id"] for row in rows]

    async def shutdown(self) -> None:
        # Cancelled jobs stay 'running' in SQLite on purpose: the next start resumes them.
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def _ensure_running(self, job_id: str, status: str) -> None:
        if status not in ("queued", "running"):
            return
        task = self._tasks.get(job_id)
        if task is None or task.done():
            self._tasks[job_id] = asyncio.get_running_loop().create_task(self._run(job_id), name=f"finetune {job_id}")

    async def _run(self, job_id: str) -> None:
        try:
            row = self.store.job_row(job_id)
            assert row is not None
            done_ticks = round(row["progress"] * _TICKS)
            self._set(job_id, status="running")
            for tick in range(done_ticks + 1, _TICKS + 1):
                await asyncio.sleep(self.duration_s / _TICKS)
                if tick < _TICKS:
                    self._set(job_id, progress=tick / _TICKS)
            self._finish(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed job must say why, not stay 'running' forever
            log.exception("fine-tune job %s failed", job_id)
            self._set(job_id, status="failed", error=f"{type(exc).__name__}: {exc}")

    def _set(self, job_id: str, **columns: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self.store.transaction() as db:
            db.execute(
                f"UPDATE jobs SET {assignments}, updated_at = ? WHERE job_id = ?",
                (*columns.values(), utc_now(), job_id),
            )

    def _finish(self, job_id: str) -> None:
        with self.store.transaction() as db:
            job = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if job["status"] == "succeeded":  # another replica got there first
                return
            model = job["model"]
            numeric = [
                int(r["version"]) for r in db.execute("SELECT version FROM versions WHERE model = ?", (model,)) if r["version"].isdigit()
            ]
            new_version = str(max(numeric, default=0) + 1)
            base = json.loads(job["params"])["base_version"]
            db.execute(
                "INSERT INTO versions (model, version, behaviour, enabled, source, created_at) VALUES (?, ?, 'fixed', 1, ?, ?)",
                (model, new_version, f"finetune job {job_id} from version {base}", utc_now()),
            )
            db.execute(
                "UPDATE jobs SET status = 'succeeded', progress = 1.0, result = ?, updated_at = ? WHERE job_id = ?",
                (json.dumps({"version": new_version, "base_version": base}), utc_now(), job_id),
            )
        log.info("fine-tune job %s produced %s version %s (not deployed)", job_id, model, new_version)
