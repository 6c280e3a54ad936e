"""Preparing a Temporal cluster for Stanch (`stanch temporal setup`), and the check every worker
and API makes at start that it was prepared.

The embedded dev server registers Stanch's search attributes by flags (`stanch up`). A real
cluster or Temporal Cloud does not: without them every incident start is refused. So an
operator runs `stanch temporal setup` once per namespace, and the worker refuses to start, and
the API is not ready, until the attributes are there, both naming that command.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from typing import Any, Literal

from google.protobuf.duration_pb2 import Duration
from pydantic import BaseModel
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from stanch.temporal import search_attributes

SETUP_COMMAND = "stanch temporal setup"
CHECK_TIMEOUT = timedelta(seconds=5)
# What an identity that may not use the operator service hears (a restricted mTLS certificate, a
# Temporal Cloud API key without the admin role): the attributes are unknown to it, not missing.
NOT_ALLOWED_TO_LIST = (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED)

log = logging.getLogger(__name__)
# Namespaces already warned about: a readiness probe asks every few seconds, the warning is said once.
_warned_cannot_list: set[str] = set()


class SetupError(Exception):
    """Setup cannot go on; the message says what to do."""


class SearchAttributesMissing(Exception):
    """The namespace lacks some of Stanch's search attributes: incidents cannot start there."""

    def __init__(self, namespace: str, missing: list[str]) -> None:
        self.namespace = namespace
        self.missing = missing
        super().__init__(
            f"Temporal namespace {namespace!r} lacks Stanch's search attributes ({', '.join(missing)}): "
            f"run `{SETUP_COMMAND}` against it once (it registers them), then retry"
        )


class AttributesNotListed(Exception):
    """Temporal did not list the namespace's search attributes (away, no such namespace, ...):
    whether the namespace was prepared is unknown."""

    def __init__(self, namespace: str, error: RPCError) -> None:
        self.namespace = namespace
        self.error = error
        super().__init__(
            f"Temporal did not list the search attributes of namespace {namespace!r} ({error.status.name}: {error.message}); "
            "check TEMPORAL_NAMESPACE (or your TEMPORAL_PROFILE in temporal.toml) and that Temporal answers"
        )


def refused_for_missing_attributes(error: RPCError) -> bool:
    """Whether Temporal refused a start over a search attribute (INVALID_ARGUMENT naming one):
    maybe the namespace does not know it ("Namespace X has no mapping defined for search
    attribute Y" with SQL visibility, "search attribute Y is not defined" with Elasticsearch),
    maybe a value it will not hold ("search attribute Y value size exceeds limit"). Only
    `missing_behind_refusal` tells which."""
    return error.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in error.message.lower()


def _worded_as_undefined(error: RPCError) -> bool:
    """Temporal's own words for an attribute the namespace does not know, both visibility stores."""
    message = error.message.lower()
    return "no mapping defined for search attribute" in message or bool(re.search(r"search attribute \w+ is not defined", message))


async def missing_behind_refusal(client: Client, error: RPCError) -> SearchAttributesMissing | None:
    """What to answer when Temporal refused a start with `error`: `SearchAttributesMissing`
    (run `stanch temporal setup`) only when the namespace truly lacks some of Stanch's
    attributes, asked of Temporal; None for any other refusal, a value too large included,
    which the caller re-raises as before. An identity that may not list attributes (or a
    Temporal that does not answer now) is judged by the refusal's own words instead."""
    if not refused_for_missing_attributes(error):
        return None
    try:
        missing = await missing_attributes(client)
    except RPCError:
        return SearchAttributesMissing(client.namespace, named_in_refusal(error)) if _worded_as_undefined(error) else None
    return SearchAttributesMissing(client.namespace, missing) if missing else None


def named_in_refusal(error: RPCError) -> list[str]:
    """The attribute Temporal's refusal names, else all of Stanch's."""
    named = re.search(r"search attribute (\w+)", error.message, re.IGNORECASE)
    return [named.group(1)] if named else list(wanted_attributes())


class AttributeOutcome(BaseModel):
    name: str
    type: str
    outcome: Literal["added", "already present"]


class SetupReport(BaseModel):
    """What `stanch temporal setup` did, one line per thing."""

    namespace: str
    namespace_outcome: Literal["created", "already exists", "not checked"] = "not checked"
    attributes: list[AttributeOutcome] = []


def type_name(value: int) -> str:
    """`Keyword` for INDEXED_VALUE_TYPE_KEYWORD: how the Temporal CLI spells it."""
    name = IndexedValueType.Name(value).removeprefix("INDEXED_VALUE_TYPE_")  # type: ignore[arg-type]
    return "".join(part.capitalize() for part in name.split("_"))


def wanted_attributes() -> dict[str, int]:
    """Every search attribute Stanch uses, with the index type it needs."""
    keys: list[SearchAttributeKey[Any]] = search_attributes.ALL
    return {key.name: int(key.indexed_value_type) for key in keys}


async def present_attributes(client: Client) -> dict[str, int]:
    """The custom search attributes of the client's namespace, by name, with their types."""
    answer = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace), timeout=CHECK_TIMEOUT
    )
    return {name: int(kind) for name, kind in answer.custom_attributes.items()}


async def missing_attributes(client: Client) -> list[str]:
    """Stanch's search attributes the namespace lacks (or holds with another type); [] when ready.
    RPC errors (Temporal away, no permission) propagate."""
    present = await present_attributes(client)
    return [name for name, kind in wanted_attributes().items() if present.get(name) != kind]


async def require_attributes(client: Client) -> bool:
    """The check a worker and the API make at start: raise `SearchAttributesMissing` naming
    `stanch temporal setup` unless every attribute is there; True when they all are.

    An identity that may not list them (PERMISSION_DENIED, UNIMPLEMENTED) cannot tell: that is
    logged once as a warning and answers False, and the process goes on (an incident start
    refused for a missing attribute still says to run setup). Any other refusal raises
    `AttributesNotListed`, naming the namespace and what Temporal said."""
    try:
        missing = await missing_attributes(client)
    except RPCError as err:
        if err.status not in NOT_ALLOWED_TO_LIST:
            raise AttributesNotListed(client.namespace, err) from err
        if client.namespace not in _warned_cannot_list:
            _warned_cannot_list.add(client.namespace)
            log.warning(
                "cannot check Stanch's search attributes in namespace %r: Temporal refused to list them (%s: %s). "
                "Going on: if incidents are refused for a missing attribute, have an operator run `%s`",
                client.namespace,
                err.status.name,
                err.message,
                SETUP_COMMAND,
            )
        return False
    if missing:
        raise SearchAttributesMissing(client.namespace, missing)
    return True


def parse_retention(text: str) -> timedelta:
    """`30d`, `72h` or `90m`: how long Temporal keeps a closed incident's history."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise SetupError(f"--retention {text!r}: write a whole number of days, hours or minutes, e.g. 30d, 72h")
    return timedelta(**{units[unit]: int(number)})


async def ensure_namespace(client: Client, retention: timedelta) -> Literal["created", "already exists"]:
    """Register the client's namespace unless it exists. Temporal Cloud (and clusters that do
    not let this identity register namespaces) refuse: SetupError says where to create it."""
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=client.namespace), timeout=CHECK_TIMEOUT)
        return "already exists"
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    period = Duration()
    period.FromTimedelta(retention)
    try:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(namespace=client.namespace, workflow_execution_retention_period=period), timeout=CHECK_TIMEOUT
        )
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:  # another setup won the race
            return "already exists"
        if err.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED, RPCStatusCode.UNAUTHENTICATED):
            raise SetupError(
                f"Temporal refused to create namespace {client.namespace!r} ({err.status.name}: {err.message}). "
                "On Temporal Cloud namespaces are created in the Cloud UI or with `tcld namespace create`, not by a client; "
                f"create it there, then run `{SETUP_COMMAND}` without --create-namespace"
            ) from err
        raise
    return "created"


async def _once_namespace_known(client: Client, timeout_s: float = 30.0) -> dict[str, int]:
    """The attributes of a namespace just created: the frontend learns of it from its namespace
    cache, refreshed every few seconds, and answers NOT_FOUND until then."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await present_attributes(client)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.5)


async def setup(client: Client, *, create_namespace: bool = False, retention: timedelta = timedelta(days=30)) -> SetupReport:
    """Prepare the client's namespace: create it if asked and missing, then register every
    search attribute it lacks. Refuses (SetupError) when one exists with another type: Temporal
    cannot change a type, and Stanch would write values the index cannot hold."""
    report = SetupReport(namespace=client.namespace)
    if create_namespace:
        report.namespace_outcome = await ensure_namespace(client, retention)
    try:
        if report.namespace_outcome == "created":
            present = await _once_namespace_known(client)
        else:
            present = await present_attributes(client)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise SetupError(
                f"Temporal has no namespace {client.namespace!r}: create it first (`{SETUP_COMMAND} --create-namespace`, "
                "or in the Temporal Cloud UI), or point TEMPORAL_NAMESPACE / your temporal.toml profile at the right one"
            ) from err
        raise
    wanted = wanted_attributes()
    clashes = [
        f"{name} is {type_name(present[name])}, Stanch needs {type_name(kind)}"
        for name, kind in wanted.items()
        if name in present and present[name] != kind
    ]
    if clashes:
        raise SetupError(
            f"namespace {client.namespace!r} already has search attributes of another type: {'; '.join(clashes)}. "
            "Temporal cannot change a type: remove them (`temporal operator search-attribute remove --name …`) "
            "or use another namespace, then run this again"
        )
    to_add = {name: kind for name, kind in wanted.items() if name not in present}
    if to_add:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={name: kind for name, kind in to_add.items()},  # type: ignore[misc]
            ),
            timeout=timedelta(seconds=30),
        )
    report.attributes = [
        AttributeOutcome(name=name, type=type_name(kind), outcome="added" if name in to_add else "already present")
        for name, kind in wanted.items()
    ]
    return report
