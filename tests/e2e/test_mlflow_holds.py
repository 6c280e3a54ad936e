"""Two incidents rolling back one alias on a real MLflow Model Registry (issue 11, item 4):
Stanch's rollback and restore activities against a local `mlflow server`, the alias read back
through MLflow's own client. Restored in either order, the alias stays rolled back while one
incident holds it and serves the version from before both after the last restore."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.restore import RestoreActivities
from activities.rollback import RollbackActivities
from stanch.models.actions import TargetRef
from stanch.models.activity_io import ApplyInput, UndoInput
from tests.e2e.test_mlflow_target import ROLLBACK, MlflowServer, champion, mlflow_server, register_three_versions, registry_deps

__all__ = ["mlflow_server"]  # the fixture, imported for pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("order", [("inc-A", "inc-B"), ("inc-B", "inc-A")], ids=["A-first", "B-first"])
async def test_two_incidents_on_one_alias_restored_in_either_order_serve_the_version_from_before_both(
    mlflow_server: MlflowServer, tmp_path: Path, order: tuple[str, str]
) -> None:
    name, client = await asyncio.to_thread(register_three_versions, mlflow_server.url, tmp_path)
    deps, registry = registry_deps(mlflow_server.url, name, tmp_path / "home")
    applied = {}
    for incident in ("inc-A", "inc-B"):  # both report version 3 (the alert's version)
        step = ApplyInput(
            incident_id=incident,
            occurrence=f"{incident}@0a1b2c3d",
            stage="rollback",
            index=0,
            target=TargetRef(adapter="registry", model="support-bot", version="3"),
            action=ROLLBACK,
        )
        applied[incident] = await ActivityEnvironment().run(RollbackActivities(deps).apply_rollback, step)
    assert await asyncio.to_thread(champion, client, name) == "2"
    assert applied["inc-B"].holder == "inc-B@0a1b2c3d" and applied["inc-B"].result["holder"] == "inc-B@0a1b2c3d"

    first, last = order
    undo = RestoreActivities(deps).undo_action
    await ActivityEnvironment().run(undo, UndoInput(incident_id=first, applied=applied[first]))
    assert await asyncio.to_thread(champion, client, name) == "2", f"{last} still holds the rollback"
    await ActivityEnvironment().run(undo, UndoInput(incident_id=last, applied=applied[last]))
    assert await asyncio.to_thread(champion, client, name) == "3"

    state = await registry.state("support-bot")
    assert [(m["from"], m["to"], m["by"]) for m in state["alias_history"]["champion"]] == [
        ("3", "2", "rollback_alias"),
        ("2", "2", "rollback_alias"),
        ("2", "2", "undo"),
        ("2", "3", "undo"),
    ]
    version_3 = await asyncio.to_thread(client.get_model_version, name, "3")
    assert version_3.tags["stanch.status"] == "restored"
