"""Running the ``gristmill`` console script as a real subprocess, and checking what it printed
(shared by the CLI test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from redis_servers import free_port

Result = subprocess.CompletedProcess[str]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("gristmill")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gristmill.cli"]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GRISTMILL_STORE", "GRISTMILL_DEBUG", "COLUMNS")}
    env["COLUMNS"] = "80"  # the width rich assumes when output is piped, as in `gristmill ... > file`
    return env


def gristmill(*args: str | Path) -> Result:
    """Run the console script; never raises on a non-zero exit code."""
    return subprocess.run([*_command(), *(str(a) for a in args)], capture_output=True, text=True,
                          env=_environment(), timeout=300, check=False)


def run_concurrently(commands: dict[str, list[str | Path]]) -> dict[str, Result]:
    """Run several commands at once (each subprocess costs about a second of start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(gristmill, *args) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def describe(result: Result) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_ok(result: Result) -> None:
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stdout + result.stderr


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit code 2, exactly one ``error:`` line on stderr (naming ``fragments``), no traceback."""
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@contextmanager
def gristmill_serve(store: str | Path, *, env: dict[str, str] | None = None, log: Path | None = None,
                    args: Sequence[str] = ()) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``gristmill serve`` on ``store`` at a free port, as a real subprocess, once it answers ``/health``;
    yields (process, base URL) and stops it when the block ends (unless the test killed it). Its output goes
    to ``log`` when given (the tests read it), else to pipes, shown if it fails to start."""
    port = free_port()
    output = log.open("w") if log is not None else None
    process = subprocess.Popen([*_command(), "serve", "--port", str(port), "--store", str(store), *args],
                               env={**_environment(), **(env or {})}, text=True,
                               stdout=output or subprocess.PIPE,
                               stderr=subprocess.STDOUT if output else subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def printed() -> str:
        return log.read_text() if log is not None else str(process.communicate())

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, printed()
                assert time.monotonic() < deadline, "gristmill serve did not answer within 30 s"
                time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=30)
        if output is not None:
            output.close()
