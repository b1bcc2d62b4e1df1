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
