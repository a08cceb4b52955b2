"""`registry`: the ops command line. Every failure is one line on stderr and a non-zero exit.

Exit codes: 0 success; 1 unexpected; 2 usage (unknown command, missing argument); 3-9 the
registry's errors (`registry.errors`): 3 not found, 4 invalid input, 5 conflict, 6 corrupted
artifact, 7 database, 8 a promotion's target failed its check, 9 artifact storage.

The database and store libraries are imported inside the commands that use them, so
`registry --help` and usage errors answer at once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from registry.errors import DatabaseError, DatabaseUnavailableError, InvalidInputError, RegistryError

if TYPE_CHECKING:
    from registry.schemas import AliasMove, ModelInfo, VersionInfo
    from registry.service import Registry

app = typer.Typer(
    name="registry",
    help="Model registry: register, promote, roll back and inspect model versions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")
store_app = typer.Typer(help="The artifact store.", no_args_is_help=True)
app.add_typer(store_app, name="store")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ActorOpt = Annotated[str | None, typer.Option(help="Who is acting (default: the OS user).")]
AliasOpt = Annotated[str, typer.Option("--alias", "-a", help="Alias to move.")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why; kept in the history.")]
NoCheckOpt = Annotated[
    bool,
    typer.Option(
        "--no-check",
        help="Move the alias without checking that the target can be served (emergencies only; "
        "recorded in the history).",
    ),
]


def _registry(*, check: bool = True) -> Registry:
    from registry.service import Registry
    from registry.settings import RegistrySettings

    return Registry.from_settings(RegistrySettings(), check=check)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    typer.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _when(info: VersionInfo | ModelInfo | AliasMove) -> str:
    return info.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _accuracy(info: VersionInfo) -> str:
    value = info.metadata.metrics.get("accuracy")
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List registered models."""
    with _registry() as reg:
        items = reg.list_models()
    if as_json:
        _print_json([m.model_dump(mode="json") for m in items])
        return
    _table(
        ["name", "versions", "aliases", "created"],
        [
            [m.name, m.latest_version, ", ".join(f"{a}=v{v}" for a, v in m.aliases.items()) or "-", _when(m)]
            for m in items
        ],
    )


@app.command()
def versions(name: str, as_json: JsonOpt = False) -> None:
    """List the versions of a model."""
    with _registry() as reg:
        items = reg.list_versions(name)
    if as_json:
        _print_json([v.model_dump(mode="json") for v in items])
        return
    _table(
        ["version", "status", "aliases", "accuracy", "parity", "created", "by"],
        [
            [
                v.version,
                v.status,
                ", ".join(v.aliases) or "-",
                _accuracy(v),
                "-" if v.metadata.parity is None else ("passed" if v.metadata.parity.passed else "FAILED"),
                _when(v),
                v.created_by,
            ]
            for v in items
        ],
    )


@app.command()
def show(reference: Annotated[str, typer.Argument(metavar="NAME[:VERSION|@ALIAS]")], as_json: JsonOpt = False) -> None:
    """Show one version: contract, metrics, parity check and provenance."""
    with _registry() as reg:
        info = reg.get(reference)
    if as_json:
        _print_json(info.model_dump(mode="json"))
        return
    meta, contract = info.metadata, info.contract
    lines = [
        f"model:        {info.model_name}",
        f"version:      {info.version} ({info.status})",
        f"aliases:      {', '.join(info.aliases) or '-'}",
        f"created:      {_when(info)} UTC by {info.created_by}",
        f"artifact:     {info.format}, {info.size} bytes, sha256 {info.sha256}",
        f"input:        {contract.input.name} {contract.input.dtype} {contract.input.shape}",
        f"output:       {contract.output.name} ({contract.output.kind})",
        f"labels:       {', '.join(contract.labels)}",
        f"preprocess:   resize to {contract.preprocessing.size[0]}x{contract.preprocessing.size[1]} "
        f"({contract.preprocessing.resize_method}), {contract.preprocessing.color_mode}",
    ]
    if info.contract_change:
        lines.append(f"contract:     changed {info.contract_change} (allowed at registration)")
    if meta.metrics:
        scalars = {k: v for k, v in meta.metrics.items() if isinstance(v, int | float)}
        lines.append("metrics:      " + ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    if meta.parity is not None:
        p = meta.parity
        lines.append(
            f"parity:       {'passed' if p.passed else 'FAILED'}: max |diff| {p.max_abs_diff:.2e}, "
            f"top-1 agreement {p.top1_agreement:.4f} on {p.samples} images, batch sizes {p.batch_sizes}"
        )
    if meta.params:
        lines.append("params:       " + ", ".join(f"{k}={v}" for k, v in meta.params.items()))
    if meta.dataset_fingerprint:
        lines.append(f"dataset:      {meta.dataset_fingerprint}")
    if meta.library_versions:
        lines.append("libraries:    " + ", ".join(f"{k} {v}" for k, v in meta.library_versions.items()))
    if info.extras:
        lines.append("extras:       " + ", ".join(f"{e.name} ({e.size} bytes)" for e in info.extras))
    typer.echo("\n".join(lines))


@app.command()
def register(
    name: str,
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx")],
    meta: Annotated[Path, typer.Option("--meta", help="JSON metadata (as `registry export` writes).")],
    extra: Annotated[list[Path] | None, typer.Option("--extra", help="Extra file to keep with the version.")] = None,
    description: Annotated[str | None, typer.Option(help="Model description (first registration).")] = None,
    allow_contract_change: Annotated[
        bool,
        typer.Option(
            "--allow-contract-change",
            help="Accept labels, output kind or input size that differ from the latest version's (recorded).",
        ),
    ] = False,
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register MODEL.onnx as the next version of NAME."""
    from registry.service import parse_metadata

    try:
        raw = json.loads(meta.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"metadata file {str(meta)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"metadata file {str(meta)!r} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"metadata file {str(meta)!r} must hold a JSON object")
    metadata = parse_metadata(raw)
    extras: dict[str, Path] = {}
    for path in extra or []:
        if path.name in extras:  # an extra is kept under its file name: one would replace the other
            raise InvalidInputError(
                f"two --extra files are named {path.name!r} ({extras[path.name]}, {path}): rename one"
            )
        extras[path.name] = path
    with _registry() as reg:
        info = reg.register(
            name=name,
            onnx_path=model,
            metadata=metadata,
            extras=extras,
            actor=actor,
            description=description,
            allow_contract_change=allow_contract_change,
        )
    if as_json:
        _print_json(info.model_dump(mode="json"))
    else:
        typer.echo(f"registered {info.model_name} v{info.version} (sha256 {info.sha256[:12]})")
        if info.contract_change:
            typer.echo(f"contract change allowed and recorded: {info.contract_change}")


@app.command()
def promote(
    name: str,
    version: int,
    alias: AliasOpt = "production",
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    no_check: NoCheckOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Point an alias (default: production) at VERSION, once VERSION is checked to be servable."""
    with _registry() as reg:
        move = reg.promote(name=name, version=version, alias=alias, actor=actor, reason=reason, check=not no_check)
    _report_move(move, as_json)


@app.command()
def rollback(
    name: str,
    alias: AliasOpt = "production",
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    no_check: NoCheckOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Move an alias back to the version it held before, once that version is checked to be servable."""
    with _registry() as reg:
        move = reg.rollback(name=name, alias=alias, actor=actor, reason=reason, check=not no_check)
    _report_move(move, as_json)


@app.command()
def check(reference: Annotated[str, typer.Argument(metavar="NAME[:VERSION|@ALIAS]")]) -> None:
    """Check that a version can be served (what promote checks); exit 8 if it cannot."""
    from registry.service import Reference

    with _registry() as reg:
        info = reg.get(Reference.parse(reference))
        reg.check_version(info.model_name, info.version)
    typer.echo(f"{info.model_name} v{info.version} can be served")


def _report_move(move: AliasMove, as_json: bool) -> None:
    if as_json:
        _print_json(move.model_dump(mode="json"))
        return
    before = f"v{move.from_version}" if move.from_version is not None else "(unset)"
    unchecked = ", unchecked" if move.checked is False else ""
    typer.echo(
        f"{move.model_name}@{move.alias}: {before} -> v{move.to_version} ({move.action} by {move.actor}{unchecked})"
    )


@app.command()
def archive(
    name: str,
    version: int,
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Archive a version so it can no longer be promoted (recorded in the history)."""
    with _registry() as reg:
        info = reg.archive(name=name, version=version, actor=actor, reason=reason)
    if as_json:
        _print_json(info.model_dump(mode="json"))
    else:
        typer.echo(f"archived {info.model_name} v{info.version}")


@app.command()
def history(
    name: str,
    alias: Annotated[str | None, typer.Option("--alias", "-a", help="Only this alias.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every alias move and archive of a model, oldest first."""
    with _registry() as reg:
        moves = reg.history(name, alias)
    if as_json:
        _print_json([m.model_dump(mode="json") for m in moves])
        return
    _table(
        ["time", "alias", "action", "from", "to", "actor", "reason"],
        [
            [
                _when(m),
                m.alias or "-",
                m.action + (" (unchecked)" if m.checked is False else ""),
                "-" if m.from_version is None else f"v{m.from_version}",
                "-" if m.to_version is None else f"v{m.to_version}",
                m.actor,
                m.reason or "-",
            ]
            for m in moves
        ],
    )


@app.command()
def export(
    reference: Annotated[str, typer.Argument(metavar="NAME[:VERSION|@ALIAS]")],
    directory: Annotated[Path, typer.Argument(metavar="DIR")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace files of the same names in DIR that hold something else.")
    ] = False,
) -> None:
    """Write model.onnx, meta.json and extras/ to DIR, ready for `registry register`.

    A file of the same name already in DIR is left alone unless it holds the same bytes (an export
    run again) or --overwrite is given: DIR may be a training run's directory, whose model.onnx is
    not in the registry. Each file is written under a temporary name and renamed, so an export
    that is killed leaves no half-written model."""
    from registry.artifacts import write_replacing
    from registry.errors import ConflictError, InvalidInputError
    from registry.service import Reference

    with _registry() as reg:
        info = reg.get(Reference.parse(reference))
        files = {"model.onnx": reg.open_artifact(info.model_name, info.version)}
        files["meta.json"] = (json.dumps(info.metadata.model_dump(mode="json"), indent=2) + "\n").encode()
        for extra in info.extras:
            files[f"extras/{extra.name}"] = reg.read_extra(info.model_name, info.version, extra.name)
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"cannot export to {directory}: it exists and is not a directory")
    if not overwrite:
        held = [name for name, content in files.items() if _holds_other(directory / name, content)]
        if held:
            raise ConflictError(
                f"{directory} already holds {', '.join(held)} with other contents: "
                "export to a new or empty directory, or pass --overwrite"
            )
    for name, content in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        write_replacing(directory / name, content)
    typer.echo(f"exported {info.model_name} v{info.version} to {directory}")


def _holds_other(path: Path, content: bytes) -> bool:
    if not path.exists():
        return False
    return not path.is_file() or path.stat().st_size != len(content) or path.read_bytes() != content


@app.command()
def verify(as_json: JsonOpt = False) -> None:
    """Re-hash every stored artifact; exit 6 if any is missing or corrupted."""
    with _registry() as reg:
        checked, problems = reg.verify()
    if as_json:
        _print_json({"checked": checked, "problems": [p.__dict__ for p in problems]})
    else:
        for p in problems:
            typer.echo(f"{p.model_name} v{p.version} {p.artifact}: {p.detail}", err=True)
        typer.echo(f"checked {checked} artifacts, {len(problems)} problems")
    if problems:
        raise typer.Exit(6)


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed.")] = False,
    grace: Annotated[float, typer.Option(help="Keep blobs younger than this many seconds.")] = 3600,
) -> None:
    """Remove stored blobs that no version references."""
    with _registry() as reg:
        removed = reg.gc(dry_run=dry_run, grace_seconds=grace)
    verb = "would remove" if dry_run else "removed"
    for sha, size in removed:
        typer.echo(f"{verb} {sha} ({size} bytes)")
    typer.echo(f"{verb} {len(removed)} blobs, {sum(s for _, s in removed)} bytes")


@store_app.command("copy")
def store_copy(
    destination: Annotated[str, typer.Argument(metavar="DEST", help="a directory or s3://bucket/prefix")],
    as_json: JsonOpt = False,
) -> None:
    """Copy every artifact the registry references into another store (e.g. a local one into a
    bucket), checking each; then point REGISTRY_ARTIFACTS_URL at DEST. Exit 6 if a source copy is bad."""
    from registry.artifacts import open_store

    with _registry() as reg:
        copied, present, problems = reg.copy_store(open_store(destination))
    if as_json:
        _print_json({"copied": copied, "already_there": present, "problems": [p.__dict__ for p in problems]})
    else:
        for p in problems:
            typer.echo(f"{p.model_name} v{p.version} {p.artifact}: {p.detail}", err=True)
        typer.echo(f"copied {copied} artifacts to {destination}, {present} already there, {len(problems)} problems")
    if problems:
        raise typer.Exit(6)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument()] = "head",
    wait: Annotated[
        float, typer.Option("--wait", help="Retry for up to this many seconds while the database does not answer.")
    ] = 0,
) -> None:
    """Create or upgrade the registry schema."""
    from registry import db

    with _registry(check=False) as reg:
        _wait_for_database(reg, wait)
        try:
            db.upgrade(reg.engine, revision)
        except RegistryError:
            raise
        except Exception as exc:
            raise DatabaseError(f"migration failed on {db.redact(reg.engine)}: {db.first_line(exc)}") from exc
        typer.echo(f"registry database {db.redact(reg.engine)} is at revision {db.current_revision(reg.engine)}")


def _wait_for_database(reg: Registry, seconds: float) -> None:
    """Connect, retrying until ``seconds`` have passed: a database that is still starting refuses."""
    from registry import db

    deadline = time.monotonic() + seconds
    attempts = 0
    while True:
        attempts += 1
        try:
            with reg.engine.connect():
                return
        except Exception as exc:
            if time.monotonic() >= deadline:
                tried = f" (tried {attempts} times in {seconds:g} s)" if seconds > 0 else ""
                raise DatabaseUnavailableError(
                    f"cannot reach the registry database {db.redact(reg.engine)}{tried}: {db.first_line(exc)}"
                ) from exc
            if attempts == 1:
                typer.echo(f"waiting for the registry database {db.redact(reg.engine)}: {db.first_line(exc)}", err=True)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the one this code needs."""
    from registry import db

    with _registry(check=False) as reg:
        try:
            current = db.current_revision(reg.engine)
        except Exception as exc:
            raise DatabaseError(f"cannot read the schema of {db.redact(reg.engine)}: {db.first_line(exc)}") from exc
    typer.echo(f"current: {current or '(none)'}  head: {db.head_revision()}")


# typer raises click's exceptions from its own copy of click (recent versions) or from click itself
# (older ones); their base class is found from one typer re-exports, so click need not be imported.
ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, prog_name="registry", standalone_mode=False)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `registry` or `registry db`: the help
            typer.echo(exc.format_message(), err=True)  # type: ignore[attr-defined]
            sys.exit(2)
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"registry: error: {message} (see `registry --help`)", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("registry: aborted", err=True)
        sys.exit(130)
    except RegistryError as exc:
        typer.echo(f"registry: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        typer.echo(f"registry: error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
