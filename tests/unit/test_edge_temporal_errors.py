"""What Temporal refused, answered as what the caller can do about it: a request retrying cannot
fix is a 4xx (413 too large, 422 refused), the API's own access is an operator's 502, and only
what passes (Temporal away, slow or rate limiting) is 503 with Retry-After."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf.any_pb2 import Any as AnyProto
from temporalio.api.common.v1 import GrpcStatus
from temporalio.api.errordetails.v1 import NamespaceNotActiveFailure
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from stanch.api.app import create_app
from stanch.api.deps import get_client, get_intake
from stanch.config.settings import Settings
from stanch.intake.start import IntakeResult
from stanch.models.signals import Signal


class NoCatalog:
    def __len__(self) -> int:
        return 0


class FailingIntake:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __call__(self, signal: Signal) -> IntakeResult:
        raise self.error


@pytest.fixture
def app(tmp_path: Path):
    return create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=NoCatalog(), insecure_dev=True)  # type: ignore[arg-type]


def post_alert(app, error: Exception) -> Any:
    app.dependency_overrides[get_intake] = lambda: FailingIntake(error)
    return TestClient(app, raise_server_exceptions=False).post("/v1/alerts/generic", json={"signal_id": "s-1"})


def namespace_not_active() -> bytes:
    detail = AnyProto()
    detail.Pack(NamespaceNotActiveFailure(namespace="stanch", current_cluster="b", active_cluster="a"))
    return GrpcStatus(code=RPCStatusCode.FAILED_PRECONDITION.value, message="not active", details=[detail]).SerializeToString()


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("Blob data size exceeds limit.", RPCStatusCode.INVALID_ARGUMENT),
        ("grpc: received message larger than max (5242880 vs. 4194304)", RPCStatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_a_payload_temporal_finds_too_large_is_413_never_retry_later(app, message: str, status: RPCStatusCode) -> None:
    answer = post_alert(app, RPCError(message, status, b""))
    assert answer.status_code == 413
    assert "retry-after" not in answer.headers
    detail = answer.json()["detail"]
    assert detail.startswith(f"Temporal refused the request as too large ({status.name}: ")
    assert message in detail and "retry" not in detail.replace("retrying", "")


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("WorkflowId length exceeds limit.", RPCStatusCode.INVALID_ARGUMENT),
        ("Workflow Update is disabled on this namespace.", RPCStatusCode.FAILED_PRECONDITION),
        ("page token out of range", RPCStatusCode.OUT_OF_RANGE),
    ],
)
def test_a_request_temporal_refuses_is_422_naming_what_it_refused(app, message: str, status: RPCStatusCode) -> None:
    answer = post_alert(app, RPCError(message, status, b""))
    assert answer.status_code == 422
    assert "retry-after" not in answer.headers
    assert answer.json()["detail"].startswith(f"Temporal refused the request ({status.name}: {message})")


@pytest.mark.parametrize("status", [RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.UNIMPLEMENTED])
def test_temporal_refusing_the_api_itself_is_502_for_an_operator(app, status: RPCStatusCode) -> None:
    answer = post_alert(app, RPCError("Request unauthorized.", status, b""))
    assert answer.status_code == 502
    assert "retry-after" not in answer.headers
    detail = answer.json()["detail"]
    assert detail.startswith(f"Temporal refused the API itself ({status.name}: Request unauthorized.)")
    assert "operator" in detail


@pytest.mark.parametrize(
    ("message", "status", "raw"),
    [
        ("connection refused", RPCStatusCode.UNAVAILABLE, b""),
        ("deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b""),
        ("namespace rate limit exceeded", RPCStatusCode.RESOURCE_EXHAUSTED, b""),
        ("not active", RPCStatusCode.FAILED_PRECONDITION, namespace_not_active()),
        ("internal error", RPCStatusCode.INTERNAL, b""),
    ],
)
def test_what_passes_stays_503_with_retry_after(app, message: str, status: RPCStatusCode, raw: bytes) -> None:
    answer = post_alert(app, RPCError(message, status, raw))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert status.name in answer.json()["detail"]


def test_garbage_grpc_status_bytes_do_not_turn_an_answer_into_a_500(app) -> None:
    answer = post_alert(app, RPCError("failover", RPCStatusCode.FAILED_PRECONDITION, b"\xff\xff not protobuf"))
    assert answer.status_code == 422


def test_a_decision_temporal_finds_too_large_is_413(app) -> None:
    class Handle:
        async def describe(self) -> Any:
            info = SimpleNamespace(workflow_execution_info=SimpleNamespace(first_run_id="0f1e2d3c-run"))
            return SimpleNamespace(status=WorkflowExecutionStatus.RUNNING, run_id="0f1e2d3c-run", raw_description=info)

        async def execute_update(self, *_: Any, **__: Any) -> Any:
            raise RPCError("Blob data size exceeds limit.", RPCStatusCode.INVALID_ARGUMENT, b"")

    async def fake() -> Any:
        return SimpleNamespace(get_workflow_handle=lambda *_, **__: Handle())

    app.dependency_overrides[get_client] = fake
    answer = TestClient(app, raise_server_exceptions=False).post("/v1/incidents/inc-1/resolve", json={"by": "alice", "reason": "fixed"})
    assert answer.status_code == 413
    assert "INVALID_ARGUMENT: Blob data size exceeds limit." in answer.json()["detail"]
