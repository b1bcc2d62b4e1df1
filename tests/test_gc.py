"""gc after retention: forgetting all but the newest of 30 daily snapshots of a
changing tree and collecting leaves a volume within 10% of a fresh backup of
that snapshot, which restores identically and verifies clean; and gc never
runs beside a backup."""
import json
import os
import random

from conftest import assert_same_tree
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_remote import add_server_set, machine


def volume_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
               if not f.startswith(("catalog.db", "lock", "."))) 


def test_gc_after_forgetting_29_of_30_snapshots(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(30)
    for i in range(40):
        (src / f"f{i:02d}.bin").write_bytes(rnd.randbytes(60_000))
    login(env, server.url)
    add_server_set(env, "docs", src)
    for day in range(30):   # each "day" rewrites a few files and adds one
        for i in rnd.sample(range(40), 4):
            (src / f"f{i:02d}.bin").write_bytes(rnd.randbytes(60_000))
        (src / f"day{day:02d}.bin").write_bytes(rnd.randbytes(30_000))
        env.backup_json("docs")
    volume = server.root / "accounts" / "alice" / "docs" / "volume"
    before = volume_bytes(volume)

    env.ironcore("set", "edit", "docs", "--keep-last", "1")
    info_path = volume.parent / "set.json"
    info = json.loads(info_path.read_text())
    info["retention_changed_ns"] -= 8 * 86400 * 10**9   # past the grace period
    info_path.write_text(json.dumps(info))
    env.ironfs("retention", "apply", "alice", "docs", "--data-root", server.root)
    assert len(json.loads(env.ironcore("snapshots", "docs", "--json").stdout)) == 1
    out = env.ironfs("gc", "alice", "--data-root", server.root).stdout.decode()
    assert "freed" in out
    after = volume_bytes(volume)

    fresh = machine(tmp_path, "fresh")   # a fresh backup of the same tree, into another set
    login(fresh, server.url)
    add_server_set(fresh, "fresh", src)
    fresh.backup_json("fresh")
    fresh_bytes = volume_bytes(server.root / "accounts" / "alice" / "fresh" / "volume")
    assert after < before / 2
    assert after <= 1.10 * fresh_bytes, (after, fresh_bytes)

    env.ironfs("verify", "alice", "docs", "--data-root", server.root, "--read-data", "--password-stdin",
               input=b"alice pw\n")
    env.ironcore("restore", "docs", "--to", tmp_path / "out")
    assert_same_tree(src, env.restored(tmp_path / "out", src))
    other = machine(tmp_path, "other")   # a machine that never saw the dropped packs replays the log
    login(other, server.url)
    other.ironcore("restore", "docs", "--to", tmp_path / "out-other")
    assert_same_tree(src, other.restored(tmp_path / "out-other", src))
    # the next backup still works, and stores again what gc freed if it is needed again
    (src / "f00.bin").write_bytes(b"after gc\n")
    assert env.backup_json("docs")["files_changed"] == 1
    env.ironcore("restore", "docs", "--to", tmp_path / "out2")
    assert_same_tree(src, env.restored(tmp_path / "out2", src))
    env.ironfs("verify", "alice", "docs", "--data-root", server.root)


def forgotten_history(env, server, tmp_path, days=8):
    """A set with `days` snapshots of a changing tree, all but the newest forgotten."""
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(days)
    login(env, server.url)
    add_server_set(env, "docs", src)
    for day in range(days):
        for i in range(12):
            (src / f"f{i:02d}.bin").write_bytes(rnd.randbytes(40_000))
        env.backup_json("docs")
    env.ironcore("set", "edit", "docs", "--keep-last", "1")
    info_path = server.root / "accounts" / "alice" / "docs" / "set.json"
    info = json.loads(info_path.read_text())
    info["retention_changed_ns"] -= 8 * 86400 * 10**9
    info_path.write_text(json.dumps(info))
    env.ironfs("retention", "apply", "alice", "docs", "--data-root", server.root)
    return src


def test_gc_killed_at_any_step_leaves_the_kept_snapshot_whole(env, server, tmp_path):
    src = forgotten_history(env, server, tmp_path)
    volume = server.root / "accounts" / "alice" / "docs" / "volume"
    for point in ("gc-packs-written", "gc-committed"):
        killed = env.run("ironfs", "gc", "alice", "docs", "--data-root", server.root, check=False,
                         env=dict(env.env, IRONCORE_CRASH_AT=point))
        assert killed.returncode == -9, killed.stderr
        report = env.ironfs("verify", "alice", "docs", "--data-root", server.root, "--read-data",
                            "--password-stdin", input=b"alice pw\n", check=False)
        assert report.returncode == 0, report.stdout
        out = tmp_path / f"out-{point}"
        env.ironcore("restore", "docs", "--to", out)
        assert_same_tree(src, env.restored(out, src))
        (src / "f00.bin").write_bytes(os.urandom(1000))   # the next backup after the crashed gc works
        env.backup_json("docs")
    env.ironfs("gc", "alice", "docs", "--data-root", server.root)   # and gc completes afterwards
    env.ironfs("verify", "alice", "docs", "--data-root", server.root)
    assert volume_bytes(volume) < 2 * 12 * 40_000 + 200_000


def test_usage_and_quota_follow_gc_in_a_running_server(env, server, tmp_path):
    forgotten_history(env, server, tmp_path)
    import ssl
    import httpx
    ctx = ssl.create_default_context(cafile=str(server.root / "tls" / "cert.pem"))
    ctx.check_hostname = False

    def usage() -> int:
        text = httpx.get(server.url + "/metrics", verify=ctx, auth=("admin", "admin password")).text
        return int(next(line.split()[-1] for line in text.splitlines()
                        if line.startswith('ironfs_account_usage_bytes{account="alice"}')))
    before = usage()
    env.ironfs("gc", "alice", "--data-root", server.root)
    after = usage()
    assert after < before / 3, (before, after)
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(server.root / "accounts" / "alice")
                  for f in files if os.path.basename(d) == "log" or os.path.basename(os.path.dirname(d)) == "packs")
    assert after == on_disk
