"""Seed load (FAQ 2.14) and export for a huge restore (FAQ 2.15), with the real
programs: the first backup written to a folder, imported by the admin, the next
network backup incremental; a set exported and decrypted on a machine that
has only the password."""
import json
import os
import random
import subprocess

import pytest

from conftest import assert_same_tree
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_remote import ALICE_PW, add_server_set, machine, make_tree, set_volume

MiB = 1 << 20


def test_seed_load_import_then_incremental_backup(env, server, tmp_path):
    src = tmp_path / "src"
    make_tree(src, random.Random(7), big=2 * MiB)
    login(env, server.url)
    add_server_set(env, "docs", src)
    seed = tmp_path / "usb" / "seed"
    loaded = json.loads(env.ironcore("seed-load", "docs", "--to", seed, "--json").stdout)
    assert loaded["files_new"] == 123 and loaded["bytes_stored"] > 2 * MiB
    assert json.loads(env.ironcore("snapshots", "docs", "--json").stdout) == []   # nothing went over the network
    assert not list((set_volume(server) / "packs").glob("*/*"))
    again = env.ironcore("seed-load", "docs", "--to", seed, check=False)           # not over a seed
    assert again.returncode == 2 and b"not an empty folder" in again.stderr

    # the admin refuses a seed of another set, then loads the right one
    env.ironcore("set", "add", "other", "--source", src, "--password-stdin", input=ALICE_PW)
    wrong = env.ironfs("import-seed", "alice", "other", seed, "--data-root", server.root, check=False)
    assert wrong.returncode == 2 and b"seed of another set" in wrong.stderr
    done = json.loads(env.ironfs("import-seed", "alice", "docs", seed, "--data-root", server.root, "--json").stdout)
    assert done["commits"] == 1 and done["snapshots"] == 1
    twice = env.ironfs("import-seed", "alice", "docs", seed, "--data-root", server.root, check=False)
    assert twice.returncode == 4 and b"has backups already" in twice.stderr
    env.ironfs("verify", "alice", "docs", "--data-root", server.root, "--read-data", "--password-stdin",
               input=ALICE_PW)

    # the running server sees it, and the next backup sends only the change
    snaps = json.loads(env.ironcore("snapshots", "docs", "--json").stdout)
    assert [s["seq"] for s in snaps] == [1]
    (src / "docs" / "note007.txt").write_bytes(b"after the seed\n")
    run = env.backup_json("docs")
    assert run["snapshot"] == 2 and run["files_changed"] == 1 and run["files_unchanged"] == 122
    assert run["bytes_sent"] < 64 * 1024, run["bytes_sent"]
    out = tmp_path / "out"
    env.ironcore("restore", "docs", "--to", out)
    assert_same_tree(src, env.restored(out, src))
    usage = json.loads(env.ironfs("sets", "alice", "--data-root", server.root, "--json").stdout)
    assert {r["name"]: r["snapshots"] for r in usage} == {"docs": 2, "other": 0}


def test_export_and_decrypt_with_the_password_elsewhere(env, server, tmp_path):
    src = tmp_path / "src"
    make_tree(src, random.Random(8), big=MiB)
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    (src / "docs" / "note001.txt").write_bytes(b"second version\n")
    env.backup_json("docs")

    export = tmp_path / "disk" / "docs"
    done = json.loads(env.ironfs("export", "alice", "docs", export, "--data-root", server.root, "--json").stdout)
    assert done["snapshots"] == 2 and done["packs"] >= 1
    assert env.ironfs("export", "alice", "docs", export, "--data-root", server.root, check=False).returncode == 2
    server.stop()   # the restore needs no server

    # another machine, never logged in: the account password opens the login key slot
    other = machine(tmp_path, "elsewhere")
    del other.env["IRONCORE_PASSWORD"]
    wrong = other.ironcore("decrypt", export, "--to", tmp_path / "x", "--password-stdin", input=b"not it\n",
                           check=False)
    assert wrong.returncode == 3 and b"Traceback" not in wrong.stderr
    out = tmp_path / "out"
    other.ironcore("decrypt", export, "--to", out, "--password-stdin", input=ALICE_PW)
    assert_same_tree(src, other.restored(out, src))
    old = tmp_path / "old"
    other.ironcore("decrypt", export, "--to", old, "--snapshot", "1", "--path",
                   str(src / "docs" / "note001.txt").lstrip("/"))     # the key is kept here now
    assert (other.restored(old, src) / "docs" / "note001.txt").read_bytes() != b"second version\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root (CI runs as root)")
def test_decrypt_reads_an_export_on_read_only_media(env, server, tmp_path):
    """An export handed over on a disk mounted read-only: decrypt reads it where
    it is and keeps the catalog it needs in this machine's cache."""
    src = tmp_path / "src"
    make_tree(src, random.Random(9), big=MiB)
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    export = tmp_path / "disk" / "docs"
    env.ironfs("export", "alice", "docs", export, "--data-root", server.root)
    server.stop()
    before = sorted(p.name for p in export.iterdir())
    media = tmp_path / "media"
    media.mkdir()
    subprocess.run(["mount", "--bind", str(export), str(media)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(media)], check=True)
        assert not os.access(media, os.W_OK)
        out = tmp_path / "out"
        done = json.loads(env.ironcore("decrypt", media, "--to", out, "--json").stdout)
        assert done["errors"] == [] and done["files"] > 0
        assert_same_tree(src, env.restored(out, src))
        env.ironcore("decrypt", media, "--to", tmp_path / "again")   # the kept catalog is caught up, not rebuilt
    finally:
        subprocess.run(["umount", str(media)], check=True)
    assert sorted(p.name for p in export.iterdir()) == before   # nothing was written beside the volume
