"""The client's commands as a user runs them: reports of files that vanish or
cannot be read, JSON for scripts, progress on a terminal, clear errors."""
import json
import os
import pty
import select
import subprocess
import time

import pytest

from client.backup import Backup
from client.config import BackupSet
from conftest import BIN, assert_same_tree
from ironfs.format.volume import Volume

FAST_KDF = {"alg": "argon2id", "time_cost": 1, "memory_cost": 1024, "parallelism": 1}


def test_backup_snapshots_restore_with_json(env, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("hello")
    (src / "b.bin").write_bytes(os.urandom(200_000))
    env.add_set("s", src)
    first = env.backup_json()
    assert first["snapshot"] == 1 and first["files_new"] == 2 and first["errors"] == []
    (src / "sub" / "a.txt").write_text("changed")
    second = env.backup_json()
    assert second["files_changed"] == 1 and second["files_unchanged"] == 1
    snaps = json.loads(env.ironcore("snapshots", "s", "--json").stdout)
    assert [s["seq"] for s in snaps] == [1, 2]
    assert snaps[0]["stats"]["files_new"] == 2
    # restore the first snapshot by its name, only one path of it
    out = tmp_path / "out"
    rel = str(src / "sub").lstrip("/")
    env.ironcore("restore", "s", "--snapshot", snaps[0]["name"], "--path", rel, "--to", out)
    assert (out / rel / "a.txt").read_text() == "hello"
    assert not (env.restored(out, src) / "b.bin").exists()
    env.ironcore("restore", "s", "--to", tmp_path / "full")
    assert_same_tree(src, env.restored(tmp_path / "full", src))


def test_clear_errors_for_unknown_set_snapshot_and_bad_names(env, tmp_path):
    for args, text in ((["backup", "nope"], b"no backup set named 'nope'"),
                       (["set", "add", "bad name", "--source", tmp_path, "--to", f"file://{tmp_path}/v"],
                        b"not a valid set name"),
                       (["set", "add", "x", "--source", tmp_path, "--to", "ftp://host/x"], b"is not a folder or the server")):
        proc = env.ironcore(*args, check=False)
        assert proc.returncode != 0 and text in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr
    (tmp_path / "src").mkdir()
    env.add_set("s", tmp_path / "src")
    proc = env.ironcore("restore", "s", "--to", tmp_path / "o", check=False)
    assert proc.returncode != 0 and b"no snapshot yet" in proc.stderr
    env.backup_json()
    proc = env.ironcore("restore", "s", "--snapshot", "99", "--to", tmp_path / "o", check=False)
    assert proc.returncode != 0 and b"no snapshot '99'" in proc.stderr


def test_vanished_between_listing_and_reading(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(40_000))

    class Vanishing(Backup):   # the file goes away after scandir saw it, before it is opened
        def _file(self, abspath, rel, st, rec):
            if abspath.endswith(b"/f2"):
                os.unlink(abspath)
            return super()._file(abspath, rel, st, rec)

    volume = Volume.create(str(tmp_path / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    bset = BackupSet(name="v", sources=[str(src)], destination=f"file://{tmp_path}/vol")
    report = Vanishing(volume, bset, str(tmp_path / "cache")).run()
    assert report["errors"] == [{"path": str(src / "f2"), "error": "has been removed already"}]
    assert volume.catalog().lookup(os.fsencode(src / "f2").lstrip(b"/"), report["snapshot"]) is None
    volume.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_unreadable_files_are_reported_and_keep_their_old_version(env, tmp_path):
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:   # let nobody reach the test folder
        if str(parent).startswith("/tmp/") or str(parent) == "/tmp":
            os.chmod(parent, os.stat(parent).st_mode | 0o005)
    src = tmp_path / "src"
    (src / "closed-dir").mkdir(parents=True)
    (src / "open.txt").write_text("readable")
    (src / "secret.txt").write_text("version one")
    (src / "closed-dir" / "inside").write_text("inside")
    for p in (env.home, env.volume):
        p.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", "nobody:nogroup", str(src), str(env.home), str(env.volume)], check=True)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]

    def ironcore(*args):
        return subprocess.run(as_nobody + [str(BIN / "ironcore"), *map(str, args)], env=env.env,
                              capture_output=True, timeout=120)
    proc = ironcore("set", "add", "s", "--source", src, "--to", f"file://{env.volume}")
    assert proc.returncode == 0, proc.stderr
    assert ironcore("backup", "s").returncode == 0
    (src / "secret.txt").write_text("version two, unreadable")
    os.chown(src / "secret.txt", 0, 0)
    os.chmod(src / "secret.txt", 0o600)
    os.chmod(src / "closed-dir", 0o000)
    proc = ironcore("backup", "s", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    failed = {e["path"]: e["error"] for e in report["errors"]}
    assert set(failed) == {str(src / "secret.txt"), str(src / "closed-dir")}
    assert all("Permission denied" in m for m in failed.values())
    os.chmod(src / "closed-dir", 0o755)
    out = tmp_path / "out"
    env.ironcore("restore", "s", "--to", out)
    restored = env.restored(out, src)
    assert (restored / "secret.txt").read_text() == "version one"   # the last readable version stays
    assert (restored / "closed-dir" / "inside").read_text() == "inside"


def test_progress_is_shown_on_a_terminal(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"big{i}").write_bytes(os.urandom(8 << 20))
    env.add_set("s", src)
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(str(BIN / "ironcore"), [str(BIN / "ironcore"), "backup", "s"], env.env)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = seen.decode(errors="replace")
    assert "backup" in text and "files" in text and "/s" in text, text[-2000:]
    assert "Snapshot 1:" in text
