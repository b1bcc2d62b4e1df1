"""`ironfs serve` against clients that hold on or pour in, on a real server over
real sockets: idle and trickling connections by the thousand and long polls by
the hundred leave other clients answered within a second; one address has a
cap on connections and a request head a total deadline; every request body is
bounded whatever its framing (the server's memory is read from /proc); reports
are bounded; plain HTTP on the TLS port is told the https URL; TLS answers carry
HSTS; and a server killed with open connections can listen on its port again
at once."""
import json
import resource
import select
import socket
import ssl
import threading
import time

import httpx
import pytest

from ironfs.server.front import HEAD_SECONDS, MAX_CONNECTIONS_PER_ADDRESS
from ironfs.server.reports import REPORT_MAX_BYTES, SET_MAX_BYTES
from ironfs.server.sync import LONG_POLLS_PER_ACCOUNT
from serverkit import Server, make_root
from test_api_hardening import ALICE, basic, make_scratch_set, parse_responses, tls

ATTACK_ADDRESSES = [f"127.0.1.{i}" for i in range(1, 41)]   # 50 connections each, under the cap
NORMAL_CLIENT = "127.0.0.2"
MiB = 1 << 20


@pytest.fixture(autouse=True)
def many_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(params=["tls", "plain"])
def any_server(request, env, tmp_path):
    make_root(env, tmp_path / "root")
    srv = Server(tmp_path / "root", extra=("--plain-http",) if request.param == "plain" else ())
    srv.tls = request.param == "tls"
    yield srv
    srv.proc.kill()
    srv.proc.wait()


@pytest.fixture
def plain_server(env, tmp_path):
    make_root(env, tmp_path / "root")
    srv = Server(tmp_path / "root", extra=("--plain-http",))
    srv.tls = False
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def tls_server(env, tmp_path):
    make_root(env, tmp_path / "root")
    srv = Server(tmp_path / "root")
    srv.tls = True
    yield srv
    assert srv.stop() == 0


def client(server, source=NORMAL_CLIENT, **kw) -> httpx.Client:
    """A fresh client from `source`, so each request connects anew."""
    transport = httpx.HTTPTransport(local_address=source, verify=tls(server) if server.tls else True)
    return httpx.Client(base_url=server.url, transport=transport, timeout=30, **kw)


def machine_token(server) -> str:
    with client(server, auth=ALICE) as c:
        r = c.post("/api/v1/tokens", json={"host": "limits"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def timed_whoami(server, token, source=NORMAL_CLIENT) -> float:
    started = time.monotonic()
    with client(server, source, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.get("/api/v1/whoami")
    assert r.status_code == 200 and r.json()["account"] == "alice", r.text
    return time.monotonic() - started


def connect(server, source: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", server.port))
    return s


def server_closed(sock: socket.socket) -> bool:
    """Whether the server has ended this connection (an answer or EOF is waiting, or a reset)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def client_hello() -> bytes:
    """The first bytes a TLS client sends, to trickle into the TLS port."""
    tls_obj = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                                                    server_hostname="ironcore")
    with pytest.raises(ssl.SSLWantReadError):
        tls_obj.do_handshake()
    return outgoing.read()


class Trickler:
    """Sends one more byte of a request head on each socket every half second."""

    def __init__(self, socks, head: bytes):
        self.socks, self.head = socks, head
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.wait(0.5) and self.sent < len(self.head):
            byte = self.head[self.sent:self.sent + 1]
            for s in self.socks:
                try:
                    s.send(byte)
                except OSError:
                    pass   # the server ended it
            self.sent += 1

    def stop(self):
        self.stopping.set()
        self.thread.join()


def test_idle_and_trickling_connections_leave_others_answered_within_a_second(any_server):
    server = any_server
    token = machine_token(server)
    idle, trickling = [], []
    for i in range(1000):
        source = ATTACK_ADDRESSES[i % len(ATTACK_ADDRESSES)]
        idle.append(connect(server, source))
        trickling.append(connect(server, source))
    head = client_hello() if server.tls else (
        b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 4000 + b"\r\n\r\n")
    trickler = Trickler(trickling, head)
    try:
        started = time.monotonic()
        while trickler.sent < 3:   # every trickling connection has begun its head
            assert time.monotonic() - started < 30
            time.sleep(0.05)
        waits = [timed_whoami(server, token) for _ in range(8)]
        assert max(waits) < 1.0, waits
        # the whole head has HEAD_SECONDS, however steadily it trickles: the server ends them all
        deadline = time.monotonic() + HEAD_SECONDS + 20
        while not all(server_closed(s) for s in trickling + idle):   # a new connection's head too
            assert time.monotonic() < deadline, sum(map(server_closed, trickling + idle))
            time.sleep(0.2)
        assert timed_whoami(server, token) < 1.0
    finally:
        trickler.stop()
        for s in idle + trickling:
            s.close()


def test_one_address_holds_at_most_its_cap_of_connections(any_server):
    server = any_server
    token = machine_token(server)
    socks = [connect(server, "127.0.0.1") for _ in range(1000)]
    try:
        deadline = time.monotonic() + 20
        while sum(map(server_closed, socks)) < len(socks) - MAX_CONNECTIONS_PER_ADDRESS:
            assert time.monotonic() < deadline, sum(map(server_closed, socks))
            time.sleep(0.2)
        kept = [s for s in socks if not server_closed(s)]
        assert len(kept) == MAX_CONNECTIONS_PER_ADDRESS
        refused = next(s for s in socks if server_closed(s))
        if not server.tls:   # a plain refusal says why; a TLS one is only closed
            (status, headers, body), = parse_responses(refused.recv(65536))
            assert status == 503 and "Too many connections" in json.loads(body)["error"]
            assert headers["retry-after"]
        # this address is full (refused at once, 503 or closed); another is served at once
        started = time.monotonic()
        with client(server, "127.0.0.1") as c:
            try:
                assert c.get("/api/v1/whoami").status_code == 503
            except httpx.TransportError:
                pass
        assert time.monotonic() - started < 1.0
        assert timed_whoami(server, token) < 1.0
        for s in kept:
            s.close()
        deadline = time.monotonic() + 20
        while True:   # the places come back once the connections close
            try:
                assert timed_whoami(server, token, source="127.0.0.1") < 5
                break
            except (AssertionError, httpx.TransportError):
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        for s in socks:
            s.close()


def test_long_polls_of_one_token_leave_others_answered(plain_server):
    server = plain_server
    make_scratch_set(server)
    token = machine_token(server)
    answers, lock = [], threading.Lock()

    def long_poll():
        with client(server, "127.0.1.1", headers={"Authorization": f"Bearer {token}"}) as c:
            try:
                r = c.get("/api/v1/sets/x/log", params={"after": 0, "wait": 60}, timeout=90)
                got = (r.status_code, r.headers.get("retry-after"), r.json())
            except httpx.TransportError as exc:
                got = (None, None, repr(exc))
        with lock:
            answers.append(got)

    polls = [threading.Thread(target=long_poll, daemon=True) for _ in range(140)]
    for t in polls:
        t.start()
    deadline = time.monotonic() + 30
    while len(answers) < 140 - LONG_POLLS_PER_ACCOUNT:   # the rest answer at once: try later
        assert time.monotonic() < deadline, len(answers)
        time.sleep(0.1)
    refused = [a for a in answers if a[0] == 429]
    assert len(refused) == 140 - LONG_POLLS_PER_ACCOUNT, answers[:3]
    assert all(a[1] and "long polls" in a[2]["error"] and a[2]["hint"] for a in refused)
    waits = [timed_whoami(server, token) for _ in range(5)]
    assert max(waits) < 1.0, waits
    # a commit-less poll that need not wait is still answered while the others wait
    with client(server, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/api/v1/sets/x/log", params={"after": 0}).json() == {"head": 0, "seqs": []}


# --- bodies ----------------------------------------------------------------------------------
def peak_rss(server) -> int:
    """The server's high-water resident memory, in bytes."""
    with open(f"/proc/{server.proc.pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def send_body(server, head: str, body_pieces) -> list:
    """One request on a plain socket: `head`, then the pieces while the server still reads;
    the server's answers."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        s.sendall(head.encode())
        for piece in body_pieces:
            if server_closed(s):
                break   # answered (or closed) before the end: what a bounded reader does
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return parse_responses(answer) if answer else []
    finally:
        s.close()


def chunked(total: int, piece: int = MiB):
    block = (b"[" * piece)
    for _ in range(total // piece):
        yield f"{piece:x}\r\n".encode() + block + b"\r\n"
    yield b"0\r\n\r\n"


def raw(total: int, piece: int = MiB):
    block = b" " * piece
    for _ in range(total // piece):
        yield block


def test_every_json_body_is_bounded_whatever_its_framing(plain_server):
    server = plain_server
    auth = basic(*ALICE)
    with client(server, auth=ALICE) as c:   # a password check's own memory (argon2) before the baseline
        assert c.get("/api/v1/sets").json() == []
    before = peak_rss(server)
    common = f"Host: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    # chunked: no length declared at all
    answers = send_body(server, f"PUT /api/v1/sets/x HTTP/1.1\r\n{common}Transfer-Encoding: chunked\r\n\r\n",
                        chunked(200 * MiB))
    assert answers and answers[0][0] == 413, answers
    assert "too large" in json.loads(answers[0][2])["error"]
    # a declared length over the limit: refused before a byte is read
    answers = send_body(server, f"PUT /api/v1/sets/x HTTP/1.1\r\n{common}Content-Length: {200 * MiB}\r\n\r\n",
                        raw(200 * MiB))
    assert answers and answers[0][0] == 413, answers
    # a length that lies (far more follows): the declared bytes are the body, the rest is no request
    answers = send_body(server, f"PUT /api/v1/sets/x HTTP/1.1\r\n{common}Content-Length: 100\r\n\r\n",
                        raw(200 * MiB))
    assert answers and answers[0][0] == 400, answers
    # no length and not chunked: no body; what follows is no request either
    answers = send_body(server, f"PUT /api/v1/sets/x HTTP/1.1\r\n{common}\r\n", raw(200 * MiB))
    assert answers and answers[0][0] in (400, 413), answers
    grown = peak_rss(server) - before
    assert grown < 64 * MiB, f"the server grew by {grown / MiB:.0f} MiB"
    with client(server, auth=ALICE) as c:
        assert c.get("/api/v1/sets").json() == []


def test_reports_are_capped_in_size_and_in_total_per_set(plain_server):
    server = plain_server
    make_scratch_set(server)
    token = machine_token(server)
    report = {"status": "ok", "started_ns": 1}
    with client(server, headers={"Authorization": f"Bearer {token}"}) as c:
        big = dict(report, notes="x" * (REPORT_MAX_BYTES + 1))
        r = c.post("/api/v1/sets/x/reports", json=big)
        assert r.status_code == 413 and str(REPORT_MAX_BYTES) in r.json()["error"], r.text
        r = c.post("/api/v1/sets/x/reports", content=(json.dumps(big).encode() for _ in range(1)),
                   headers={"Content-Type": "application/json"})   # chunked: no length to refuse by
        assert r.status_code == 413, r.text
        near_cap = dict(report, notes="y" * (REPORT_MAX_BYTES - 1024))
        count = SET_MAX_BYTES // REPORT_MAX_BYTES + 20
        ids = [c.post("/api/v1/sets/x/reports", json=near_cap).json()["id"] for _ in range(count)]
        kept = c.get("/api/v1/sets/x/reports", params={"limit": 1000}).json()
    folder = server.root / "accounts" / "alice" / "x" / "reports"
    stored = sum(p.stat().st_size for p in folder.iterdir())
    assert stored <= SET_MAX_BYTES, stored
    assert [k["id"] for k in kept] == ids[-len(kept):] and len(kept) >= count - 40   # the newest are kept


# --- TLS port and restarts -------------------------------------------------------------------
def test_plain_http_on_the_tls_port_is_told_the_https_url(tls_server):
    server = tls_server
    with connect(server, "127.0.0.1") as s:
        s.sendall(f"GET /api/v1/whoami HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    (status, _, body), = parse_responses(answer)
    assert status == 400
    assert json.loads(body)["hint"] == f"Use https://127.0.0.1:{server.port}/api/v1/whoami"
    with client(server, auth=ALICE) as c:
        assert c.get("/api/v1/whoami").status_code == 200


def test_tls_answers_carry_hsts(tls_server):
    with client(tls_server, auth=ALICE) as c:
        for r in (c.get("/api/v1/whoami"), c.get("/api/v1/nothing"), c.request("PROPFIND", "/dav/")):
            assert r.headers["strict-transport-security"].startswith("max-age="), (r.status_code, r.headers)


def test_a_killed_server_listens_on_its_port_again_at_once(env, tmp_path):
    make_root(env, tmp_path / "root")
    first = Server(tmp_path / "root")   # port 0: the kernel picks one
    first.tls = True
    clients = [client(first, "127.0.0.1", auth=ALICE) for _ in range(5)]
    for c in clients:
        assert c.get("/api/v1/whoami").status_code == 200   # and the connection stays open
    first.proc.kill()
    first.proc.wait()
    again = Server(tmp_path / "root", listen=f"127.0.0.1:{first.port}")
    try:
        again.tls = True
        with client(again, auth=ALICE) as c:
            assert c.get("/api/v1/whoami").status_code == 200
    finally:
        for c in clients:
            c.close()
        assert again.stop() == 0


def test_a_client_report_naming_many_failed_files_is_fitted_under_the_cap():
    from client.reports import fitted
    failed = [{"path": "/data/" + "deep/" * 150 + f"file{i}", "error": "Permission denied"} for i in range(1000)]
    report = {"status": "warning", "started_ns": 1, "files_failed": 1000, "failed": failed}
    assert len(json.dumps(report)) > REPORT_MAX_BYTES
    sent = fitted(report)
    assert len(json.dumps(sent)) <= REPORT_MAX_BYTES and sent["files_failed"] == 1000
    assert sent["failed"] == failed[:len(sent["failed"])] and len(sent["failed"]) >= 100
