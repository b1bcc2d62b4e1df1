"""Local copy (FAQ 2.38): a set that also keeps its packs and commits in a local
folder, restored with `ironcore decrypt` while the server is stopped."""
import json
import random

from conftest import assert_same_tree
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_daemon import one_file_set
from test_remote import add_server_set, make_tree

MiB = 1 << 20


def test_local_copy_restores_without_the_server(env, server, tmp_path):
    src = tmp_path / "src"
    make_tree(src, random.Random(3), big=2 * MiB)
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")                       # history from before the copy was switched on
    copy = tmp_path / "usb" / "docs-copy"
    env.ironcore("set", "edit", "docs", "--local-copy", copy)
    (src / "docs" / "note002.txt").write_bytes(b"second run\n")
    (src / "more.bin").write_bytes(random.Random(4).randbytes(MiB))
    run = env.backup_json("docs")
    assert run["status"] == "ok" and run["snapshot"] == 2
    assert run["local_copy"]["packs_linked"] >= 1          # this run's packs, as they were uploaded
    assert run["local_copy"]["packs_fetched"] >= 1         # the earlier run's, fetched once
    assert run["local_copy"]["commits_added"] == 2
    env.ironfs("verify", copy)                             # a volume like any other

    (src / "docs" / "note003.txt").write_bytes(b"third run\n")
    run = env.backup_json("docs")
    assert run["local_copy"]["packs_fetched"] == 0 and run["local_copy"]["commits_added"] == 1
    server.stop()

    out = tmp_path / "out"
    env.ironcore("decrypt", copy, "--to", out)            # the key this machine keeps for the set
    assert_same_tree(src, env.restored(out, src))
    old = tmp_path / "old"
    env.ironcore("decrypt", copy, "--to", old, "--snapshot", "1")
    assert (env.restored(old, src) / "docs" / "note002.txt").read_bytes() != b"second run\n"
    assert not (env.restored(old, src) / "more.bin").exists()


def test_an_unwritable_local_copy_does_not_fail_the_backup(env, server, tmp_path):
    one_file_set(env, server, tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the copy's folder should be\n")
    env.ironcore("set", "edit", "docs", "--local-copy", blocker / "copy")
    proc = env.ironcore("backup", "docs", "--json")
    run = json.loads(proc.stdout)
    assert run["status"] == "warning" and run["snapshot"] == 1
    assert "cannot be written" in run["local_copy"]["error"]
    assert "local copy" in json.dumps(env.ironcore("reports", "docs").stdout.decode())
