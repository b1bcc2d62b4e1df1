"""Logins and content safety on a real `ironfs serve` over TLS (issue 17, items 7-12):
the failed-login limit holds while a WebDAV session is cached; a new password or a
removed account ends access on every interface at once (checked with rclone); an
unknown name costs what a wrong password costs; the limiter forgets and is bounded;
accounts.db and its -wal/-shm are 0600; backed-up files cannot act as pages of the
server's origin, and the token route takes only JSON from no other site.

Requests come from distinct loopback addresses (127.x.y.z) where the per-address
limit would otherwise mix the cases up; each test uses accounts of its own."""
import os
import re
import ssl
import statistics
import sqlite3
import stat
import subprocess
import time
from urllib.parse import quote

import httpx
import pytest

from conftest import Env
from ironfs.server.auth import MAX_FAILURES, WINDOW_S, FailureLimiter, TooManyFailures
from ironfs.store.dataroot import DataRoot
from serverkit import ADMIN_PW, Server, login, make_root, server  # noqa: F401 (server is a fixture)
from test_dav import drain, server_log
from test_remote import add_server_set

ALICE = ("alice", "alice pw")
WEB_FILES = {   # name -> (bytes, shown inline in a browser?)
    "page.html": (b"<html><script>fetch('/api/v1/tokens',{method:'POST',body:'{}'})</script></html>", False),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', False),
    "paper.pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", False),
    "data.xml": (b"<?xml version='1.0'?><x:script xmlns:x='http://www.w3.org/1999/xhtml'>alert(1)</x:script>", False),
    "no-extension": (b"<html><script>alert(1)</script></html>", False),
    "notes.txt": (b"<html><script>alert('sniff me')</script></html>\n" * 40, True),
    "photo.png": (b"\x89PNG\r\n\x1a\n" + os.urandom(3000), True),
}


def tls_context(server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.root / "tls" / "cert.pem"))
    ctx.check_hostname = False
    return ctx


def client(server, auth=None, source: str | None = None) -> httpx.Client:
    """A client of `server`, its connections made from loopback address `source`."""
    transport = httpx.HTTPTransport(verify=tls_context(server), local_address=source)
    return httpx.Client(base_url=server.url, transport=transport, auth=auth, timeout=60)


def add_accounts(server, *names: str) -> None:
    """Accounts added straight to the data root the server runs on (password: NAME pw)."""
    root = DataRoot(server.root)
    for name in names:
        root.accounts.add(name, f"{name} pw", None)
    root.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A server whose alice has set `web` with WEB_FILES backed up (tests add accounts of their own)."""
    tmp = tmp_path_factory.mktemp("site")
    env = Env(tmp)
    make_root(env, tmp / "root")
    srv = Server(tmp / "root")
    drain(srv)
    try:
        login(env, srv.url)
        src = tmp / "web"
        src.mkdir()
        for name, (data, _) in WEB_FILES.items():
            (src / name).write_bytes(data)
        add_server_set(env, "web", src)
        env.backup_json("web")
        srv.web_path = "/dav/web/latest" + quote(str(src))
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, server_log(srv)


# --- 7: the limit holds while a session is cached ----------------------------------------
def test_the_failed_login_limit_holds_while_a_webdav_session_is_cached(site):
    add_accounts(site, "dave")
    right = ("dave", "dave pw")
    with client(site, right, "127.0.7.1") as owner:
        assert owner.request("PROPFIND", "/dav/", headers={"Depth": "0"}).status_code == 207   # cached now
    # a guesser from elsewhere: 20 guesses, the right password among them late
    guesses = [f"guess {i}" for i in range(20)]
    guesses[12] = right[1]
    answers = []
    with client(site, None, "127.0.7.2") as guesser:
        for guess in guesses:
            answers.append(guesser.request("PROPFIND", "/dav/", headers={"Depth": "0"},
                                           auth=("dave", guess)).status_code)
    assert answers == [401] * len(guesses), answers   # the cached right password is no answer either
    # the owner, cached or not, and the API from another address, wait out the window too
    with client(site, right, "127.0.7.3") as owner:
        assert owner.request("PROPFIND", "/dav/", headers={"Depth": "0"}).status_code == 401
        limited = owner.get("/api/v1/whoami")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) <= WINDOW_S + 1


# --- 8: passwd and remove take effect at once -------------------------------------------
def rclone(server, tmp_path, user: str, password: str, *args) -> subprocess.CompletedProcess:
    obscured = subprocess.run(["rclone", "obscure", password], capture_output=True, check=True).stdout.strip()
    env = dict(os.environ, RCLONE_CONFIG=str(tmp_path / "none.conf"), RCLONE_WEBDAV_URL=f"{server.url}/dav",
               RCLONE_WEBDAV_VENDOR="other", RCLONE_WEBDAV_USER=user, RCLONE_WEBDAV_PASS=obscured.decode())
    return subprocess.run(["rclone", "--ca-cert", str(server.root / "tls" / "cert.pem"), "--retries", "1",
                           "--low-level-retries", "1", *args], capture_output=True, env=env, timeout=60)


def test_passwd_and_remove_end_webdav_and_api_access_at_once(env, server, tmp_path):
    login(env, server.url)
    src = tmp_path / "src"
    src.mkdir()
    (src / "letter.txt").write_bytes(b"dear alice\n" * 100)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    inside = f":webdav:docs/latest{src}/letter.txt"
    assert rclone(server, tmp_path, *ALICE, "cat", inside).stdout == b"dear alice\n" * 100   # a session now

    env.ironfs("account", "passwd", "alice", "--data-root", server.root, "--password-stdin",
               input=b"alice new pw\n")
    old = rclone(server, tmp_path, *ALICE, "lsf", ":webdav:")
    assert old.returncode != 0 and b"401" in old.stderr, (old.stdout, old.stderr)
    with client(server, ALICE) as api:
        assert api.get("/api/v1/whoami").status_code == 401
    new = rclone(server, tmp_path, "alice", "alice new pw", "lsf", ":webdav:")
    assert new.returncode == 0 and new.stdout.split() == [b"docs/"], new.stderr
    # the sets' login slots still open with the old password only, and WebDAV says what to do
    with client(server, ("alice", "alice new pw")) as dav:
        refused = dav.get(f"/dav/docs/latest{quote(str(src))}/letter.txt")
    assert refused.status_code == 403 and b"ironcore login" in refused.content, refused.text

    env.ironfs("account", "remove", "alice", "--yes", "--data-root", server.root)
    gone = rclone(server, tmp_path, "alice", "alice new pw", "lsf", ":webdav:")
    assert gone.returncode != 0 and b"401" in gone.stderr, (gone.stdout, gone.stderr)
    with client(server, ("alice", "alice new pw")) as api:
        assert api.get("/api/v1/whoami").status_code == 401
    assert env.ironcore("snapshots", "docs", check=False).returncode != 0   # the machine's token is revoked too


# --- 9: an unknown name answers as slowly as a wrong password -----------------------------
ATTEMPTS = 11   # of each kind: a median robust to a loaded machine, at about 1 s an attempt
PROBE_ACCOUNTS = -(-ATTEMPTS // MAX_FAILURES)


def timed_failures(site, accounts: list[str], net: str, send) -> tuple[list[float], list[float], set]:
    """ATTEMPTS wrong passwords for existing accounts (MAX_FAILURES each) and as many
    unknown names, interleaved, each from an address of its own on a warmed connection.
    Returns the seconds of each kind and the distinct (status, body) answers."""
    existing, unknown, answers = [], [], set()
    for i in range(ATTEMPTS):
        for kind, name, times in (("known", accounts[i // MAX_FAILURES], existing),
                                  ("unknown", f"nobody{i}-{net}", unknown)):
            with client(site, None, f"127.{net}.{len(times) + 1}.{1 if kind == 'known' else 2}") as c:
                send(c, None)   # no credentials: connects and shakes hands, counts no failure
                started = time.perf_counter()
                r = send(c, (name, "not the password"))
                times.append(time.perf_counter() - started)
                answers.add((r.status_code, r.content))
    return existing, unknown, answers


def assert_same_cost(existing: list[float], unknown: list[float]) -> None:
    ratio = statistics.median(existing) / statistics.median(unknown)
    assert 0.5 <= ratio <= 2, f"median {statistics.median(existing):.3f} s against {statistics.median(unknown):.3f} s"


def test_an_unknown_name_costs_what_a_wrong_password_costs_on_the_api(site):
    accounts = [f"probe-api{i}" for i in range(PROBE_ACCOUNTS)]
    add_accounts(site, *accounts)
    existing, unknown, answers = timed_failures(site, accounts, "9",
                                                lambda c, auth: c.get("/api/v1/whoami", auth=auth))
    assert [status for status, _ in answers] == [401]   # one answer, body and all
    assert_same_cost(existing, unknown)


def test_an_unknown_name_costs_what_a_wrong_password_costs_on_webdav(site):
    accounts = [f"probe-dav{i}" for i in range(PROBE_ACCOUNTS)]
    add_accounts(site, *accounts)
    existing, unknown, answers = timed_failures(
        site, accounts, "19", lambda c, auth: c.request("PROPFIND", "/dav/", headers={"Depth": "0"}, auth=auth))
    assert [status for status, _ in answers] == [401]
    assert_same_cost(existing, unknown)


# --- 10: the limiter forgets and is bounded -----------------------------------------------
def test_the_limiter_forgets_keys_after_the_window_and_keeps_at_most_max_keys():
    now = [0.0]
    limiter = FailureLimiter(clock=lambda: now[0])
    for i in range(10_000):
        limiter.check(f"addr:10.0.{i // 250}.{i % 250}", f"account:user{i}")
        limiter.failed(f"addr:10.0.{i // 250}.{i % 250}", f"account:user{i}")
    assert len(limiter) == 20_000
    now[0] += WINDOW_S + 1
    limiter.check("addr:10.9.9.9")
    assert len(limiter) == 0
    # a key limited now is limited until its window moves on, and then free again
    for _ in range(MAX_FAILURES):
        limiter.failed("account:alice")
    with pytest.raises(TooManyFailures):
        limiter.check("account:alice")
    now[0] += WINDOW_S + 1
    limiter.check("account:alice")

    capped = FailureLimiter(max_keys=1000, clock=lambda: now[0])
    for i in range(5000):
        capped.failed(f"account:user{i}")
    assert len(capped) == 1000
    for _ in range(MAX_FAILURES):
        capped.failed("account:alice")   # the most recent failures are the ones kept
    with pytest.raises(TooManyFailures):
        capped.check("account:alice")


def limiter_keys(server) -> int:
    """The server's gauge of keys its failed-login limiter holds (asked as the admin)."""
    with client(server, ("admin", ADMIN_PW)) as c:
        found = re.search(r"^ironfs_login_limiter_keys (\d+)$", c.get("/metrics").text, re.M)
    assert found, "no ironfs_login_limiter_keys in /metrics"
    return int(found[1])


def test_a_limited_address_trying_many_names_adds_no_keys(site):
    before = limiter_keys(site)
    with client(site, None, "127.10.0.1") as c:
        statuses = {c.get("/api/v1/whoami", auth=(f"name{i}", "pw")).status_code for i in range(150)}
    with client(site, None, "127.10.0.2") as c:
        statuses |= {c.request("PROPFIND", "/dav/", headers={"Depth": "0"}, auth=(f"dav{i}", "pw")).status_code
                     for i in range(150)}
    assert statuses == {401, 429}
    # two addresses and the first MAX_FAILURES names of each: nothing for the rest
    assert limiter_keys(site) - before <= 2 * (1 + MAX_FAILURES)


# --- 11: accounts.db is private -----------------------------------------------------------
def modes(root) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in root.glob("accounts.db*")}


def test_accounts_db_and_its_wal_and_shm_are_0600_and_are_put_right(env, tmp_path):
    old_umask = os.umask(0o022)
    try:
        make_root(env, tmp_path / "root")
        root = tmp_path / "root"
        assert modes(root) == {"accounts.db": 0o600}
        srv = Server(root)
        try:
            with client(srv, ALICE) as c:
                assert c.get("/api/v1/whoami").status_code == 200
            assert modes(root) == {"accounts.db": 0o600, "accounts.db-wal": 0o600, "accounts.db-shm": 0o600}
        finally:
            assert srv.stop() == 0
        # a data root of an older version, its server running: the next command puts it right
        holder = sqlite3.connect(root / "accounts.db")
        holder.execute("SELECT count(*) FROM accounts").fetchone()
        for name in ("accounts.db", "accounts.db-wal", "accounts.db-shm"):
            os.chmod(root / name, 0o644)
        env.ironfs("account", "list", "--data-root", root)
        assert modes(root) == {"accounts.db": 0o600, "accounts.db-wal": 0o600, "accounts.db-shm": 0o600}
        holder.close()
    finally:
        os.umask(old_umask)


# --- 12: backed-up files cannot act as pages of this origin ------------------------------
def test_backed_up_files_are_sandboxed_and_only_safe_types_are_inline(site):
    with client(site, ALICE) as dav:
        for name, (data, inline) in WEB_FILES.items():
            url = f"{site.web_path}/{name}"
            answers = {"GET": dav.get(url), "HEAD": dav.head(url),
                       "range": dav.get(url, headers={"Range": "bytes=1-20"}),
                       "ranges": dav.get(url, headers={"Range": "bytes=0-1,5-9"})}
            answers["304"] = dav.get(url, headers={"If-None-Match": answers["GET"].headers["etag"]})
            assert [r.status_code for r in answers.values()] == [200, 200, 206, 206, 304], name
            assert answers["GET"].content == data
            for kind, r in answers.items():
                assert r.headers["x-content-type-options"] == "nosniff", (name, kind)
                assert r.headers["content-security-policy"] == "sandbox", (name, kind)
                disposition = r.headers.get("content-disposition")
                if inline:
                    assert disposition is None, (name, kind)
                else:
                    assert disposition == f"attachment; filename*=UTF-8''{name}", (name, kind)
        assert dav.get(f"{site.web_path}/photo.png").headers["content-type"] == "image/png"


def test_the_token_route_takes_json_only_and_from_no_other_site(site):
    own = f"https://127.0.0.1:{site.port}"
    with client(site, ALICE, "127.12.0.1") as c:
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": kind} if kind else {}
            r = c.post("/api/v1/tokens", content=b'{"host": "evil"}', headers=headers)
            assert r.status_code == 415 and "application/json" in r.json()["error"], (kind, r.text)
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Origin": f"http://127.0.0.1:{site.port}"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site"}, {"Origin": own, "Sec-Fetch-Site": "cross-site"}):
            r = c.post("/api/v1/tokens", json={"host": "evil"}, headers=headers)
            assert r.status_code == 403 and "other sites" in r.json()["error"], (headers, r.text)
            assert c.get("/api/v1/whoami", headers=headers).status_code == 403, headers
        for headers in ({}, {"Origin": own, "Sec-Fetch-Site": "same-origin"}):
            r = c.post("/api/v1/tokens", json={"host": "laptop"}, headers=headers)
            assert r.status_code == 201 and r.json()["token"].startswith("ic1_"), (headers, r.text)
        # none of the refusals counted as a failed login
        assert c.get("/api/v1/whoami").status_code == 200
