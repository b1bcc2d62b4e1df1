"""Backups over the network: a real `ironfs serve` on loopback over TLS, real
`ironcore` processes as client machines. Round trips, what a second run sends,
quota, the writer lease between machines, a server killed mid-backup, key slots
across password changes, and twenty clients at once."""
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from conftest import BIN, Env, assert_same_tree, wait_for
from serverkit import ADMIN_PW, Server, login, make_root, server  # noqa: F401 (server is a fixture)

MiB = 1 << 20
ALICE_PW = b"alice pw\n"


def make_tree(src: Path, rnd: random.Random, big: int = 3 * MiB) -> None:
    """A mixed tree: small text files, a big random file, an empty file, a symlink, a sparse file."""
    (src / "docs" / "deep").mkdir(parents=True)
    for i in range(120):
        (src / "docs" / f"note{i:03d}.txt").write_bytes(rnd.randbytes(rnd.randint(0, 6000)))
    (src / "docs" / "deep" / "empty").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom(big))
    os.symlink("docs/note000.txt", src / "link")
    with open(src / "sparse.img", "wb") as f:
        f.seek(5 * MiB)
        f.write(b"end")
    os.chmod(src / "docs" / "note001.txt", 0o600)


def machine(tmp_path: Path, name: str) -> Env:
    """Another client machine: its own $IRONCORE_HOME and host name."""
    other = Env(tmp_path / name)
    other.env["IRONCORE_HOSTNAME"] = name
    return other


def add_server_set(env, name, *sources, password=ALICE_PW, extra=()):
    args = ["set", "add", name, "--password-stdin", *extra]
    for s in sources:
        args += ["--source", s]
    return env.ironcore(*args, input=password)


def metric(server, name: str) -> float:
    state_ctx = ssl.create_default_context(cafile=str(server.root / "tls" / "cert.pem"))
    state_ctx.check_hostname = False
    text = httpx.get(server.url + "/metrics", verify=state_ctx, auth=("admin", ADMIN_PW)).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def set_volume(server, account="alice", name="docs") -> Path:
    return server.root / "accounts" / account / name / "volume"


def server_packs(volume: Path) -> list[Path]:
    return [p for p in (volume / "packs").glob("*/*") if not p.name.startswith(".tmp-")]


def verify_clean(env, root, account="alice"):
    out = env.ironfs("verify", account, "--data-root", root)
    assert b"clean" in out.stdout and b"ERROR" not in out.stdout, out.stdout


def test_round_trip_over_tls_and_the_second_run_sends_only_changes(env, server, tmp_path):
    src = tmp_path / "src"
    make_tree(src, random.Random(1))
    login(env, server.url)
    add_server_set(env, "docs", src)
    first = env.backup_json("docs")
    assert first["snapshot"] == 1 and first["files_new"] == 123

    out = tmp_path / "out"
    env.ironcore("restore", "docs", "--to", out)
    assert_same_tree(src, env.restored(out, src))
    assert os.stat(env.restored(out, src) / "sparse.img").st_blocks * 512 < MiB   # restored sparse

    # change one note and append to the big file: the second run sends about that much
    (src / "docs" / "note005.txt").write_bytes(b"new words\n" * 300)
    with open(src / "big.bin", "ab") as f:
        f.write(os.urandom(64 * 1024))
    bytes_in = metric(server, "ironfs_bytes_in_total")
    second = env.backup_json("docs")
    sent = metric(server, "ironfs_bytes_in_total") - bytes_in
    assert second["files_changed"] == 2 and second["files_unchanged"] == 121
    assert sent < 400 * 1024, f"the second run sent {sent} bytes for ~70 KiB of changes"

    out2 = tmp_path / "out2"
    env.ironcore("restore", "docs", "--to", out2)
    assert_same_tree(src, env.restored(out2, src))
    snaps = json.loads(env.ironcore("snapshots", "docs", "--json").stdout)
    assert [s["seq"] for s in snaps] == [1, 2]
    # the older snapshot still restores as it was
    env.ironcore("restore", "docs", "--snapshot", "1", "--path", str(src / "docs" / "note005.txt").lstrip("/"),
                 "--to", tmp_path / "old")
    assert (env.restored(tmp_path / "old", src) / "docs" / "note005.txt").read_bytes() != b"new words\n" * 300

    admin = json.loads(env.ironfs("snapshots", "alice", "docs", "--data-root", server.root, "--json").stdout)
    assert [s["seq"] for s in admin] == [1, 2]
    assert b"docs" in env.ironfs("sets", "alice", "--data-root", server.root).stdout
    env.ironfs("verify", "alice", "docs", "--data-root", server.root, "--read-data", "--password-stdin",
               input=ALICE_PW)


def test_quota_exceeded_keeps_nothing(env, server, tmp_path):
    env.ironfs("account", "add", "small", "--data-root", server.root, "--quota", "1M", "--password-stdin",
               input=b"small pw\n")
    login(env, server.url, "small", "small pw")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"fits\n" * 100)
    add_server_set(env, "docs", src, password=b"small pw\n")
    env.backup_json("docs")
    volume = set_volume(server, "small")
    packs_before = sorted(server_packs(volume))

    (src / "big.bin").write_bytes(os.urandom(3 * MiB))
    proc = env.ironcore("backup", "docs", check=False)
    assert proc.returncode == 5, proc.stderr
    assert b"Quota Exceeded" in proc.stderr and b"Traceback" not in proc.stderr
    assert sorted(server_packs(volume)) == packs_before   # nothing of the refused run is kept
    assert len(list((volume / "log").iterdir())) == 1
    verify_clean(env, server.root, "small")

    (src / "big.bin").unlink()
    (src / "ok2.txt").write_bytes(b"still fits\n")
    assert env.backup_json("docs")["snapshot"] == 2


def test_second_machine_sees_the_set_and_the_lease_names_its_holder(env, tmp_path):
    make_root(env, tmp_path / "root")
    srv = Server(tmp_path / "root", extra=["--lease-seconds", "15"])   # outlives b's attempt on a busy machine
    try:
        src = tmp_path / "src"
        make_tree(src, random.Random(2), big=20 * MiB)
        a = machine(tmp_path, "machine-a")
        b = machine(tmp_path, "machine-b")
        login(a, srv.url)
        add_server_set(a, "docs", src)
        login(b, srv.url)   # the login password opens the set's login slot: b gets the key
        listed = json.loads(b.ironcore("set", "list", "--json").stdout)
        assert [s["name"] for s in listed] == ["docs"] and listed[0]["sources"] == [str(src)]

        # each machine has its own "run scheduled backups here" switch
        b.ironcore("set", "edit", "docs", "--no-schedule-here")
        assert json.loads(b.ironcore("set", "list", "--json").stdout)[0]["scheduled_here"] is False
        assert json.loads(a.ironcore("set", "list", "--json").stdout)[0]["scheduled_here"] is True

        # machine a dies mid-backup holding the lease (after a pack went up)
        crashing = dict(a.env, IRONCORE_CRASH_AT="pack-published:2")
        died = a.ironcore("backup", "docs", env=crashing, check=False)
        assert died.returncode == -signal.SIGKILL
        held = b.ironcore("backup", "docs", check=False)
        assert held.returncode == 4 and b"machine-a" in held.stderr, held.stderr
        verify_clean(b, srv.root)

        lease = set_volume(srv).parent / "lease.json"
        wait_for(lambda: json.loads(lease.read_text())["expires"] < time.time(), 60,
                 "the dead holder's lease to run out")
        report = json.loads(b.ironcore("backup", "docs", "--json").stdout)
        assert report["snapshot"] == 1
        out = tmp_path / "out"
        b.ironcore("restore", "docs", "--to", out)
        assert_same_tree(src, b.restored(out, src))
        # the crashed machine's next run finishes too, and verify stays clean
        assert json.loads(a.ironcore("backup", "docs", "--json").stdout)["snapshot"] == 2
        verify_clean(a, srv.root)
    finally:
        assert srv.stop() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_killed_mid_backup_then_restarted_the_client_retry_finishes(env, tmp_path):
    make_root(env, tmp_path / "root")
    port = free_port()
    srv = Server(tmp_path / "root", listen=f"127.0.0.1:{port}")
    src = tmp_path / "src"
    make_tree(src, random.Random(3), big=8 * MiB)
    for i in range(8):
        (src / f"big{i}.bin").write_bytes(os.urandom(12 * MiB))
    login(env, srv.url)
    add_server_set(env, "docs", src)
    volume = set_volume(srv)
    client = subprocess.Popen([BIN / "ironcore", "backup", "docs", "--json"], env=env.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not server_packs(volume) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert client.poll() is None, "the backup finished before the server could be killed"
    srv.proc.kill()
    srv.proc.wait()   # gone, and its socket with it: the new one can listen at once
    srv = Server(tmp_path / "root", listen=f"127.0.0.1:{port}")
    try:
        stdout, stderr = client.communicate(timeout=300)
        assert client.returncode == 0, stderr
        assert json.loads(stdout)["snapshot"] == 1
        verify_clean(env, srv.root)
        out = tmp_path / "out"
        env.ironcore("restore", "docs", "--to", out)
        assert_same_tree(src, env.restored(out, src))
        # SIGTERM stops it cleanly; an acknowledged commit is there after the restart
        assert srv.stop() == 0
        srv = Server(tmp_path / "root", listen=f"127.0.0.1:{port}")
        assert [s["seq"] for s in json.loads(env.ironcore("snapshots", "docs", "--json").stdout)] == [1]
    finally:
        assert srv.stop() == 0


def test_login_slot_follows_password_changes(env, server, tmp_path):
    src = tmp_path / "src"
    make_tree(src, random.Random(4))
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")

    # the owner changes the password: the login slot is re-wrapped on the server at once
    env.ironcore("passwd", "--password-stdin", input=b"alice pw\nnew password 1\n")
    fresh = machine(tmp_path, "fresh")
    assert b"key is on this machine" in login(fresh, server.url, password="new password 1").stdout
    fresh.ironcore("restore", "docs", "--to", tmp_path / "out1")
    assert_same_tree(src, fresh.restored(tmp_path / "out1", src))

    # the admin resets it: the next login of a machine holding the key re-wraps the slot
    env.ironfs("account", "passwd", "alice", "--data-root", server.root, "--password-stdin",
               input=b"reset password 2\n")
    assert b"now opens with the current password" in login(env, server.url, password="reset password 2").stdout
    third = machine(tmp_path, "third")
    login(third, server.url, password="reset password 2")
    third.ironcore("restore", "docs", "--to", tmp_path / "out2")
    assert_same_tree(src, third.restored(tmp_path / "out2", src))


def private_key_set(env, server, tmp_path, name: str, seed: int):
    """A set on the server under a key the server never sees, backed up once: (source, key file)."""
    src = tmp_path / "src"
    make_tree(src, random.Random(seed))
    keyfile = tmp_path / "set.key"
    keyfile.write_bytes(b"a private key nobody else has\n")
    login(env, server.url)
    add_server_set(env, name, src, extra=["--private-key-file", keyfile])
    env.backup_json(name)
    return src, keyfile


def test_private_key_set_needs_the_key_on_another_machine(env, server, tmp_path):
    src, keyfile = private_key_set(env, server, tmp_path, "docs", 5)
    other = machine(tmp_path, "other")
    login(other, server.url)
    no_key = dict(other.env)
    no_key.pop("IRONCORE_PASSWORD")
    refused = other.ironcore("restore", "docs", "--to", tmp_path / "x", env=no_key, check=False)
    assert refused.returncode != 0 and b"Traceback" not in refused.stderr
    wrong = other.ironcore("restore", "docs", "--to", tmp_path / "x", env=dict(no_key, IRONCORE_PASSWORD="alice pw"),
                           check=False)
    assert wrong.returncode == 3 and b"private" in wrong.stderr
    other.ironcore("restore", "docs", "--to", tmp_path / "out", env=dict(no_key, IRONCORE_PASSWORD=keyfile.read_text().strip()))
    assert_same_tree(src, other.restored(tmp_path / "out", src))


def test_twenty_clients_back_up_to_twenty_accounts_at_once(env, server, tmp_path):
    names = [f"user{i:02d}" for i in range(20)]
    trees = {}
    for i, name in enumerate(names):
        env.ironfs("account", "add", name, "--data-root", server.root, "--quota", "1G", "--password-stdin",
                   input=f"{name} password\n".encode())
        src = tmp_path / "src" / name
        src.mkdir(parents=True)
        rnd = random.Random(i)
        for j in range(30):
            (src / f"f{j}.bin").write_bytes(rnd.randbytes(rnd.randint(0, 200_000)))
        trees[name] = src

    def one_client(name):
        m = machine(tmp_path, "m-" + name)
        pw = f"{name} password"
        login(m, server.url, name, pw)
        add_server_set(m, "docs", trees[name], password=(pw + "\n").encode())
        report = json.loads(m.ironcore("backup", "docs", "--json").stdout)
        m.ironcore("restore", "docs", "--to", tmp_path / "out" / name)
        assert_same_tree(trees[name], m.restored(tmp_path / "out" / name, trees[name]))
        return report["snapshot"]

    with ThreadPoolExecutor(len(names)) as pool:
        assert list(pool.map(one_client, names)) == [1] * 20
    for name in names:
        verify_clean(env, server.root, name)


class CorruptingProxy:
    """A TCP relay that flips one byte in the body of the first pack upload it
    sees, the way a bad link would (plain HTTP on loopback, so it can)."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flipped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, to_server):
        buf, body_left = b"", 0
        try:
            while data := src.recv(1 << 16):
                if not to_server or self.flipped:
                    dst.sendall(buf + data)
                    buf = b""
                    continue
                buf += data
                out = b""
                while buf:
                    if body_left:
                        n = min(body_left, len(buf))
                        out, buf, body_left = out + buf[:n], buf[n:], body_left - n
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = buf[:end + 4]
                    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                    length = int(length.group(1)) if length else 0
                    if head.startswith(b"PUT ") and b"/packs/" in head.split(b"\r\n", 1)[0] and length > 200:
                        if len(buf) < end + 4 + 101:
                            break   # wait for the first bytes of the body
                        at = end + 4 + 100
                        buf = buf[:at] + bytes([buf[at] ^ 0xFF]) + buf[at + 1:]
                        self.flipped = True
                    out, buf, body_left = out + head, buf[end + 4:], length
                dst.sendall(out)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_a_pack_damaged_on_the_way_is_rejected_whole_and_sent_again(env, tmp_path):
    make_root(env, tmp_path / "root")
    srv = Server(tmp_path / "root", extra=["--plain-http"])
    proxy = CorruptingProxy(srv.port)
    try:
        src = tmp_path / "src"
        make_tree(src, random.Random(6))
        login(env, f"http://127.0.0.1:{proxy.port}")
        add_server_set(env, "docs", src)
        assert env.backup_json("docs")["snapshot"] == 1
        assert proxy.flipped
        log = (srv.root / "logs" / "ironfs.log").read_text()
        assert re.search(r"endpoint=put_pack status=400", log), "the damaged upload was not refused"
        assert re.search(r"endpoint=put_pack status=201", log)
        verify_clean(env, srv.root)
        env.ironcore("restore", "docs", "--to", tmp_path / "out")
        assert_same_tree(src, env.restored(tmp_path / "out", src))
    finally:
        proxy.close()
        assert srv.stop() == 0


def test_log_feed_long_poll_wakes_on_a_commit_and_ends_on_sigterm(env, tmp_path):
    make_root(env, tmp_path / "root")
    srv = Server(tmp_path / "root")
    try:
        src = tmp_path / "src"
        make_tree(src, random.Random(7))
        login(env, srv.url)
        add_server_set(env, "docs", src)
        state = json.loads((env.home / "server.json").read_text())
        ctx = ssl.create_default_context(cadata=state["cert_pem"])
        ctx.check_hostname = False
        api = httpx.Client(base_url=srv.url, verify=ctx, headers={"Authorization": f"Bearer {state['token']}"},
                           timeout=90)
        for bad in ("nan", "-1", "inf", "x"):
            assert api.get("/api/v1/sets/docs/log", params={"after": 0, "wait": bad}).status_code == 400
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            poll = pool.submit(api.get, "/api/v1/sets/docs/log", params={"after": 0, "wait": 50})
            time.sleep(0.5)
            env.backup_json("docs")
            answer = poll.result()
            assert answer.json() == {"head": 1, "seqs": [1]} and time.monotonic() - started < 30
            # a poll still waiting when the server is told to stop does not hold it up
            pending = pool.submit(api.get, "/api/v1/sets/docs/log", params={"after": 1, "wait": 60})
            time.sleep(0.5)
            stopping = time.monotonic()
            assert srv.stop() == 0
            assert time.monotonic() - stopping < 15
            assert pending.result().json()["head"] == 1
    finally:
        srv.stop()
