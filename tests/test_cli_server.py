"""``gristmill access`` and ``gristmill serve`` as real subprocesses: a principal, its token and grant made
on the command line open the server's routes to it, and nothing else."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
from cli_support import _command, _environment, assert_ok, assert_user_error, gristmill, gristmill_serve
from redis_servers import free_port

import gristmill as gm


def test_access_commands_then_serve(tmp_path: Path) -> None:
    store = tmp_path / "store"
    gm.FeatureStore.init(store)
    assert_ok(gristmill("access", "add", "svc-model", "--kind", "service", "--store", store))
    assert_ok(gristmill("access", "grant", "svc-model", "Consumer", "--store", store))
    made = gristmill("access", "token", "svc-model", "--expires-days", "1", "--store", store)
    assert_ok(made)
    token = made.stdout.strip()
    assert token.startswith("gm_")
    listed = json.loads(gristmill("access", "list", "--json", "--store", store).stdout)
    assert listed == [{"principal": "svc-model", "kind": "service", "grants": "Reader on store"}]
    assert_user_error(gristmill("access", "grant", "svc-model", "Admin", "--store", store), "role 'Admin'")
    assert_user_error(gristmill("access", "grant", "ghost", "Reader", "--store", store), "principal ghost not found")
    assert_user_error(gristmill("access", "grant", "svc-model", "Reader", "--scope", "table:x", "--store", store),
                      "scope 'table:x'")

    with gristmill_serve(store) as (_, url):
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/v1/whoami", headers=auth).json() == {
            "principal": "svc-model", "grants": [{"role": "Reader", "scope": "store"}]}
        assert httpx.get(f"{url}/v1/audit", headers=auth).status_code == 403
        assert httpx.get(f"{url}/v1/feature-sets").status_code == 401
    token_id = token.split("_")[1]
    assert_ok(gristmill("access", "revoke-token", token_id, "--store", store))
    assert_ok(gristmill("access", "revoke", "svc-model", "Reader", "--store", store))
    audit = json.loads(gristmill("access", "audit", "--json", "--store", store).stdout)
    assert [(e["action"], e["allowed"]) for e in audit][:5] == [
        ("access.revoke", True), ("access.token.revoke", True), ("audit.read", False), ("access.token.create", True),
        ("access.grant", True)]
    assert audit[-1]["action"] == "access.principal.add" and audit[-1]["principal"].startswith("local")


def test_ui_command_serves_the_pages(tmp_path: Path) -> None:
    store = tmp_path / "store"
    gm.FeatureStore.init(store)
    port = free_port()
    server = subprocess.Popen([*_command(), "ui", "--no-auth", "--port", str(port), "--store", str(store)],
                              env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/ui", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "gristmill ui did not answer within 30 s"
                time.sleep(0.1)
        assert page.status_code == 200 and "<h1>Catalog</h1>" in page.text
    finally:
        server.terminate()
        _, err = server.communicate(timeout=10)
    assert f"web UI: http://127.0.0.1:{port}/ui" in " ".join(err.split())


def test_error_messages_keep_their_brackets(tmp_path: Path) -> None:
    """Messages are printed as text, not as console markup: "[bold]" or "gristmill[server]" stay as written."""
    gm.FeatureStore.init(tmp_path / "store")
    assert_user_error(gristmill("access", "add", "[bold]x y", "--store", tmp_path / "store"), "'[bold]x y'")


def test_serve_with_several_processes(tmp_path: Path) -> None:
    """``--workers 2``: two server processes share the port; lookups from many connections all answer right,
    a bad token is refused by either, and stopping the command stops every process."""
    from served_store import make_store

    store, tokens = make_store(tmp_path)
    with gristmill_serve(store, args=["--workers", "2"]) as (process, url):
        children = _children(process.pid)
        assert len(children) >= 2, children                     # the worker processes (and uvicorn's helpers)
        body = {"features": ["fs1:1:f1"], "entities": {"acct": ["A", "B", "C"]}}
        clients = [httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['reader']}"})
                   for _ in range(8)]
        for _ in range(5):
            for client in clients:
                answer = client.post("/v1/online/features", json=body)
                assert answer.status_code == 200 and answer.json()["columns"]["f1"] == [5.0, 9.0, None], answer.text
        refused = httpx.post(f"{url}/v1/online/features", json=body, headers={"Authorization": "Bearer gm_x_y"})
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        remote = gm.FeatureStore.connect(url, token=tokens["reader"])
        assert remote.get_online_features(["fs1:1:f1"], {"acct": ["B"]}).to_dict()["f1"] == [9.0]
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"
