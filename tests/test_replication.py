"""Replication with real processes on loopback: two `ironfs serve` sources, real
`ironcore` clients backing up into them, and `ironfs replica run` following
both. The replica must end byte-identical to its sources (logs and packs),
verify-clean, restorable through `ironfs serve --read-only`, and it must come
through SIGKILLs of itself and of a source, and a link that cuts and corrupts."""
import filecmp
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, assert_same_tree
from ironfs.format import log as commitlog
from ironfs.format.fsutil import write_atomic
from ironfs.format.volume import Volume
from ironfs.server import feed as feedmod
from ironfs.store.dataroot import DataRoot
from ironfs.store.sets import SetStore
from serverkit import ADMIN_PW, Server, login, make_root
from test_remote import ALICE_PW, add_server_set, free_port, machine, make_tree

MiB = 1 << 20


class Replica:
    """`ironfs replica run` as a process, and what it shows."""

    def __init__(self, env, root: Path, config: Path, extra=()):
        self.env, self.root, self.config, self.extra = env, root, config, extra
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([BIN / "ironfs", "replica", "run", "--data-root", self.root,
                                      "--config", self.config, *self.extra],
                                     env=dict(self.env.env, IRONCORE_LOG="INFO"),
                                     stdout=subprocess.DEVNULL, stderr=open(self.root.parent / "replica.log", "ab"))

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def status(self) -> list[dict]:
        return json.loads(self.env.ironfs("replica", "status", "--data-root", self.root, "--json").stdout)

    def log(self) -> str:
        return (self.root.parent / "replica.log").read_text(errors="replace")

    def source_root(self, name: str) -> Path:
        return self.root / "sources" / name


def write_config(path: Path, sources: dict[str, dict]) -> Path:
    lines = []
    for name, table in sources.items():
        lines.append(f"[sources.{name}]")
        lines += [f'{k} = "{v}"' for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def volumes(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root / "accounts")): p for p in sorted((root / "accounts").glob("*/*/volume"))}


def assert_same_volumes(source_root: Path, replica_root: Path) -> None:
    """Every volume of the source is on the replica with the same commits and packs, byte for byte."""
    src, rep = volumes(source_root), volumes(replica_root)
    assert src.keys() == rep.keys()
    for key, sv in src.items():
        rv = rep[key]
        for sub, pattern in (("log", "*.commit"), ("packs", "*/*")):
            names = sorted(p.relative_to(sv).as_posix() for p in sv.glob(f"{sub}/{pattern}") if ".tmp-" not in p.name)
            assert names == sorted(p.relative_to(rv).as_posix() for p in rv.glob(f"{sub}/{pattern}")
                                   if ".tmp-" not in p.name), key
            match, mismatch, errors = filecmp.cmpfiles(sv, rv, names, shallow=False)
            assert not mismatch and not errors, (key, mismatch, errors)


def eventually_same_volumes(source_root: Path, replica_root: Path, timeout: float = 10.0) -> None:
    """assert_same_volumes, given a moment: a replica moves the packs a commit
    drops into held/ just after it writes the commit, which is all that
    wait_caught_up waits for."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert_same_volumes(source_root, replica_root)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def source_heads(root: Path) -> dict[str, int]:
    return {key: len(list((v / "log").glob("*.commit"))) for key, v in volumes(root).items()}


def wait_caught_up(replica: Replica, sources: dict[str, Path], timeout: float = 90) -> None:
    """Until each replica volume holds every commit of its source's volume."""
    deadline = time.monotonic() + timeout
    while True:
        behind = []
        for name, root in sources.items():
            mine = source_heads(replica.source_root(name)) if replica.source_root(name).exists() else {}
            behind += [(name, k, mine.get(k), n) for k, n in source_heads(root).items() if mine.get(k) != n]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replica still behind: {behind}\n{replica.log()[-3000:]}")
        time.sleep(0.1)


def token(env, root: Path) -> str:
    return env.ironfs("replica", "token", "--data-root", root).stdout.decode().strip()


def fingerprint(root: Path) -> str:
    import hashlib
    import ssl
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert((root / "tls" / "cert.pem").read_text())).hexdigest()


def test_two_sources_mirror_restore_read_only_promote_and_replay_gc(env, tmp_path):
    """Same account and set names on both sources stay apart; the copy restores
    through a read-only server; gc on a source is replayed, its dropped packs held."""
    roots = {"east": tmp_path / "east", "west": tmp_path / "west"}
    for root in roots.values():
        make_root(env, root)
    east, west = Server(roots["east"]), Server(roots["west"])
    servers = [east, west]
    try:
        a, b = machine(tmp_path, "laptop-a"), machine(tmp_path, "laptop-b")
        srcs = {"east": tmp_path / "src-a", "west": tmp_path / "src-b"}
        make_tree(srcs["east"], random.Random(1))
        make_tree(srcs["west"], random.Random(2))
        login(a, east.url)
        add_server_set(a, "docs", srcs["east"])
        a.backup_json("docs")
        login(b, west.url)
        add_server_set(b, "docs", srcs["west"])   # the same account and set names as on east
        b.backup_json("docs")

        config = write_config(tmp_path / "replica.toml", {
            "east": {"url": east.url, "token": token(env, roots["east"]), "fingerprint": fingerprint(roots["east"])},
            "west": {"url": west.url, "user": "admin", "password": ADMIN_PW},
        })
        replica = Replica(env, tmp_path / "replica", config, extra=("--delete-delay", "1"))
        try:
            wait_caught_up(replica, roots)
            # near real time: a backup while the replica idles is there within seconds (measured in the bench)
            (srcs["east"] / "docs" / "note003.txt").write_bytes(b"changed on east\n" * 100)
            a.backup_json("docs")
            wait_caught_up(replica, roots, timeout=30)
            for name, root in roots.items():
                assert_same_volumes(root, replica.source_root(name))
                env.ironfs("verify", "alice", "docs", "--data-root", replica.source_root(name), "--read-data",
                           "--password-stdin", input=ALICE_PW)
            status = replica.status()
            assert {s["source"] for s in status} == {"east", "west"}
            for s in status:
                assert [(v["account"], v["set"]) for v in s["volumes"]] == [("alice", "docs")]
                assert all(v["position"] == v["source_position"] for v in s["volumes"])
            assert b"east" in env.ironfs("replica", "status", "--data-root", replica.root).stdout

            # the source's retention and gc are replayed; what gc dropped is held for --delete-delay
            for _ in range(2):
                (srcs["east"] / "big.bin").write_bytes(os.urandom(3 * MiB))
                a.backup_json("docs")
            env.ironfs("retention", "apply", roots["east"] / "accounts" / "alice" / "docs" / "volume",
                       "--policy", '{"last": 1}')
            env.ironfs("gc", "alice", "--data-root", roots["east"])
            wait_caught_up(replica, roots, timeout=30)
            eventually_same_volumes(roots["east"], replica.source_root("east"))
            held = [s for s in replica.status() if s["source"] == "east"][0]
            assert held["held_packs"] > 0 and held["held_bytes"] > 3 * MiB
            assert list((replica.source_root("east") / "held" / "alice" / "docs").iterdir())
            env.ironfs("verify", "alice", "docs", "--data-root", replica.source_root("east"))
        finally:
            assert replica.stop() == 0

        # a replica's data root is served read-only: restores work, backups are refused
        with pytest.raises(AssertionError, match="read-only"):
            env.ironfs("serve", "--data-root", replica.source_root("east"), "--listen", "127.0.0.1:0")
        reader = Server(replica.source_root("east"), extra=("--read-only",))
        servers.append(reader)
        c = machine(tmp_path, "restorer")
        login(c, reader.url)
        c.ironcore("restore", "docs", "--to", tmp_path / "out")
        assert_same_tree(srcs["east"], c.restored(tmp_path / "out", srcs["east"]))
        refused = c.ironcore("set", "add", "other", "--source", srcs["east"], "--password-stdin", input=ALICE_PW,
                             check=False)
        assert refused.returncode != 0 and b"read-only replica" in refused.stderr
        reader.stop()

        # east is lost: promote its copy, serve it writable, and back up into it
        east.proc.kill()
        env.ironfs("replica", "promote", "--data-root", replica.root, "--source", "east")
        promoted = Server(replica.source_root("east"))
        servers.append(promoted)
        d = machine(tmp_path, "after-loss")
        login(d, promoted.url)
        d.ironcore("restore", "docs", "--to", tmp_path / "out2")
        assert_same_tree(srcs["east"], d.restored(tmp_path / "out2", srcs["east"]))
        (srcs["east"] / "docs" / "note004.txt").write_bytes(b"after the loss\n")
        assert d.backup_json("docs")["snapshot"] > 0
        env.ironfs("verify", "alice", "docs", "--data-root", replica.source_root("east"))
    finally:
        for srv in servers:
            srv.stop()


def applied_counts(replica: Replica) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for where, seq in re.findall(r"event=applied where=(\S+) seq=(\d+)", replica.log()):
        counts[(where, int(seq))] = counts.get((where, int(seq)), 0) + 1
    return counts


def test_sigkill_of_replica_and_source_during_heavy_backups_converges(env, tmp_path):
    root = tmp_path / "east"
    make_root(env, root)
    port = free_port()
    east = Server(root, listen=f"127.0.0.1:{port}")
    src = tmp_path / "src"
    make_tree(src, random.Random(5))
    a = machine(tmp_path, "laptop")
    login(a, east.url)
    add_server_set(a, "docs", src)
    config = write_config(tmp_path / "replica.toml", {"east": {"url": east.url, "token": token(env, root)}})
    replica = Replica(env, tmp_path / "replica", config)
    rnd = random.Random(7)
    failures = []

    def backups():
        try:
            for i in range(6):
                for j in range(4):   # heavy: 4 new 3 MiB files and changed notes every run
                    (src / f"run{i}-{j}.bin").write_bytes(os.urandom(3 * MiB))
                (src / "docs" / f"note{i:03d}.txt").write_bytes(os.urandom(20000))
                a.backup_json("docs")
        except BaseException as exc:   # reported by the main thread
            failures.append(exc)

    worker = threading.Thread(target=backups)
    worker.start()
    try:
        kills = 0
        while worker.is_alive():
            time.sleep(rnd.uniform(0.3, 1.5))
            if kills == 2:   # once: the source itself dies and comes back on the same port
                east.proc.kill()
                east.proc.wait()
                time.sleep(0.5)
                east = Server(root, listen=f"127.0.0.1:{port}")
            replica.kill()
            replica.start()
            kills += 1
        worker.join()
        assert not failures, failures
        assert kills >= 3, "the backups ended before the faults could be injected"
        wait_caught_up(replica, {"east": root})
        assert_same_volumes(root, replica.source_root("east"))
        env.ironfs("verify", "alice", "docs", "--data-root", replica.source_root("east"), "--read-data",
                   "--password-stdin", input=ALICE_PW)
        counts = applied_counts(replica)
        assert counts and max(counts.values()) == 1, counts   # no commit applied twice
    finally:
        replica.stop()
        east.stop()


class FaultyLink:
    """A relay between the replica and a plain-HTTP source that cuts the first pack
    download halfway and flips a byte in the second pack and in the first commit it
    carries; everything after passes untouched."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.packs = self.commits = 0
        self.cut = self.flipped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    @staticmethod
    def _read_head(sock, buf: bytes) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        return buf[:end], buf[end:]

    @staticmethod
    def _read_body(sock, head: bytes, buf: bytes) -> tuple[bytes, bytes]:
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        while len(buf) < length:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError
            buf += data
        return buf[:length], buf[length:]

    def _relay(self, client):
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        cbuf = ubuf = b""
        try:
            while True:
                request, cbuf = self._read_head(client, cbuf)
                request_body, cbuf = self._read_body(client, request, cbuf)
                upstream.sendall(request + request_body)
                head, ubuf = self._read_head(upstream, ubuf)
                body, ubuf = self._read_body(upstream, head, ubuf)
                length = len(body)
                target = request.split(b" ", 2)[1]
                action = None
                with self.lock:
                    if b"/packs/" in target and head.startswith(b"HTTP/1.1 20") and length > 1000:
                        self.packs += 1
                        action = {1: "cut", 2: "flip"}.get(self.packs)
                    elif b"/log/" in target and head.startswith(b"HTTP/1.1 200"):
                        self.commits += 1
                        action = "flip" if self.commits == 1 else None
                    self.cut += action == "cut"
                    self.flipped += action == "flip"
                if action == "cut":
                    client.sendall(head + body[:length // 2])
                    return
                if action == "flip":
                    body = body[:length // 2] + bytes([body[length // 2] ^ 0x5A]) + body[length // 2 + 1:]
                client.sendall(head + body)
        except (OSError, ConnectionError, AttributeError):
            pass
        finally:
            for s in (client, upstream):
                s.close()

    def close(self):
        self.listener.close()


def test_a_link_that_cuts_and_corrupts_is_detected_and_recovered(env, tmp_path):
    root = tmp_path / "east"
    make_root(env, root)
    east = Server(root, extra=("--plain-http",))
    src = tmp_path / "src"
    make_tree(src, random.Random(9))
    a = machine(tmp_path, "laptop")
    login(a, east.url)
    add_server_set(a, "docs", src)
    a.backup_json("docs")
    (src / "more.bin").write_bytes(os.urandom(2 * MiB))
    a.backup_json("docs")
    link = FaultyLink(east.port)
    config = write_config(tmp_path / "replica.toml", {
        "east": {"url": f"http://127.0.0.1:{link.port}", "user": "admin", "password": ADMIN_PW}})
    replica = Replica(env, tmp_path / "replica", config, extra=("--delete-delay", "0.00003"))   # 2.6 s
    try:
        wait_caught_up(replica, {"east": root})
        assert (link.cut, link.flipped) == (1, 2)
        assert_same_volumes(root, replica.source_root("east"))
        env.ironfs("verify", "alice", "docs", "--data-root", replica.source_root("east"), "--read-data",
                   "--password-stdin", input=ALICE_PW)
        log = replica.log()
        assert log.count("arrived damaged") >= 2, log[-3000:]
        assert max(applied_counts(replica).values()) == 1

        # what the source's gc drops is held for --delete-delay, then deleted
        (src / "more.bin").write_bytes(os.urandom(2 * MiB))
        a.backup_json("docs")
        env.ironfs("retention", "apply", root / "accounts" / "alice" / "docs" / "volume", "--policy", '{"last": 1}')
        env.ironfs("gc", "alice", "--data-root", root)
        wait_caught_up(replica, {"east": root})
        assert_same_volumes(root, replica.source_root("east"))
        deadline = time.monotonic() + 30
        while replica.status()[0]["held_packs"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert replica.status()[0]["held_packs"] == 0
        assert not list((replica.source_root("east") / "held").rglob("*/*/*"))
        assert "event=purged" in replica.log()
    finally:
        replica.stop()
        link.close()
        east.stop()


def test_the_feed_is_for_the_admin_and_a_replica_token_opens_nothing_else(env, tmp_path):
    import httpx
    root = tmp_path / "east"
    make_root(env, root)
    east = Server(root, extra=("--plain-http",))
    try:
        feed = f"{east.url}/api/v1/replication/state"
        assert httpx.get(feed, auth=("alice", "alice pw")).status_code == 403
        assert httpx.get(feed).status_code == 401
        assert httpx.get(feed, params={"wait": "nan"}, auth=("admin", ADMIN_PW)).status_code == 400
        state = httpx.get(feed, auth=("admin", ADMIN_PW)).json()
        assert {a["name"] for a in state["accounts"]} == {"admin", "alice"}
        bearer = {"Authorization": f"Bearer {token(env, root)}"}
        assert httpx.get(feed, headers=bearer).json()["generation"] == state["generation"]
        for method, path in (("GET", "/api/v1/sets"), ("PUT", "/api/v1/sets/x"), ("POST", "/api/v1/tokens"),
                             ("GET", "/metrics")):
            assert httpx.request(method, east.url + path, headers=bearer, json={}).status_code == 403, path
        # only the admin may ask for a replication token; a machine token may not reach the feed
        assert httpx.post(f"{east.url}/api/v1/tokens", auth=("alice", "alice pw"),
                          json={"host": "x", "role": "replica"}).status_code == 403
        machine_token = httpx.post(f"{east.url}/api/v1/tokens", auth=("admin", ADMIN_PW),
                                   json={"host": "laptop"}).json()["token"]
        assert httpx.get(feed, headers={"Authorization": f"Bearer {machine_token}"}).status_code == 403
        # a long poll with the current generation waits, and wakes when something changes
        started = time.monotonic()
        env.ironfs("account", "add", "bob", "--data-root", root, "--password-stdin", input=b"bob password\n")
        later = httpx.get(feed, params={"after": state["generation"], "wait": 20}, headers=bearer, timeout=30).json()
        assert later["generation"] != state["generation"] and time.monotonic() - started < 15
        assert "bob" in {a["name"] for a in later["accounts"]}
    finally:
        east.stop()


def test_the_feed_reads_again_only_the_sets_that_changed(env, tmp_path, monkeypatch):
    """A wake-up of the feed costs a few stat calls per set: the log of a set is
    listed again only when this process changed the set or its files' stamps
    moved (another process), and the generation moves exactly then."""
    make_root(env, tmp_path / "root")
    root = DataRoot(str(tmp_path / "root"))
    sets = SetStore(root)
    for i in range(5):
        config = Volume.create(str(tmp_path / f"v{i}"), {"login": b"pw"},
                               kdf_params={"alg": "argon2id", "time_cost": 1, "memory_cost": 1024,
                                           "parallelism": 1}).config
        sets.create("alice", f"set{i}", {"sources": ["/data"]}, config)
    listed = []
    real_list_seqs = commitlog.list_seqs
    monkeypatch.setattr(commitlog, "list_seqs", lambda path: listed.append(path) or real_list_seqs(path))
    feed = feedmod.FeedApi(root, sets, None)

    first = feed.state()
    assert len(listed) == 5 and len(first["accounts"][-1]["sets"]) == 5
    listed.clear()
    assert feed.state()["generation"] == first["generation"] and listed == []

    sets.update_settings("alice", "set2", {"excludes": ["*.tmp"]})      # through this process
    second = feed.state()
    assert second["generation"] != first["generation"] and len(listed) == 1 and "set2" in listed[0]

    listed.clear()                                                        # as another process would
    info_path = os.path.join(sets.set_dir("alice", "set4"), "set.json")
    info = json.loads(Path(info_path).read_text())
    info["settings"]["excludes"] = ["*.bak"]
    write_atomic(info_path, json.dumps(info).encode())
    third = feed.state()
    assert third["generation"] != second["generation"] and len(listed) == 1 and "set4" in listed[0]
    assert [s["set"]["settings"].get("excludes") for s in third["accounts"][-1]["sets"]] == \
        [None, None, ["*.tmp"], None, ["*.bak"]]

    listed.clear()
    monkeypatch.setattr(feedmod, "FULL_REFRESH_S", 0.0)                  # the periodic full read
    assert feed.state()["generation"] == third["generation"] and len(listed) == 5
