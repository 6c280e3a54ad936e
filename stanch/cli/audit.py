"""`stanch audit replay|timeline|export|fetch|verify|keygen`: the auditor's side of Stanch.

An incident's Temporal history is its audit record. These commands replay it with today's code
(does the code still do what it did?), read it back as a timeline (who decided what, was it
really them, how long did each step take), and export histories, timelines and evidence into
a bundle whose hash-chained, optionally signed manifest shows whether anything changed since.
`export --to-store` also keeps the bundle in the artefact store, and `fetch` brings it back on
any host of the installation (stanch/audit/stored.py).

Exit codes: 0 all good; 1 a divergence or a failed verification (or a stored bundle that
changed); 2 bad input (a file that is not a history, Temporal unreachable, a missing key — an
encryption key a history is written with, or, for a run from before decision verdicts were
recorded in history, a decision key its diverging replay needed: nothing is known). Replay
needs no decision key otherwise: no secret.

Mounted by `stanch.cli.main` as `app.add_typer(audit_app, name="audit")`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from stanch.config.settings import Settings

audit_app = typer.Typer(
    help="Replay incident histories, read their timelines, export and verify audit bundles.",
    no_args_is_help=True,
)

# soft_wrap: a divergence names run and event on one line, whole, for anyone grepping CI logs.
# emoji=False: ids like `alertmanager:abc:…` are printed as they are, not as 🔤.
console = Console(soft_wrap=True, highlight=False, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="STANCH_HOME",
        help="the installation's home: its decision public keys, and evidence older histories recorded as a path (default ~/.stanch)",
    ),
]
AddressOption = Annotated[str | None, typer.Option("--address", envvar="TEMPORAL_ADDRESS", help="Temporal frontend host:port")]
NamespaceOption = Annotated[str | None, typer.Option("--namespace", envvar="TEMPORAL_NAMESPACE", help="Temporal namespace")]
RunIdOption = Annotated[str | None, typer.Option("--run-id", help="a particular run (default: the latest)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]


class BadInput(Exception):
    """Wrong arguments: exit 2 with the message."""


def _run(coroutine):
    """Run a command's coroutine; anything the user can fix is one line on stderr and exit 2."""
    # Heavy imports (the SDK, the workflows, cryptography) wait for a command: `stanch --help` stays quick.
    from stanch.audit import bundle, signing
    from stanch.audit.history import HistoryError
    from stanch.stores.artefacts import ArtefactError

    try:
        return asyncio.run(coroutine)
    except (BadInput, HistoryError, bundle.BundleError, signing.SigningKeyError) as problem:
        err_console.print(f"[bold red]error:[/] {escape(str(problem))}")
        raise typer.Exit(2) from None
    except ArtefactError as problem:  # the store could not be read: nothing was sealed
        err_console.print(f"[bold red]error:[/] the artefact store (STANCH_ARTEFACTS) could not be read: {escape(str(problem))}")
        raise typer.Exit(2) from None


def _settings(home: Path | None) -> Settings:
    settings = Settings.from_env()
    return settings.model_copy(update={"home": home.expanduser()}) if home else settings


def _trust_keys(settings: Settings) -> list[str]:
    from stanch.audit.history import trust_decision_keys

    # Public keys only (and legacy HMAC keys, for old runs): an audit holds no signing key.
    return trust_decision_keys(settings)


def _converter(settings: Settings):
    """The worker's data converter: pydantic, and the payload codec when encryption is configured."""
    from stanch.temporal.client import data_converter

    try:
        return data_converter(settings)
    except ValueError as problem:  # malformed encryption keys name themselves
        raise BadInput(f"encryption keys: {problem}") from None


async def _histories(settings: Settings, incident_id: str | None, run_id: str | None, files: list[Path], address, namespace):
    """The histories a command asked for, with where each came from."""
    from stanch.audit.history import connect_for_audit, fetch_history, load_history_file

    if files:
        return [(load_history_file(path), str(path)) for path in files]
    if not incident_id:  # the commands check for one of the two before they get here
        raise BadInput("say which history: an incident ID, or --file HISTORY.json")
    client = await connect_for_audit(settings, address, namespace)
    return [(await fetch_history(client, incident_id, run_id), "temporal")]


# --- replay -----------------------------------------------------------------------------


@audit_app.command("replay")
def replay(
    incident_id: Annotated[str | None, typer.Argument(help="incident (workflow) id to fetch from Temporal")] = None,
    run_id: RunIdOption = None,
    all_: Annotated[bool, typer.Option("--all", help="every incident in Temporal (with --since: started since then)")] = False,
    since: Annotated[str | None, typer.Option("--since", help="with --all: a date or ISO 8601 time")] = None,
    files: Annotated[list[Path] | None, typer.Option("--file", help="a `temporal workflow show --output json` file (repeatable)")] = None,
    home: HomeOption = None,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replay histories with today's workflow code; exit 1 naming the run and event of any divergence."""
    outcomes = _run(_replay(incident_id, run_id, all_, since, files or [], home, address, namespace))
    if as_json:
        typer.echo("[" + ",\n".join(outcome.model_dump_json(indent=2) for outcome in outcomes) + "]")
    elif not outcomes:
        console.print("no incidents to replay" + (f" started since {escape(since)}" if since else ""))
    else:
        # One line per run, whole: grep-able in CI logs, and the run id is never cut.
        for outcome in outcomes:
            mark = "[green]✔[/]" if outcome.reproduced else "[bold red]✘[/]"
            console.print(f"{mark} {escape(outcome.describe())}  [dim]{escape(outcome.source)}[/]")
        unreadable = sum(outcome.unreadable is not None for outcome in outcomes)
        unverifiable = sum(outcome.unverifiable is not None for outcome in outcomes)
        not_replayed = unreadable + unverifiable
        read = len(outcomes) - not_replayed
        diverged = sum(not outcome.reproduced for outcome in outcomes) - not_replayed
        if diverged:
            verdict = f"[bold red]{diverged} of {read} diverge[/] with today's workflow code"
        elif read:
            verdict = f"[green]{'all ' if read > 1 else ''}{read} reproduced[/] with today's workflow code"
        else:
            verdict = "[bold red]nothing could be replayed[/]"
        if unreadable and read:
            verdict += f"; [bold red]{unreadable} could not be read[/]"
        if unverifiable and read:
            verdict += f"; [bold red]{unverifiable} could not be verified[/] (decision keys missing)"
        dry_runs = sum(outcome.dry_run for outcome in outcomes)
        if dry_runs:
            verdict += f"; {dry_runs} of them {'a dry run' if dry_runs == 1 else 'dry runs'} (rehearsals, marked {escape('[dry run]')})"
        console.print(verdict)
    if any(outcome.not_replayed is None and not outcome.reproduced for outcome in outcomes):
        raise typer.Exit(1)
    if any(outcome.not_replayed for outcome in outcomes):
        raise typer.Exit(2)  # a configuration problem: nothing was replayed, so nothing is known


async def _replay(incident_id, run_id, all_, since, files, home, address, namespace):
    from stanch.audit.history import (
        connect_for_audit,
        fetch_incident_histories,
        parse_since,
    )
    from stanch.audit.replay import from_list, replay_histories
    from workers.main import WORKFLOWS

    if sum([bool(incident_id), all_, bool(files)]) != 1:
        raise BadInput("say what to replay: an incident ID, --all, or --file HISTORY.json (one of them)")
    if since and not all_:
        raise BadInput("--since goes with --all")
    settings = _settings(home)
    # Verdicts are in history: replay needs no decision key. A run from before that checked
    # assertions on replay; if one diverges under a key not configured here, it is reported as
    # such (CANNOT VERIFY, exit 2), not as a code change.
    keys = _trust_keys(settings)
    converter = _converter(settings)
    if all_:
        moment = parse_since(since) if since else None
        client = await connect_for_audit(settings, address, namespace)
        return await replay_histories(fetch_incident_histories(client, moment), WORKFLOWS, converter, trusted_keys=keys)
    loaded = await _histories(settings, incident_id, run_id, files, address, namespace)
    sources = {id(history): source for history, source in loaded}
    return await replay_histories(from_list(history for history, _ in loaded), WORKFLOWS, converter, sources, trusted_keys=keys)


# --- timeline ---------------------------------------------------------------------------


@audit_app.command("timeline")
def timeline(
    incident_id: Annotated[str | None, typer.Argument(help="incident (workflow) id to fetch from Temporal")] = None,
    run_id: RunIdOption = None,
    file: Annotated[Path | None, typer.Option("--file", help="a `temporal workflow show --output json` file instead")] = None,
    format: Annotated[str, typer.Option("--format", help="md, json or html")] = "md",
    out: Annotated[Path | None, typer.Option("--out", help="write here instead of standard output")] = None,
    home: HomeOption = None,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """The incident's timeline, from its history alone.

    Signals, decisions (verified or not), actions with idempotency keys, timers, notifications
    and how long each stage took."""
    text = _run(_timeline(incident_id, run_id, file, format, home, address, namespace))
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    out.write_text(text)
    err_console.print(f"wrote {escape(str(out))}")


async def _timeline(incident_id, run_id, file, format, home, address, namespace) -> str:
    from stanch.audit.render import to_html, to_markdown
    from stanch.audit.timeline import build_timeline

    if format not in ("md", "json", "html"):
        raise BadInput(f"--format {format!r}: use md, json or html")
    if bool(incident_id) == bool(file):
        raise BadInput("say which history: an incident ID, or --file HISTORY.json (one of them)")
    settings = _settings(home)
    keys = _trust_keys(settings)
    [(history, _)] = await _histories(settings, incident_id, run_id, [file] if file else [], address, namespace)
    built = await build_timeline(history, _converter(settings), keys)
    if format == "json":
        return built.model_dump_json(indent=2)
    return to_html(built) if format == "html" else to_markdown(built)


# --- export and verify ------------------------------------------------------------------


@audit_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="a new (or empty) folder for the bundle")],
    since: Annotated[str | None, typer.Option("--since", help="incidents started since this date or ISO 8601 time (default: all)")] = None,
    signing_key: Annotated[
        str | None,
        typer.Option(
            "--signing-key",
            envvar="STANCH_AUDIT_SIGNING_KEY",
            help="Ed25519 private key PEM file (or PEM text) to sign the head (default: the file STANCH_AUDIT_SIGNING_KEY_FILE names)",
        ),
    ] = None,
    home: HomeOption = None,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    to_store: Annotated[
        bool,
        typer.Option(
            "--to-store",
            help="also keep the sealed bundle in the artefact store (STANCH_ARTEFACTS) as one archive; any host fetches it "
            "with `stanch audit fetch LOCATION`",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Export histories, timelines (md + json) and evidence into a bundle sealed by a hash-chained manifest."""
    manifest, stored = _run(_export(out, since, signing_key, home, address, namespace, to_store))
    if as_json:
        # The manifest as always; with --to-store, one more key: where the archive is kept.
        exported = manifest.model_dump(mode="json")
        if stored is not None:
            exported["stored"] = stored.model_dump(mode="json")
        typer.echo(json.dumps(exported, indent=2, ensure_ascii=False))
        return
    incidents = len({entry.incident for entry in manifest.entries})
    console.print(f"[green]✓[/] {incidents} incident run(s), {len(manifest.entries)} files in {escape(str(out))}")
    console.print(f"  head {manifest.head}" + (f"  signed by key {manifest.signature.key_id}" if manifest.signature else "  (unsigned)"))
    for incident in manifest.dry_runs or []:
        console.print(f"  dry run (a rehearsal, labelled in the manifest's dry_runs): {escape(incident)}")
    for incident in manifest.drills or []:
        console.print(f"  drill (a rehearsal on a drill route, labelled in the manifest's drills): {escape(incident)}")
    for left in manifest.left_out or []:
        console.print(f"[yellow]left out:[/] {escape(left.incident)}: {escape(left.location)}: {escape(left.reason)}")
    for warning in manifest.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if stored is not None:
        console.print(f"[green]✓[/] stored {escape(stored.location)}")
        console.print(f"  sha256 {stored.sha256}, {stored.size} bytes; on any host: stanch audit fetch {escape(stored.location)} --out DIR")


async def _export(out, since, signing_key, home, address, namespace, to_store=False):
    from stanch.audit import bundle, signing
    from stanch.audit.history import (
        connect_for_audit,
        fetch_incident_histories,
        incident_query,
        parse_since,
    )
    from stanch.stores.artefacts import ArtefactStoreConfigError, store_from_settings

    key = signing.export_key(signing_key)
    settings = _settings(home)
    try:
        artefacts = store_from_settings(settings)
    except ArtefactStoreConfigError as problem:
        raise BadInput(str(problem)) from None
    keys = _trust_keys(settings)
    moment = parse_since(since) if since else None
    bundle.prepare(out)  # refuse a used folder before fetching anything
    client = await connect_for_audit(settings, address, namespace)
    header = bundle.Header(
        created_at=bundle.now(),
        source=f"{address or settings.temporal_address or 'env config'} namespace {client.namespace}",
        query=incident_query(moment),
        since=moment.isoformat() if moment else None,
    )
    histories = fetch_incident_histories(client, moment)
    # Evidence and review documents come from the store STANCH_ARTEFACTS names: any host of the installation can export.
    manifest = await bundle.export(out, histories, _converter(settings), settings.home, header, keys, key, artefacts)
    if not to_store:
        return manifest, None
    from stanch.audit.stored import store_bundle

    # Sealed first, stored after: the archive holds exactly the folder `audit verify` checks.
    return manifest, await store_bundle(out, artefacts)


@audit_app.command("fetch")
def fetch(
    location: Annotated[str, typer.Argument(help="the bundle's location, as `audit export --to-store` printed it")],
    out: Annotated[Path, typer.Option("--out", help="a new (or empty) folder to unpack the bundle into")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fetch a bundle `audit export --to-store` kept in the artefact store, and unpack it for `audit verify`.

    Reads from the store STANCH_ARTEFACTS names (the same on every host). Exit 1 if the stored
    archive changed since it was stored (its sha256 is not the one its location names); exit 2 if
    it is not found, not a bundle, or holds a member that would land outside --out."""
    from stanch.audit.stored import StoredBundleChanged

    try:
        fetched = _run(_fetch(location, out, home))
    except StoredBundleChanged as problem:
        err_console.print(f"[bold red]✘ changed:[/] {escape(str(problem))}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(fetched.model_dump_json(indent=2))
        return
    console.print(f"[green]✓[/] {fetched.files} files from {escape(fetched.location)} (sha256 {fetched.sha256}) in {escape(str(out))}")
    console.print(f"  next: stanch audit verify {escape(str(out))}")


async def _fetch(location, out, home):
    from stanch.audit.stored import fetch_bundle
    from stanch.stores.artefacts import ArtefactStoreConfigError, store_from_settings

    try:
        artefacts = store_from_settings(_settings(home))
    except ArtefactStoreConfigError as problem:
        raise BadInput(str(problem)) from None
    return await fetch_bundle(artefacts, location, out)


@audit_app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(help="the bundle folder")],
    public_key: Annotated[
        list[str] | None,
        typer.Option(
            "--public-key",
            help="Ed25519 public key PEM (repeat, or several in one file: the one whose key id the bundle names checks the "
            "head's signature; default: STANCH_AUDIT_PUBLIC_KEYS_FILE)",
        ),
    ] = None,
    require_signature: Annotated[
        bool, typer.Option("--require-signature", help="exit 1 unless the bundle is signed and its signature checks with --public-key")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check a bundle is as exported; exit 1 naming whatever changed.

    Recomputes every file's sha256 and the manifest's chain, naming each edited, missing, added,
    removed, reordered or truncated entry and any symlink, and checks the head's signature with
    --public-key. Unsigned, the chain cannot show a consistent rewrite: see what it says it proves."""
    from stanch.audit import signing

    if not path.is_dir():
        err_console.print(f"[bold red]error:[/] {escape(str(path))}: no such bundle folder")
        raise typer.Exit(2)
    try:
        keys = signing.verify_keys(public_key or [])
    except signing.SigningKeyError as error:
        err_console.print(f"[bold red]error:[/] {escape(str(error))}")
        raise typer.Exit(2) from None
    from stanch.audit.verify import verify_with_keys

    report = verify_with_keys(path, keys, require_signature)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        for problem in report.problems:
            console.print(f"[bold red]✘ {problem.what}[/] {escape(problem.message)}")
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
        for left in report.left_out:
            console.print(f"[yellow]left out at export:[/] {escape(left.incident)}: {escape(left.location)}: {escape(left.reason)}")
        for incident in report.dry_runs:
            console.print(f"dry run (a rehearsal, not an incident): {escape(incident)}")
        for incident in report.drills:
            console.print(f"drill (a rehearsal on a drill route, not an incident): {escape(incident)}")
        signature = {
            "valid": "signature valid",
            "invalid": "signature INVALID",
            "unsigned": "unsigned",
            "not checked": "signed; pass --public-key to check it",
        }
        verdict = "[green]✓ intact[/]" if report.ok else f"[bold red]✘ {len(report.problems)} problem(s)[/]"
        console.print(f"{verdict}: {report.entries} entries, head {report.head or '-'}, {signature[report.signature]}")
        if report.proves and report.signature != "invalid":
            console.print(("" if report.signature == "valid" else "[yellow]note:[/] ") + escape(report.proves))
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("keygen")
def keygen(
    private_key: Annotated[Path, typer.Argument(help="where to write the private key (PEM, mode 0600)")],
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="where to write the public key (default: NAME.pub.pem beside it)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace existing key files")] = False,
) -> None:
    """Make an Ed25519 key pair for signing bundles.

    Keep the private key with whoever exports; give the public key to auditors."""
    from stanch.audit import signing

    public_key = public_key or private_key.with_name(private_key.name.removesuffix(".pem") + ".pub.pem")
    try:
        kid = signing.generate(private_key, public_key, overwrite=force)
    except signing.SigningKeyError as problem:
        err_console.print(f"[bold red]error:[/] {escape(str(problem))}")
        raise typer.Exit(2) from None
    console.print(f"[green]✓[/] key {kid}: private {escape(str(private_key))}, public {escape(str(public_key))}")
    console.print("  sign:   stanch audit export --signing-key " + escape(str(private_key)) + " …  (or STANCH_AUDIT_SIGNING_KEY[_FILE])")
    console.print("  verify: stanch audit verify BUNDLE --public-key " + escape(str(public_key)) + "  (or STANCH_AUDIT_PUBLIC_KEYS_FILE)")
