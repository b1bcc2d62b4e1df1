"""Retention on the server: `ironfs retention apply` with reasons, the grace period
after a policy change (so a stolen client cannot erase history by editing the
policy), and retention after each backup."""
import json
import time

from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_remote import add_server_set


def backups(env, src, n):
    for i in range(n):
        (src / f"file{i}.txt").write_bytes(b"version %d\n" % i)
        env.backup_json("docs")
        time.sleep(0.01)


def listed(env) -> list[int]:
    return [s["seq"] for s in json.loads(env.ironcore("snapshots", "docs", "--json").stdout)]


def age_policy_change(server, days: int) -> None:
    """As if the policy had changed `days` ago (the server keeps that time beside the settings)."""
    path = server.root / "accounts" / "alice" / "docs" / "set.json"
    info = json.loads(path.read_text())
    info["retention_changed_ns"] -= days * 86400 * 10**9
    path.write_text(json.dumps(info))


def test_a_policy_change_waits_its_grace_period_then_applies(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    login(env, server.url)
    add_server_set(env, "docs", src)
    backups(env, src, 5)
    assert listed(env) == [1, 2, 3, 4, 5]

    env.ironcore("set", "edit", "docs", "--keep-last", "2")
    dry = json.loads(env.ironfs("retention", "apply", "alice", "docs", "--data-root", server.root, "--dry-run",
                                "--json").stdout)
    assert all(v["keep"] for v in dry["snapshots"])
    assert sum("grace period" in " ".join(v["kept_by"]) for v in dry["snapshots"]) == 3
    backups(env, src, 1)   # retention after a backup respects the grace period too
    assert listed(env) == [1, 2, 3, 4, 5, 6]

    age_policy_change(server, 8)
    out = env.ironfs("retention", "apply", "alice", "docs", "--data-root", server.root).stdout.decode()
    assert "goes: no rule keeps it" in out and "keep: last 2" in out and "4 snapshots forgotten" in out
    assert listed(env) == [5, 6]
    backups(env, src, 1)   # from now on each backup applies the policy on the server
    assert listed(env) == [6, 8]   # 7 was the forget commit
    env.ironfs("verify", "alice", "docs", "--data-root", server.root)
    env.ironcore("restore", "docs", "--to", tmp_path / "out")
    assert (tmp_path / "out" / str(src).lstrip("/") / "file0.txt").read_bytes() == b"version 0\n"


def test_bad_policies_are_refused_with_a_clear_error(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    login(env, server.url)
    add_server_set(env, "docs", src)
    for args in (["--keep-last", "2", "--keep-daily", "3"], ["--keep-daily", "3", "--timezone", "Mars/Olympus"]):
        proc = env.ironcore("set", "edit", "docs", *args, check=False)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr


def test_retention_apply_to_a_volume_folder_with_a_given_policy(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    env.add_set("docs", src)
    for i in range(4):
        (src / f"f{i}").write_bytes(b"%d" % i)
        env.backup_json("docs")
    refused = env.ironfs("retention", "apply", env.volume, check=False)
    assert refused.returncode == 2 and b"--policy" in refused.stderr
    report = json.loads(env.ironfs("retention", "apply", env.volume, "--policy", '{"last": 2}', "--json").stdout)
    assert report["forgotten"] == [1, 2]
    assert listed(env) == [3, 4]
    env.ironfs("verify", env.volume)
