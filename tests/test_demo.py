"""``gristmill demo``: data that ends now, so what it materializes online is live; the online lookup through
the SDK and the CLI prints real values, and the commands it prints run as printed."""

from __future__ import annotations

import ast
import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from cli_support import Result, assert_ok, gristmill


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    root = tmp_path_factory.mktemp("demo") / "demo"
    result = gristmill("demo", root, "--rows", "3000")
    assert_ok(result)
    return root, result


def test_demo_data_ends_now(demo: tuple[Path, Result]) -> None:
    root, _ = demo
    newest = pd.read_parquet(root / "data" / "transactions").timestamp.max().to_pydatetime()
    assert datetime.now(UTC).replace(tzinfo=None) - newest < timedelta(hours=2)


def test_demo_backfills_and_reports_the_keys_that_went_online(demo: tuple[Path, Result]) -> None:
    _, result = demo
    jobs = re.findall(r"(\w+):1 job \w+ Completed: [\d,]+ rows written, ([\d,]+) keys online \(([\d,]+) skipped as "
                      r"expired\)", result.stdout)
    assert {name for name, _, _ in jobs} == {"transactions", "accounts"}, result.stdout
    assert all(int(written.replace(",", "")) > 0 for _, written, _ in jobs)


def test_demo_online_lookup_prints_real_values(demo: tuple[Path, Result]) -> None:
    _, result = demo
    lines = result.stdout.splitlines()
    start = lines.index("7/7 online lookup through the SDK:")
    sdk_rows = [ast.literal_eval(line.strip()) for line in lines[start + 2:start + 4]]
    assert all(row["amount_7d_sum"] is not None and row["txn_7d_count"] >= 1 and row["credit_limit"] is not None
               for row in sdk_rows), sdk_rows
    # the CLI command, printed as a user would type it, and its output: the same values
    [command] = [line.strip()[2:] for line in lines if line.strip().startswith("$ gristmill online get")]
    cli_output = "\n".join(lines[lines.index(next(x for x in lines if "$ gristmill online get" in x)) + 1:])
    for row in sdk_rows:
        assert re.search(rf"{row['account_id']}\s+│\s+{row['amount_7d_sum']}\s+│\s+{row['txn_7d_count']}\s+│\s+"
                         rf"{row['credit_limit']}", cli_output), cli_output
    again = gristmill(*shlex.split(command)[1:], "--json")
    assert_ok(again)
    assert str(sdk_rows[0]["amount_7d_sum"]) in again.stdout
    assert "note:" not in again.stderr


def test_demo_prints_the_commands_to_serve_it_with_a_token(demo: tuple[Path, Result]) -> None:
    root, result = demo
    store = shlex.quote(str(root / "store"))
    printed = [line.strip() for line in result.stdout.splitlines()]
    for command in (f"gristmill access add demo-user --store {store}",
                    f"gristmill access grant demo-user Owner --store {store}",
                    f"gristmill access token demo-user --store {store}",
                    f"gristmill serve --store {store}", f"gristmill ui --store {store}"):
        assert command in printed, result.stdout
    for command in printed[printed.index(f"gristmill access add demo-user --store {store}"):][:3]:
        ran = gristmill(*shlex.split(command)[1:])
        assert_ok(ran)
    assert ran.stdout.startswith("gm_")


def test_the_demo_says_how_to_install_the_server_when_it_is_missing(tmp_path: Path) -> None:
    import subprocess
    import sys

    program = ("import sys\nsys.modules['fastapi'] = None\nsys.argv = ['gristmill', 'demo', sys.argv[1], '--rows', "
               "'3000']\nfrom gristmill.cli import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path / "demo")], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert "pip install 'gristmill[server]' (in a source checkout: pip install -e '.[server]')" in said, said
