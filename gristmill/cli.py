"""The ``gristmill`` command line: a thin door onto ``FeatureStore``.

User mistakes print one line ``error: ...`` and exit with code 2; nothing prints a traceback unless
``GRISTMILL_DEBUG=1`` is set."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.main
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(name="gristmill", help="Gristmill feature store.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
# Piped output is read by people and scripts alike: wide enough that tables do not fold.
console = Console() if sys.stdout.isatty() else Console(width=200)
err_console = Console(stderr=True)

T = TypeVar("T")

StoreOption = Annotated[Path, typer.Option("--store", "-s", help="Feature store folder (has featurestore.yaml).",
                                           envvar="GRISTMILL_STORE")]


def main() -> None:
    """Entry point of the console script."""
    logging.basicConfig(level=os.environ.get("GRISTMILL_LOG", "WARNING").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        _command()()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


def _command() -> Any:
    """The click command tree of ``app``, with boolean flags shown in ``--help`` as plain flags (recent
    Typer releases print ``<bool>`` after them, as if they took a value)."""
    from typer.core import TyperOption

    def plain_flags(command: Any) -> None:
        help_option = command.get_help_option(typer.Context(command))
        for param in [*command.params, *([help_option] if help_option is not None else [])]:
            if isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""
        for sub in getattr(command, "commands", {}).values():
            plain_flags(sub)

    command = typer.main.get_command(app)
    plain_flags(command)
    return command


def _print_version(value: bool) -> None:
    if value:
        from gristmill import __version__

        typer.echo(f"gristmill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.",
                                                callback=_print_version, is_eager=True)] = False) -> None:
    """Gristmill feature store."""


def _store_argument(store: Any) -> Path | None:
    """The store folder to name in a printed command (``--store``), or ``None`` when it is the current
    directory (accepts a ``FeatureStore`` or a folder)."""
    folder = Path(getattr(store, "path", store)).resolve()
    return None if folder == Path.cwd().resolve() else folder


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn Gristmill errors into one clean line and exit code 2."""
    from gristmill.errors import GristmillError

    try:
        yield
    except GristmillError as exc:
        if os.environ.get("GRISTMILL_DEBUG"):
            raise
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _open(store: Path) -> Any:
    from gristmill.store import FeatureStore

    return FeatureStore(store)


def _split_ref(ref: str, *, what: str = "argument") -> tuple[str, str | None]:
    """A NAME or NAME:VERSION argument: ``(name, version or None)``."""
    from gristmill.spec.refs import parse_name_and_version

    return parse_name_and_version(ref, what=what, example="transactions:1")


def _with_progress(description: str, work: Callable[[], T], progress: Callable[[], float] | None = None) -> T:
    """Run ``work`` while showing a live progress line (DuckDB's query progress when available)."""
    if not console.is_terminal:
        return work()
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(description, total=100)
        thread.start()
        while thread.is_alive():
            if progress is not None:
                value = progress()
                if value >= 0:
                    bar.update(task, completed=value)
            time.sleep(0.1)
    if "error" in result:
        raise result["error"]
    return result["value"]


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Folder to create the store in.")] = Path("."),
         name: Annotated[str | None, typer.Option(help="Store name (default: folder name).")] = None,
         registry_url: Annotated[str | None, typer.Option(help="Registry URL (default: SQLite in the folder); "
                                                                "e.g. postgresql+psycopg://user@host/db")] = None,
         offline_store: Annotated[str | None, typer.Option(help="Offline store folder or URI.")] = None,
         online_store: Annotated[str | None, typer.Option(
             help="Online store: sqlite (default, a file in the folder) or a Redis URL, e.g. "
                  "redis://host:6379/0")] = None,
         online_prefix: Annotated[str | None, typer.Option(
             help="Key prefix in Redis (default: gristmill), to share one Redis between stores.")] = None) -> None:
    """Create a feature store (embedded defaults: SQLite registry, Delta offline store, SQLite online store,
    DuckDB engine)."""
    from gristmill.store import FeatureStore

    with _user_errors():
        store = FeatureStore.init(path, name=name, registry_url=registry_url, offline_store_uri=offline_store,
                                  online_store=online_store, online_prefix=online_prefix)
        console.print(f"feature store [bold]{store.name}[/bold] ready in {store.path}")


SkipSourceCheck = Annotated[bool, typer.Option("--skip-source-check",
                                               help="Do not check new feature set specs against their source.")]
AllowDataLoss = Annotated[bool, typer.Option("--allow-data-loss",
                                             help="Allow changes that drop materialized data (a store disabled).")]


def _print_plan(plan: Any) -> None:
    colours = {"create": "green", "created": "green", "update": "yellow", "updated": "yellow", "unchanged": "dim",
               "refuse": "red", "refused": "red", "invalid": "red"}
    for item in plan.items:
        colour = colours.get(item.action, "white")
        console.print(f"[{colour}]{item.action:>9}[/{colour}]  {item.kind} {escape(item.ref)}", highlight=False)
        for change in item.changes:
            console.print(f"           {escape(str(change))}", highlight=False, soft_wrap=True)
        for line in item.detail.splitlines():
            console.print(f"           {escape(line)}", highlight=False, soft_wrap=True)
        for note in item.notes:
            console.print(f"           note: {escape(note)}", highlight=False, soft_wrap=True)
    for path in plan.skipped:
        console.print(f"[dim]  skipped[/dim]  {escape(path)} (neither an entity: index_columns, nor a feature set: "
                      "specification)", highlight=False, soft_wrap=True)
    console.print(plan.summary(), highlight=False)


@app.command()
def plan(folder: Annotated[Path, typer.Argument(help="Folder with entity and feature set YAML files.")],
         store: StoreOption = Path("."),
         skip_source_check: SkipSourceCheck = False,
         allow_data_loss: AllowDataLoss = False,
         detailed_exitcode: Annotated[bool, typer.Option("--detailed-exitcode",
                                                         help="Exit 3 when the plan has changes.")] = False) -> None:
    """Show what `apply FOLDER` would do, changing nothing.

    Exit codes: 0 nothing refused or invalid (with --detailed-exitcode: nothing to do);
    1 something refused or invalid; 2 a usage mistake (no such folder or store);
    3 with --detailed-exitcode: changes to apply."""
    with _user_errors():
        result = _open(store).plan(folder, check_source=not skip_source_check, allow_data_loss=allow_data_loss)
    _print_plan(result)
    if not result.ok:
        raise typer.Exit(1)
    if detailed_exitcode and result.has_changes:
        raise typer.Exit(3)


@app.command()
def apply(folder: Annotated[Path, typer.Argument(help="Folder with entity and feature set YAML files.")],
          store: StoreOption = Path("."),
          skip_source_check: SkipSourceCheck = False,
          allow_data_loss: AllowDataLoss = False) -> None:
    """Register every entity and feature set found under FOLDER (idempotent; prints the plan it executed).

    Exit codes: 0 applied; 1 something was refused or invalid (the rest was applied); 2 a usage mistake."""
    with _user_errors():
        result = _open(store).apply(folder, check_source=not skip_source_check, allow_data_loss=allow_data_loss)
    _print_plan(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def archive(ref: Annotated[str, typer.Argument(help="NAME:VERSION of a feature set (or entity with --entity).")],
            store: StoreOption = Path("."),
            entity: Annotated[bool, typer.Option("--entity", help="Archive an entity version.")] = False) -> None:
    """Archive a feature set (or entity) version: hidden from lists and `latest`, still readable by version."""
    _archive_or_restore(ref, store, entity, archive=True)


@app.command()
def restore(ref: Annotated[str, typer.Argument(help="NAME:VERSION of a feature set (or entity with --entity).")],
            store: StoreOption = Path("."),
            entity: Annotated[bool, typer.Option("--entity", help="Restore an entity version.")] = False) -> None:
    """Restore an archived feature set (or entity) version."""
    _archive_or_restore(ref, store, entity, archive=False)


def _archive_or_restore(ref: str, store: Path, entity: bool, *, archive: bool) -> None:
    from gristmill.errors import SpecError

    with _user_errors():
        name, version = _split_ref(ref)
        if version is None:
            raise SpecError(f"'{ref}': give the version to {'archive' if archive else 'restore'}, e.g. {name}:1")
        s = _open(store)
        kind = "entity" if entity else "feature set"
        if entity:
            (s.archive_entity if archive else s.restore_entity)(name, version)
        else:
            (s.archive_feature_set if archive else s.restore_feature_set)(name, version)
        console.print(f"{'archived' if archive else 'restored'} {kind} {name}:{version}", highlight=False)


@app.command("list")
def list_(what: Annotated[str, typer.Argument(help="featuresets | entities | features")] = "featuresets",
          store: StoreOption = Path("."),
          all_: Annotated[bool, typer.Option("--all", help="Include archived versions.")] = False,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List feature sets, entities or features."""
    with _user_errors():
        s = _open(store)
        kind = what.lower().replace("-", "").replace("_", "")
        if kind in ("featuresets", "featureset", "fs"):
            rows = [{"name": f.name, "version": f.version, "stage": f.stage.value,
                     "entities": ", ".join(f.entities), "description": f.description or ""}
                    for f in s.list_feature_sets(include_archived=all_)]
        elif kind in ("entities", "entity"):
            rows = [{"name": e.name, "version": e.version,
                     "index_columns": ", ".join(f"{c.name}: {c.type.value}" for c in e.index_columns),
                     "description": e.description or ""} for e in s.list_entities(include_archived=all_)]
        elif kind in ("features", "feature"):
            rows = [_feature_row(f) for f in s.list_features(include_archived=all_)]
        else:
            from gristmill.errors import SpecError

            raise SpecError(f"list: unknown kind '{what}'; use featuresets, entities or features")
        _print_rows(rows, as_json)


def _feature_row(info: Any) -> dict[str, Any]:
    return {"feature": f"{info.feature_set}:{info.version}:{info.name}", "type": str(info.type),
            "description": info.description or "", "tags": ", ".join(f"{k}={v}" for k, v in info.tags.items())}


#: table columns holding ids that users copy into other commands (``jobs --cancel``, ``backfill --job-id``,
#: ``access revoke-token``): printed whole
_ID_COLUMNS = frozenset({"id", "job", "token_id"})


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    if not rows:
        console.print("(none)")
        return
    table = Table()
    for column in rows[0]:
        if column in _ID_COLUMNS:       # never folded or cut, however narrow the terminal
            width = max(len(column), *(len(str(row[column])) for row in rows))
            table.add_column(column, no_wrap=True, min_width=width)
        else:
            table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@app.command()
def show(ref: Annotated[str, typer.Argument(help="NAME[:VERSION] of a feature set (or entity with --entity).")],
         store: StoreOption = Path("."),
         entity: Annotated[bool, typer.Option("--entity", help="Show an entity.")] = False,
         show_secrets: Annotated[bool, typer.Option(
             "--show-secrets", help="Show webhook URLs and e-mail addresses in full (redacted by default).")] = False,
         ) -> None:
    """Show a feature set (or entity) as YAML, with its specification."""
    import yaml

    from gristmill.auth.redact import redact_settings

    with _user_errors():
        s = _open(store)
        name, version = _split_ref(ref)
        if entity:
            data = s.get_entity(name, version or "1").to_dict()
        else:
            feature_set = _feature_set_or_entity_hint(s, ref, name, version)
            used_by = [m.ref for m in s.models_using(feature_set.name, feature_set.version)]
            shown = feature_set.to_dict() if show_secrets else redact_settings(feature_set.to_dict())
            data = {**shown, "used_by_models": used_by, "spec": feature_set.spec.to_dict()}
        typer.echo(yaml.safe_dump(data, sort_keys=False, width=10_000, allow_unicode=True), nl=False)


def _feature_set_or_entity_hint(s: Any, ref: str, name: str, version: str | None) -> Any:
    """The feature set ``name[:version]``; when there is none but an entity of that name, an error that
    says how to show the entity."""
    from gristmill.errors import NotFoundError

    try:
        return s.get_feature_set(name, version)
    except NotFoundError:
        if (any(f.name == name for f in s.list_feature_sets(include_archived=True))
                or not any(e.name == name for e in s.list_entities(include_archived=True))):
            raise
        from gristmill.materialization import cli_command

        raise NotFoundError(f"no feature set {name}; {name} is an entity: use "
                            f"{cli_command('show', ref, '--entity', store=_store_argument(s))}") from None


@app.command()
def search(query: Annotated[str, typer.Argument(help="Words to find in feature names, descriptions, tags.")],
           store: StoreOption = Path("."),
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Search features by name, description and tags."""
    with _user_errors():
        _print_rows([_feature_row(f) for f in _open(store).search_features(query)], as_json)


@app.command()
def preview(ref: Annotated[str, typer.Argument(help="NAME:VERSION of a registered feature set.")],
            start: Annotated[str | None, typer.Option(
                help="Window start (inclusive), ISO time, UTC [default: END minus one day].")] = None,
            end: Annotated[str | None, typer.Option(
                help="Window end (exclusive), ISO time, UTC [default: now].")] = None,
            store: StoreOption = Path("."),
            limit: Annotated[int, typer.Option(help="Rows to print.")] = 20,
            output: Annotated[Path | None, typer.Option(help="Also write all rows to this Parquet file.")] = None
            ) -> None:
    """Compute a feature set over [START, END) and print the first rows (default: the last day)."""
    from datetime import timedelta

    from gristmill.compute.engine import to_utc_naive

    with _user_errors():
        s = _open(store)
        name, version = _split_ref(ref)
        window_end = to_utc_naive(end, name="--end") if end is not None else s.now().replace(microsecond=0)
        window_start = to_utc_naive(start, name="--start") if start is not None else window_end - timedelta(days=1)
        if window_start >= window_end:
            from gristmill.errors import SpecError

            raise SpecError(f"--start {window_start} is not before --end {window_end}; give an earlier --start")
        console.print(f"window [{window_start}, {window_end}) UTC", highlight=False)
        frame = _with_progress(f"computing {ref}",
                               lambda: s.preview(name, version, window_start, window_end).to_arrow())
        console.print(f"{frame.num_rows} rows, columns: {', '.join(frame.column_names)}")
        if frame.num_rows:
            console.print(frame.slice(0, limit).to_pandas().to_string(index=False), highlight=False)
        else:
            console.print("(no events in the window; pick another with --start and --end)")
        if output:
            import pyarrow.parquet as pq

            output.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(frame, output)
            console.print(f"wrote {output}")


@app.command()
def retrieve(observations: Annotated[Path, typer.Option(help="Observation rows: Parquet or CSV file.")],
             timestamp_column: Annotated[str, typer.Option(help="Observation time column.")],
             output: Annotated[Path, typer.Option(help="Parquet file to write.")],
             spec: Annotated[Path | None, typer.Option(help="feature_retrieval_spec.yaml or its folder.")] = None,
             features: Annotated[str | None, typer.Option(help="Comma-separated fs:version:feature list.")] = None,
             model: Annotated[str | None, typer.Option(help="NAME[:VERSION] of a registered model: its features.")
                              ] = None,
             store: StoreOption = Path("."),
             full_feature_names: Annotated[bool, typer.Option("--full-feature-names",
                                                              help="Prefix columns with fs__version__.")] = False,
             as_known_at: Annotated[bool, typer.Option("--as-known-at",
                                                       help="Only rows created by observation time.")] = False,
             aggregation_mode: Annotated[str, typer.Option(help="per_event | as_of_observation")] = "per_event",
             ) -> None:
    """The feature retrieval component: point-in-time training data to OUTPUT, plus a copy of the spec."""
    from gristmill.errors import RetrievalError
    from gristmill.spec.retrieval_spec import RETRIEVAL_SPEC_FILE_NAME, FeatureRetrievalSpec

    with _user_errors():
        if sum(x is not None for x in (spec, features, model)) != 1:
            raise RetrievalError("give exactly one of --spec FILE, --features a:1:x,b:1:y and --model NAME:VERSION")
        if not observations.exists():
            raise RetrievalError(f"--observations: {observations} not found")
        s = _open(store)
        if model is not None:
            model_name, model_version = _split_ref(model, what="--model")
            retrieval_spec = s.get_model(model_name, model_version).retrieval_spec
        else:
            retrieval_spec = (FeatureRetrievalSpec.load(spec) if spec is not None else
                              FeatureRetrievalSpec.from_features([f.strip() for f in (features or "").split(",")
                                                                  if f.strip()]))
        started = time.perf_counter()
        result = s.get_offline_features(retrieval_spec, str(observations), timestamp_column,
                                        full_feature_names=full_feature_names, as_known_at=as_known_at,
                                        aggregation_mode=aggregation_mode)
        con = result._con
        _with_progress("retrieving features", lambda: result.to_parquet(output), progress=con.query_progress)
        copy = retrieval_spec.dump(output.parent / RETRIEVAL_SPEC_FILE_NAME)
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(output).metadata.num_rows
        console.print(f"wrote {rows} rows to {output} in {time.perf_counter() - started:.1f} s; spec copied to {copy}")


def _require_version(ref: str) -> tuple[str, str]:
    from gristmill.errors import SpecError

    name, version = _split_ref(ref)
    if version is None:
        raise SpecError(f"'{ref}' needs a version: NAME:VERSION, e.g. {ref}:1")
    return name, version


def _job_failed(job: Any, *, retry: bool, store: Any) -> None:
    """One line on stderr for a job that did not complete, with the command that retries it (unless a
    retry would fail the same way: then its error says that a new version is needed)."""
    from gristmill.materialization import retry_command, retry_fails_the_same_way

    hint = ""
    if retry and not retry_fails_the_same_way(job):
        hint = f"  (retry: {retry_command(job, store=_store_argument(store))})"
    err_console.print(f"[red]job {job.id} {job.status.value.lower()}:[/red] {escape(job.error or '')}"
                      f"{hint}", highlight=False, soft_wrap=True)


def _job_row(job: Any, *, as_json: bool = False) -> dict[str, Any]:
    """A job as a table row; online keys written and skipped as expired are one column in a table, two
    numbers (null without an online store) in JSON."""
    online = job.online
    if as_json:
        keys = {"online_keys_written": online.keys_written if online else None,
                "online_keys_expired": online.keys_expired if online else None}
    else:
        keys = {"online_keys": "" if online is None else f"{online.keys_written:,} ({online.keys_expired:,} expired)"}
    return {"id": job.id, "feature_set": job.ref, "window": f"[{job.start:%Y-%m-%d %H:%M}, {job.end:%Y-%m-%d %H:%M})",
            "stores": "+".join(job.stores), "status": job.status.value, "rows_read": job.rows_read,
            "rows_written": job.rows_written, "bytes_written": job.bytes_written, **keys,
            "cpu_s": round(job.cpu_seconds or 0.0, 2), "error": job.error or ""}


def _expiry_notes(jobs: list[Any]) -> None:
    """One line per job that wrote no online key because every key had already expired, with the reason."""
    from gristmill.spec.duration import Duration

    for job in jobs:
        online = job.online
        if online is None or not online.all_expired:
            continue
        lookback = Duration.from_timedelta(online.expires_at - online.newest_event_time).words
        console.print(f"note: job {job.id} ({job.ref}) wrote none of its {online.keys_expired:,} key(s) online: all "
                      f"had already expired. Online values expire at event time + temporal_join_lookback "
                      f"({lookback}); the newest event in [{job.start:%Y-%m-%d %H:%M}, "
                      f"{job.end:%Y-%m-%d %H:%M}) was {online.newest_event_time:%Y-%m-%d %H:%M:%S}, so it expired "
                      f"at {online.expires_at:%Y-%m-%d %H:%M:%S} (UTC), before the job ran. Backfill a more recent "
                      "window, or use offline retrieval for history.", highlight=False, soft_wrap=True)


@app.command()
def backfill(ref: Annotated[str, typer.Argument(help="NAME:VERSION of a registered feature set.")],
             start: Annotated[str | None, typer.Option(help="Window start (inclusive), ISO time.")] = None,
             end: Annotated[str | None, typer.Option(help="Window end (exclusive), ISO time.")] = None,
             data_status: Annotated[list[str] | None, typer.Option(
                 help="Only intervals with this status (repeatable): None, Incomplete, Complete.")] = None,
             job_id: Annotated[str | None, typer.Option(help="Retry the window of this failed job.")] = None,
             only: Annotated[str | None, typer.Option(help="Only this store: offline or online.")] = None,
             allow_future: Annotated[bool, typer.Option(
                 "--allow-future", help="Allow a window that ends after now (it holds no data yet).")] = False,
             store: StoreOption = Path(".")) -> None:
    """Materialize a feature set: one job per matching data interval, run here, with a progress bar."""
    with _user_errors():
        s = _open(store)
        name, version = _require_version(ref)
        jobs: list[Any] = []
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, transient=True) as bar:
                task = bar.add_task(f"backfill {ref}", total=None)

                def on_job(job: Any, done: int, total: int) -> None:
                    bar.update(task, total=total, completed=done,
                               description=f"backfill {ref} [{job.start}, {job.end})")

                jobs = s.backfill(name, version, start=start, end=end, data_status=data_status, job_id=job_id,
                                  stores=[only] if only else None, on_job=on_job, allow_future=allow_future)
        else:
            jobs = s.backfill(name, version, start=start, end=end, data_status=data_status, job_id=job_id,
                              stores=[only] if only else None, allow_future=allow_future)
        _print_rows([_job_row(j) for j in jobs], False)
        failed = [j for j in jobs if j.status.value != "Completed"]
        console.print(f"{len(jobs) - len(failed)} of {len(jobs)} job(s) completed")
        written = [j.online for j in jobs if j.online is not None]
        if written:
            console.print(f"online: {sum(o.keys_written for o in written):,} key(s) written, "
                          f"{sum(o.keys_expired for o in written):,} skipped as already expired", highlight=False)
        _expiry_notes(jobs)
        if failed:
            for job in failed:
                _job_failed(job, retry=True, store=s)
            raise typer.Exit(1)


@app.command()
def jobs(job_id: Annotated[str | None, typer.Argument(help="Show one job.")] = None,
         feature_set: Annotated[str | None, typer.Option(help="NAME or NAME:VERSION.")] = None,
         status: Annotated[str | None, typer.Option(help="Queued, Running, Completed, Failed, Cancelled.")] = None,
         limit: Annotated[int, typer.Option(help="Most recent N jobs.")] = 50,
         cancel: Annotated[bool, typer.Option("--cancel", help="Cancel JOB_ID (queued or running).")] = False,
         reap: Annotated[bool, typer.Option("--reap", help="Fail the queued or running jobs whose worker is gone "
                                                           "(exited, or silent for --lease seconds).")] = False,
         lease: Annotated[float, typer.Option(
             help="With --reap: seconds without heartbeat after which a job's worker counts as gone.")] = 120.0,
         store: StoreOption = Path("."),
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List materialization jobs (newest first) or show one, with status and metrics."""
    with _user_errors():
        s = _open(store)
        if reap:
            _reap(s, lease=lease, as_json=as_json)
            return
        if cancel:
            from gristmill.errors import SpecError

            if not job_id:
                raise SpecError("--cancel needs the JOB_ID to cancel")
            _print_rows([_job_row(s.cancel_job(job_id), as_json=as_json)], as_json)
            return
        if job_id:
            listed = [s.get_job(job_id)]
        else:
            name, version = _split_ref(feature_set, what="--feature-set") if feature_set else (None, None)
            listed = s.list_jobs(feature_set=name, version=version, status=status, limit=limit)
        _print_rows([_job_row(j, as_json=as_json) for j in listed], as_json)
        if not as_json:
            _expiry_notes(listed)


def _reap(s: Any, *, lease: float, as_json: bool) -> None:
    """``gristmill jobs --reap``: fail the jobs of workers that are gone, and say how to retry them."""
    from datetime import timedelta

    from gristmill.errors import SpecError
    from gristmill.jobs.liveness import reap_stale_jobs

    if lease < 5:
        raise SpecError(f"--lease {lease:g}: must be at least 5 seconds (a shorter lease takes a worker that "
                        "waits on a busy registry for a dead one)")
    reaped = reap_stale_jobs(s, lease=timedelta(seconds=lease))
    _print_rows([_job_row(j, as_json=as_json) for j in reaped], as_json)
    if not as_json:
        console.print(f"{len(reaped)} job(s) of stopped workers failed", highlight=False)
        for job in reaped:
            _job_failed(job, retry=False, store=s)


def _stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a container stop) stops like Ctrl-C: a running job is cancelled, not left Running."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@app.command()
def scheduler(once: Annotated[bool, typer.Option("--once", help="Run what is due now, then exit.")] = False,
              poll: Annotated[float, typer.Option(help="Seconds between passes.")] = 30.0,
              worker: Annotated[str | None, typer.Option(help="This worker's name (default host:pid:random).")] = None,
              lease: Annotated[float, typer.Option(
                  help="Seconds without heartbeat after which another worker's job counts as dead.")] = 120.0,
              store: StoreOption = Path(".")) -> None:
    """Run feature sets' recurrent materialization schedules (any number of workers may share a registry)."""
    with _user_errors():
        from datetime import timedelta

        from gristmill.errors import SpecError
        from gristmill.scheduler import Scheduler

        if lease < 5:
            raise SpecError(f"--lease {lease:g}: must be at least 5 seconds (a shorter lease makes a worker that "
                            "waits on a busy registry look dead)")
        if poll <= 0:
            raise SpecError(f"--poll {poll:g}: must be more than 0 seconds")
        s = _open(store)
        _stop_on_sigterm()
        runner = Scheduler(s, worker=worker, lease=timedelta(seconds=lease),
                           heartbeat=timedelta(seconds=min(10.0, lease / 4)))
        err_console.print(f"scheduler worker {runner.worker} on {s.path}"
                          + ("" if once else f", every {poll:g} s (Ctrl-C stops)"), highlight=False)
        try:
            while True:
                tick = runner.tick()
                for job in tick.reaped:
                    _job_failed(job, retry=False, store=s)
                finished = tick.ran
                if finished:
                    _print_rows([_job_row(j) for j in finished], False)
                for job in finished:
                    if job.status.value != "Completed":
                        _job_failed(job, retry=True, store=s)
                if once:
                    if not finished:
                        console.print("nothing due")
                    return
                time.sleep(poll)
        except KeyboardInterrupt:
            from gristmill.materialization import retry_command

            job = runner.interrupted_job
            if job is None:
                err_console.print("scheduler stopped (interrupted); no job was running", highlight=False)
            else:
                err_console.print(f"scheduler stopped (interrupted); job {job.id} of {job.ref} was running: it is "
                                  f"{job.status.value}, its window [{job.start}, {job.end}) Incomplete (retry: "
                                  f"{retry_command(job, store=_store_argument(s))})", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None


@app.command()
def status(ref: Annotated[str | None, typer.Argument(
               help="NAME:VERSION of a registered feature set [default: every feature set's freshness].")] = None,
           store: StoreOption = Path("."),
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Freshness per store (fresh, stale, never materialized, not scheduled, disabled); with NAME:VERSION also
    its data interval timeline and schedule (``--json`` then prints the timeline rows)."""
    with _user_errors():
        s = _open(store)
        if ref is None:
            rows = [row for fs in s.list_feature_sets() for row in _freshness_rows(s.freshness(fs.name, fs.version))]
            _print_rows(rows, as_json)
            return
        name, version = _require_version(ref)
        rows = [{"store": kind, "start": str(i.start), "end": str(i.end), "status": i.status.value}
                for kind, intervals in s.data_intervals(name, version).items() for i in intervals]
        _print_rows(rows, as_json)
        if as_json:
            return
        _print_rows(_freshness_rows(s.freshness(name, version)), False)
        settings = s.get_feature_set(name, version).materialization_settings
        if settings is not None and settings.schedule is not None:
            from gristmill.jobs.schedule import next_run
            from gristmill.registry.schedules import ScheduleRecords

            plan = settings.schedule
            last = ScheduleRecords(s.materializer.records).last_run(name, version)
            console.print(f"schedule: every {plan.interval} {plan.frequency.value}(s) from "
                          f"{plan.start_time or 'the default alignment'} ({plan.time_zone}); last run "
                          f"{last or 'never'} (UTC); next run {next_run(plan, after=s.now())} (UTC)", highlight=False)


def _freshness_rows(found: Any) -> list[dict[str, Any]]:
    def when(value: Any) -> str:
        return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else ""

    return [{"feature_set": found.ref, "store": f.store, "state": f.state, "newest_event": when(f.newest_event_time),
             "stale_after": when(f.stale_after), "last_job": f.last_job_id or "",
             "finished": when(f.last_job_finished_at), "next_run": when(f.next_run)} for f in found.stores]


@app.command()
def stats(ref: Annotated[str, typer.Argument(help="NAME:VERSION of a registered feature set.")],
          start: Annotated[str | None, typer.Option(
              help="Window start (inclusive), ISO time, UTC: materialized windows from it on, or the window to "
                   "compute from the source.")] = None,
          end: Annotated[str | None, typer.Option(help="Window end (exclusive), ISO time, UTC.")] = None,
          sample_rows: Annotated[int | None, typer.Option(
              "--sample-rows", help="Compute from the source over [START, END), from at most this many rows "
                                    "[default when nothing is materialized: 100000].")] = None,
          online: Annotated[bool, typer.Option("--online", help="The online store's statistics (newest row per "
                                                                "key) instead of the offline store's.")] = False,
          store: StoreOption = Path("."),
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON: every window and the summary.")] = False
          ) -> None:
    """Feature statistics: per feature count, nulls, min, max, mean, stddev, distinct values, and the most
    frequent values or a histogram; merged over the materialized windows, or computed from the source."""
    with _user_errors():
        s = _open(store)
        name, version = _require_version(ref)
        found = _with_progress(f"statistics of {ref}", lambda: s.feature_statistics(
            name, version, store="online" if online else "offline", start=start, end=end, sample_rows=sample_rows))
        if as_json:
            console.print_json(json.dumps(found.to_dict(), default=str))
            return
        summary = found.summary
        window = found.windows[0]
        if window.sampled:
            what = (f"computed from the source over [{window.start}, {window.end}): {window.rows:,} rows "
                    f"(sampled: at most {window.sample_rows:,}, --sample-rows)")
        else:
            what = (f"{found.store} store: {len(found.windows)} materialized window(s) [{summary.start}, "
                    f"{summary.end}), {summary.rows:,} rows, newest event {summary.newest_event_time}; last job "
                    f"{found.windows[-1].job_id}")
        console.print(f"{found.ref}: {what}", highlight=False, soft_wrap=True)
        single = len(found.windows) == 1
        _print_rows([_statistics_row(f, single=single) for f in (window if single else summary).features], False)
        if single:
            for f in window.features:
                if f.top_values or f.histogram:
                    console.print(f"{f.name}: {_distribution(f)}", highlight=False, soft_wrap=True)
        else:
            console.print("distinct values, histograms and most frequent values do not merge: they are per window "
                          "(--json)", highlight=False)


def _statistics_row(f: Any, *, single: bool) -> dict[str, Any]:
    def number(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    row = {"feature": f.name, "type": f.type.value, "count": f.count, "nulls": f.nulls,
           "null_%": f"{f.null_percent:.1f}", "min": number(f.min), "max": number(f.max), "mean": number(f.mean),
           "stddev": number(f.stddev)}
    if single:
        row["distinct~"] = number(f.distinct)
    return row


def _distribution(f: Any) -> str:
    if f.top_values:
        return "most frequent " + ", ".join(f"{t.value}: {t.count:,}" for t in f.top_values)
    return "histogram " + " ".join(f"[{b.low:.4g}, {b.high:.4g}): {b.count:,}" for b in f.histogram)


@app.command()
def cost(by: Annotated[str, typer.Option(help="job | feature_set | store")] = "feature_set",
         feature_set: Annotated[str | None, typer.Option(help="Only this feature set (NAME).")] = None,
         store: StoreOption = Path("."),
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Compute seconds, rows and bytes per job, feature set or store."""
    from gristmill.errors import SpecError

    with _user_errors():
        if by not in ("job", "feature_set", "store"):
            raise SpecError(f"--by: '{by}' is not one of job, feature_set, store")
        rows = []
        for row in _open(store).cost(by=by, feature_set=feature_set):
            label = {"job": row.job_id, "feature_set": f"{row.feature_set}:{row.version}", "store": row.store}[by]
            rows.append({by: label, "jobs": row.jobs, "cpu_seconds": round(row.cpu_seconds, 3),
                         "rows_read": row.rows_read, "rows_written": row.rows_written,
                         "bytes_written": row.bytes_written})
        _print_rows(rows, as_json)


online_app = typer.Typer(help="Online store lookups.", no_args_is_help=True)
app.add_typer(online_app, name="online")


@online_app.command("get")
def online_get(features: Annotated[str, typer.Option(help="Comma-separated fs:version:feature list.")],
               key: Annotated[list[str], typer.Option(help="Index column value: name=value (repeatable); "
                                                           "several values: name=v1,v2")],
               as_of: Annotated[str | None, typer.Option(
                   help="Answer as of this ISO time (UTC) instead of now: values expired by then read as null; "
                        "a value newer than it is an error (the online store keeps only the newest).")] = None,
               store: StoreOption = Path("."),
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Look up the latest feature values of one or more entity keys (a note on stderr says why a key has
    no value: expired when, never materialized, or not in the store)."""
    from gristmill.errors import RetrievalError

    with _user_errors():
        columns: dict[str, list[str]] = {}
        for item in key:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise RetrievalError(f"--key '{item}' must look like name=value")
            columns[name] = value.split(",")
        from gristmill.compute.engine import to_utc_naive

        at = to_utc_naive(as_of, name="--as-of") if as_of is not None else None
        opened = _open(store)
        wanted = [f.strip() for f in features.split(",") if f.strip()]
        result = opened.get_online_features(wanted, _typed_keys(opened, wanted, columns), now=at, explain=True)
        _print_rows(result.to_rows(), as_json)
        for note in result.notes:
            err_console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)


def _typed_keys(store: Any, features: list[str], columns: dict[str, list[str]]) -> dict[str, list[Any]]:
    """``--key`` values are text; those of integer index columns (of the feature sets asked for) are written
    as whole numbers, so they become integers here. Anything else stays text and the lookup names it."""
    import re

    from gristmill.spec.refs import FeatureRef
    from gristmill.spec.types import FeatureType

    integer_columns: set[str] = set()
    for text in features:
        ref = FeatureRef.parse(text)
        owner = store if ref.store in (None, store.name) else store.peer(ref.store)
        spec = owner.get_feature_set(ref.feature_set, ref.version).spec
        integer_columns.update(c.name for c in spec.index_columns if c.type in (FeatureType.INTEGER, FeatureType.LONG))
    return {name: [int(v) if name in integer_columns and re.fullmatch(r"\s*[+-]?\d+\s*", v) else v for v in values]
            for name, values in columns.items()}


@app.command()
def demo(path: Annotated[Path, typer.Argument(help="Folder for the demo store and data.")] = Path("gristmill-demo"),
         rows: Annotated[int, typer.Option(help="Number of sample transactions.")] = 300_000) -> None:
    """Build an example store from generated data and write a point-in-time training set."""
    from gristmill.demo import run_demo

    with _user_errors():
        run_demo(path, rows=rows, echo=lambda text: console.print(text, highlight=False, soft_wrap=True, markup=False))




# -- models -------------------------------------------------------------------------------------------
model_app = typer.Typer(help="Registered models and the features they use (lineage).", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("register")
def model_register(ref: Annotated[str, typer.Argument(help="NAME:VERSION of the model.")],
                   spec: Annotated[Path, typer.Option(help="Its feature_retrieval_spec.yaml (or the folder).")],
                   description: Annotated[str | None, typer.Option(help="What the model is.")] = None,
                   store: StoreOption = Path(".")) -> None:
    """Register a model version with the features it uses; every feature must be registered."""
    with _user_errors():
        name, version = _require_version(ref)
        result = _open(store).register_model(name, version, spec, description=description)
        console.print(f"{result} model {name}:{version}")


@model_app.command("list")
def model_list(store: StoreOption = Path("."),
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Registered models with the feature sets they use."""
    with _user_errors():
        rows = [{"model": m.ref, "feature_sets": ", ".join(m.feature_sets), "features": len(m.features),
                 "description": m.description or ""} for m in _open(store).list_models()]
        _print_rows(rows, as_json)


@model_app.command("show")
def model_show(ref: Annotated[str, typer.Argument(help="NAME[:VERSION] of a registered model.")],
               store: StoreOption = Path(".")) -> None:
    """A model and its retrieval spec, as YAML."""
    import yaml

    with _user_errors():
        name, version = _split_ref(ref)
        typer.echo(yaml.safe_dump(_open(store).get_model(name, version).to_dict(), sort_keys=False, width=10_000),
                   nl=False)


# -- the REST server and access control ---------------------------------------------------------------
@app.command()
def serve(host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
          no_auth: Annotated[bool, typer.Option("--no-auth", help="No tokens, everyone may do everything "
                                                                  "(local development only).")] = False,
          workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes sharing the port (each with "
                                                                   "its own backfill workers).")] = 1,
          store: StoreOption = Path(".")) -> None:
    """Run the REST server: online lookups, catalog, search and jobs, with tokens and roles (see /docs)."""
    with _user_errors():
        try:
            import uvicorn

            from gristmill.server.app import SERVE_AUTH, SERVE_STORE, served_app
        except ImportError:
            from gristmill.errors import ConfigError, install_hint

            raise ConfigError(f"gristmill serve needs the server extra: {install_hint('server')}") from None
        s = _open(store)
        if no_auth:
            err_console.print("[yellow]warning:[/yellow] --no-auth: every caller may do everything", highlight=False)
        shown = f" ({workers} processes)" if workers > 1 else ""
        err_console.print(f"serving {s.name} ({s.path}) on http://{host}:{port}{shown} (API docs: /docs)",
                          highlight=False)
        options: dict[str, Any] = {"host": host, "port": port, "log_level": "warning", "access_log": False}
        if workers == 1:
            uvicorn.run(served_app(s, auth=not no_auth), **options)
            return
        s.close()
        os.environ[SERVE_STORE], os.environ[SERVE_AUTH] = str(s.path), "0" if no_auth else "1"
        uvicorn.run("gristmill.server.app:app_from_environment", factory=True, workers=workers, **options)


@app.command()
def ui(host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
       port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
       no_auth: Annotated[bool, typer.Option("--no-auth", help="No sign-in (local development only).")] = False,
       store: StoreOption = Path(".")) -> None:
    """The web UI (catalog, feature set pages, jobs) at http://HOST:PORT/ui: the REST server, with pages."""
    err_console.print(f"web UI: http://{host}:{port}/ui (sign in with a token from `gristmill access token NAME`)",
                      highlight=False)
    serve(host=host, port=port, no_auth=no_auth, store=store)


access_app = typer.Typer(help="Principals, tokens, role grants and the audit log (run on the store's machine).",
                         no_args_is_help=True)
app.add_typer(access_app, name="access")


def _access(store: Path) -> Any:
    from gristmill.auth import AccessRecords

    return AccessRecords(_open(store).materializer.records)


def _local_actor() -> str:
    import getpass

    try:
        return f"local:{getpass.getuser()}"
    except Exception:
        return "local"


@access_app.command("add")
def access_add(name: Annotated[str, typer.Argument(help="Principal name.")],
               kind: Annotated[str, typer.Option(help="user or service.")] = "user",
               store: StoreOption = Path(".")) -> None:
    """Add a principal (a user or a service principal)."""
    with _user_errors():
        principal = _access(store).add_principal(name, kind=kind, by=_local_actor())
        console.print(f"{principal.kind} {principal.name} added")


@access_app.command("remove")
def access_remove(name: Annotated[str, typer.Argument(help="Principal name.")],
                  store: StoreOption = Path(".")) -> None:
    """Remove a principal with its tokens and grants (audited; its audit log entries stay)."""
    with _user_errors():
        removed_tokens, removed_grants = _access(store).remove_principal(name, by=_local_actor())
        console.print(f"{name} removed, with {removed_tokens} token(s) and {removed_grants} grant(s)")


@access_app.command("tokens")
def access_tokens(name: Annotated[str | None, typer.Argument(help="Only this principal's tokens.")] = None,
                  all_: Annotated[bool, typer.Option("--all", help="Also revoked and expired tokens, and web UI "
                                                                   "sessions.")] = False,
                  store: StoreOption = Path("."),
                  as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Tokens (id, principal, created, expiry, last use, status); never their secrets."""
    from datetime import UTC, datetime

    def when(value: datetime | None) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value is not None else ""

    with _user_errors():
        now = datetime.now(UTC)
        rows = [{"token_id": t.id, "principal": t.principal, "created": when(t.created_at),
                 "expires": when(t.expires_at) or "never", "last_used": when(t.last_used_at) or "never",
                 "status": t.status(now) if t.session_of is None else f"{t.status(now)} session of {t.session_of}"}
                for t in _access(store).list_tokens(name)
                if all_ or (t.session_of is None and t.status(now) == "active")]
        _print_rows(rows, as_json)
        if not as_json:
            console.print("times are UTC; revoke one with `gristmill access revoke-token TOKEN_ID`",
                          highlight=False, style="dim")


@access_app.command("token")
def access_token(name: Annotated[str, typer.Argument(help="Principal name.")],
                 expires_days: Annotated[float | None, typer.Option(help="Days until it expires.")] = None,
                 store: StoreOption = Path(".")) -> None:
    """Create a token for a principal; it is printed once (only its hash is kept)."""
    from datetime import timedelta

    with _user_errors():
        token = _access(store).create_token(name, expires_in=timedelta(days=expires_days) if expires_days else None,
                                            by=_local_actor())
        print(token)


@access_app.command("revoke-token")
def access_revoke_token(token_id: Annotated[str, typer.Argument(help="The id part of gm_<id>_<secret>.")],
                        store: StoreOption = Path(".")) -> None:
    """Revoke a token."""
    with _user_errors():
        _access(store).revoke_token(token_id, by=_local_actor())
        console.print(f"token {token_id} revoked")


@access_app.command("grant")
def access_grant(name: Annotated[str, typer.Argument(help="Principal name.")],
                 role: Annotated[str, typer.Argument(help="Owner, Contributor (Developer), Materializer, "
                                                          "Reader (Consumer).")],
                 scope: Annotated[str, typer.Option(help="store, featureset:NAME[:VERSION] or entity:NAME.")] = "store",
                 store: StoreOption = Path(".")) -> None:
    """Grant a role at a scope."""
    with _user_errors():
        grant = _access(store).grant(name, role, scope, by=_local_actor())
        console.print(f"{grant.principal}: {grant.role.value} on {grant.scope}")


@access_app.command("revoke")
def access_revoke(name: Annotated[str, typer.Argument(help="Principal name.")],
                  role: Annotated[str, typer.Argument(help="The granted role.")],
                  scope: Annotated[str, typer.Option(help="The grant's scope.")] = "store",
                  store: StoreOption = Path(".")) -> None:
    """Take back a role grant."""
    with _user_errors():
        _access(store).revoke(name, role, scope, by=_local_actor())
        console.print(f"{name}: {role} on {scope} revoked")


@access_app.command("list")
def access_list(store: StoreOption = Path("."),
                as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Principals and their grants."""
    with _user_errors():
        records = _access(store)
        grants = records.grants()
        rows = [{"principal": p.name, "kind": p.kind,
                 "grants": ", ".join(f"{g.role.value} on {g.scope}" for g in grants if g.principal == p.name)}
                for p in records.list_principals()]
        _print_rows(rows, as_json)


@access_app.command("audit")
def access_audit(limit: Annotated[int, typer.Option(help="Most recent N entries.")] = 50,
                 denied: Annotated[bool, typer.Option("--denied", help="Only refused actions.")] = False,
                 store: StoreOption = Path("."),
                 as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The audit log: refused actions, access changes, materializations started through the server."""
    with _user_errors():
        rows = [{"at": f"{e.at:%Y-%m-%d %H:%M:%S}", "principal": e.principal, "action": e.action,
                 "resource": e.resource, "allowed": e.allowed, "count": e.count, "detail": e.detail or ""}
                for e in _access(store).audit_entries(limit=limit, denied_only=denied)]
        _print_rows(rows, as_json)


if __name__ == "__main__":  # pragma: no cover
    main()
