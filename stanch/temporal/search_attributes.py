"""Custom search attributes: how responders and auditors find incidents in Temporal.

Never a secret, a prompt or an output here: search attributes are stored unencrypted.
"""

from typing import Any

from temporalio.common import SearchAttributeKey

INCIDENT_STATUS = SearchAttributeKey.for_keyword("IncidentStatus")
INCIDENT_SEVERITY = SearchAttributeKey.for_keyword("IncidentSeverity")
INCIDENT_RUNBOOK = SearchAttributeKey.for_keyword("IncidentRunbook")
INCIDENT_TARGET = SearchAttributeKey.for_keyword("IncidentTarget")
INCIDENT_OPENED_AT = SearchAttributeKey.for_datetime("IncidentOpenedAt")

ALL: list[SearchAttributeKey[Any]] = [INCIDENT_STATUS, INCIDENT_SEVERITY, INCIDENT_RUNBOOK, INCIDENT_TARGET, INCIDENT_OPENED_AT]


def dev_server_flags() -> list[str]:
    """`--search-attribute NAME=Type` flags for `temporal server start-dev`."""
    kinds = {INCIDENT_OPENED_AT.name: "Datetime"}
    return [arg for key in ALL for arg in ("--search-attribute", f"{key.name}={kinds.get(key.name, 'Keyword')}")]
