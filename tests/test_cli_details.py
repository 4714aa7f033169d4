"""Details of the ``gristmill`` command line, run as real subprocesses of the console script (``COLUMNS=80``):
whole job ids in narrow terminals, ``--version``, plain boolean flags in ``--help``, ``preview``'s default
window, the hint of ``show`` for an entity, ``init --online-store``, token listing and principal removal,
the message of a stopped idle scheduler, retry hints that name the store (or say a new version is needed),
install hints for checkouts, and the environment variables that point the tests at their services."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import typer.main
import yaml
from cli_support import (
    Result,
    _command,
    _environment,
    assert_ok,
    assert_user_error,
    describe,
    gristmill,
    run_concurrently,
)
from repo_support import write_fs1_repo

import gristmill as gm
from gristmill.auth import AccessRecords

NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
# a long error, so that a job table wants more than 80 columns
SQL_ERROR_SPEC = {"transformation_sql": "SELECT acct, ts, no_such_column AS f1 FROM source"}


def _feature_set(repo: Path, name: str, source: Path, **spec: object) -> None:
    folder = repo / name
    (folder / "spec").mkdir(parents=True)
    (folder / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": name, "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"],
        "materialization_settings": {"offline_enabled": True}}))
    (folder / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump({
        "source": {"type": "parquet", "path": str(source), "timestamp_column": {"name": "ts"}},
        "index_columns": [{"name": "acct", "type": "string"}], "features": [{"name": "f1", "type": "double"}],
        **spec}))


def _run_in(folder: Path, *args: str | Path) -> Result:
    """The console script run with ``folder`` as the current directory."""
    return subprocess.run([*_command(), *(str(a) for a in args)], capture_output=True, text=True, cwd=folder,
                          env=_environment(), timeout=300, check=False)


def _in_terminal(*args: str | Path) -> str:
    """What the console script shows on an 80-column terminal (a pseudo-terminal), without colours."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([*_command(), *(str(a) for a in args)], stdin=follower, stdout=follower,
                               stderr=follower, env=_environment(), close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:                         # the terminal closes with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())


@dataclass(frozen=True)
class Workspace:
    root: Path
    store: Path
    ran: dict[str, Result]

    def failed_job(self, name: str) -> str:
        match = re.search(r"job (\w+) failed:", self.ran[name].stderr)
        assert match, describe(self.ran[name])
        return match.group(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """``fs1`` (rows 2 h and 36 h old, and one in 2024), ``fssql`` (its SQL names a missing column) and
    ``fsmissing`` (its source lacks ``f1``), with a failed backfill of each broken one."""
    root = tmp_path_factory.mktemp("cli_details")
    (root / "data").mkdir()
    pd.DataFrame({"acct": ["A", "B", "C"],
                  "ts": pd.Series([NOW - timedelta(hours=2), NOW - timedelta(hours=36),
                                   datetime(2024, 1, 1)]).astype("datetime64[us]"),
                  "f1": [1.0, 2.0, 3.0]}).to_parquet(root / "data" / "rows.parquet")
    pd.DataFrame({"acct": ["A"], "ts": pd.Series([datetime(2024, 1, 1)]).astype("datetime64[us]")}
                 ).to_parquet(root / "data" / "no_f1.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", settings={"offline_enabled": True})
    _feature_set(repo, "fssql", root / "data" / "rows.parquet", feature_transformation=SQL_ERROR_SPEC)
    _feature_set(repo, "fsmissing", root / "data" / "no_f1.parquet")
    store = root / "store"
    with gm.FeatureStore.init(store) as setup:
        assert setup.apply(repo, check_source=False).ok   # broken specs registered on purpose
    s = ["--store", store]
    window = ["--start", "2024-01-01", "--end", "2024-01-02"]
    ran = run_concurrently({
        "backfill sql error": ["backfill", "fssql:1", *window, *s],
        "backfill source error": ["backfill", "fsmissing:1", *window, *s],
        "version": ["--version"],
        "preview default window": ["preview", "fs1:1", *s],
        "preview end only": ["preview", "fs1:1", "--end", (NOW - timedelta(days=1)).isoformat(), *s],
        "preview start only": ["preview", "fs1:1", "--start", (NOW - timedelta(hours=3)).isoformat(), *s],
        "preview start after end": ["preview", "fs1:1", "--start", "2024-01-02", "--end", "2024-01-01", *s],
        "show entity as feature set": ["show", "account:1", *s],
        "show unknown": ["show", "nothing:1", *s],
        "show entity": ["show", "account:1", "--entity", *s],
    })
    return Workspace(root, store, ran)


# -- 1. job ids are copyable whole ------------------------------------------------------------------
def test_job_ids_are_whole_in_an_80_column_terminal(workspace: Workspace) -> None:
    shown = _in_terminal("jobs", "--store", workspace.store)
    assert "┃ id" in shown, shown
    ids = [job.id for job in gm.FeatureStore(workspace.store).list_jobs()]
    assert len(ids) == 2
    for job_id in ids:
        assert job_id in shown, shown
    assert max(len(line) for line in shown.splitlines()) <= 80


def test_token_ids_are_whole_in_an_80_column_terminal(tmp_path: Path) -> None:
    gm.FeatureStore.init(tmp_path / "store")
    access = AccessRecords(gm.FeatureStore(tmp_path / "store").materializer.records)
    access.add_principal("a-principal-with-a-rather-long-name-for-a-narrow-terminal")
    token = access.create_token("a-principal-with-a-rather-long-name-for-a-narrow-terminal",
                                expires_in=timedelta(days=30))
    shown = _in_terminal("access", "tokens", "--store", tmp_path / "store")
    assert token.split("_")[1] in shown, shown


# -- 2. and 3. --version, --help ---------------------------------------------------------------------
def test_version_prints_the_package_version(workspace: Workspace) -> None:
    result = workspace.ran["version"]
    assert_ok(result)
    assert result.stdout.strip() == f"gristmill {gm.__version__}"


def _command_paths() -> list[list[str]]:
    from gristmill.cli import app

    paths: list[list[str]] = [[]]

    def walk(command: object, prefix: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_help_shows_boolean_flags_as_plain_flags() -> None:
    paths = _command_paths()
    assert ["access", "tokens"] in paths and ["online", "get"] in paths
    helped = run_concurrently({" ".join(path) or "gristmill": [*path, "--help"] for path in paths})
    for name, result in helped.items():
        assert_ok(result)
        assert "Usage: gristmill" in result.stdout, name
        assert "<bool>" not in result.stdout, f"{name}:\n{result.stdout}"
    assert re.search(r"--json\s+Print JSON", helped["list"].stdout), helped["list"].stdout
    assert re.search(r"--version\s+Print the version", helped["gristmill"].stdout)


# -- 4. preview's default window ----------------------------------------------------------------------
def test_preview_defaults_to_the_last_day(workspace: Workspace) -> None:
    result = workspace.ran["preview default window"]
    assert_ok(result)
    assert re.search(r"^window \[\S+ \S+, \S+ \S+\) UTC$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^1 rows, columns: acct, ts, f1$", result.stdout, re.MULTILINE), result.stdout
    assert " A " in result.stdout and " B " not in result.stdout


def test_preview_with_only_an_end_covers_the_day_before_it(workspace: Workspace) -> None:
    result = workspace.ran["preview end only"]
    assert_ok(result)
    end = NOW - timedelta(days=1)
    assert f"window [{end - timedelta(days=1)}, {end}) UTC" in result.stdout, result.stdout
    assert re.search(r"^1 rows", result.stdout, re.MULTILINE) and " B " in result.stdout, result.stdout


def test_preview_with_only_a_start_ends_now(workspace: Workspace) -> None:
    result = workspace.ran["preview start only"]
    assert_ok(result)
    assert re.search(r"^1 rows", result.stdout, re.MULTILINE) and " A " in result.stdout, result.stdout


def test_preview_start_after_end_is_a_user_error(workspace: Workspace) -> None:
    assert_user_error(workspace.ran["preview start after end"], "--start", "--end")


# -- 5. show with an entity's name ------------------------------------------------------------------
def test_show_of_an_entity_name_hints_at_entity(workspace: Workspace) -> None:
    assert_user_error(workspace.ran["show entity as feature set"], "account is an entity",
                      f"gristmill show account:1 --entity --store {workspace.store}")
    assert_user_error(workspace.ran["show unknown"], "nothing")
    assert "is an entity" not in workspace.ran["show unknown"].stderr
    assert_ok(workspace.ran["show entity"])


def test_show_hint_in_the_store_folder_has_no_store_option(workspace: Workspace) -> None:
    result = _run_in(workspace.store, "show", "account:1")
    assert_user_error(result, "use gristmill show account:1 --entity")
    assert "--store" not in result.stderr


# -- 6. init --online-store ---------------------------------------------------------------------------
def test_init_with_a_redis_online_store(tmp_path: Path) -> None:
    from redis_servers import REDIS_URL

    results = run_concurrently({
        "redis": ["init", tmp_path / "redis", "--online-store", REDIS_URL, "--online-prefix", "details"],
        "sqlite": ["init", tmp_path / "sqlite", "--online-store", "sqlite"],
        "bad": ["init", tmp_path / "bad", "--online-store", "memcached://localhost"],
    })
    assert_ok(results["redis"])
    config = yaml.safe_load((tmp_path / "redis" / "featurestore.yaml").read_text())
    assert config["online_store"]["type"] == "redis" and config["online_store"]["url"] == REDIS_URL
    assert config["online_store"]["prefix"] == "details"
    assert gm.FeatureStore(tmp_path / "redis").online_store.__class__.__name__ == "RedisOnlineStore"
    assert_ok(results["sqlite"])
    assert yaml.safe_load((tmp_path / "sqlite" / "featurestore.yaml").read_text())["online_store"]["type"] == "sqlite"
    assert_user_error(results["bad"], "--online-store", "memcached://localhost", "redis://")


@pytest.mark.parametrize(("value", "says"), [(-1, "greater than 0"), (0, "greater than 0"),
                                             (7200, "less than or equal to 3600"), ("soon", "valid number")])
def test_a_bad_redis_timeout_is_one_error_line_naming_the_field(tmp_path: Path, value: object, says: str) -> None:
    from redis_servers import REDIS_URL

    assert_ok(gristmill("init", tmp_path / "s", "--online-store", REDIS_URL, "--online-prefix", "timeout"))
    config_file = tmp_path / "s" / "featurestore.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["online_store"]["timeout_seconds"] = value
    config_file.write_text(yaml.safe_dump(config))
    assert_user_error(gristmill("status", "--store", tmp_path / "s"), str(config_file),
                      "online_store.timeout_seconds", says)


# -- 7. tokens and principals -------------------------------------------------------------------------
def test_access_tokens_lists_tokens_without_secrets(tmp_path: Path) -> None:
    store = tmp_path / "store"
    gm.FeatureStore.init(store)
    access = AccessRecords(gm.FeatureStore(store).materializer.records)
    access.add_principal("alice")
    access.add_principal("robot", kind="service")
    kept = access.create_token("alice", expires_in=timedelta(days=3))
    revoked = access.create_token("alice")
    access.revoke_token(revoked.split("_")[1])
    robots = access.create_token("robot")
    access.authenticate(robots)                            # recorded as its last use
    results = run_concurrently({
        "json": ["access", "tokens", "--json", "--store", store],
        "all": ["access", "tokens", "--all", "--json", "--store", store],
        "alice": ["access", "tokens", "alice", "--store", store],
        "nobody": ["access", "tokens", "nobody", "--store", store],
    })
    for result in results.values():
        for token in (kept, revoked, robots):
            secret = token.split("_", 2)[2]
            assert secret not in result.stdout + result.stderr
            assert hashlib.sha256(secret.encode()).hexdigest() not in result.stdout + result.stderr
    active = json.loads(results["json"].stdout)
    assert [(t["token_id"], t["principal"], t["status"]) for t in active] == [
        (kept.split("_")[1], "alice", "active"), (robots.split("_")[1], "robot", "active")]
    assert active[0]["expires"] != "never" and active[0]["last_used"] == "never"
    assert active[1]["expires"] == "never" and active[1]["last_used"] != "never"
    assert {t["status"] for t in json.loads(results["all"].stdout)} == {"active", "revoked"}
    assert_ok(results["alice"])
    assert kept.split("_")[1] in results["alice"].stdout and robots.split("_")[1] not in results["alice"].stdout
    assert_user_error(results["nobody"], "principal nobody not found")


def test_access_remove_takes_tokens_and_grants_with_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    gm.FeatureStore.init(store)
    access = AccessRecords(gm.FeatureStore(store).materializer.records)
    access.add_principal("alice")
    token = access.create_token("alice")
    access.grant("alice", "Reader", "store", by="test")
    access.grant("alice", "Materializer", "featureset:fs1", by="test")
    removed = gristmill("access", "remove", "alice", "--store", store)
    assert_ok(removed)
    assert "alice removed, with 1 token(s) and 2 grant(s)" in removed.stdout
    assert [p.name for p in access.list_principals()] == [] and access.grants() == []
    assert access.list_tokens() == []
    with pytest.raises(gm.AccessDeniedError):
        access.authenticate(token)
    [entry] = [e for e in access.audit_entries() if e.action == "access.principal.remove"]
    assert (entry.action, entry.resource, entry.allowed) == ("access.principal.remove", "user alice", True)
    assert entry.principal.startswith("local") and "1 token(s) and 2 grant(s)" in (entry.detail or "")
    assert_user_error(gristmill("access", "remove", "alice", "--store", store), "principal alice not found")


# -- 8. an idle scheduler stopped -----------------------------------------------------------------------
def test_an_idle_scheduler_stopped_says_no_job_was_running(tmp_path: Path) -> None:
    gm.FeatureStore.init(tmp_path / "store")
    worker = subprocess.Popen([*_command(), "scheduler", "--poll", "60", "--store", str(tmp_path / "store")],
                              env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert worker.stderr is not None
    started = worker.stderr.readline()                      # printed before its first pass
    assert "scheduler worker" in started, started
    time.sleep(2)                                            # its first pass (nothing due) is done: it waits
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 130, (out, err)
    assert "Traceback" not in out + err
    said = " ".join(err.split())
    assert "scheduler stopped (interrupted); no job was running" in said, said
    assert "Cancelled" not in said


# -- 9. retry hints ---------------------------------------------------------------------------------------
def test_retry_hint_names_the_store(workspace: Workspace) -> None:
    result = workspace.ran["backfill source error"]
    assert result.returncode == 1, describe(result)
    job = workspace.failed_job("backfill source error")
    hint = f"(retry: gristmill backfill fsmissing:1 --job-id {job} --store {workspace.store})"
    assert hint in " ".join(result.stderr.split()), result.stderr


def test_retry_hint_in_the_store_folder_has_no_store_option(workspace: Workspace) -> None:
    result = _run_in(workspace.store, "backfill", "fsmissing:1", "--start", "2024-01-02", "--end", "2024-01-03")
    assert result.returncode == 1, describe(result)
    match = re.search(r"\(retry: gristmill backfill fsmissing:1 --job-id (\w+)\)", " ".join(result.stderr.split()))
    assert match, result.stderr
    assert "--store" not in result.stderr


def test_a_job_failing_on_its_spec_says_a_new_version_is_needed(workspace: Workspace) -> None:
    result = workspace.ran["backfill sql error"]
    assert result.returncode == 1, describe(result)
    said = " ".join(result.stderr.split())
    assert "no_such_column" in said
    assert "a retry runs the same specification and code: fix them and apply them as a new version of fssql" in said
    assert "(retry:" not in said
    job = gm.FeatureStore(workspace.store).get_job(workspace.failed_job("backfill sql error"))
    assert "as a new version of fssql" in (job.error or "")       # what the UI and the API show too


# -- 12. install hints -----------------------------------------------------------------------------------
INSTALL_HINTS = {
    "serve": ("uvicorn", "import sys\nfrom gristmill.cli import main\nsys.argv = ['gristmill', 'serve', '--store', "
                         "STORE]\nmain()", "server"),
    "connect": ("httpx", "import gristmill as gm\ngm.FeatureStore.connect('http://127.0.0.1:1')", "server"),
    "redis": ("redis", "from gristmill.stores.online.redis import RedisOnlineStore\n"
                       "RedisOnlineStore('redis://127.0.0.1:1/0')", "redis"),
    "postgres": ("psycopg", "import gristmill as gm\n"
                            "gm.FeatureStore.init(STORE + '2', registry_url='postgresql+psycopg://u@127.0.0.1:1/x')",
                 "postgres"),
    "polars": ("polars", "from gristmill.serving import OnlineResult\nOnlineResult({'x': [1]}, {}).to_polars()",
               "polars"),
    "polars training data": ("polars", "import duckdb\nfrom gristmill.compute.result import QueryResult\n"
                                       "QueryResult(duckdb.connect(), 'SELECT 1 AS x', description='x').to_polars()",
                             "polars"),
}


@pytest.mark.parametrize("case", sorted(INSTALL_HINTS))
def test_install_hints_name_the_checkout_command_too(case: str, tmp_path: Path) -> None:
    blocked, code, extra = INSTALL_HINTS[case]
    gm.FeatureStore.init(tmp_path / "store")
    program = f"import sys\nsys.modules[{blocked!r}] = None\nSTORE = {str(tmp_path / 'store')!r}\n{code}\n"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=_environment(),
                            timeout=120, check=False)
    assert result.returncode != 0, describe(result)
    said = " ".join(result.stderr.split())
    assert f"pip install 'gristmill[{extra}]'" in said, said
    assert f"pip install -e '.[{extra}]'" in said, said


# -- 13. the tests' services come from the environment ----------------------------------------------------
def test_test_services_come_from_the_environment() -> None:
    program = ("import postgres, redis_servers\nprint(postgres.POSTGRES_URL)\nprint(redis_servers.REDIS_URL)\n"
               "print(all(31000 <= redis_servers.free_port(with_bus=bus) <= 31050 for bus in [False, True] * 5))")
    env = {**_environment(), "GRISTMILL_TEST_POSTGRES_URL": "postgresql+psycopg://me@db.example:6543/other",
           "GRISTMILL_TEST_REDIS_URL": "redis://cache.example:6380/5", "GRISTMILL_TEST_PORTS": "31000-31050"}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env,
                            cwd=Path(__file__).parent, timeout=60, check=False)
    assert_ok(result)
    assert result.stdout.split() == ["postgresql+psycopg://me@db.example:6543/other", "redis://cache.example:6380/5",
                                     "True"]
