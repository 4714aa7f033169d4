"""Running a spec's ``transformation_sql`` without file, network, extension or settings access (SPEC §2).

Two walls, so that one bug does not open the other:

1. ``check_transformation_sql`` (``gristmill.compute.transformation_rules``, the same for every engine)
   reads the SQL with SQLGlot and refuses anything but exactly one SELECT over the table ``source`` (and
   the statement's own ``WITH`` names): no second statement, no ``COPY``/``ATTACH``/``PRAGMA``/``SET``/
   ``INSTALL``/``LOAD``, no table functions that read files or URLs (``read_csv``, ``glob``,
   ``sqlite_scan``...). Spec validation runs it, so ``plan``/``apply`` refuse such a spec naming the file.
2. ``run_transformation_sql`` runs the SQL in a separate in-memory DuckDB database opened with
   ``enable_external_access = false``, extension auto-install and auto-load off and its configuration
   locked; the source rows are handed to it as Arrow and the output comes back the same way. Sources are
   read by Gristmill's own readers on the main connection, so only the user's SQL is locked in.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from gristmill.compute.duckdb.sqltext import lit, q
from gristmill.compute.messages import engine_message
from gristmill.compute.transformation_rules import SOURCE_TABLE, check_transformation_sql
from gristmill.errors import TransformationError

if TYPE_CHECKING:
    import duckdb

BATCH_ROWS = 100_000

#: DuckDB settings the sandboxed database is opened with
SANDBOX_CONFIG: dict[str, str | bool | int] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "arrow_lossless_conversion": True,     # HUGEINT, UUID... come back as the same types
}


def run_transformation_sql(con: duckdb.DuckDBPyConnection, source: str, sql: str, target: str, *,
                           label: str) -> None:
    """Run ``sql`` over the rows of the view ``source`` in a locked-down database; store the output as the
    temp table ``target`` of ``con``."""
    import duckdb

    try:
        check_transformation_sql(sql)
    except ValueError as exc:
        raise TransformationError(f"{label}: transformation_sql: {exc}") from None
    sandbox = open_sandbox(con)
    _open_sandboxes.setdefault(id(con), []).append(sandbox)
    try:
        incoming = con.sql(f"SELECT * FROM {source}").to_arrow_reader(BATCH_ROWS)
        sandbox.register("__gm_source_rows", incoming)
        sandbox.execute(f"CREATE TABLE {q(SOURCE_TABLE)} AS SELECT * FROM __gm_source_rows")
        sandbox.unregister("__gm_source_rows")
        try:
            outgoing = sandbox.sql(sql).to_arrow_reader(BATCH_ROWS)
            con.register(f"{target}_rows", outgoing)
            con.execute(f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT * FROM {target}_rows")
        except duckdb.Error as exc:
            raise TransformationError(f"{label}: transformation_sql failed: {engine_message(exc)}") from None
        finally:
            with contextlib.suppress(duckdb.Error):
                con.unregister(f"{target}_rows")
    finally:
        running = _open_sandboxes.get(id(con), [])
        if sandbox in running:
            running.remove(sandbox)
        if not running:
            _open_sandboxes.pop(id(con), None)
        sandbox.close()


#: the sandboxes running a transformation, by the id of the connection they run for (see ``interrupt``)
_open_sandboxes: dict[int, list[duckdb.DuckDBPyConnection]] = {}


def interrupt(con: duckdb.DuckDBPyConnection) -> None:
    """Stop what ``con`` and the sandboxes running transformations for it are computing (a check that took
    too long): their queries fail with an interruption error."""
    for sandbox in list(_open_sandboxes.get(id(con), [])):
        with contextlib.suppress(Exception):
            sandbox.interrupt()
    with contextlib.suppress(Exception):
        con.interrupt()


def open_sandbox(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory database that can read no file, URL or extension, with ``con``'s limits, UTC session
    time and a locked configuration (``SET`` is refused inside it)."""
    import duckdb

    sandbox = duckdb.connect(":memory:", config={**SANDBOX_CONFIG, **_inherited_settings(con)})
    sandbox.execute("SET TimeZone = 'UTC'")
    sandbox.execute("SET lock_configuration = true")
    return sandbox


def _inherited_settings(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The main connection's memory limit, threads and spill folder, so the sandbox is bounded alike."""
    names = ("memory_limit", "threads", "temp_directory")
    values = con.execute("SELECT " + ", ".join(f"current_setting({lit(n)})" for n in names)).fetchall()[0]
    return {name: str(value) for name, value in zip(names, values, strict=True) if value not in (None, "")}
