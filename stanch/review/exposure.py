"""The blast radius in the review documents: how many were served by the model in the exposure
window, who got the harm, and the deployers to inform (EU AI Act Art. 20). Counts and ids only."""

from __future__ import annotations

from stanch.models.exposure import Exposure

IDS_SHOWN = 50


def _ids(ids: list[str], total: int | None) -> str:
    shown = ", ".join(f"`{name}`" for name in ids[:IDS_SHOWN])
    more = (total or len(ids)) - min(len(ids), IDS_SHOWN)
    return shown + (f" and {more} more (the incident's state lists up to 1,000)" if more > 0 else "")


def blast_radius_lines(exposure: Exposure | None) -> list[str]:
    """Markdown lines (a `## Blast radius` section), the same in the postmortem and the Art. 73 draft."""
    lines = ["## Blast radius", ""]
    if exposure is None:
        return [*lines, "- Not measured: the incident began before Stanch measured exposure, or was not confirmed.", ""]
    versions = ", ".join(exposure.versions) or "none"
    lines += [
        f"- Exposure window: {exposure.since.isoformat(timespec='minutes')} to {exposure.until.isoformat(timespec='minutes')}",
        f"- Served in the window: {exposure.requests_exposed} requests from {exposure.users_exposed} users and "
        f"{exposure.tenants_exposed} tenants, by versions {versions}",
    ]
    if not exposure.measured:
        return [*lines, f"- Affected: **not measured** — {exposure.detail}", ""]
    lines += [
        f"- Affected (re-scored with {', '.join(exposure.detectors)}): {exposure.requests_affected} requests, "
        f"{exposure.users_affected} users, {exposure.tenants_affected} tenants, "
        f"on versions {', '.join(exposure.affected_versions) or 'none'}",
        f"- Users affected: {_ids(exposure.affected_user_ids, exposure.users_affected) or 'none'}",
        "- Deployers to inform (EU AI Act Art. 20), the tenants affected: "
        + (_ids(exposure.affected_tenant_ids, exposure.tenants_affected) or "none"),
        f"- How it was measured: {exposure.detail}",
        "",
    ]
    return lines
