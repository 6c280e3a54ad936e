"""Imports only go down: workers > workflows > activities > stanch, and inside stanch by layer.

Read statically with `ast` (nothing is imported), every import counts: at module level, inside
functions, under `if TYPE_CHECKING:`. The layer map is the one `stanch/__init__.py` describes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("stanch", "activities", "workflows", "workers")
OUTER = ("activities", "workflows", "workers")  # above the library, in this order

# stanch's sub-packages, low to high. A package may import its own layer and those below.
STANCH_LAYERS: list[set[str]] = [
    {"config"},
    {"telemetry"},  # traces and logs: everyone may use it, the gateway included; it uses only config
    {"models", "runbooks", "detectors"},  # incident models and the runbook schema refer to each other
    {"trust", "targets", "notify", "review", "stores", "temporal", "probe"},
    {"intake", "audit", "gate"},  # the regression gate replays the suite (stores) through the prober
    {"api", "board"},  # the board is served by the API and reads its incident views
    {"cli", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(STANCH_LAYERS) for name in names}
GATEWAY = "gateway"  # a service of its own: Stanch reaches it over HTTP, only the CLI starts it
DEMO_UPSTREAM = "demo_upstream"  # the demo models' server, another service of its own
SERVICES = (GATEWAY, DEMO_UPSTREAM)
# What a service may share with Stanch: the gateway blocks by the detectors confirm and verify use,
# and is traced and logs as the rest of Stanch does.
SERVICE_MAY_IMPORT = {GATEWAY: {"detectors", "telemetry"}, DEMO_UPSTREAM: set()}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import of a project module in `source`, wherever it is written."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from stanch import cli` names the sub-package in the imported name.
            targets = [f"{base}.{alias.name}" for alias in node.names] if base in ROOTS else [base]
        else:
            continue
        found += [Import(module, target, node.lineno) for target in targets if target.split(".")[0] in ROOTS]
    return found


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for root in ROOTS for path in sorted((REPO / root).rglob("*.py"))}


def project_imports() -> tuple[dict[str, Path], list[Import]]:
    modules = project_modules()
    imports = [
        found
        for module, path in modules.items()
        for found in imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
    ]
    return modules, imports


def sub_package(module: str) -> str | None:
    """`intake` for `stanch.intake.start`; None for the `stanch` package itself (its docstring)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "stanch" and len(parts) > 1 else None


def broken_rule(found: Import) -> str | None:
    importer_root, imported_root = found.importer.split(".")[0], found.imported.split(".")[0]
    importer, imported = sub_package(found.importer), sub_package(found.imported)
    if importer_root == "stanch":
        if imported_root in OUTER:
            if importer != "cli":
                return "inside stanch only stanch.cli may import activities, workflows or workers"
            return None
        if importer in SERVICES and imported != importer:
            if imported in SERVICE_MAY_IMPORT[importer]:
                return None
            return f"stanch.{importer} is a separate service: it imports nothing from the rest of stanch" + (
                f" but stanch.{', stanch.'.join(sorted(SERVICE_MAY_IMPORT[importer]))}" if SERVICE_MAY_IMPORT[importer] else ""
            )
        if imported in SERVICES and importer != imported:
            if importer != "cli":
                return f"stanch.{imported} is a separate service: only stanch.cli (which starts it) imports it"
            return None
        if imported is None or (importer == imported and importer in SERVICES):
            return None
        if importer is None:
            return "the stanch package itself holds only its docstring: it imports nothing"
        if importer not in RANK or imported not in RANK:
            return f"stanch.{importer if importer not in RANK else imported} has no layer: add it to STANCH_LAYERS"
        if RANK[imported] > RANK[importer]:
            return f"stanch.{importer} (layer {RANK[importer]}) may not import the higher stanch.{imported} (layer {RANK[imported]})"
        return None
    # activities, workflows, workers: each imports the library and what is below it in OUTER.
    if imported_root in OUTER and OUTER.index(imported_root) > OUTER.index(importer_root):
        return f"{importer_root} may not import {imported_root}: imports go workers > workflows > activities"
    if imported in ("cli", "__main__"):
        return f"{importer_root} may not import the stanch CLI, which sits above it"
    if imported in SERVICES:
        return f"stanch.{imported} is a separate service: only stanch.cli (which starts it) imports it"
    return None


def violations(imports: list[Import]) -> list[str]:
    return [
        f"{found.importer} (line {found.line}) imports {found.imported}: {rule}"
        for found in imports
        if (rule := broken_rule(found)) is not None
    ]


def test_imports_only_go_down():
    _, imports = project_imports()
    found = violations(imports)
    assert not found, "\n".join(found)


def test_the_checker_reads_the_whole_project():
    modules, imports = project_imports()
    assert len(modules) > 100
    assert Import("stanch.intake.start", "stanch.intake.routing", 0) in {Import(i.importer, i.imported, 0) for i in imports}


def test_every_stanch_sub_package_has_a_layer():
    stanch = REPO / "stanch"
    names = {path.stem for path in stanch.glob("*.py")} | {path.parent.name for path in stanch.glob("*/__init__.py")}
    assert names - {"__init__", *SERVICES} - set(RANK) == set()


def test_the_checker_reports_an_upward_import_even_inside_a_function():
    source = "def runbooks_folder():\n    from stanch.runbooks.loader import default_runbooks_dir\n    return default_runbooks_dir()\n"
    [message] = violations(imports_in(source, "stanch.config.settings"))
    assert "stanch.config.settings (line 2) imports stanch.runbooks.loader" in message
    assert "stanch.config (layer 0) may not import the higher stanch.runbooks (layer 2)" in message


def test_the_checker_reports_outer_imports_under_type_checking_and_relative_ones():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workflows.incident import IncidentWorkflow\n"
    [message] = violations(imports_in(source, "stanch.api.incidents"))
    assert "stanch.api.incidents (line 3) imports workflows.incident: inside stanch only stanch.cli may import" in message
    assert violations(imports_in(source, "stanch.cli.demo")) == []
    assert "activities may not import workflows" in violations(imports_in("from workflows import incident\n", "activities.contain"))[0]
    assert "workflows may not import workers" in violations(imports_in("import workers.main\n", "workflows.gates"))[0]
    relative = violations(imports_in("from ..audit import bundle\n", "stanch.review.art73"))
    assert "stanch.review (layer 3) may not import the higher stanch.audit" in relative[0]
    assert "separate service" in violations(imports_in("from stanch.gateway import app\n", "stanch.targets.gateway"))[0]
    assert "separate service" in violations(imports_in("from stanch.models import signals\n", "stanch.gateway.app"))[0]
    assert violations(imports_in("from stanch.detectors import registry\n", "stanch.gateway.enforcement")) == []
    assert violations(imports_in("from stanch.telemetry import web\n", "stanch.gateway.app")) == []
    assert (
        "stanch.telemetry (layer 1) may not import the higher stanch.models"
        in violations(imports_in("from stanch.models import signals\n", "stanch.telemetry.logs"))[0]
    )
    assert "separate service" in violations(imports_in("from stanch.detectors import regex\n", "stanch.demo_upstream.app"))[0]
    assert "separate service" in violations(imports_in("from stanch.demo_upstream import app\n", "stanch.gateway.app"))[0]


# --- the workflows' shape (workflows/ is being rewritten: these read whatever is there) ------


def _workflow_modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(encoding="utf-8")) for path in sorted((REPO / "workflows").rglob("*.py"))}


def _names_bound_to_workflows(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted workflows name, for what this module imports from workflows/."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "workflows" and not node.level:
            bound.update({alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names})
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = f"workflows.{node.module}" if node.module else "workflows"
            bound.update({alias.asname or alias.name: f"{package}.{alias.name}" for alias in node.names})
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "workflows":
                    # `import workflows.gates` binds `workflows`; `import workflows.gates as g` binds `g`.
                    bound[alias.asname or "workflows"] = alias.name if alias.asname else "workflows"
    return bound


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (owner := _dotted(node.value)):
        return f"{owner}.{node.attr}"
    return None


# The one base allowed: the handler declarations Temporal must find on the workflow class
# itself. It holds no state and no logic, only hands each message to a part.
HANDLER_DECLARATIONS = {"workflows.incident.IncidentWorkflow": "workflows.messages.IncidentMessages"}


def test_no_workflow_part_inherits_another():
    """The incident workflow is composed of parts (gates, clocks, record...), not a tower of base classes."""
    modules = _workflow_modules()
    defined = {f"{module}.{node.name}" for module, tree in modules.items() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    inherits = []
    for module, tree in modules.items():
        bound = _names_bound_to_workflows(tree)
        for node in ast.walk(tree):
            for base in node.bases if isinstance(node, ast.ClassDef) else []:
                name = _dotted(base)
                if name is None:
                    continue
                head, _, rest = name.partition(".")
                candidates = {f"{module}.{name}", f"{bound[head]}.{rest}" if head in bound and rest else bound.get(head, "")}
                if HANDLER_DECLARATIONS.get(f"{module}.{node.name}") in candidates:
                    continue
                if candidates & defined:
                    inherits.append(f"{module}.{node.name} (line {node.lineno}) inherits {name}")
    assert not inherits, "\n".join(inherits)


def test_the_incident_workflow_has_no_while_true_loop():
    """It waits on conditions and timers, each with its reason; not in a loop that never says why."""
    path = REPO / "workflows" / "incident.py"
    loops = [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.While) and isinstance(node.test, ast.Constant) and node.test.value is True
    ]
    assert loops == [], f"workflows/incident.py has `while True` at line(s) {loops}"


def test_the_handler_declarations_hold_no_logic_of_their_own():
    """`IncidentMessages` only declares handlers: every method is one statement handing the message on."""
    tree = _workflow_modules()["workflows.messages"]
    (declarations,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "IncidentMessages"]
    methods = [node for node in declarations.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert methods, "IncidentMessages declares the workflow's handlers"
    longer = [method.name for method in methods if len(method.body) != 1]
    assert longer == [], f"handlers doing more than handing over: {longer}"
