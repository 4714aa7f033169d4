"""The demo behind the README's first command: sample data ending now, a store, two feature sets, a
preview, a point-in-time training set, materialization into the offline and online stores and online
lookups (SDK and CLI) — everything a new user sees in the first minute."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gristmill.errors import install_hint

#: where ``generate_data`` ends by default (fixed, so tests and docs get the same rows every time)
SAMPLE_END = datetime(2025, 4, 1)
SAMPLE_DAYS = 90

ENTITY_YAML = """\
name: account
version: "1"
description: A customer account.
index_columns:
  - {name: account_id, type: string}
"""

TRANSACTIONS_ASSET = """\
name: transactions
version: "1"
description: Rolling 7- and 30-day spend per account, computed from raw card transactions.
specification: {path: ./spec}
entities: [account:1]
stage: Development
tags: {team: risk, pii: "false"}
"""

TRANSACTIONS_SPEC = """\
source:
  type: parquet
  path: ../../../../data/transactions/*.parquet
  timestamp_column: {name: timestamp}
  source_delay: {days: 0, hours: 0, minutes: 20}
index_columns:
  - {name: account_id, type: string}
source_lookback: {days: 30, hours: 0, minutes: 0}
temporal_join_lookback: {days: 30, hours: 0, minutes: 0}
feature_transformation:
  transformation_expressions:
    - {transformation_type: window,
       feature_name: amount_7d_sum, source_column: amount, aggregation: sum, window: {days: 7}}
    - {transformation_type: window,
       feature_name: amount_7d_avg, source_column: amount, aggregation: avg, window: {days: 7}}
    - {transformation_type: window,
       feature_name: txn_7d_count, aggregation: count, window: {days: 7}}
    - {transformation_type: window,
       feature_name: amount_30d_sum, source_column: amount, aggregation: sum, window: {days: 30}}
    - {transformation_type: window,
       feature_name: amount_30d_max, source_column: amount, aggregation: max, window: {days: 30}}
    - {transformation_type: window,
       feature_name: txn_30d_count, aggregation: count, window: {days: 30}}
features:
  - {name: amount_7d_sum, type: double, description: Total spend over the last 7 days}
  - {name: amount_7d_avg, type: double, description: Mean transaction amount over the last 7 days}
  - {name: txn_7d_count, type: long, description: Number of transactions over the last 7 days}
  - {name: amount_30d_sum, type: double, description: Total spend over the last 30 days}
  - {name: amount_30d_max, type: double, description: Largest transaction over the last 30 days}
  - {name: txn_30d_count, type: long, description: Number of transactions over the last 30 days}
"""

ACCOUNTS_ASSET = """\
name: accounts
version: "1"
description: Precomputed account attributes, refreshed daily by an upstream job.
specification: {path: ./spec}
entities: [account:1]
tags: {team: risk}
"""

ACCOUNTS_SPEC = """\
source:
  type: parquet
  path: ../../../../data/accounts.parquet
  timestamp_column: {name: timestamp}
index_columns:
  - {name: account_id, type: string}
temporal_join_lookback: {days: 31}
features:
  - {name: account_age_days, type: integer, description: Days since the account was opened}
  - {name: credit_limit, type: double, description: Current credit limit}
  - {name: is_premium, type: boolean, description: Premium plan flag, tags: {pii: "false"}}
"""


def generate_data(folder: Path, *, rows: int, accounts: int = 5_000, seed: int = 7,
                  end: datetime = SAMPLE_END) -> dict[str, Path]:
    """Deterministic sample data: card transactions over the 90 days before ``end`` and account snapshots
    (the same rows for the same ``end``, shifted in time for another)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    start = pd.Timestamp(end - timedelta(days=SAMPLE_DAYS))
    ids = np.array([f"A{i:05d}" for i in range(accounts)])
    txn_dir = folder / "transactions"
    txn_dir.mkdir(parents=True, exist_ok=True)
    per_file = max(rows // 3, 1)
    weights = rng.lognormal(0.0, 1.0, accounts)
    weights /= weights.sum()
    for part in range(3):
        n = per_file if part < 2 else rows - 2 * per_file
        offsets = rng.integers(0, 90 * 86_400, n)
        frame = pd.DataFrame({
            "transaction_id": [f"T{part}{i:07d}" for i in range(n)],
            "account_id": ids[rng.choice(accounts, n, p=weights)],
            "timestamp": (start + pd.to_timedelta(np.sort(offsets), unit="s")).astype("datetime64[us]"),
            "amount": np.round(rng.lognormal(3.0, 1.0, n), 2),
        })
        frame.to_parquet(txn_dir / f"part-{part}.parquet", index=False)
    days = pd.date_range(start, periods=90, freq="D")
    # Snapshots every 30 days and one on the last day, so online values stay live for a month after the demo.
    snapshot_days = [0, 30, 60, 89]
    snapshot = pd.DataFrame({
        "account_id": np.repeat(ids, len(snapshot_days)),
        "timestamp": np.tile(days[snapshot_days], accounts).astype("datetime64[us]"),
    })
    opened = rng.integers(30, 3_000, accounts)
    snapshot["account_age_days"] = (np.repeat(opened, len(snapshot_days))
                                    + np.tile(snapshot_days, accounts)).astype("int32")
    snapshot["credit_limit"] = np.round(rng.choice([500.0, 1_000.0, 2_500.0, 5_000.0], len(snapshot)), 2)
    snapshot["is_premium"] = rng.random(len(snapshot)) < 0.2
    snapshot.to_parquet(folder / "accounts.parquet", index=False)
    observation_count = min(20_000, max(rows // 15, 10))
    observations = pd.DataFrame({
        "account_id": ids[rng.integers(0, accounts, observation_count)],
        "label_time": (start + pd.to_timedelta(rng.integers(10 * 86_400, 90 * 86_400, observation_count),
                                               unit="s")).astype("datetime64[us]"),
        "is_fraud": rng.random(observation_count) < 0.03,
    })
    observations.to_parquet(folder / "observations.parquet", index=False)
    return {"transactions": txn_dir, "accounts": folder / "accounts.parquet",
            "observations": folder / "observations.parquet"}


MATERIALIZED = "materialization_settings: {offline_enabled: true, online_enabled: true}\n"


def write_feature_repo(folder: Path, *, materialized: bool = False) -> Path:
    """The YAML a user would write: an entity and two feature sets (``materialized``: both with offline
    and online materialization enabled)."""
    settings = MATERIALIZED if materialized else ""
    files = {
        "entities/account.yaml": ENTITY_YAML,
        "featuresets/transactions/FeatureSet.yaml": TRANSACTIONS_ASSET + settings,
        "featuresets/transactions/spec/FeatureSetSpec.yaml": TRANSACTIONS_SPEC,
        "featuresets/accounts/FeatureSet.yaml": ACCOUNTS_ASSET + settings,
        "featuresets/accounts/spec/FeatureSetSpec.yaml": ACCOUNTS_SPEC,
    }
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


def run_demo(path: str | Path, *, rows: int = 300_000, echo: Callable[..., Any] = print) -> Path:
    """Create the demo store under ``path`` and write ``training_data.parquet``; returns its path.

    The data ends at the current hour, so the values it materializes online are live (online values expire
    at event time + ``temporal_join_lookback``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from gristmill.spec.retrieval_spec import FeatureRetrievalSpec
    from gristmill.store import FeatureStore

    root = Path(path).resolve()
    started = time.perf_counter()
    end = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    begin = end - timedelta(days=SAMPLE_DAYS)
    echo(f"1/7 generating {rows:,} sample transactions from {begin:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC "
         f"in {root / 'data'}")
    data = generate_data(root / "data", rows=rows, end=end)
    echo(f"2/7 writing feature set specs in {root / 'repo'}")
    repo = write_feature_repo(root / "repo", materialized=True)
    store = FeatureStore.init(root / "store", name="demo")
    plan = store.apply(repo)
    echo(f"3/7 registered in store {store.path}:")
    for item in plan.items:
        echo(f"      {item.action:>9}  {item.kind} {item.ref}")
    day = datetime(end.year, end.month, end.day) - timedelta(days=1)
    frame = store.preview("transactions", "1", day, day + timedelta(days=1)).to_pandas()
    echo(f"4/7 preview of transactions:1 over [{day:%Y-%m-%d}, {day + timedelta(days=1):%Y-%m-%d}): "
         f"{len(frame):,} rows")
    echo(frame.head(5).to_string(index=False, line_width=200))
    features = [f"transactions:1:{f}" for f in ("amount_7d_sum", "amount_7d_avg", "txn_7d_count",
                                                "amount_30d_sum", "amount_30d_max", "txn_30d_count")]
    features += ["accounts:1:account_age_days", "accounts:1:credit_limit", "accounts:1:is_premium"]
    result = store.get_offline_features(features, data["observations"], "label_time")
    output = result.to_parquet(root / "training_data.parquet")
    FeatureRetrievalSpec.from_features(features).dump(root / "feature_retrieval_spec.yaml")
    training = result.to_pandas()
    echo(f"5/7 point-in-time training set: {len(training):,} rows x {training.shape[1]} columns -> {output}")
    echo(training.head(5).to_string(index=False, line_width=200))

    echo(f"6/7 materializing both feature sets over [{begin:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) into the "
         "offline (Delta) and online (SQLite) stores:")
    for name in ("transactions", "accounts"):           # materialization_settings are on in their YAML
        for job in store.backfill(name, 1, start=begin, end=end):
            online = job.online
            echo(f"      {job.ref} job {job.id} {job.status.value}: {job.rows_written:,} rows written, "
                 f"{online.keys_written if online else 0:,} keys online "
                 f"({online.keys_expired if online else 0:,} skipped as expired)")
    # the accounts of the newest transactions: keys with live values
    newest = pq.read_table(data["transactions"], columns=["account_id", "timestamp"])
    newest = newest.take(pc.sort_indices(newest, [("timestamp", "descending")])[:50])
    keys = list(dict.fromkeys(newest.column("account_id").to_pylist()))[:2]
    online_features = ["transactions:1:amount_7d_sum", "transactions:1:txn_7d_count", "accounts:1:credit_limit"]
    echo("7/7 online lookup through the SDK:")
    echo(f"      store.get_online_features({online_features}, {{'account_id': {keys}}})")
    for row in store.get_online_features(online_features, {"account_id": keys}).to_rows():
        echo(f"      {row}")
    command = ["gristmill", "online", "get", "--features", ",".join(online_features),
               "--key", f"account_id={','.join(keys)}", "--store", str(store.path)]
    echo("    and through the CLI:")
    echo(f"      $ {shlex.join(command)}")
    echo(_run_cli(command[1:]).rstrip())
    store.close()
    echo(f"done in {time.perf_counter() - started:.1f} s. Next:")
    at = f"--store {shlex.quote(str(store.path))}"
    server_extra = [] if _server_installed() else [f"# the server needs its extra: {install_hint('server')}"]
    for line in (f"gristmill list {at}", f"gristmill jobs {at}", *server_extra,
                 "# the REST server and web UI need a token: a principal, a role and its token (printed once)",
                 f"gristmill access add demo-user {at}", f"gristmill access grant demo-user Owner {at}",
                 f"gristmill access token demo-user {at}",
                 "# the REST API on http://127.0.0.1:8080 (OpenAPI at /docs):", f"gristmill serve {at}",
                 "# or the same with the web UI: open http://127.0.0.1:8080/ui and sign in with the token",
                 f"gristmill ui {at}"):
        echo(f"  {line}")
    return output


def _server_installed() -> bool:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def _run_cli(arguments: list[str]) -> str:
    """What ``gristmill ARGUMENTS`` prints (run in a child process, as a user would)."""
    done = subprocess.run([sys.executable, "-c", "from gristmill.cli import main; main()", *arguments],
                          capture_output=True, text=True, check=False)
    return done.stdout + done.stderr
