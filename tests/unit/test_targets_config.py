"""The targets file: which control plane each runbook target name is, errors that name file and
field, secrets that stay references until a request is sent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stanch.config.secrets import SecretUnavailable
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, TargetRef
from stanch.targets import registry as registry_module
from stanch.targets.base import TargetError
from stanch.targets.config import Secrets, TargetsError, load_targets, read_targets_file
from stanch.targets.gateway import GatewayTarget
from stanch.targets.http import HttpTarget
from stanch.targets.registry import TargetRegistry

GOOD = """
targets:
  litellm:
    http:
      base_url: "http://litellm:4000"
      headers: {Authorization: "Bearer ${LITELLM_MASTER_KEY}"}
      secrets_file: secrets.env
  canary-gateway:
    gateway: {base_url: "http://10.0.0.7:8300", timeout_seconds: 3}
"""


def write(tmp_path: Path, text: str, name: str = "targets.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(TargetsError) as raised:
        load_targets(path, env={})
    return raised.value.lines


def test_the_file_maps_names_to_adapters_and_the_gateway_is_always_there(tmp_path):
    path = write(tmp_path, GOOD)
    registry = TargetRegistry(Settings(home=tmp_path, targets=path, gateway_url="http://127.0.0.1:9"))
    assert registry.names() == ["canary-gateway", "gateway", "litellm"]
    assert isinstance(registry.get(TargetRef(adapter="litellm", model="m")), HttpTarget)
    assert registry.kind_of("litellm") == "http" and registry.kind_of("gateway") == "gateway"
    canary = registry.get(TargetRef(adapter="canary-gateway", model="m"))
    assert isinstance(canary, GatewayTarget) and canary.base_url == "http://10.0.0.7:8300" and canary.timeout == 3
    assert registry.get(TargetRef(model="m")).base_url == "http://127.0.0.1:9"


def test_the_file_may_redefine_the_gateway(tmp_path):
    path = write(tmp_path, "targets:\n  gateway:\n    gateway: {base_url: 'http://gw.internal:8300'}\n")
    registry = TargetRegistry(Settings(home=tmp_path, targets=path))
    assert registry.get(TargetRef(model="m")).base_url == "http://gw.internal:8300"


def test_home_targets_yaml_is_the_default_and_its_absence_means_gateway_only(tmp_path, monkeypatch):
    monkeypatch.delenv("STANCH_TARGETS", raising=False)
    settings = Settings.from_env({"STANCH_HOME": str(tmp_path)})
    assert settings.targets_path == tmp_path / "targets.yaml"
    assert TargetRegistry(settings).names() == ["gateway"]
    write(tmp_path, GOOD)
    assert "litellm" in TargetRegistry(settings)
    named = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_TARGETS": str(tmp_path / "other.yaml")})
    assert named.targets_path == tmp_path / "other.yaml"
    assert named.child_env()["STANCH_TARGETS"] == str(tmp_path / "other.yaml")


def test_a_file_named_explicitly_must_exist(tmp_path):
    with pytest.raises(TargetsError, match=r"missing\.yaml: no such targets file"):
        TargetRegistry(Settings(home=tmp_path, targets=tmp_path / "missing.yaml"))


def test_an_unknown_target_name_is_not_retryable_and_lists_the_configured_ones(tmp_path):
    registry = TargetRegistry(Settings(home=tmp_path))
    with pytest.raises(TargetError, match=r"no target named 'litelm'.*configured: \['gateway'\]") as raised:
        registry.get(TargetRef(adapter="litelm", model="m"))
    assert raised.value.retryable is False


@pytest.mark.parametrize(
    "text, expected",
    [
        ("targets:\n  litellm:\n    http: {headers: {}}\n", "targets.litellm.http.base_url: "),
        ("targets:\n  litellm:\n    http: {base_url: 'ftp://x'}\n", "targets.litellm.http.base_url: "),
        ("targets:\n  litellm:\n    http: {base_url: 'http://x', header: {}}\n", "targets.litellm.http.header: unknown key"),
        (
            "targets:\n  litellm:\n    htp: {base_url: 'http://x'}\n",
            "targets.litellm.htp: unknown adapter kind; known: flagd, gateway, http, mlflow",
        ),
        (
            "targets:\n  litellm:\n    http: {base_url: 'http://x'}\n    gateway: {base_url: 'http://y'}\n",
            "targets.litellm: name exactly one adapter kind",
        ),
        (
            "targets:\n  litellm: {}\n",
            "targets.litellm: name exactly one adapter kind (flagd, gateway, http, mlflow, openai, trainer); found none",
        ),
        ("targets:\n  'lite llm':\n    http: {base_url: 'http://x'}\n", "targets.lite llm: a target name is letters, digits"),
        ("target:\n  litellm: {}\n", "target: unknown key"),
        (
            "targets:\n  litellm:\n    http: {base_url: 'http://x', timeout_seconds: 0}\n",
            "targets.litellm.http.timeout_seconds: ",
        ),
        (
            "targets:\n  k:\n    http: {base_url: 'http://x', state_url: '/a?token=${T}'}\n",
            "targets.k.http.state_url: no secret reference in a URL",
        ),
        ("targets:\n  k:\n    http: {base_url: 'http://${HOST}'}\n", "targets.k.http.base_url: no secret reference in a URL"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    lines = problems(path)
    assert any(line.startswith(f"{path}: {expected}") for line in lines), lines


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "targets:\n  a:\n    http: {}\n  b:\n    nope: {}\n")
    lines = problems(path)
    assert len(lines) == 2 and "targets.a.http.base_url" in lines[0] and "targets.b.nope" in lines[1]


def test_yaml_syntax_errors_give_the_line(tmp_path):
    path = write(tmp_path, "targets:\n  litellm:\n    http: {base_url: 'http://x'\n")
    assert problems(path)[0].startswith(f"{path}: line 4, column 1: YAML syntax error")


def test_a_pasted_secret_is_never_echoed_in_an_error(tmp_path):
    path = write(tmp_path, "targets:\n  litellm:\n    http: {base_url: 'http://x', timeout_seconds: 'sk-live-abcdef123456'}\n")
    lines = problems(path)
    assert lines and not any("sk-live" in line for line in lines)


def test_an_adapter_whose_module_is_missing_fails_only_when_configured(tmp_path, monkeypatch):
    monkeypatch.setitem(registry_module.ADAPTER_KINDS, "ghost", "stanch.targets.no_such_module:Ghost")
    assert TargetRegistry(Settings(home=tmp_path)).names() == ["gateway"]  # not configured: never imported
    path = write(tmp_path, "targets:\n  spooky:\n    ghost: {}\n")
    lines = problems(path)
    assert lines == [
        f"{path}: targets.spooky.ghost: the ghost adapter cannot be loaded: ModuleNotFoundError: No module named "
        "'stanch.targets.no_such_module'"
    ]


def test_an_empty_file_configures_nothing(tmp_path):
    assert read_targets_file(write(tmp_path, "")) == []


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_come_from_the_environment_then_the_secrets_file_then_files(tmp_path):
    (tmp_path / "secrets.env").write_text("# comment\nexport FROM_FILE='from-secrets-file'\nBOTH=file-loses\n")
    (tmp_path / "token").write_text("file-token\n")
    secrets = Secrets("target t", base=tmp_path, env={"BOTH": "env-wins"}, secrets_file=Path("secrets.env"))
    used: dict[str, str] = {}
    text = secrets.expand("${FROM_FILE} ${BOTH} ${file:token} $HOME", "header X", used)
    assert text == "from-secrets-file env-wins file-token $HOME"
    assert used == {"from-secrets-file": "${FROM_FILE}", "env-wins": "${BOTH}", "file-token": "${file:token}"}


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("${NOPE}", r"header Authorization of target litellm: \$\{NOPE\} is not set in the environment or in .*secrets\.env"),
        ("${file:missing-token}", r"header Authorization of target litellm: \$\{file:missing-token\}: cannot read .*missing-token"),
    ],
)
def test_a_missing_secret_names_the_reference_and_the_target(tmp_path, reference, expected):
    (tmp_path / "secrets.env").write_text("OTHER=x\n")
    secrets = Secrets("target litellm", base=tmp_path, env={}, secrets_file=Path("secrets.env"))
    with pytest.raises(SecretUnavailable, match=expected):
        secrets.expand(f"Bearer {reference}", "header Authorization")


async def test_a_missing_secret_fails_the_step_at_once_without_calling(tmp_path):
    path = write(tmp_path, GOOD)
    (tmp_path / "secrets.env").write_text("OTHER=x\n")
    registry = TargetRegistry(Settings(home=tmp_path, targets=path), env={})
    target = registry.get(TargetRef(adapter="litellm", model="m"))
    action = ActionSpec(kind="http", params={"url": "/key/block", "body": {"key": "k"}})
    with pytest.raises(TargetError, match=r"\$\{LITELLM_MASTER_KEY\} is not set in the environment or in .*secrets\.env") as raised:
        await target.apply("m", action, "key-1", "inc-1")
    assert raised.value.retryable is False


def test_an_unreadable_secrets_file_is_named(tmp_path):
    secrets = Secrets("target litellm", base=tmp_path, env={}, secrets_file=Path("secrets.env"))
    with pytest.raises(SecretUnavailable, match=r"\$\{KEY\}: cannot read secrets file .*secrets\.env: No such file"):
        secrets.expand("${KEY}", "header A")


@pytest.mark.parametrize(
    "reference, refused",
    [
        ("${ALLOWED_VAR}", None),
        ("${ANY_VAR}", "only the variables target t lists under step_secret_env"),
        ("${STANCH_ENCRYPTION_KEYS}", "may not name STANCH_* variables"),
        ("${temporal_tls_key}", "may not name TEMPORAL_* variables"),
        ("${file:token}", None),
        ("${file:sub/token}", None),
        ("${file:/etc/shadow}", "relative to target t's secrets_dir"),
        ("${file:~/.ssh/id_rsa}", "relative to target t's secrets_dir"),
        ("${file:sub/../../x}", "without '..'"),
    ],
)
def test_a_runbook_step_names_only_what_its_target_lists(tmp_path, reference, refused):
    (tmp_path / "secrets" / "sub").mkdir(parents=True)
    for name in ("token", "sub/token"):
        (tmp_path / "secrets" / name).write_text("value\n")
    env = {"ALLOWED_VAR": "v", "ANY_VAR": "a", "STANCH_ENCRYPTION_KEYS": "k", "temporal_tls_key": "t"}
    secrets = Secrets("target t", base=tmp_path, env=env, step_files_dir=Path("secrets"), step_env=["ALLOWED_VAR"])
    if refused is None:
        assert secrets.expand(reference, "header X", step=True) in ("v", "value")
        return
    with pytest.raises(SecretUnavailable, match=re.escape(refused)):
        secrets.expand(reference, "header X", step=True)
    if reference.startswith("${") and not reference.startswith("${file:"):
        assert secrets.expand(reference, "header X") in ("a", "k", "t"), "the targets file's own references are trusted"


@pytest.mark.parametrize("reference", ["${file:token}", "${file:decision-keys}", "${file:secrets.env}"])
def test_without_a_secrets_dir_a_runbook_step_names_no_file(tmp_path, reference):
    """Deny by default: the targets file's folder holds other targets' secrets and Stanch's keys."""
    for name in ("token", "decision-keys", "secrets.env"):
        (tmp_path / name).write_text("value\n")
    secrets = Secrets("target t", base=tmp_path, env={})
    with pytest.raises(SecretUnavailable, match="has neither"):
        secrets.expand(reference, "header X", step=True)
    assert secrets.expand(reference, "header X") == "value", "the targets file may name it"
