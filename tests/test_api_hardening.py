"""The HTTP API against hostile or broken clients, on a real `ironfs serve` over
TLS: malformed requests get 4xx and the server keeps serving; path tricks in
set and pack names go nowhere; one account never sees another's sets; a
machine token cannot remove history; damaged uploads are kept nowhere; and
/metrics counts commits and usage. Raw TLS sockets are used where the exact
bytes on the wire matter (encoded dots and slashes, bodies shorter or longer
than their Content-Length)."""
import base64
import hashlib
import json
import os
import re
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from ironfs.format import log as commitlog, pack as packfmt
from serverkit import ADMIN_PW, login, server  # noqa: F401 (server is a fixture)

ALICE = ("alice", "alice pw")
BOB = ("bob", "bob pw")
FAKE_VOLUME = {"format": 1, "id": "ab" * 16,
               "slots": [{"name": "login", "kdf": {}, "nonce": "00", "wrapped": "00"}]}


# --- talking to the server ------------------------------------------------------------
def tls(server) -> ssl.SSLContext:
    """Trust exactly the data root's self-signed certificate."""
    ctx = ssl.create_default_context(cafile=str(server.root / "tls" / "cert.pem"))
    ctx.check_hostname = False
    return ctx


def api(server, auth=None, token=None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, verify=tls(server), auth=auth, headers=headers, timeout=15)


def basic(account, password) -> str:
    return "Basic " + base64.b64encode(f"{account}:{password}".encode()).decode()


def assert_alive(server) -> None:
    """A good request still gets a good answer."""
    with api(server, ALICE) as c:
        who = c.get("/api/v1/whoami")
    assert who.status_code == 200 and who.json()["account"] == "alice"


def http_request(method, path, body=b"", headers=(), auth=ALICE, length=None) -> bytes:
    """The bytes of one HTTP/1.1 request (path sent exactly as given)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: {basic(*auth)}",
             f"Content-Length: {len(body) if length is None else length}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def parse_responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """Split what the server sent into (status, headers, body) answers."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete answer: {data[:200]!r}"
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        n = int(headers.get("content-length", len(rest)))
        out.append((int(status_line.split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


def raw_exchange(server, data: bytes, end: str = "none", timeout: float = 10) -> bytes:
    """Send `data` over a fresh TLS connection and read until the server closes it.

    end="none": nothing more (the request should say Connection: close);
    end="close_notify": a clean TLS half-close (close_notify, then TCP FIN), so
    the server reads a clean end of the body and can still answer;
    end="fin": a bare TCP FIN under TLS (what a crashed relay looks like)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_obj = tls(server).wrap_bio(incoming, outgoing, server_side=False)

    def flush():
        if pending := outgoing.read():
            sock.sendall(pending)

    def fill() -> bool:
        try:
            got = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            got = b""
        if not got:
            incoming.write_eof()
        else:
            incoming.write(got)
        return bool(got)

    try:
        while True:
            try:
                tls_obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not fill():
                    raise AssertionError("the server closed the connection during the TLS handshake")
        flush()
        tls_obj.write(data)
        flush()
        if end == "close_notify":
            try:
                tls_obj.unwrap()
            except ssl.SSLWantReadError:
                pass
            flush()
        if end in ("close_notify", "fin"):
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            try:
                chunk = tls_obj.read(65536)
                if not chunk:
                    break
                answer += chunk
            except ssl.SSLWantReadError:
                if not fill():
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            except ssl.SSLError:   # the peer gave up on a broken TLS stream: no answer
                break
        return answer
    finally:
        sock.close()


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def make_scratch_set(server, name="x") -> str:
    """A set made straight through the API (no client needed), with the writer lease; the lease id."""
    with api(server, ALICE) as c:
        assert c.put(f"/api/v1/sets/{name}", json={"volume": FAKE_VOLUME}).status_code == 201
        lease = c.post(f"/api/v1/sets/{name}/lease", json={"host": "tester"})
    assert lease.status_code == 201
    return lease.json()["lease"]


def empty_pack() -> bytes:
    """The smallest valid pack: header and an index of no entries."""
    return packfmt.HEADER + packfmt.FOOTER.pack(0, packfmt.INDEX_MAGIC)


def backed_up_set(env, server, tmp_path) -> Path:
    """alice's machine logs in, makes set docs on the server and backs it up once; the set's volume folder."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha " * 2000)
    (src / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    login(env, server.url)
    env.ironcore("set", "add", "docs", "--source", src, "--password-stdin", input=b"alice pw\n")
    env.ironcore("backup", "docs")
    return server.root / "accounts" / "alice" / "docs" / "volume"


def assert_verify_clean(env, server, account="alice") -> None:
    out = env.ironfs("verify", account, "--data-root", server.root)
    assert out.returncode == 0 and b"clean" in out.stdout, out.stdout


# --- 1. malformed requests -------------------------------------------------------------------
def test_malformed_bodies_and_parameters_get_400_and_the_server_keeps_serving(server):
    cases = [
        (b"\x00this is {not json", "not JSON"),
        (b"\xff\xfe\xfd", "not JSON"),                # not even UTF-8
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
    ]
    for body, message in cases:
        (status, _, answer), = parse_responses(raw_exchange(
            server, http_request("PUT", "/api/v1/sets/x", body, ["Connection: close"])))
        assert status == 400 and message in json.loads(answer)["error"], (body, status, answer)
        assert_alive(server)
    # a declared JSON body over 1 MiB is refused before it is read
    (status, _, answer), = parse_responses(raw_exchange(
        server, http_request("PUT", "/api/v1/sets/x", b"", ["Connection: close"], length=(1 << 20) + 1)))
    assert status == 413 and "too large" in json.loads(answer)["error"]
    assert_alive(server)
    with api(server, ALICE) as c:
        assert c.get("/api/v1/sets").json() == []    # none of it made a set
        assert c.put("/api/v1/sets/x", json={"volume": {"format": 1}}).status_code == 400
        # query parameters of the log feed: not numbers, negative, not finite
        make_scratch_set(server)
        for query in ("after=abc", "wait=abc", "wait=-1", "wait=nan", "wait=inf", "after=-5"):
            r = c.get(f"/api/v1/sets/x/log?{query}", timeout=5)
            assert r.status_code == 400, (query, r.status_code, r.text)
        # an upload without Content-Length (chunked) is refused
        r = c.put("/api/v1/sets/x/packs/" + "0" * 64, content=iter([b"abc"]))
        assert r.status_code == 400 and "Content-Length" in r.json()["error"]
    assert_alive(server)


def test_deeply_nested_json_is_a_400_not_a_500(server):
    for body in (b"[" * 100_000, b'{"a":' * 50_000):
        (status, _, _), = parse_responses(raw_exchange(
            server, http_request("PUT", "/api/v1/sets/x", body, ["Connection: close"])))
        assert_alive(server)
        assert status == 400, status


def test_oversized_request_headers_are_refused(server):
    data = http_request("GET", "/api/v1/whoami", headers=["X-Padding: " + "a" * (100 << 10), "Connection: close"])
    answer = raw_exchange(server, data)
    assert_alive(server)              # whatever the answer, the server still serves
    if answer:                        # an answer must be a refusal; a closed connection is one too
        status = parse_responses(answer)[0][0]
        assert 400 <= status < 500, status


def test_upload_shorter_than_its_content_length_is_refused_and_nothing_is_kept(server):
    lease = make_scratch_set(server)
    packs = server.root / "accounts" / "alice" / "x" / "volume" / "packs"
    name = hashlib.sha256(b"x" * 1000).hexdigest()
    request = http_request("PUT", f"/api/v1/sets/x/packs/{name}", b"x" * 10, [f"Ironcore-Lease: {lease}"],
                           length=1000)
    # a clean end of the TLS stream after 10 of 1000 bytes: the server answers why
    (status, _, answer), = parse_responses(raw_exchange(server, request, end="close_notify"))
    assert status == 400 and "ended after 10 of the 1000 bytes" in json.loads(answer)["error"]
    assert files_under(packs) == set()
    assert_alive(server)
    # a bare TCP FIN under TLS: the TLS stream is broken, so a closed connection is fine too
    answer = raw_exchange(server, request, end="fin")
    if answer:
        assert 400 <= parse_responses(answer)[0][0] < 500
    assert_alive(server)
    assert files_under(packs) == set()      # no pack, no partial upload left behind


def test_upload_longer_than_its_content_length_stores_only_the_declared_bytes(server):
    lease = make_scratch_set(server)
    packs = server.root / "accounts" / "alice" / "x" / "volume" / "packs"
    pack = empty_pack()
    name = hashlib.sha256(pack).hexdigest()
    # the extra bytes are a complete second request: the server must take them as one
    extra = http_request("GET", "/api/v1/whoami", headers=["Connection: close"])
    answers = parse_responses(raw_exchange(
        server, http_request("PUT", f"/api/v1/sets/x/packs/{name}", pack, [f"Ironcore-Lease: {lease}"]) + extra))
    assert [a[0] for a in answers] == [201, 200], answers
    assert json.loads(answers[1][2])["account"] == "alice"
    assert files_under(packs) == {f"{name[:2]}/{name}"}
    assert (packs / name[:2] / name).read_bytes() == pack
    # the name covers the extra bytes too: only the declared bytes are hashed, so it is a mismatch
    junk = b"EXTRA BYTES"
    longer_name = hashlib.sha256(pack + junk).hexdigest()
    answer = raw_exchange(server, http_request("PUT", f"/api/v1/sets/x/packs/{longer_name}", pack,
                                               [f"Ironcore-Lease: {lease}", "Connection: close"]) + junk)
    status, _, body = parse_responses(answer)[0]
    assert status == 400 and "rejected whole" in json.loads(body)["error"]
    # garbage after a complete request is answered as a bad next request, never a 5xx
    answer = raw_exchange(server, http_request("GET", "/api/v1/whoami") + b"NOT HTTP AT ALL\r\n\r\n")
    statuses = [a[0] for a in parse_responses(answer)]
    assert statuses[0] == 200 and all(s < 500 for s in statuses) and statuses[1:] in ([], [400])
    assert_alive(server)
    assert files_under(packs) == {f"{name[:2]}/{name}"}


def test_dot_dot_and_encoded_slashes_in_names_go_nowhere(server, tmp_path):
    lease = make_scratch_set(server)
    outside_before = {p for p in files_under(tmp_path) if not p.startswith("root/")}
    inside_before = files_under(server.root / "accounts")
    body = json.dumps({"volume": FAKE_VOLUME}).encode()
    probes = [
        ("GET", "/api/v1/sets/..%2F..%2Fetc/snapshots", b""),
        ("GET", "/api/v1/sets/..%2f..%2f..%2fetc%2fpasswd", b""),
        ("GET", "/api/v1/sets/%2e%2e/log", b""),
        ("GET", "/api/v1/sets/%2E%2E", b""),
        ("GET", "/api/v1/sets/../log", b""),
        ("GET", "/api/v1/sets/.", b""),
        ("GET", "/api/v1/sets/x/log/..%2F..%2Fset.json", b""),
        ("GET", "/api/v1/sets/x/packs/..%2f..%2fvolume.json", b""),
        ("GET", "/api/v1/sets/x/packs/..%2f..%2fevil/index", b""),
        ("GET", "/api/v1/sets/x/packs/%2e%2e", b""),
        ("PUT", "/api/v1/sets/x/packs/..%2f..%2fevil", b"evil"),
        ("PUT", "/api/v1/sets/x/packs/..%2F..%2F..%2F..%2Fevil", b"evil"),
        ("PUT", "/api/v1/sets/x/packs/%2e%2e%2fevil", b"evil"),
        ("PUT", "/api/v1/sets/x/commits/..%2f1", b"evil"),
        ("PUT", "/api/v1/sets/%2e%2e", body),
        ("PUT", "/api/v1/sets/..%2Fevil", body),
        ("PUT", "/api/v1/sets/..%2F..%2F..%2Fevil", body),
        ("PUT", "/api/v1/sets/.evil", body),
        ("PUT", "/api/v1/sets/x/slots/..%2Fevil", json.dumps(dict(FAKE_VOLUME["slots"][0], name="../evil")).encode()),
    ]
    for method, path, data in probes:
        (status, _, answer), = parse_responses(raw_exchange(
            server, http_request(method, path, data, [f"Ironcore-Lease: {lease}", "Connection: close"])))
        assert status in (400, 404, 405), (method, path, status, answer)
    assert_alive(server)
    outside_after = {p for p in files_under(tmp_path) if not p.startswith("root/")}
    assert outside_after == outside_before
    assert not [p for p in tmp_path.parent.rglob("evil*")]
    changed = files_under(server.root / "accounts") - inside_before
    # the only writes a probe may cause are x's own settings and its (refused) slot:
    assert all(p.startswith("alice/x/") and "evil" not in p for p in changed), changed
    with api(server, ALICE) as c:
        assert [s["name"] for s in c.get("/api/v1/sets").json()] == ["x"]


def test_a_set_name_with_a_trailing_newline_is_refused(server):
    body = json.dumps({"volume": FAKE_VOLUME}).encode()
    (status, _, answer), = parse_responses(raw_exchange(
        server, http_request("PUT", "/api/v1/sets/y%0A", body, ["Connection: close"])))
    assert_alive(server)
    assert status == 400, (status, answer)


# --- 2. accounts are walled off from each other ---------------------------------------------------
def test_another_account_cannot_see_or_write_alices_set(env, server, tmp_path):
    env.ironfs("account", "add", "bob", "--data-root", server.root, "--password-stdin", input=b"bob pw\n")
    volume = backed_up_set(env, server, tmp_path)
    pack = next(iter(files_under(volume / "packs"))).split("/")[1]
    files_before = files_under(volume)
    with api(server, ALICE) as alice:   # alice herself reads all of it
        for path in ("", "/log", "/log/1", "/snapshots", f"/packs/{pack}", f"/packs/{pack}/index"):
            assert alice.get(f"/api/v1/sets/docs{path}").status_code == 200, path
    with api(server, BOB) as bob:
        assert bob.get("/api/v1/whoami").json()["account"] == "bob"
        for path in ("", "/log", "/log?after=0&wait=1", "/log/1", "/snapshots", f"/packs/{pack}",
                     f"/packs/{pack}/index"):
            r = bob.get(f"/api/v1/sets/docs{path}")
            assert r.status_code == 404 and "bob has no set named 'docs'" in r.json()["error"], (path, r.text)
        assert bob.head(f"/api/v1/sets/docs/packs/{pack}").status_code == 404
        assert bob.get(f"/api/v1/sets/docs/packs/{pack}", headers={"Range": "bytes=0-15"}).status_code == 404
        # no way to write either: lease, pack, commit, settings, machine switch, key slot
        assert bob.post("/api/v1/sets/docs/lease", json={"host": "bobs-pc"}).status_code == 404
        stolen = "0" * 32
        # renewing or ending a lease on a set bob does not have: 404, as for a set that exists nowhere
        for method in ("PUT", "DELETE"):
            on_docs = bob.request(method, "/api/v1/sets/docs/lease", headers={"Ironcore-Lease": stolen})
            on_none = bob.request(method, "/api/v1/sets/nowhere/lease", headers={"Ironcore-Lease": stolen})
            assert on_docs.status_code == on_none.status_code == 404 and on_docs.json() == {
                **on_none.json(), "error": on_none.json()["error"].replace("nowhere", "docs")}, on_docs.text
        assert bob.post("/api/v1/sets/docs/blobs", json={"ids": ["00" * 16]}).status_code == 404
        data = empty_pack()
        r = bob.put(f"/api/v1/sets/docs/packs/{hashlib.sha256(data).hexdigest()}", content=data,
                    headers={"Ironcore-Lease": stolen})
        assert r.status_code == 404
        assert bob.put("/api/v1/sets/docs/commits/2", content=b"junk",
                       headers={"Ironcore-Lease": stolen}).status_code == 404
        assert bob.patch("/api/v1/sets/docs", json={"settings": {"sources": ["/"]}}).status_code == 404
        assert bob.put("/api/v1/sets/docs/machines/bobs-pc", json={"scheduled": True}).status_code == 404
        assert bob.put("/api/v1/sets/docs/slots/login",
                       json=dict(FAKE_VOLUME["slots"][0])).status_code == 404
        # a path that climbs into alice's folder is not a set name
        for path in ("/api/v1/sets/..%2Falice%2Fdocs/snapshots", "/api/v1/sets/..%2F..%2Faccounts%2Falice%2Fdocs"):
            (status, _, _), = parse_responses(raw_exchange(
                server, http_request("GET", path, auth=BOB, headers=["Connection: close"])))
            assert status in (400, 404), (path, status)
        assert bob.get("/api/v1/sets").json() == []
    assert not (server.root / "accounts" / "bob").exists() or files_under(server.root / "accounts" / "bob") == set()
    assert files_under(volume) - {"catalog.db-wal", "catalog.db-shm"} == files_before - {"catalog.db-wal",
                                                                                         "catalog.db-shm"}
    with api(server, ALICE) as alice:
        assert [s["seq"] for s in alice.get("/api/v1/sets/docs/snapshots").json()] == [1]
        assert alice.get("/api/v1/sets/docs").json()["settings"]["sources"] != ["/"]
    assert_verify_clean(env, server)


# --- 3. a machine token cannot remove history -----------------------------------------------------
def forget_commit(tmp_path: Path, seq: int, kind: str = "snapshot") -> bytes:
    """A well-formed commit (right hash, next number) that would forget snapshot 1."""
    folder = tmp_path / f"forge-{seq}-{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    writer = commitlog.CommitWriter(str(folder), seq, {"kind": kind})
    writer.add({"t": "forget", "snapshots": [1]})
    return Path(writer.finish()).read_bytes()


def test_a_machine_token_cannot_delete_history(env, server, tmp_path):
    volume = backed_up_set(env, server, tmp_path)
    token = json.loads((env.home / "server.json").read_text())["token"]
    pack = next(iter(files_under(volume / "packs"))).split("/")[1]
    with api(server, token=token) as c:
        assert c.get("/api/v1/whoami").json()["role"] == "client"
        for path in ("", f"/packs/{pack}", f"/packs/{pack}/index", "/log/1", "/log", "/snapshots",
                     "/snapshots/1", "/commits/1"):
            r = c.delete(f"/api/v1/sets/docs{path}")
            assert r.status_code in (404, 405), (path, r.status_code)
        assert c.delete("/api/v1/sets").status_code in (404, 405)
        # a key slot or the password needs the account password, not a token
        slot = dict(FAKE_VOLUME["slots"][0])
        r = c.put("/api/v1/sets/docs/slots/login", json=slot)
        assert r.status_code == 403 and "password" in r.json()["error"]
        assert c.post("/api/v1/password", json={"old": "alice pw", "new": "new password"}).status_code == 403
        assert c.post("/api/v1/tokens", json={"host": "more"}).status_code == 403
        # a commit that forgets snapshot 1 is refused, whatever it calls itself
        lease = c.post("/api/v1/sets/docs/lease", json={"host": "x"})
        assert lease.status_code == 201, lease.text
        lease_id, head = lease.json()["lease"], lease.json()["head"]
        assert head == 1
        # other bytes under a stored pack's name do not replace it
        pack_file = volume / "packs" / pack[:2] / pack
        kept = pack_file.read_bytes()
        r = c.put(f"/api/v1/sets/docs/packs/{pack}", content=b"other bytes", headers={"Ironcore-Lease": lease_id})
        assert r.status_code == 200 and r.json()["stored"] is False
        assert pack_file.read_bytes() == kept
        r = c.put(f"/api/v1/sets/docs/commits/{head + 1}", content=forget_commit(tmp_path, head + 1),
                  headers={"Ironcore-Lease": lease_id})
        assert r.status_code == 400 and "history is removed only by the server" in r.json()["error"], r.text
        r = c.put(f"/api/v1/sets/docs/commits/{head + 1}", content=forget_commit(tmp_path, head + 1, "forget"),
                  headers={"Ironcore-Lease": lease_id})
        assert r.status_code == 400, r.text
        # replacing commit 1 with the forget is a conflict, never a rewrite
        r = c.put("/api/v1/sets/docs/commits/1", content=forget_commit(tmp_path, 1),
                  headers={"Ironcore-Lease": lease_id})
        assert r.status_code == 409, r.text
        assert c.delete("/api/v1/sets/docs/lease", headers={"Ironcore-Lease": lease_id}).status_code == 200
        assert [s["seq"] for s in c.get("/api/v1/sets/docs/snapshots").json()] == [1]
        assert c.get("/api/v1/sets/docs/log").json() == {"head": 1, "seqs": [1]}
    assert sorted(files_under(volume / "log")) == [commitlog.commit_name(1)]   # no leftover upload
    assert pack in {p.split("/")[1] for p in files_under(volume / "packs")}
    assert env.ironcore("snapshots", "docs").returncode == 0
    assert_verify_clean(env, server)


# --- 4. bad credentials and damaged packs ---------------------------------------------------------
def test_wrong_password_is_401_and_a_damaged_pack_is_rejected_whole(env, server, tmp_path):
    with api(server, ("alice", "not the password")) as c:
        r = c.get("/api/v1/whoami")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="ironcore"'
    assert "alice pw" not in r.text
    with api(server, ("nobody", "x")) as c:       # same answer for a name that does not exist
        r2 = c.get("/api/v1/sets")
    assert r2.status_code == 401 and r2.json()["error"] == r.json()["error"]
    with api(server) as c:                        # no credentials, and malformed ones
        assert c.get("/api/v1/whoami").status_code == 401
        assert c.get("/api/v1/whoami", headers={"Authorization": "Basic !!!"}).status_code == 401
        assert c.get("/api/v1/whoami", headers={"Authorization": "Bearer ic1_nope_nope"}).status_code == 401
    volume = backed_up_set(env, server, tmp_path)
    packs_before = files_under(volume / "packs")
    token = json.loads((env.home / "server.json").read_text())["token"]
    with api(server, token=token) as c:
        lease = c.post("/api/v1/sets/docs/lease", json={"host": "x"}).json()["lease"]
        good = empty_pack()
        damaged = bytearray(good)
        damaged[3] ^= 0x01
        name = hashlib.sha256(good).hexdigest()
        r = c.put(f"/api/v1/sets/docs/packs/{name}", content=bytes(damaged), headers={"Ironcore-Lease": lease})
        assert r.status_code == 400 and "rejected whole" in r.json()["error"], r.text
        assert files_under(volume / "packs") == packs_before          # nothing kept, not even a temporary file
        # a pack whose bytes hash to its name but hold no index is rejected whole too
        junk = b"no index here" * 10
        r = c.put(f"/api/v1/sets/docs/packs/{hashlib.sha256(junk).hexdigest()}", content=junk,
                  headers={"Ironcore-Lease": lease})
        assert r.status_code == 400
        assert files_under(volume / "packs") == packs_before
        # a name that is not 64 hex digits never reaches the disk
        assert c.put("/api/v1/sets/docs/packs/ABC", content=good, headers={"Ironcore-Lease": lease}).status_code == 400
        assert c.delete("/api/v1/sets/docs/lease", headers={"Ironcore-Lease": lease}).status_code == 200
    assert files_under(volume / "packs") == packs_before
    assert_alive(server)
    assert_verify_clean(env, server)


# --- 5. metrics ---------------------------------------------------------------------------------
def test_metrics_count_commits_and_usage(env, server, tmp_path):
    backed_up_set(env, server, tmp_path)
    with api(server, ("admin", ADMIN_PW)) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    commits = re.search(r"^ironfs_commits_total (\d+)$", text, re.M)
    assert commits and int(commits.group(1)) >= 1, text
    usage = re.search(r'^ironfs_account_usage_bytes\{account="alice"\} (\d+)$', text, re.M)
    assert usage and int(usage.group(1)) > 0, text
    on_disk = sum(p.stat().st_size for p in (server.root / "accounts" / "alice").rglob("*")
                  if p.is_file() and (p.parent.name == "log" or p.parent.parent.name == "packs"))
    assert int(usage.group(1)) == on_disk
    assert re.search(r'^ironfs_requests_total\{endpoint="put_commit",status="201"\} [1-9]', text, re.M), text
    assert "alice pw" not in text and ADMIN_PW not in text


def test_silent_and_slow_clients_do_not_stall_the_others(server):
    """Connections that never start TLS, and a hundred that trickle their headers
    (slowloris), leave the server answering everyone else at once."""
    import time

    def connect(i):   # from several addresses: one alone may hold only 64 connections (test_server_limits.py)
        return socket.create_connection(("127.0.0.1", server.port), source_address=(f"127.0.3.{i % 8 + 1}", 0))
    silent = [connect(i) for i in range(50)]
    ctx = tls(server)
    slow = []
    for i in range(100):
        s = ctx.wrap_socket(connect(i), server_hostname="localhost")
        s.sendall(b"GET /api/v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # and never the blank line
        slow.append(s)
    try:
        started = time.monotonic()
        assert_alive(server)
        assert time.monotonic() - started < 5
    finally:
        for s in silent + slow:
            s.close()
