"""The client daemon as a real process against a real server: an interval set
run twice (its schedule set while the daemon runs, so settings apply without a
restart), `--stop`, the rotating log, a run missed while the daemon was off,
and a stop in the middle of a backup that lets it reach a safe point."""
import json
import os
import signal
import subprocess
import time

from conftest import BIN, assert_same_tree, wait_for
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_remote import add_server_set, set_volume

MiB = 1 << 20


def reports_on_server(server, name="docs", account="alice") -> list[dict]:
    folder = server.root / "accounts" / account / name / "reports"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def one_file_set(env, server, tmp_path, text: str = "a\n"):
    """This machine logged in to `server`, with set docs over a folder of one small file; the folder."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(text)
    login(env, server.url)
    add_server_set(env, "docs", src)
    return src


def start_daemon(env, *extra) -> subprocess.Popen:
    return subprocess.Popen([BIN / "ironcore", "daemon", "--poll-seconds", "0.5", *extra], env=env.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def log_text(env) -> str:
    logs = env.home / "logs"
    return "".join(p.read_text() for p in sorted(logs.glob("daemon.log*")))


def test_daemon_runs_an_interval_set_twice_and_stops(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}.txt").write_bytes(os.urandom(1000 + i))
    login(env, server.url)
    add_server_set(env, "docs", src)
    daemon = start_daemon(env, "--log-size", "512")
    try:
        wait_for(lambda: "event=daemon-start" in log_text(env), 20, "the daemon", daemon)
        second = env.ironcore("daemon", check=False)   # one daemon per $IRONCORE_HOME
        assert second.returncode == 2 and b"A daemon runs already" in second.stderr
        time.sleep(1.0)
        assert reports_on_server(server) == []          # no schedule yet: nothing runs

        # the schedule is set on the server while the daemon runs: it applies at the next poll
        env.ironcore("set", "edit", "docs", "--schedule", "every 0.05 minutes")    # 3 s
        first = wait_for(lambda: reports_on_server(server), 30, "the first run", daemon)[0]
        assert first["status"] == "ok" and first["reason"] == "interval" and first["snapshot"] == 1
        assert first["files_new"] == 20 and first["bytes_sent"] > 20_000 and first["host"]
        (src / "f03.txt").write_bytes(b"changed between runs\n")
        changed = wait_for(lambda: [r for r in reports_on_server(server) if r["files_changed"] == 1], 30,
                           "a run that saw the change", daemon)[0]
        assert changed["status"] == "ok" and changed["snapshot"] >= 2 and changed["files_unchanged"] == 19
        assert changed["bytes_sent"] < first["bytes_sent"]

        stopped = env.ironcore("daemon", "--stop")
        assert b"stopped" in stopped.stdout
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert env.ironcore("daemon", "--stop", check=False).returncode == 2   # nothing to stop now

    out = tmp_path / "out"
    env.ironcore("restore", "docs", "--to", out)
    assert_same_tree(src, env.restored(out, src))
    shown = env.ironcore("reports", "docs").stdout.decode()
    assert shown.count("interval") >= 2 and "ok" in shown
    log = log_text(env)
    assert "event=run-start set=docs reason=interval" in log and "event=daemon-stop" in log
    assert (env.home / "logs" / "daemon.log.1").exists()           # rotated at 512 bytes
    token = json.loads((env.home / "server.json").read_text())["token"]
    assert "alice pw" not in log and token not in log
    state = json.loads((env.home / "daemon" / "state.json").read_text())
    assert state["sets"]["docs"]["last_status"] == "ok"


def test_a_run_missed_while_the_daemon_was_off_runs_once_at_start(env, server, tmp_path):
    one_file_set(env, server, tmp_path)
    env.env["TZ"] = "UTC"
    now = time.time()
    an_hour_ago = time.strftime("%H:%M", time.gmtime(now - 3600))
    env.ironcore("set", "edit", "docs", "--schedule", f"daily {an_hour_ago}")
    (env.home / "daemon").mkdir(parents=True, exist_ok=True)
    (env.home / "daemon" / "state.json").write_text(json.dumps(   # the last run was three days ago
        {"sets": {"docs": {"first_seen": now - 5 * 86400, "last_run": now - 3 * 86400, "last_status": "ok"}}}))
    daemon = start_daemon(env)
    try:
        run = wait_for(lambda: reports_on_server(server), 30, "the missed run", daemon)[0]
        assert run["reason"] == "missed" and run["status"] == "ok"
        time.sleep(2.0)                                   # four more polls: once only
        assert len(reports_on_server(server)) == 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0


def test_stopping_the_daemon_mid_backup_stops_at_a_safe_point(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(7):
        (src / f"big{i}.bin").write_bytes(os.urandom(8 * MiB))
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.ironcore("set", "edit", "docs", "--schedule", "every 0.02 minutes", "--bandwidth-limit", "8M")
    volume = set_volume(server)
    daemon = start_daemon(env, "--stop-timeout", "60")
    try:
        # the first pack is on its way (2 s at 8 MiB/s); the walk soon waits behind it
        wait_for(lambda: any(p.name.startswith(".tmp-") for p in (volume / "packs").glob("*/*")), 60,
                 "the first pack upload", daemon)
        stop_at = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=40) == 0
        took = time.monotonic() - stop_at
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    report = wait_for(lambda: reports_on_server(server), 10, "the report")[-1]
    assert report["status"] == "stopped" and "safe point" in report["error"], report
    assert took < 30
    assert not (volume.parent / "lease.json").exists()            # the lease was given back
    assert json.loads(env.ironcore("snapshots", "docs", "--json").stdout) == []
    assert "event=stopping" in log_text(env)
    uploaded = [p for p in (volume / "packs").glob("*/*") if not p.name.startswith(".tmp-")]
    assert uploaded                                               # at least one pack made it, kept for reuse

    env.ironcore("set", "edit", "docs", "--bandwidth-limit", "unlimited", "--no-schedule")
    done = env.backup_json("docs")
    assert done["status"] == "ok" and done["snapshot"] == 1 and done["files_new"] == 7
    assert done["bytes_sent"] < 56 * MiB - 15 * MiB               # the packs sent before the stop were adopted
    out = tmp_path / "out"
    env.ironcore("restore", "docs", "--to", out)
    assert_same_tree(src, env.restored(out, src))
    env.ironfs("verify", "alice", "docs", "--data-root", server.root)


def test_reports_api_checks_what_it_keeps_and_shows_it_to_the_owner_only(env, server, tmp_path):
    import ssl

    import httpx

    from serverkit import ADMIN_PW
    one_file_set(env, server, tmp_path)
    ctx = ssl.create_default_context(cafile=str(server.root / "tls" / "cert.pem"))
    ctx.check_hostname = False
    alice = httpx.Client(base_url=server.url, verify=ctx, auth=("alice", "alice pw"))
    admin = httpx.Client(base_url=server.url, verify=ctx, auth=("admin", ADMIN_PW))
    url = "/api/v1/sets/docs/reports"
    try:
        for bad in ({"status": "ok"}, {"status": "great", "started_ns": 1}, {"status": "ok", "started_ns": "1"}):
            answer = alice.post(url, json=bad)
            assert answer.status_code == 400 and answer.json()["error"], answer.text
        assert alice.post(url, content=b"[1, 2]", headers={"Content-Type": "application/json"}).status_code == 400
        for i in range(3):
            answer = alice.post(url, json={"status": "ok", "started_ns": i, "set": "elsewhere", "files_new": i})
            assert answer.status_code == 201 and answer.json()["id"]
        listed = alice.get(url, params={"limit": 2}).json()
        assert [r["files_new"] for r in listed] == [1, 2]            # the newest two, oldest first
        assert all(r["set"] == "docs" and r["account"] == "alice" for r in listed)
        assert alice.get(url, params={"limit": 0}).status_code == 400
        assert alice.get("/api/v1/sets/nope/reports").status_code == 404
        assert admin.get(url).status_code == 404                      # another account's set is not there
        assert httpx.get(server.url + url, verify=ctx).status_code == 401
    finally:
        alice.close()
        admin.close()
