"""What a new user meets, tried as one would: a source folder that has gone, a
server that cannot be reached, two backups in one second, the demo, and the
small things of the command line (progress counts, table header, weekday names,
help texts, errors that say what to use instead)."""
import json
import os
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from conftest import BIN
from serverkit import login, make_root, server  # noqa: F401 (server is a fixture)

ALICE_PW = b"alice pw\n"


def add_server_set(env, name, *sources, extra=()):
    args = ["set", "add", name, "--password-stdin", *extra]
    for s in sources:
        args += ["--source", s]
    return env.ironcore(*args, input=ALICE_PW)


def backed_up_server_set(env, server, src: Path) -> None:
    """Server set docs of one small file, backed up once, on a logged-in machine."""
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.ironcore("backup", "docs", "--json")


def snapshots_json(env, name="s") -> list[dict]:
    return json.loads(env.ironcore("snapshots", name, "--json").stdout)


def unmount(path) -> None:
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", str(path)], check=False)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- 21: two backups in one second ---------------------------------------------------------------
def test_two_snapshots_in_one_second_have_one_unique_name_everywhere(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    login(env, server.url)
    add_server_set(env, "docs", src)
    # Two runs in one second happen by chance (a backup of a small folder takes well under
    # one on an idle machine); on a loaded one they cannot be relied on, so both runs see a
    # wall clock held within one second (only time.time_ns: what names a snapshot).
    shim = tmp_path / "held-clock"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import time\n"
        "time.time_ns = lambda: 1_800_000_000 * 10**9 + time.monotonic_ns() % 10**9\n")
    held = dict(env.env, PYTHONPATH=str(shim))
    for run in (1, 2):
        (src / "which.txt").write_text(f"run {run}\n")
        env.ironcore("backup", "docs", "--json", env=held)
    snaps = snapshots_json(env, "docs")
    assert len(snaps) == 2 and len({s["time_ns"] // 10**9 for s in snaps}) == 1, snaps
    counter = 2
    first, second = snaps[-2], snaps[-1]
    cli_names = [s["name"] for s in snaps]
    assert len(set(cli_names)) == len(cli_names), cli_names
    assert second["name"] == f"{first['name']}-{second['seq']}"

    # the API lists the same names
    state = json.loads((env.home / "server.json").read_text())
    ctx = ssl.create_default_context(cadata=state["cert_pem"])
    with httpx.Client(base_url=server.url, verify=ctx, timeout=30) as api:
        listed = api.get("/api/v1/sets/docs/snapshots", headers={"Authorization": f"Bearer {state['token']}"})
        assert [s["name"] for s in listed.json()] == cli_names
        dav = api.request("PROPFIND", "/dav/docs/snapshots/", headers={"Depth": "1"}, auth=("alice", "alice pw"))
        assert dav.status_code == 207, dav.text[:300]
        hrefs = [unquote(h.text).rstrip("/").rsplit("/", 1)[-1]
                 for h in ET.fromstring(dav.content).iter("{DAV:}href")]
        assert sorted(h for h in hrefs if h != "snapshots") == sorted(cli_names)

    # FUSE shows them too
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env.ironcore("mount", "docs", mnt, input=ALICE_PW)
    try:
        assert sorted(os.listdir(mnt / "docs" / "snapshots")) == sorted(cli_names)
        inside = mnt / "docs" / "snapshots" / second["name"] / str(src).lstrip("/") / "which.txt"
        assert inside.read_text() == f"run {counter}\n"
    finally:
        unmount(mnt)

    # and each name restores its own snapshot
    for snap, text in ((first, f"run {counter - 1}\n"), (second, f"run {counter}\n")):
        target = tmp_path / f"restore-{snap['seq']}"
        env.ironcore("restore", "docs", "--snapshot", snap["name"], "--to", target, "--json")
        assert (target / str(src).lstrip("/") / "which.txt").read_text() == text


# --- 20: a server that cannot be reached -----------------------------------------------------------
def read_until(proc, pattern: bytes, seconds: float) -> tuple[bytes, float | None]:
    """What `proc` wrote to its pipe until `pattern` appeared (and when), or the deadline passed."""
    import selectors
    seen, start = b"", time.monotonic()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() - start < seconds:
            if sel.select(timeout=0.2):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
                if pattern in seen:
                    return seen, time.monotonic() - start
    return seen, None


def test_an_unreachable_server_is_named_at_once_and_interactive_commands_give_up_soon(env, server, tmp_path):
    backed_up_server_set(env, server, tmp_path / "src")
    server.stop()
    run_env = dict(env.env)
    run_env.pop("IRONCORE_RETRY_SECONDS", None)
    run_env.pop("IRONCORE_INTERACTIVE_RETRY_SECONDS", None)
    # on a terminal (util-linux script), with the default budget of a command someone waits at
    started = time.monotonic()
    tty = subprocess.Popen(["script", "-qec", f"{BIN / 'ironcore'} snapshots docs", "/dev/null"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=run_env)
    # a backup meanwhile (no terminal) keeps its longer budget, here shortened to 40 s
    backup = subprocess.Popen([BIN / "ironcore", "backup", "docs"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=dict(run_env, IRONCORE_RETRY_SECONDS="40"))
    try:
        seen, after = read_until(tty, b"giving up in", 10)
        assert after is not None and b"Cannot reach" in seen, seen   # said at once, not after the budget
        rest, _ = read_until(tty, b"error:", 60)
        tty.wait(timeout=10)
        took = time.monotonic() - started
        text = (seen + rest).decode(errors="replace")
        assert tty.returncode != 0 and "error: Cannot reach" in text, text
        assert 10 < took < 60, took   # the interactive budget (20 s), not the backup's 300 s
        counts = [int(n) for n in __import__("re").findall(r"giving up in (\d+) s", text)]
        assert len(set(counts)) >= 5 and counts == sorted(counts, reverse=True), counts   # a countdown
        assert backup.poll() is None, "the backup gave up as soon as the interactive command"
        said, when = read_until(backup, b"Retrying for up to", 5)
        assert when is not None and b"Cannot reach" in said, said
    finally:
        for proc in (tty, backup):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


# --- 19: a source folder that has gone ---------------------------------------------------------------
def test_a_missing_or_emptied_source_fails_the_run_and_keeps_the_last_snapshot(env, tmp_path):
    src = tmp_path / "share"
    (src / "sub").mkdir(parents=True)
    for i in range(30):
        (src / "sub" / f"f{i}.txt").write_bytes(os.urandom(1000 + i))
    env.add_set("s", src)
    env.backup_json("s")
    gone = tmp_path / "share.renamed"
    src.rename(gone)   # a renamed share, an unmounted disk
    proc = env.ironcore("backup", "s", check=False)
    assert proc.returncode != 0 and b"does not exist" in proc.stderr and b"--allow-empty-source" in proc.stderr, \
        proc.stderr
    src.mkdir()        # the empty mount point left behind
    proc = env.ironcore("backup", "s", check=False)
    assert proc.returncode != 0 and b"is empty" in proc.stderr, proc.stderr
    assert len(snapshots_json(env)) == 1   # nothing was committed
    env.ironcore("restore", "s", "--to", tmp_path / "r")
    assert len(os.listdir(tmp_path / "r" / str(src).lstrip("/") / "sub")) == 30
    # a set that says so backs the emptiness up
    env.ironcore("set", "edit", "s", "--allow-empty-source")
    assert env.backup_json("s")["deleted"] == 31
    env.ironcore("set", "edit", "s", "--refuse-empty-source")
    src.rmdir()
    assert env.ironcore("backup", "s", check=False).returncode != 0


def test_a_missing_source_fails_a_server_run_and_its_report_says_why(env, server, tmp_path):
    src = tmp_path / "disk"
    backed_up_server_set(env, server, src)
    (src / "a.txt").unlink()
    src.rmdir()
    proc = env.ironcore("backup", "docs", check=False)
    assert proc.returncode != 0 and b"does not exist" in proc.stderr, proc.stderr
    assert len(snapshots_json(env, "docs")) == 1
    last = json.loads(env.ironcore("reports", "docs", "--json").stdout)[-1]
    assert last["status"] == "failed" and "does not exist" in last["error"], last
    env.ironcore("set", "edit", "docs", "--allow-empty-source")
    assert json.loads(env.ironcore("backup", "docs", "--json").stdout)["files_deleted"] >= 1
    assert len(snapshots_json(env, "docs")) == 2


# --- 23: the small things of the command line -----------------------------------------------------------
def on_terminal(env, command: str) -> str:
    """`command` run on a pseudo-terminal (util-linux script): what a person sees."""
    proc = subprocess.run(["script", "-qec", command, "/dev/null"], stdin=subprocess.DEVNULL, capture_output=True,
                          env=env.env, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")
    return proc.stdout.decode(errors="replace")


def test_progress_counts_the_files_of_a_small_backup_and_of_a_restore(env, tmp_path):
    import re
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):   # fewer than the 64 the display used to wait for
        (src / f"n{i}.txt").write_bytes(os.urandom(2000))
    (src / "big.bin").write_bytes(os.urandom(24 << 20))   # long enough for the display to draw
    env.add_set("s", src)
    backed_up = on_terminal(env, f"{BIN / 'ironcore'} backup s")
    restored = on_terminal(env, f"{BIN / 'ironcore'} restore s --to {tmp_path / 'r'}")
    for shown in (restored, backed_up):   # the display's "N files" (not the summary's "N files, M folders")
        counts = [int(n) for n in re.findall(r"(\d+) files(?!,)", shown)]
        assert counts and max(counts) >= 41, shown[-2000:]


def test_table_header_weekday_names_login_help_and_local_set_errors(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    env.add_set("s", src)
    env.ironcore("backup", "s")
    table = env.ironcore("snapshots", "s").stdout.decode().splitlines()
    assert table[0].split() == ["SEQ", "NAME", "(UTC)", "HOST", "SOURCES"] and table[1].split()[0] == "1", table
    # login --help speaks of the account password, not a set's
    helptext = env.ironcore("login", "--help").stdout.decode()
    assert "account password" in helptext and "set's password" not in helptext, helptext
    # --weekly-on takes the short names schedules take; a local set says what to use instead
    proc = env.ironcore("set", "edit", "s", "--keep-weekly", "4", "--weekly-on", "sat", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "is not one of" not in err, err
    assert f"ironfs retention apply {env.volume} --policy" in err and '"weekly_on": "saturday"' in err, err
    proc = env.ironcore("set", "edit", "s", "--schedule", "weekly sat,mon 22:00", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "cron" in err and "ironcore backup s" in err, err
    for args in (["reports", "s"], ["seed-load", "s", "--to", tmp_path / "seed"]):
        proc = env.ironcore(*args, check=False)
        assert proc.returncode == 2 and b"local set" in proc.stderr and b"ironcore backup s" in proc.stderr, \
            proc.stderr
    bad = env.ironcore("set", "edit", "s", "--keep-weekly", "4", "--weekly-on", "someday", check=False)
    assert bad.returncode == 2 and b"not a weekday" in bad.stderr, bad.stderr


def test_weekly_on_short_names_reach_a_server_set(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.ironcore("set", "edit", "docs", "--keep-weekly", "4", "--weekly-on", "Sat", "--schedule", "weekly mon,fri 22:00")
    info = [s for s in json.loads(env.ironcore("set", "list", "--json").stdout) if s["name"] == "docs"][0]
    assert info["schedule"] == ["weekly mon,fri 22:00"], info
    state = json.loads((env.home / "server.json").read_text())
    ctx = ssl.create_default_context(cadata=state["cert_pem"])
    with httpx.Client(base_url=server.url, verify=ctx, timeout=30) as api:
        settings = api.get("/api/v1/sets/docs", headers={"Authorization": f"Bearer {state['token']}"}).json()["settings"]
    assert settings["retention"]["weekly_on"] == "saturday", settings


# --- 22: the demo -------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent


def run_demo(tmp_path: Path, folder: str, on_a_terminal: bool) -> tuple[str, Path]:
    """scripts/demo.sh into its own folder, stdin from /dev/null, on a pseudo-terminal or not."""
    demo = tmp_path / folder
    env = dict(os.environ, IRONCORE_DEMO_DIR=str(demo))
    command = ["script", "-qec", "bash scripts/demo.sh", "/dev/null"] if on_a_terminal else ["bash", "scripts/demo.sh"]
    proc = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=240)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    return out, demo


def stop_demo(out: str, demo: Path) -> None:
    pid = int((demo / "server.pid").read_text())
    stop = out.split("Stop the server:", 1)[1].strip().splitlines()[0].strip()
    subprocess.run(["bash", "-c", stop], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), "the printed stop command left the server running"


def test_the_demo_asks_nothing_and_leaves_a_server_that_its_printed_commands_reach_stop_and_start(tmp_path):
    import hashlib
    for folder, on_a_terminal in (("tty", True), ("pipe", False)):
        out, demo = run_demo(tmp_path, folder, on_a_terminal)
        try:
            assert "Password:" not in out and "restored tree is identical to the source" in out, out[-3000:]
            url = out.split("WebDAV:", 1)[1].split()[0]
            assert url.startswith("https://127.0.0.1:") and url.endswith("/dav/"), url
            cert = demo / "server" / "tls" / "cert.pem"
            der = ssl.PEM_cert_to_DER_cert(cert.read_text())
            assert f"{cert} (self-signed), SHA-256 {hashlib.sha256(der).hexdigest()}" in out, out[-2000:]
            admin = out.split("Admin:", 1)[1].split("password", 1)[1].split()[0]
            # the script has ended: its server still answers, with the credentials it printed
            ctx = ssl.create_default_context(cafile=str(cert))
            with httpx.Client(verify=ctx, timeout=30) as web:
                assert web.request("PROPFIND", url.replace("127.0.0.1", "localhost") + "demo/",
                                   headers={"Depth": "1"}, auth=("demo", "demo-password")).status_code == 207
                assert web.get(url.replace("/dav/", "/api/v1/whoami"), auth=("admin", admin)).status_code == 200
            exports = out.split("To use it from another shell:", 1)[1].strip().splitlines()[0].strip()
            assert f"IRONCORE_HOME={demo / 'home'}" in exports and f"IRONFS_DATA_ROOT={demo / 'server'}" in exports
        finally:
            stop_demo(out, demo)
    # the printed start command brings the last one back on its port, where the login still works
    start = out.split("Start it again", 1)[1].splitlines()[1].strip()
    subprocess.run(["bash", "-c", start], check=True, timeout=30)
    try:
        shell = f"{exports}; for i in $(seq 1 100); do ironcore snapshots demo && exit 0; sleep 0.2; done; exit 1"
        listed = subprocess.run(["bash", "-c", shell], capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert listed.returncode == 0 and listed.stdout.decode().count(str(demo / "sample")) == 2, listed
    finally:
        stop_demo(out, demo)
