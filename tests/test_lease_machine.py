"""The writer lease names an installation, not a host name: two client machines
with the same host name (cloned VMs, containers) backing up one set never take
each other's lease over. The second is refused with a conflict naming the
holder, and the first finishes its backup whole."""
import json
import os
import random
import ssl
import subprocess
import time

import httpx

from conftest import BIN, assert_same_tree, wait_for
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_remote import add_server_set, machine, make_tree, set_volume, verify_clean

MiB = 1 << 20


def lease_of(server) -> dict | None:
    try:
        return json.loads((set_volume(server).parent / "lease.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_same_host_name_never_takes_a_live_lease_over(env, server, tmp_path):
    src = tmp_path / "src"
    make_tree(src, random.Random(15), big=24 * MiB)
    first, second = machine(tmp_path, "first"), machine(tmp_path, "second")
    for m in (first, second):
        m.env["IRONCORE_HOSTNAME"] = "clone"   # the same host name on both
    login(first, server.url)
    add_server_set(first, "docs", src)
    login(second, server.url)   # after the set exists: its login slot gives this machine the key
    first.ironcore("set", "edit", "docs", "--bandwidth-limit", "3M")   # ~8 s of uploads: the runs overlap
    first_id = (first.home / "machine-id").read_text().strip()
    second_id = (second.home / "machine-id").read_text().strip()
    assert len(first_id) == 32 and first_id != second_id

    running = subprocess.Popen([BIN / "ironcore", "backup", "docs", "--json"], env=first.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: lease_of(server), 120, "the first machine to take the lease", running)
        held = second.ironcore("backup", "docs", check=False)
        still_running = running.poll() is None
        stdout, stderr = running.communicate(timeout=300)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert still_running, "the first backup ended before the second asked for the lease: slow it down further"
    err = held.stderr.decode(errors="replace")
    assert held.returncode == 4, (held.returncode, err, held.stdout)
    assert "clone" in err and first_id in err and "Traceback" not in err, err
    assert running.returncode == 0, stderr.decode(errors="replace")
    assert json.loads(stdout)["snapshot"] == 1

    out = tmp_path / "out"
    second.ironcore("restore", "docs", "--to", out)
    assert_same_tree(src, second.restored(out, src))
    verify_clean(second, server.root)
    # once the holder is done, the other machine backs up as usual
    (src / "docs" / "later.txt").write_bytes(os.urandom(5000))
    assert json.loads(second.ironcore("backup", "docs", "--json").stdout)["snapshot"] == 2
    assert lease_of(server) is None


def test_a_lease_names_machine_and_process_and_only_that_process_takes_it_again(env, server, tmp_path):
    """Through the API: a second request from the same machine id but another process
    is refused while the lease lives; the very same process may ask again."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    login(env, server.url)
    add_server_set(env, "docs", src)
    state = json.loads((env.home / "server.json").read_text())
    ctx = ssl.create_default_context(cadata=state["cert_pem"])
    ctx.check_hostname = False
    machine_id = (env.home / "machine-id").read_text().strip()
    with httpx.Client(base_url=server.url, verify=ctx, headers={"Authorization": f"Bearer {state['token']}"}) as c:
        asked = {"host": "h", "machine": machine_id, "pid": 4242}
        assert c.post("/api/v1/sets/docs/lease", json=asked).status_code == 201
        again = c.post("/api/v1/sets/docs/lease", json=asked)
        assert again.status_code == 201, again.text
        for other in ({**asked, "pid": 4243}, {**asked, "machine": "0" * 32}, {"host": "h"}):
            refused = c.post("/api/v1/sets/docs/lease", json=other)
            assert refused.status_code == 409, refused.text
            assert "machine " + machine_id in refused.json()["error"] and "process 4242" in refused.json()["error"]
        for bad in ({**asked, "machine": "not hex"}, {**asked, "pid": "1"}, {**asked, "pid": -1}):
            assert c.post("/api/v1/sets/docs/lease", json=bad).status_code == 400
        lease = again.json()["lease"]
        assert c.delete("/api/v1/sets/docs/lease", headers={"Ironcore-Lease": lease}).status_code == 200


def test_a_machine_whose_run_was_killed_takes_its_own_lease_back_at_once(env, server, tmp_path):
    """A run SIGKILLed while it holds the lease leaves it live on the server for minutes;
    the next run on the same installation, holding that installation's lock on the set,
    replaces it at once (another machine still may not)."""
    src = tmp_path / "src"
    make_tree(src, random.Random(16), big=24 * MiB)
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.ironcore("set", "edit", "docs", "--bandwidth-limit", "3M")
    other = machine(tmp_path, "other")
    login(other, server.url)
    running = subprocess.Popen([BIN / "ironcore", "backup", "docs"], env=env.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: lease_of(server), 120, "the backup to take the lease", running)
    finally:
        running.kill()
        running.wait()
    held = lease_of(server)
    assert held is not None and held["expires"] > time.time() + 30, held
    refused = other.ironcore("backup", "docs", check=False)
    assert refused.returncode == 4, refused.stderr
    env.ironcore("set", "edit", "docs", "--bandwidth-limit", "unlimited")
    assert json.loads(env.ironcore("backup", "docs", "--json").stdout)["snapshot"] == 1
    out = tmp_path / "out"
    other.ironcore("restore", "docs", "--to", out)
    assert_same_tree(src, other.restored(out, src))
    verify_clean(other, server.root)
