"""Running a spec's ``transformation_sql`` without file, network, extension or settings access (SPEC §2).

Two walls, so that one bug does not open the other:

1. ``check_transformation_sql`` reads the SQL with SQLGlot and refuses anything but exactly one SELECT
   over the table ``source`` (and the statement's own ``WITH`` names): no second statement, no
   ``COPY``/``ATTACH``/``PRAGMA``/``SET``/``INSTALL``/``LOAD``, no table functions that read files or
   URLs (``read_csv``, ``glob``, ``sqlite_scan``...). Spec validation runs it, so ``plan``/``apply`` refuse
   such a spec naming the file.
2. ``run_transformation_sql`` runs the SQL in a separate in-memory DuckDB database opened with
   ``enable_external_access = false``, extension auto-install and auto-load off and its configuration
   locked; the source rows are handed to it as Arrow and the output comes back the same way. Sources are
   read by Gristmill's own readers on the main connection, so only the user's SQL is locked in.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from gristmill.compute.sqltext import engine_message, lit, q
from gristmill.errors import TransformationError

if TYPE_CHECKING:
    import duckdb
    from sqlglot import exp

SOURCE_TABLE = "source"
BATCH_ROWS = 100_000

#: table functions a transformation may use in FROM: they compute rows, they read nothing
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "generateseries"})

#: functions refused wherever they appear: they read files, URLs, other databases, or run SQL given as text
#: (which the check could not see)
NOT_ALLOWED_FUNCTIONS = frozenset({
    "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto",
    "read_ndjson", "read_ndjson_auto", "read_json_objects", "read_text", "read_blob", "glob", "sniff_csv",
    "parquet_metadata", "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata", "sqlite_scan",
    "sqlite_attach", "postgres_scan", "postgres_attach", "postgres_query", "mysql_scan", "mysql_query",
    "delta_scan", "iceberg_scan", "iceberg_metadata", "iceberg_snapshots", "read_xlsx", "st_read",
    "query", "query_table", "getenv", "load_extension", "duckdb_extensions", "duckdb_settings",
    "current_setting",
})

#: DuckDB settings the sandboxed database is opened with
SANDBOX_CONFIG: dict[str, str | bool | int] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "arrow_lossless_conversion": True,     # HUGEINT, UUID... come back as the same types
}


class _NoCommandFallbackNotice(logging.Filter):
    """SQLGlot warns when it reads a statement it does not know (``LOAD x``) as a raw command; the check
    refuses that statement with its own message, so the warning would only repeat it on stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_NoCommandFallbackNotice())

RULES = ("a transformation is exactly one SELECT over the table 'source' (and its own WITH names), "
         "without files, URLs, extensions or settings")


def check_transformation_sql(sql: str) -> None:
    """Refuse SQL that is not exactly one SELECT over ``source``, naming what is not allowed.

    SQL SQLGlot cannot parse passes here (the engine reports it when computing; the sandbox still holds).
    ``SELECT * FROM read_csv('/etc/passwd')`` raises ``ValueError("read_csv is not
    allowed: a transformation is exactly one SELECT over the table 'source' ...")``."""
    import sqlglot
    from sqlglot import exp

    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.SqlglotError:
        return
    if len(statements) != 1:
        kinds = ", ".join(_statement_kind(s) for s in statements) or "none"
        raise ValueError(f"{len(statements)} statements ({kinds}) given; {RULES}")
    tree = statements[0]
    if not isinstance(tree, exp.Select | exp.SetOperation):
        raise ValueError(f"{_statement_kind(tree)} is not allowed: {RULES}")
    problem = _first_problem(tree)
    if problem is not None:
        raise ValueError(f"{problem} is not allowed: {RULES}")


def _statement_kind(node: exp.Expression) -> str:
    from sqlglot import exp

    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return node.key.upper()


def _function_name(node: exp.Expression) -> str:
    from sqlglot import exp

    if isinstance(node, exp.Anonymous):
        return node.name.lower()             # unquoted: "read_csv"(...) is read_csv(...)
    return node.sql(dialect="duckdb").split("(", 1)[0].strip().lower()


def _first_problem(tree: exp.Expression) -> str | None:
    """What in ``tree`` a transformation may not do (None: nothing)."""
    from sqlglot import exp

    own_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for node in tree.walk():
        if isinstance(node, exp.Func) and _function_name(node) in NOT_ALLOWED_FUNCTIONS:
            return _function_name(node)
        if isinstance(node, exp.Command | exp.Copy | exp.Attach | exp.Pragma | exp.Set | exp.Create |
                      exp.Insert | exp.Update | exp.Delete | exp.Drop):
            return _statement_kind(node)
        if not isinstance(node, exp.Table):
            continue
        target = node.this
        if isinstance(target, exp.Func):
            name = _function_name(target)
            if name not in ALLOWED_TABLE_FUNCTIONS:
                return name
            continue
        if not isinstance(target, exp.Identifier):
            return f"reading from {target.sql(dialect='duckdb')}"
        if node.args.get("db") or node.args.get("catalog"):
            return f"the table {node.sql(dialect='duckdb').split(' ')[0]}"
        if node.name.lower() != SOURCE_TABLE and node.name.lower() not in own_names:
            return f"the table '{node.name}'"
    return None


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
