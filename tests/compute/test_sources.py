"""Source types: parquet globs and folders, csv, delta, custom code, fsspec URIs; source order; errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gristmill.errors import SourceError, TransformationError
from gristmill.spec import FeatureSetSpec


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


ROWS = pd.DataFrame({"acct": ["A", "A", "B"], "ts": _ts("2024-01-01", "2024-01-02", "2024-01-01 12:00"),
                     "f1": [1.0, 2.0, 10.0]})


def _spec(folder: Path, source: dict, **extra: object) -> FeatureSetSpec:
    data = {"source": {"timestamp_column": {"name": "ts"}, **source},
            "index_columns": [{"name": "acct", "type": "string"}],
            "features": [{"name": "f1", "type": "double"}], **extra}
    return FeatureSetSpec.from_dict(data, folder=folder)


def _values(spec: FeatureSetSpec, start: str = "2024-01-01", end: str = "2024-01-03") -> list[tuple]:
    frame = spec.compute(start, end).to_pandas()
    return [(r.acct, r.ts.isoformat(), r.f1) for r in frame.itertuples()]


EXPECTED = [("A", "2024-01-01T00:00:00+00:00", 1.0), ("A", "2024-01-02T00:00:00+00:00", 2.0),
            ("B", "2024-01-01T12:00:00+00:00", 10.0)]


def test_parquet_folder_glob_and_relative_path(tmp_path: Path) -> None:
    data = tmp_path / "data" / "part"
    data.mkdir(parents=True)
    ROWS.iloc[:2].to_parquet(data / "a.parquet")
    ROWS.iloc[2:].to_parquet(data / "b.parquet")
    spec_folder = tmp_path / "spec"
    spec_folder.mkdir()
    assert _values(_spec(spec_folder, {"type": "parquet", "path": "../data/part"})) == EXPECTED
    assert _values(_spec(spec_folder, {"type": "parquet", "path": "../data/part/*.parquet"})) == EXPECTED
    assert _values(_spec(spec_folder, {"type": "parquet", "path": str(data / "*.parquet")})) == EXPECTED


def test_csv_source(tmp_path: Path) -> None:
    ROWS.to_csv(tmp_path / "rows.csv", index=False)
    assert _values(_spec(tmp_path, {"type": "csv", "path": "rows.csv"})) == EXPECTED


@pytest.mark.parametrize(("written", "fmt"), [
    (["2024-01-01T02:00:00+02:00", "2024-01-01 19:00:00-05:00", "2024-01-01 12:00:00Z"], None),
    (["2024-01-01 02:00 +0200", "2024-01-01 19:00 -0500", "2024-01-01 12:00 +0000"], "%Y-%m-%d %H:%M %z"),
], ids=["iso", "format"])
def test_string_timestamps_with_offsets_are_read_in_utc(tmp_path: Path, written: list[str],
                                                        fmt: str | None) -> None:
    ROWS.assign(ts=written).to_parquet(tmp_path / "rows.parquet")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet",
                            "timestamp_column": {"name": "ts", "format": fmt}})
    assert _values(spec) == EXPECTED


def test_string_timestamps_with_format(tmp_path: Path) -> None:
    frame = ROWS.assign(ts=ROWS["ts"].dt.strftime("%d/%m/%Y %H:%M"))
    frame.to_parquet(tmp_path / "rows.parquet")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet",
                            "timestamp_column": {"name": "ts", "format": "%d/%m/%Y %H:%M"}})
    assert _values(spec) == EXPECTED


def test_delta_source_partitioned(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "table"), ROWS, partition_by=["acct"])
    spec = _spec(tmp_path, {"type": "deltaTable", "path": "table"})
    assert _values(spec) == EXPECTED
    assert _values(spec, "2024-01-01T06:00", "2024-01-03") == EXPECTED[1:]


def test_custom_source_gets_the_window_and_kwargs(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "reader.py").write_text(
        "import pandas as pd\n"
        "class Reader:\n"
        "    def process(self, start_time, end_time, *, scale):\n"
        "        rows = pd.DataFrame({'acct': ['A', 'A', 'B'], 'ts': pd.to_datetime(\n"
        "            ['2024-01-01', '2024-01-02', '2024-01-01 12:00'], format='ISO8601'), 'f1': [1.0, 2.0, 10.0]})\n"
        "        rows['f1'] = rows['f1'] * float(scale)\n"
        "        rows = rows[(rows.ts >= start_time) & (rows.ts < end_time)]\n"
        "        return rows\n")
    spec = _spec(tmp_path, {"type": "custom", "source_process_code": {"path": "code", "process_class": "reader.Reader"},
                            "kwargs": {"scale": "2"}})
    assert _values(spec) == [(a, t, f * 2) for a, t, f in EXPECTED]


def test_fsspec_uri_source() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("memory://gristmill-test/rows.parquet", "wb") as handle:
        ROWS.to_parquet(handle)
    spec = _spec(Path("/"), {"type": "parquet", "path": "memory://gristmill-test/*.parquet"})
    assert _values(spec) == EXPECTED


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"type": "parquet", "path": "nowhere/*.parquet"})
    with pytest.raises(SourceError, match=r"nowhere/\*\.parquet.*matches no parquet files"):
        spec.compute("2024-01-01", "2024-01-02")


def test_missing_timestamp_column_is_named(tmp_path: Path) -> None:
    ROWS.rename(columns={"ts": "event_time"}).to_parquet(tmp_path / "rows.parquet")
    with pytest.raises(SourceError, match=r"rows\.parquet: column\(s\) ts missing; fix the file or the spec$"):
        _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"}).compute("2024-01-01", "2024-01-02")


def test_missing_feature_column_is_named(tmp_path: Path) -> None:
    ROWS.drop(columns=["f1"]).to_parquet(tmp_path / "rows.parquet")
    with pytest.raises(SourceError, match=r"rows\.parquet: column\(s\) f1 missing"):
        _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"}).compute("2024-01-01", "2024-01-02")


def test_missing_column_in_one_of_several_files_is_named(tmp_path: Path) -> None:
    ROWS.iloc[:2].to_parquet(tmp_path / "a.parquet")
    ROWS.iloc[2:].drop(columns=["f1"]).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(SourceError, match=r"b\.parquet: column\(s\) f1 missing"):
        _spec(tmp_path, {"type": "parquet", "path": "*.parquet"}).compute("2024-01-01", "2024-01-02")


def test_sql_transformation_output_is_checked_against_declared_types(tmp_path: Path) -> None:
    ROWS.to_parquet(tmp_path / "rows.parquet")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"},
                 feature_transformation={"transformation_sql": "SELECT acct, ts, 'x' AS f1 FROM source"})
    with pytest.raises(TransformationError, match="feature 'f1' is VARCHAR, declared double"):
        spec.compute("2024-01-01", "2024-01-02")


def test_wrong_feature_type_is_named(tmp_path: Path) -> None:
    ROWS.assign(f1=["x", "y", "z"]).to_parquet(tmp_path / "rows.parquet")
    with pytest.raises(SourceError, match=r"rows\.parquet: column 'f1' is VARCHAR, declared double"):
        _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"}).compute("2024-01-01", "2024-01-02")
