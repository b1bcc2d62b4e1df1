"""The server's data root and accounts: `ironfs init` and `ironfs account …`."""
import json
import os
import sqlite3
import stat

import pytest

from ironfs.errors import NotFound, UsageError
from ironfs.store.accounts import AccountExists, AuthFailed
from ironfs.store.dataroot import DataRoot
from ironfs.store.sizes import format_size, parse_size


def test_init_makes_root_certificate_and_admin(env, tmp_path):
    root = tmp_path / "root"
    proc = env.ironfs("init", "--data-root", root, "--password-stdin", input=b"admin secret\n")
    dr = DataRoot(str(root))
    assert dr.fingerprint() in proc.stdout.decode()
    assert len(dr.fingerprint()) == 64
    assert stat.S_IMODE(os.stat(dr.key_path).st_mode) == 0o600
    assert dr.accounts.authenticate("admin", "admin secret")["admin"] is True
    with pytest.raises(AuthFailed):
        dr.accounts.authenticate("admin", "wrong")
    again = env.ironfs("init", "--data-root", root, "--password-stdin", input=b"x\n", check=False)
    assert again.returncode != 0 and b"data root already" in again.stderr


def test_generated_admin_password_is_shown_once_and_works(env, tmp_path):
    root = tmp_path / "root"
    proc = env.ironfs("init", "--data-root", root)
    line = [ln for ln in proc.stdout.decode().splitlines() if "shown only now" in ln][0]
    password = line.rsplit(": ", 1)[1]
    assert DataRoot(str(root)).accounts.authenticate("admin", password)


def test_account_commands(env, tmp_path):
    root = tmp_path / "root"
    env.ironfs("init", "--data-root", root, "--password-stdin", input=b"a\n")
    cli_env = dict(env.env, IRONFS_DATA_ROOT=str(root))
    env.ironfs("account", "add", "alice", "--quota", "10G", "--password-stdin", input=b"alice pw\n", env=cli_env)
    dup = env.ironfs("account", "add", "alice", "--password-stdin", input=b"x\n", env=cli_env, check=False)
    assert dup.returncode != 0 and b"exists already" in dup.stderr and b"Traceback" not in dup.stderr
    bad = env.ironfs("account", "add", "Bad Name", "--password-stdin", input=b"x\n", env=cli_env, check=False)
    assert bad.returncode == 2 and b"not a valid account name" in bad.stderr
    listed = json.loads(env.ironfs("account", "list", "--json", env=cli_env).stdout)
    assert [(a["name"], a["quota"], a["admin"]) for a in listed] == [("admin", None, True), ("alice", 10 << 30, False)]
    env.ironfs("account", "quota", "alice", "500M", env=cli_env)
    env.ironfs("account", "passwd", "alice", "--password-stdin", input=b"new pw\n", env=cli_env)
    dr = DataRoot(str(root))
    assert dr.accounts.get("alice")["quota"] == 500 << 20
    assert dr.accounts.authenticate("alice", "new pw")
    with pytest.raises(AuthFailed):
        dr.accounts.authenticate("alice", "alice pw")
    no = env.ironfs("account", "remove", "alice", env=cli_env, check=False)
    assert no.returncode == 2 and b"--yes" in no.stderr
    env.ironfs("account", "remove", "alice", "--yes", env=cli_env)
    with pytest.raises(AuthFailed):
        dr.accounts.authenticate("alice", "new pw")
    with pytest.raises(AccountExists, match="kept until 'ironfs gc'"):
        dr.accounts.add("alice", "x", None)
    missing = env.ironfs("account", "quota", "nobody", "1G", env=cli_env, check=False)
    assert missing.returncode != 0 and b"no account named 'nobody'" in missing.stderr


def test_unknown_name_and_wrong_password_look_the_same(tmp_path):
    dr = DataRoot.init(str(tmp_path / "r"), "admin", "pw")
    messages = set()
    for name, password in (("admin", "nope"), ("ghost", "pw")):
        with pytest.raises(AuthFailed) as info:
            dr.accounts.authenticate(name, password)
        messages.add(info.value.message)
    assert len(messages) == 1


def test_passwords_are_stored_as_argon2id_hashes(tmp_path):
    DataRoot.init(str(tmp_path / "r"), "admin", "correct horse")
    (stored,) = sqlite3.connect(tmp_path / "r" / "accounts.db").execute(
        "SELECT password_hash FROM accounts").fetchone()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


def test_not_a_data_root_is_a_clear_error(env, tmp_path):
    proc = env.ironfs("account", "list", "--data-root", tmp_path, check=False)
    assert proc.returncode != 0 and b"not an Ironcore data root" in proc.stderr
    with pytest.raises(NotFound):
        DataRoot.init(str(tmp_path / "r2"), "admin", "pw").accounts.get("ghost")


@pytest.mark.parametrize("text,size", [("500M", 500 << 20), ("10G", 10 << 30), ("1.5T", int(1.5 * (1 << 40))),
                                       ("2048", 2048), ("10GiB", 10 << 30), ("unlimited", None)])
def test_sizes(text, size):
    assert parse_size(text) == size
    assert format_size(size)


def test_bad_size():
    with pytest.raises(UsageError, match="not a size"):
        parse_size("lots")
