"""Decisions: the verdict on an approval signal's assertion, recorded in history.

A signal has no validator, and its handler runs again on every replay: checking the assertion
there would make replay depend on the keys a worker loaded. The workflow asks this local
activity instead; its result is a marker in history, so a replay reads the verdict back and
never needs a key (workflows/handlers.py, `approve_signal`).
"""

from __future__ import annotations

from temporalio import activity

from stanch.trust.assertions import VERIFY_APPROVAL, ApprovalToVerify, Verdict, verdict


@activity.defn(name=VERIFY_APPROVAL)
async def verify_approval(request: ApprovalToVerify) -> Verdict:
    # Public keys only: whatever this worker trusts (stanch.trust.decision_keys) decides.
    return verdict(request)
