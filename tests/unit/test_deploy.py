"""deploy/: the container image recipe, the compose file and the Kubernetes manifests, checked
without a Docker engine or a cluster (neither runs here): what each file says must match what
Stanch really is — its commands and flags, the variables it reads, the ports and paths it serves,
the config files its own loaders accept — so a renamed flag or variable breaks this test, not a
deployment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from stanch.cli.main import app
from stanch.config.settings import Settings
from stanch.gateway.upstreams import load_upstreams
from stanch.intake.auth import load_intake_auth
from stanch.notify.config import parse_notify_config
from stanch.targets.config import load_targets
from stanch.trust.responders import load_responder_auth

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
CONFIG_FOLDERS = [DEPLOY / "compose" / "config", KUBERNETES / "config"]
IMAGE_USER = 10001
# Where the image keeps Stanch's home: the one folder it writes.
HOME = "/var/lib/stanch"


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def manifests() -> list[dict[str, Any]]:
    return [document for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "kustomization.yaml" for document in documents(path)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [document for document in manifests() if document["kind"] == kind]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for workload in of_kind("Deployment") + of_kind("Job"):
        yield workload["metadata"]["name"], workload["spec"]["template"]["spec"]


def stanch_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["image"] == "stanch", f"{name}: every container runs the Stanch image (kustomization.yaml sets its tag)"
            yield f"{name}/{container['name']}", container


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def stanch_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose()["services"].items() if "STANCH_IMAGE" in service.get("image", "")}


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def env_value(container: dict[str, Any], name: str) -> str:
    return next(entry["value"] for entry in container.get("env", []) if entry["name"] == name)


# --- the image -----------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), per stage."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_is_built_in_one_stage_and_run_from_another_as_a_numeric_non_root_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    runtime = stages[-1]
    users = [line.split()[1] for line in runtime if line.upper().startswith("USER ")]
    assert users, "the runtime stage names its user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == IMAGE_USER, "a numeric user, so Kubernetes' runAsNonRoot can check it"
    assert 'ENTRYPOINT ["stanch"]' in runtime
    assert not any(re.search(r"\b(gcc|build-essential|apt-get install)\b", line) for line in runtime), "no compiler in the runtime image"
    assert any(line.startswith("COPY --from=") for line in runtime), "the runtime stage takes the built venv"


def test_the_image_installs_the_committed_lock_with_hashes_and_stanch_as_a_wheel_built_without_fetching() -> None:
    builder = " ".join(dockerfile_stages()[0])
    assert re.search(r"pip install --require-hashes --no-deps [^&]*-r requirements\.txt", builder)
    assert "COPY requirements.txt" in builder
    assert "--no-build-isolation" in builder, "the project builds with the locked setuptools"
    assert not re.search(r"pip install [^&]*-e \.", builder), "not an editable install: no source tree in the image"


def test_the_image_carries_every_package_the_wheel_holds_and_the_runbooks_where_stanch_looks() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    included = re.search(r"include = \[(.*?)\]", pyproject)
    assert included
    for package in re.findall(r'"(\w+)\*"', included.group(1)):
        assert f"COPY {package} ./{package}" in text, f"the build copies {package}/, which the wheel packages"
    runbooks = re.search(r"STANCH_RUNBOOKS=(\S+)", text)
    assert runbooks and f"COPY runbooks {runbooks.group(1)}" in text
    assert f"STANCH_HOME={HOME}" in text and f"chown {IMAGE_USER}:{IMAGE_USER} {HOME}" in text


# --- commands and variables ----------------------------------------------------------------------


def stanch_command_lines() -> list[tuple[str, list[str]]]:
    """Every `stanch ...` the deploy files run: compose commands and Kubernetes args."""
    lines = [(f"compose {name}", list(service["command"])) for name, service in stanch_services().items()]
    lines += [(f"kubernetes {name}", list(container["args"])) for name, container in stanch_containers()]
    return lines


def test_every_command_the_deploy_files_run_is_a_stanch_command_with_real_flags() -> None:
    runner = CliRunner()
    lines = stanch_command_lines()
    assert {"worker", "api", "gateway"} <= {args[0] for _, args in lines}
    for where, args in lines:
        # --help after the flags: typer parses them first, so an unknown command or flag exits 2.
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, f"{where}: `stanch {shlex.join(args)}` is not a command Stanch has:\n{result.output}"


def variables_stanch_reads() -> str:
    return "\n".join(path.read_text() for folder in ("stanch", "workers") for path in (ROOT / folder).rglob("*.py"))


def test_every_stanch_variable_in_the_deploy_files_is_one_stanch_reads() -> None:
    source = variables_stanch_reads()
    named = {
        variable
        for path in DEPLOY.rglob("*")
        if path.is_file()
        for variable in re.findall(r"\bSTANCH_[A-Z0-9_]*[A-Z0-9]", path.read_text())
    }
    # Compose's own, not Stanch's: the image, and the database password and bucket name it splices
    # into STANCH_DATABASE_URL and STANCH_ARTEFACTS.
    own = {"STANCH_IMAGE", "STANCH_DB_PASSWORD", "STANCH_BUCKET"}
    assert named - own, "the deploy files configure Stanch through its variables"
    unknown = sorted(variable for variable in named - own if not re.search(rf"\b{variable}\b", source))
    assert not unknown, f"the deploy files set variables Stanch does not read: {unknown}"


# --- YAML and Kubernetes objects ---------------------------------------------------------------


def test_every_yaml_file_parses_and_every_kubernetes_object_is_named() -> None:
    for path in DEPLOY.rglob("*.yaml"):
        documents(path)
    for manifest in manifests():
        assert manifest.get("apiVersion") and manifest.get("kind") and manifest["metadata"].get("name"), manifest


def test_the_worker_and_api_are_probed_on_their_health_and_readiness_paths_on_the_port_they_serve() -> None:
    deployments = {deployment["metadata"]["name"]: deployment for deployment in of_kind("Deployment")}
    ready_path = {"stanch-worker": "/readyz", "stanch-api": "/readyz", "stanch-gateway": "/healthz"}  # the gateway has no /readyz
    assert set(deployments) == set(ready_path)
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        args = container["args"]
        served = int(env_value(container, "STANCH_WORKER_HEALTH_PORT")) if args[0] == "worker" else int(option(args, "--port"))
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", ready_path[name])):
            http = container[probe]["httpGet"]
            assert http["path"] == path, f"{name}: {probe}"
            assert ports[http["port"]] == served, f"{name}: {probe} asks port {http['port']}, the process serves {served}"


def test_prometheus_scrapes_each_worker_on_the_port_its_metrics_address_names_as_the_job_the_rules_select() -> None:
    [worker] = [deployment for deployment in of_kind("Deployment") if deployment["metadata"]["name"] == "stanch-worker"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    host, port = env_value(container, "STANCH_WORKER_METRICS_ADDRESS").rsplit(":", 1)
    assert host == "0.0.0.0", "bound on every interface, or Prometheus cannot reach the pod"
    ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    [monitor] = of_kind("PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == int(port), "the PodMonitor scrapes the port the worker serves its metrics on"
    assert {"targetLabel": "job", "replacement": "stanch-worker"} in endpoint["relabelings"]
    # In compose, the example prometheus.yml asks DNS for every worker on the same port.
    compose_port = compose()["services"]["worker"]["environment"]["STANCH_WORKER_METRICS_ADDRESS"].rsplit(":", 1)[1]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    [job] = [job for job in scrape if job["job_name"] == "stanch-worker"]
    assert job["dns_sd_configs"][0]["port"] == int(compose_port) == int(port)


def test_the_worker_and_api_run_several_replicas_and_the_worker_gets_longer_than_its_drain() -> None:
    deployments = {deployment["metadata"]["name"]: deployment for deployment in of_kind("Deployment")}
    assert deployments["stanch-worker"]["spec"]["replicas"] >= 2 and deployments["stanch-api"]["spec"]["replicas"] >= 2
    worker = deployments["stanch-worker"]["spec"]["template"]["spec"]
    drain = float(env_value(worker["containers"][0], "STANCH_WORKER_SHUTDOWN_SECONDS"))
    assert worker["terminationGracePeriodSeconds"] > drain
    budgets = [budget["spec"]["selector"]["matchLabels"] for budget in of_kind("PodDisruptionBudget")]
    assert deployments["stanch-worker"]["spec"]["selector"]["matchLabels"] in budgets


def test_every_pod_runs_non_root_with_a_read_only_root_and_no_capabilities_writing_only_its_home_and_tmp() -> None:
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == IMAGE_USER, name
        writable = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume or "persistentVolumeClaim" in volume}
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
            mounted = {mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] in writable}
            assert {HOME, "/tmp"} <= mounted, f"{name}: HOME and /tmp must be writable volumes"


def test_only_the_api_gets_the_decision_signing_key() -> None:
    for name, container in stanch_containers():
        key_files = {item["key"] for volume in volumes_of(name) if "secret" in volume for item in volume["secret"].get("items", [])}
        signs = "decision-signing-key" in key_files or any(
            entry["name"].startswith("STANCH_DECISION_SIGNING_KEY") for entry in container.get("env", [])
        )
        assert signs == name.startswith("stanch-api/"), name


def test_only_the_api_gets_the_decision_signing_key_in_compose_too() -> None:
    for name, service in stanch_services().items():
        assert ("STANCH_DECISION_SIGNING_KEY" in service.get("environment", {})) == (name == "api"), name


def volumes_of(container_name: str) -> list[dict[str, Any]]:
    workload = container_name.split("/")[0]
    return next(spec["volumes"] for name, spec in pod_specs() if name == workload)


def test_the_example_secrets_hold_placeholders_only_and_every_key_the_pods_read() -> None:
    examples = documents(KUBERNETES / "secret.example.yaml")
    assert {secret["kind"] for secret in examples} == {"Secret"}
    held = {(secret["metadata"]["name"], key) for secret in examples for key in secret["stringData"]}
    for secret in examples:
        for key, value in secret["stringData"].items():
            assert "REPLACE-ME" in value, f"{secret['metadata']['name']}.{key} looks like a real value"
            assert not re.search(r"[A-Za-z0-9+/]{40,}={0,2}", value), f"{secret['metadata']['name']}.{key} holds key material"
    read: set[tuple[str, str]] = set()
    for name, container in stanch_containers():
        for entry in container.get("env", []):
            reference = entry.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                read.add((reference["name"], reference["key"]))
        for volume in volumes_of(name):
            if "secret" in volume:
                read |= {(volume["secret"]["secretName"], item["key"]) for item in volume["secret"]["items"]}
    assert read <= held, f"the example lacks {sorted(read - held)}"
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"], "applying the manifests must never overwrite real secrets"


def test_the_kustomization_renders_offline_with_and_without_worker_versioning(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (its built-in kustomize) renders the manifests offline; it is on this machine's image"
    rendered = list(
        yaml.safe_load_all(subprocess.run([kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, check=True).stdout)
    )
    kinds = {document["kind"] for document in rendered}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget", "ServiceMonitor", "PodMonitor"} <= kinds
    assert all(document["metadata"].get("namespace") == "stanch" for document in rendered if document["kind"] != "Namespace")
    # Worker versioning on: the build id is the image's tag, the base's or an overlay's own.
    assert build_id(kubectl, tmp_path / "base-tag", "") == "0.1.0"
    replacement = yaml.safe_load((KUBERNETES / "worker-versioning" / "build-id-from-image.yaml").read_text())
    overlay_tag = f"images: [{{name: stanch, newTag: '2.3.4'}}]\nreplacements: [{json.dumps(replacement)}]\n"
    assert build_id(kubectl, tmp_path / "own-tag", overlay_tag) == "2.3.4"


def build_id(kubectl: str, overlay: Path, extra: str) -> str:
    """STANCH_BUILD_ID of the worker in an overlay of deploy/kubernetes with worker versioning on."""
    overlay.mkdir()
    base = Path(os.path.relpath(KUBERNETES, overlay))  # kustomize takes relative paths only
    (overlay / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{base / 'worker-versioning'}]\n{extra}")
    output = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True).stdout
    worker = next(
        document
        for document in yaml.safe_load_all(output)
        if document["kind"] == "Deployment" and document["metadata"]["name"] == "stanch-worker"
    )
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert env_value(container, "STANCH_DEPLOYMENT_NAME") == "stanch"
    return env_value(container, "STANCH_BUILD_ID")


# --- compose -------------------------------------------------------------------------------------


def test_compose_runs_two_workers_and_checks_each_stanch_service_on_the_port_it_serves() -> None:
    services = stanch_services()
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name, service in services.items():
        command = service["command"]
        if "healthcheck" not in service:
            assert name in {"temporal-setup", "db-upgrade"}, f"{name} has no healthcheck"
            assert service["restart"] == "on-failure", f"{name} is a one-shot that retries until Temporal and PostgreSQL answer"
            continue
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(service["healthcheck"]["test"]))
        assert url, f"{name}: a healthcheck over HTTP"
        served = int(service["environment"]["STANCH_WORKER_HEALTH_PORT"]) if command[0] == "worker" else int(option(command, "--port"))
        assert int(url.group(1)) == served, name
        assert url.group(2) in ({"/readyz"} if command[0] in {"worker", "api"} else {"/healthz"}), name


def test_compose_starts_stanch_only_after_its_one_shots_succeed_and_gives_the_worker_longer_than_its_drain() -> None:
    services = compose()["services"]
    for name in ("worker", "api"):
        depends = services[name]["depends_on"]
        for one_shot in ("temporal-setup", "db-upgrade", "bucket"):
            assert depends[one_shot]["condition"] == "service_completed_successfully", f"{name} waits for {one_shot}"
    for service in services.values():
        for condition in service.get("depends_on", {}).values():
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
    worker = services["worker"]
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > float(worker["environment"]["STANCH_WORKER_SHUTDOWN_SECONDS"])


def test_every_variable_compose_needs_is_in_the_env_example_with_no_secret_filled_in() -> None:
    example = dict(
        line.split("=", 1) for line in (DEPLOY / "stanch.env.example").read_text().splitlines() if line and not line.startswith("#")
    )
    required = set(re.findall(r"\$\{([A-Z0-9_]+)(?::\?|\})", COMPOSE.read_text()))
    assert required <= set(example), f"missing from stanch.env.example: {sorted(required - set(example))}"
    for name, value in example.items():
        if re.search(r"PASSWORD|KEY|TOKEN", name):
            assert value == "", f"stanch.env.example fills in {name}: leave secrets empty so compose refuses to start without them"
    assert "stanch.env" in (DEPLOY / ".gitignore").read_text().split()


# --- the example config files load with Stanch's own loaders ---------------------------------------

CONFIG_ENV = {"ALERTMANAGER_PASSWORD": "example-password", "INTAKE_TOKEN": "example-token"}


@pytest.mark.parametrize("folder", CONFIG_FOLDERS, ids=lambda folder: str(folder.relative_to(DEPLOY)))
def test_the_example_config_files_are_ones_stanch_accepts_for_a_production_api(folder: Path, tmp_path: Path) -> None:
    intake = load_intake_auth(folder / "intake-auth.yaml", explicit=True, insecure_dev=False, env=CONFIG_ENV)
    intake.require_credentials()  # what `stanch api --host 0.0.0.0` insists on
    assert load_responder_auth(folder / "responders.yaml", insecure_dev=False, env={}).config.tokens
    assert load_upstreams(folder / "upstreams.yaml").models
    notify = folder / "notify.yaml"
    settings = Settings(home=tmp_path, notify_config=notify)
    assert parse_notify_config(notify, notify.read_text(), settings, env={}).channels
    load_targets(folder / "targets.yaml", env={}, required=True)


def test_the_responders_placeholder_lets_nobody_in() -> None:
    for folder in CONFIG_FOLDERS:
        tokens = yaml.safe_load((folder / "responders.yaml").read_text())["tokens"]
        assert [token["token_sha256"] for token in tokens] == ["0" * 64] and tokens[0]["roles"] == ["viewer"]
