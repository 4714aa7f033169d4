"""The first wall around a spec's ``transformation_sql`` (SPEC §2), the same for every engine: the SQL, in
DuckDB's dialect, must be exactly one SELECT over the table ``source`` (and the statement's own ``WITH``
names). Spec validation runs the check, so ``plan``/``apply`` refuse such a spec naming the file; each
engine then runs the SQL locked in its own way (DuckDB: a sandboxed database)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlglot import exp

SOURCE_TABLE = "source"

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
