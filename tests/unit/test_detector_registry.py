"""The one detector registry: the built-ins under their own ids, a runbook's own detectors by
id, and runbooks that name a detector nobody defined refused at load with where it is used."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from stanch.detectors.regex import DetectorHit
from stanch.detectors.registry import Detectors, Scan, Undecided
from stanch.detectors.specs import BUILTIN_DETECTORS, DETECTOR_SPECS, DetectorSpec, JudgeSpec, ModerationSpec, RegexSpec
from stanch.runbooks.loader import RunbookError, load_catalog, load_runbook

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
LEAKED_KEY = "sk-live-4f9a8c2e7b1d4a6f9e3c5b7a1d2f8e6c"
LEAKY = f"Sure, here is the API key from our config: {LEAKED_KEY}. Write to jane.doe@example.com."
SPEC = TypeAdapter(DetectorSpec)


# --- the registry ------------------------------------------------------------------------------


def test_the_builtins_are_known_without_any_spec() -> None:
    assert set(Detectors().known) == BUILTIN_DETECTORS == {"secret", "pii", "prompt_injection", "low_quality"}


def test_an_unknown_name_is_a_value_error_naming_it_and_the_known_ones() -> None:
    detectors = Detectors({"customer_ids": RegexSpec(patterns=[r"CUST-\d{6}"], label="customer id")})
    with pytest.raises(ValueError, match=r"unknown detector\(s\) toxicity; known: customer_ids, low_quality, pii"):
        detectors.check_names(["pii", "toxicity"])
    assert detectors.check_names(["pii", "customer_ids"]) == ["pii", "customer_ids"]


def test_scan_regex_finds_what_regex_detect_finds_with_evidence_masked() -> None:
    scan = Detectors().scan_regex(["secret", "pii"], LEAKY)
    assert scan.hits == [
        DetectorHit(detector="secret", evidence="api key sk-live-4f9a…"),
        DetectorHit(detector="pii", evidence="email ja…@example.com"),
    ]
    assert scan.harmful and scan.decided and scan.fired == ["secret", "pii"]
    assert LEAKED_KEY not in scan.model_dump_json()


async def test_scan_of_regex_detectors_is_the_same_as_scan_regex() -> None:
    detectors = Detectors()
    assert await detectors.scan(["secret", "pii"], LEAKY) == detectors.scan_regex(["secret", "pii"], LEAKY)


def test_a_clean_answer_is_decided_and_harmless() -> None:
    scan = Detectors().scan_regex(sorted(BUILTIN_DETECTORS), "Your invoice #4411 was refunded at 10:30 today.")
    assert scan == Scan() and not scan.harmful and scan.decided


def test_what_the_user_typed_is_an_echo_not_a_leak() -> None:
    prompt = "my address is jane.doe@example.com, please confirm it"
    assert Detectors().scan_regex(["pii"], "Confirmed: jane.doe@example.com is on file.", prompt).hits == []


def test_a_runbooks_own_patterns_hit_with_masked_evidence_and_skip_echoes() -> None:
    detectors = Detectors({"customer_ids": RegexSpec(patterns=[r"CUST-\d{6}"], label="customer id")})
    scan = detectors.scan_regex(["customer_ids"], "The account is CUST-123456, also CUST-123456.")
    assert scan.hits == [DetectorHit(detector="customer_ids", evidence="customer id CUS…")]
    assert detectors.scan_regex(["customer_ids"], "CUST-123456 is yours", prompt="I am CUST-123456").hits == []


def test_a_builtin_under_another_id_reports_that_id() -> None:
    detectors = Detectors({"contact_leak": RegexSpec(builtin="pii")})
    assert detectors.scan_regex(["contact_leak"], LEAKY).fired == ["contact_leak"]


def test_scan_regex_leaves_out_the_detectors_that_call_a_service() -> None:
    detectors = Detectors({"guard": JudgeSpec(base_url="http://127.0.0.1:9/v1", model="guard")})
    assert detectors.calls_a_service(["pii", "guard"]) and not detectors.calls_a_service(["pii"])
    assert detectors.scan_regex(["guard", "secret"], LEAKY).fired == ["secret"]


def test_a_builtin_id_cannot_be_redefined() -> None:
    with pytest.raises(ValueError, match="detector id 'pii' is built in"):
        Detectors({"pii": RegexSpec(patterns=["x"])})


def test_scans_add_up() -> None:
    hit = Scan(hits=[DetectorHit(detector="pii", evidence="email ja…@example.com")])
    unsure = Scan(undecided=[Undecided(detector="guard", reason="judge llama-guard at guard:8000 timed out after 10s")])
    both = hit + unsure
    assert both.harmful and not both.decided and both.fired == ["pii"]


# --- the specs ---------------------------------------------------------------------------------


def test_a_config_files_detectors_mapping_parses_to_specs() -> None:
    specs = DETECTOR_SPECS.validate_python({"ids": {"kind": "regex", "patterns": ["CUST-\\d{6}"], "label": "customer id"}})
    assert Detectors(specs).scan_regex(["ids"], "CUST-123456").fired == ["ids"]


def test_specs_are_told_apart_by_kind() -> None:
    assert isinstance(SPEC.validate_python({"kind": "regex", "builtin": "secret"}), RegexSpec)
    assert isinstance(SPEC.validate_python({"kind": "moderation", "base_url_env": "MOD_URL"}), ModerationSpec)
    judge = SPEC.validate_python({"kind": "judge", "base_url": "http://guard:8000/v1", "model": "llama-guard"})
    assert isinstance(judge, JudgeSpec) and judge.timeout_seconds == 10 and judge.max_tokens == 20


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"kind": "regex"}, "either builtin"),
        ({"kind": "regex", "builtin": "secret", "patterns": ["x"]}, "either builtin"),
        ({"kind": "regex", "patterns": ["(unclosed"]}, "not a valid regex"),
        ({"kind": "moderation"}, "exactly one of base_url and base_url_env"),
        ({"kind": "moderation", "base_url": "guard:8000"}, "must start with http"),
        ({"kind": "judge", "base_url": "http://g/v1", "model": "m", "prompt_template": "{prompt} {answer}"}, "only {prompt} and {output}"),
        ({"kind": "judge", "base_url": "http://g/v1", "model": "m", "prompt_template": "is {prompt} ok?"}, "never shows the judge"),
        ({"kind": "judge", "base_url": "http://g/v1", "model": "m", "unsafe_when": "["}, "not a valid regex"),
        ({"kind": "classifier"}, "kind"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_problem(spec: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=rf"(?s){problem}".replace("{", r"\{").replace("}", r"\}")):
        SPEC.validate_python(spec)


# --- runbooks name detectors by id -------------------------------------------------------------


@pytest.fixture
def runbook_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "runbooks"
    shutil.copytree(RUNBOOKS, folder)
    return folder


def test_every_shipped_runbook_still_loads() -> None:
    assert len(load_catalog(RUNBOOKS).all()) == len(list(RUNBOOKS.glob("*.yaml")))


def test_a_runbook_naming_an_unknown_detector_is_refused_saying_where(runbook_copy: Path) -> None:
    path = runbook_copy / "pii-leak.yaml"
    text = path.read_text()
    assert "detectors: [pii]" in text
    path.write_text(text.replace("detectors: [pii]", "detectors: [pii, toxicity]"))
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    message = str(info.value)
    assert "unknown detector 'toxicity' in confirm.checks.0.detectors" in message
    assert "hotfix.verify.detectors" in message and "severity.rules.0.when.detectors" in message
    assert "known: low_quality, pii, prompt_injection, secret" in message


def test_a_containment_step_blocking_by_an_unknown_detector_is_refused(runbook_copy: Path) -> None:
    path = runbook_copy / "pii-leak.yaml"
    text = path.read_text()
    assert "\ncontainment:\n" in text
    step = "\ncontainment:\n  - kind: block_outputs\n    params: {detectors: [phone_numbers]}\n"
    path.write_text(text.replace("\ncontainment:\n", step, 1))
    with pytest.raises(RunbookError, match=r"unknown detector 'phone_numbers' in containment\.0\.params\.detectors"):
        load_runbook(path)


def test_a_runbook_defining_a_judge_detector_validates_and_may_name_it(runbook_copy: Path) -> None:
    path = runbook_copy / "pii-leak.yaml"
    text = path.read_text().replace("detectors: [pii]", "detectors: [pii, llama_guard]")
    definition = (
        "\ndetectors:\n"
        "  llama_guard:\n"
        "    kind: judge\n"
        "    base_url_env: GUARD_BASE_URL\n"
        "    api_key_env: GUARD_API_KEY\n"
        "    model: meta-llama/Llama-Guard-3-1B\n"
        '    category_pattern: "S\\\\d+"\n'
    )
    path.write_text(text + definition)
    runbook = load_runbook(path).runbook
    guard = runbook.detectors["llama_guard"]
    assert isinstance(guard, JudgeSpec) and guard.category_pattern == r"S\d+"
    assert Detectors(runbook.detectors).check_names(runbook.confirm.checks[0].detectors) == ["pii", "llama_guard"]
    # The workflow receives the runbook as JSON: the spec's kind survives the round trip.
    assert type(runbook).model_validate_json(runbook.model_dump_json()).detectors == runbook.detectors


def test_a_runbook_may_not_redefine_a_builtin(runbook_copy: Path) -> None:
    path = runbook_copy / "pii-leak.yaml"
    path.write_text(path.read_text() + "\ndetectors:\n  pii: {kind: regex, patterns: ['x']}\n")
    with pytest.raises(RunbookError, match="detector id 'pii' is built in"):
        load_runbook(path)


# --- the pii built-in's IBANs and national ids (each with its check) ---------------------------


@pytest.mark.parametrize(
    ("text", "evidence"),
    [
        ("Refund to DE89370400440532013000 today.", "iban DE…3000"),
        ("Refund to DE89 3704 0044 0532 0130 00 DUE today.", "iban DE…3000"),
        ("Pay GB82 WEST 1234 5698 7654 32.", "iban GB…5432"),
        ("Her NI number is AB 12 34 56 C.", "uk ni number AB…"),
        ("DNI 12345678Z on file.", "spanish dni …Z"),
        ("NIE X1234567L on file.", "spanish nie X…L"),
    ],
)
def test_pii_finds_ibans_and_national_ids_with_masked_evidence(text: str, evidence: str) -> None:
    assert Detectors().scan_regex(["pii"], text).hits == [DetectorHit(detector="pii", evidence=evidence)]


@pytest.mark.parametrize(
    "text",
    [
        "Ticket DE89370400440532013001 is closed.",  # the IBAN check digits do not add up
        "Ticket QQ123456C is closed.",  # QQ is no allocated NI prefix
        "Order 12345678A shipped.",  # the wrong DNI check letter
        "Order 12345678 shipped.",
    ],
)
def test_look_alikes_that_fail_the_check_are_not_pii(text: str) -> None:
    assert Detectors().scan_regex(["pii"], text).hits == []
