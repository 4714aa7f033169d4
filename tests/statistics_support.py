"""A small known data set for the feature statistics tests: six rows of one feature of each kind, whose
statistics the tests state exactly."""

from __future__ import annotations

import pandas as pd

FEATURES = [{"name": "f1", "type": "double"}, {"name": "n", "type": "long"}, {"name": "cat", "type": "string"},
            {"name": "flag", "type": "boolean"}, {"name": "seen", "type": "datetime"},
            {"name": "blob", "type": "binary"}]


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


ROWS = pd.DataFrame({
    "acct": ["A", "B", "C", "D", "E", "A"],
    "ts": _ts("2024-01-01 10:00", "2024-01-01 11:00", "2024-01-02 10:00", "2024-01-02 12:00", "2024-01-03 09:00",
              "2024-01-03 10:00"),
    "f1": [1.0, 2.0, 3.0, None, 5.0, 9.0],
    "n": pd.array([10, 10, 20, 30, None, 40], dtype="Int64"),
    "cat": ["x", "y", "x", None, "x", "y"],
    "flag": pd.array([True, False, True, True, None, False], dtype="boolean"),
    "seen": _ts("2023-12-01", "2023-12-05", "2023-11-20", "2023-12-01", "2023-12-02", "2023-12-03").where(
        [True, True, True, False, True, True]),
    "blob": [b"a", None, b"c", None, None, b"f"],
})
