"""transformation_sql is exactly one SELECT over ``source``: no files, URLs, extensions or settings — refused
when the spec is read (naming the file and what is not allowed), and locked in when it runs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml
from cli_support import gristmill

from gristmill.compute.duckdb.engine import DuckDBEngine
from gristmill.compute.duckdb.sandbox import open_sandbox
from gristmill.errors import SourceError, SpecError
from gristmill.spec import FeatureSetSpec

TIMES = ["2024-01-01", "2024-01-02", "2024-01-01 12:00"]
ROWS = pd.DataFrame({"acct": ["A", "A", "B"], "f1": [1.0, 2.0, 10.0],
                     "ts": pd.to_datetime(TIMES, format="ISO8601").astype("datetime64[us]")})

# (transformation_sql, what the error names)
ABUSES = [
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv is not allowed"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "read_csv_auto is not allowed"),
    ("SELECT * FROM read_parquet('/etc/x.parquet')", "read_parquet is not allowed"),
    ("SELECT * FROM read_text('/etc/passwd')", "read_text is not allowed"),
    ("SELECT * FROM read_blob('/etc/passwd')", "read_blob is not allowed"),
    ("SELECT * FROM read_json_auto('/etc/x.json')", "read_json_auto is not allowed"),
    ("SELECT * FROM glob('/etc/*')", "glob is not allowed"),
    ("SELECT * FROM sqlite_scan('/tmp/x.db', 't')", "sqlite_scan is not allowed"),
    ("SELECT * FROM '/etc/passwd'", "the table '/etc/passwd' is not allowed"),
    ("SELECT * FROM 'https://example.com/x.parquet'", "the table 'https://example.com/x.parquet' is not allowed"),
    ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "read_parquet is not allowed"),
    ("SELECT * FROM other_table", "the table 'other_table' is not allowed"),
    ("SELECT * FROM main.source", "the table main.source is not allowed"),
    ("SELECT acct, ts, f1 FROM source WHERE acct IN (SELECT * FROM read_text('/etc/passwd'))",
     "read_text is not allowed"),
    ("SELECT acct, ts, f1, query('SELECT 1') AS q FROM source", "query is not allowed"),
    ("SELECT * FROM query_table('source')", "query_table is not allowed"),
    ("SELECT acct, ts, f1 FROM source; COPY (SELECT 1) TO '/tmp/gm-sandbox-x'", "2 statements (SELECT, COPY) given"),
    ("COPY (SELECT 1) TO '/tmp/gm-sandbox-x'", "COPY is not allowed"),
    ("ATTACH '/tmp/gm-sandbox.db'", "ATTACH is not allowed"),
    ("PRAGMA version", "PRAGMA is not allowed"),
    ("SET enable_external_access = true", "SET is not allowed"),
    ("INSTALL httpfs", "INSTALL is not allowed"),
    ("LOAD httpfs", "LOAD is not allowed"),
    ("DESCRIBE source", "DESCRIBE is not allowed"),
    ("CREATE TABLE t AS SELECT * FROM source", "CREATE is not allowed"),
    ('SELECT * FROM "read_csv"(\'/etc/passwd\')', "read_csv is not allowed"),          # a quoted name is the name
    ('SELECT * FROM "READ_TEXT"(\'/etc/passwd\')', "read_text is not allowed"),
]

ALLOWED = [
    "SELECT acct, ts, f1 * 2 AS f1 FROM source",
    "FROM source SELECT acct, ts, f1",
    "WITH doubled AS (SELECT acct, ts, f1 * 2 AS f1 FROM source) SELECT * FROM doubled",
    "SELECT acct, ts, f1 FROM source WHERE acct = 'A' UNION ALL SELECT acct, ts, f1 FROM source WHERE acct = 'B'",
    "SELECT s.acct, s.ts, sum(t.f1) AS f1 FROM source s JOIN source t ON s.acct = t.acct AND t.ts <= s.ts "
    "GROUP BY ALL",
    "SELECT acct, ts, sum(f1) OVER (PARTITION BY acct ORDER BY ts RANGE BETWEEN INTERVAL 1 DAY PRECEDING "
    "AND CURRENT ROW) AS f1 FROM source",
    "SELECT acct, ts, f1 + (SELECT count(*) FROM range(3)) - 3 AS f1 FROM source;",
]


def _write_spec(folder: Path, sql: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ROWS.to_parquet(folder / "rows.parquet")
    spec = {"source": {"type": "parquet", "path": "rows.parquet", "timestamp_column": {"name": "ts"}},
            "index_columns": [{"name": "acct", "type": "string"}],
            "features": [{"name": "f1", "type": "double"}],
            "feature_transformation": {"transformation_sql": sql}}
    (folder / "FeatureSetSpec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


@pytest.mark.parametrize(("sql", "named"), ABUSES, ids=[a[0][:40] for a in ABUSES])
def test_abusive_sql_is_refused_naming_the_file_and_what(tmp_path: Path, sql: str, named: str) -> None:
    folder = _write_spec(tmp_path / "spec", sql)
    with pytest.raises(SpecError) as caught:
        FeatureSetSpec.load(folder)
    message = str(caught.value)
    assert "FeatureSetSpec.yaml" in message
    assert "transformation_sql" in message and named in message, message
    assert "exactly one SELECT over the table 'source'" in message
    assert not Path("/tmp/gm-sandbox-x").exists()


@pytest.mark.parametrize("sql", ALLOWED)
def test_plain_selects_still_compute(tmp_path: Path, sql: str) -> None:
    spec = FeatureSetSpec.load(_write_spec(tmp_path / "spec", sql))
    frame = spec.compute("2024-01-01", "2024-01-03").to_pandas()
    assert sorted(frame["acct"]) == ["A", "A", "B"]


def test_transformation_output_keeps_engine_types(tmp_path: Path) -> None:
    """Rows cross into and out of the sandbox as Arrow: a 128-bit sum stays an integer the long feature takes."""
    sql = "SELECT acct, ts, sum(1) OVER (PARTITION BY acct ORDER BY ts) AS n, f1 FROM source"
    folder = _write_spec(tmp_path / "spec", sql)
    spec_file = folder / "FeatureSetSpec.yaml"
    data = yaml.safe_load(spec_file.read_text())
    data["features"] = [{"name": "n", "type": "long"}, {"name": "f1", "type": "double"}]
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    frame = FeatureSetSpec.load(folder).compute("2024-01-01", "2024-01-03").to_pandas()
    assert frame.sort_values(["acct", "ts"])["n"].tolist() == [1, 2, 1]


# The second wall: SQL that got past the check (a parser gap) still cannot reach out of the sandbox.
RUNTIME_ABUSES = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_text('/etc/passwd')",
    "COPY (SELECT 1) TO '/tmp/gm-sandbox-runtime.csv'",
    "ATTACH '/tmp/gm-sandbox-runtime.db'",
    "SELECT * FROM sqlite_scan('/tmp/gm-sandbox-runtime.db', 't')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SET enable_external_access = true",
    "SET memory_limit = '100GB'",
]


@pytest.mark.parametrize("sql", RUNTIME_ABUSES)
def test_the_sandbox_database_reaches_nothing(sql: str) -> None:
    main = DuckDBEngine(memory_limit="512MB", threads=2).connect()
    sandbox = open_sandbox(main)
    try:
        with pytest.raises(duckdb.Error, match=r"disabled|locked|not in the catalog"):
            sandbox.execute(sql).fetchall()
        limits = sandbox.execute("SELECT current_setting('memory_limit'), current_setting('threads'), "
                                 "current_setting('TimeZone')").fetchall()[0]
        assert limits[1:] == (2, "UTC") and limits[0].startswith("488")   # 512MB, shown in MiB
    finally:
        sandbox.close()
    assert not Path("/tmp/gm-sandbox-runtime.csv").exists()
    assert not Path("/tmp/gm-sandbox-runtime.db").exists()


@pytest.mark.parametrize(("sql", "named"), [("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
                                           ("LOAD httpfs", "LOAD")])
def test_apply_reports_the_spec_invalid(tmp_path: Path, sql: str, named: str) -> None:
    """``apply`` marks the feature set invalid naming the file and what is not allowed; nothing runs, and
    nothing else is printed."""
    repo = tmp_path / "repo"
    _write_spec(repo / "spec", sql)
    (repo / "account.yaml").write_text(yaml.safe_dump({"name": "account", "version": "1",
                                                       "index_columns": [{"name": "acct", "type": "string"}]}))
    (repo / "fs.yaml").write_text(yaml.safe_dump({"name": "rows", "version": "1", "specification": {"path": "spec"},
                                                  "entities": ["account:1"]}))
    store = tmp_path / "store"
    assert gristmill("init", store).returncode == 0
    result = gristmill("apply", repo, "--store", store)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "invalid  feature set rows:1" in result.stdout
    assert (f"FeatureSetSpec.yaml: feature_transformation.transformation_sql: {named} is not allowed"
            in " ".join(result.stdout.split()))
    assert "root:" not in result.stdout and result.stderr == ""


# A source error names the file and the missing columns, never the file's content.
SECRET = "root:x:0:0:root:/root:/bin/bash"
FILES = [
    ("passwd", f"{SECRET}\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n", "csv",
     "column(s) ts, acct, f1 missing; fix the file or the spec"),
    ("rows.csv", "ts,acct,f1\n" + "2024-01-01,A,1\n" * 30_000 + f"2024-01-01,B,2,{SECRET}\n", "csv",
     "CSV Error on Line: 30002 Expected Number of Columns: 3 Found: 4"),
    ("passwd.parquet", f"{SECRET}\n", "parquet", "cannot be read"),
]


@pytest.mark.parametrize(("name", "content", "kind", "named"), FILES, ids=[f[0] for f in FILES])
def test_source_errors_do_not_echo_the_file(tmp_path: Path, name: str, content: str, kind: str,
                                            named: str) -> None:
    (tmp_path / name).write_text(content)
    spec = FeatureSetSpec.from_dict({"source": {"type": kind, "path": name, "timestamp_column": {"name": "ts"}},
                                     "index_columns": [{"name": "acct", "type": "string"}],
                                     "features": [{"name": "f1", "type": "double"}]}, folder=tmp_path)
    with pytest.raises(SourceError) as caught:
        spec.compute("2024-01-01", "2024-01-02")
    message = str(caught.value)
    assert name in message and named in message, message
    assert "root:" not in message and "Possible fixes" not in message
