"""The client's link to a server: the pinned certificate, the machine token,
and an HTTPS client that trusts exactly that certificate.

Pinning: on first login the server's certificate is fetched and its SHA-256
shown (or checked against --fingerprint); afterwards TLS accepts only that
certificate, so a changed one is refused with its new fingerprint in the
message rather than silently trusted.

httpx is imported where a server is first called: it (and the rich and
pygments it pulls in) is a tenth of a second that a backup to a local folder
need not pay. So are ssl and urllib.request: 0.05 s more with cold caches."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from client import config
from client.throttle import TokenBucket, throttled
from ironfs.errors import IroncoreError, UsageError
from ironfs.format.fsutil import write_atomic

if TYPE_CHECKING:
    import ssl

    import httpx

logger = logging.getLogger(__name__)

TIMEOUT, CONNECT_TIMEOUT = 60.0, 10.0
RETRY_SECONDS = float(os.environ.get("IRONCORE_RETRY_SECONDS", 300))   # how long a backup waits out a server restart
# how long a command someone waits at (snapshots, restore, set list ...) keeps trying
INTERACTIVE_RETRY_SECONDS = float(os.environ.get("IRONCORE_INTERACTIVE_RETRY_SECONDS", 20))


class CertificateChanged(IroncoreError):
    exit_code = 6


class ServerError(IroncoreError):
    """The server answered with an error; its message and hint are passed on,
    and the exit code says what kind it was."""

    EXIT_CODES = {400: 2, 401: 3, 403: 3, 409: 4, 423: 4, 507: 5}

    def __init__(self, status: int, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.status = status
        self.exit_code = self.EXIT_CODES.get(status, 1)


def split_url(url: str) -> tuple[str, str, int]:
    parsed = urlparse(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise UsageError(f"{url!r} is not a server URL.", "Use https://HOST:PORT.")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if parsed.scheme == "http" and parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise UsageError("Plain http is only allowed to this machine (loopback).", "Use https://.")
    return parsed.scheme, parsed.hostname, port


class ProxyRefused(IroncoreError):
    """The proxy in HTTPS_PROXY / ALL_PROXY did not open a tunnel to the server."""

    exit_code = 7


def proxy_for(host: str) -> str | None:
    """The proxy the standard settings (HTTPS_PROXY, ALL_PROXY, NO_PROXY) give for https to
    `host`, as httpx reads them; None for a direct connection."""
    import urllib.request
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get("https") or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    return proxy if "://" in proxy else "http://" + proxy


def shown_proxy(proxy: str) -> str:
    """The proxy's address without its user name and password, for messages and logs."""
    parsed = urlparse(proxy)
    return f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 80}"


def proxy_refused(proxy: str | None, port: int, why: str) -> ProxyRefused:
    where = shown_proxy(proxy) if proxy else "in HTTPS_PROXY / ALL_PROXY"
    return ProxyRefused(f"The proxy {where} refused the tunnel to the server: {why}.",
                        "Check the user name and password in HTTPS_PROXY (http://USER:PASSWORD@HOST:PORT), "
                        f"and that the proxy allows HTTP CONNECT to port {port} (many allow only 443).")


def tunnel(proxy: str, host: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to host:port through an HTTP proxy's CONNECT, with basic
    authentication when the proxy URL carries a user name."""
    parsed = urlparse(proxy)
    sock = socket.create_connection((parsed.hostname, parsed.port or 80), timeout=timeout)
    try:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if parsed.username is not None:
            pair = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}".encode()
            request += f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}\r\n"
        sock.sendall((request + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk or len(answer) > 65536:
                raise proxy_refused(proxy, port, "it closed the connection")
            answer += chunk
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        if status.split()[1:2] != ["200"]:
            raise proxy_refused(proxy, port, status)
        return sock
    except BaseException:
        sock.close()
        raise


def fetch_certificate(host: str, port: int) -> str:
    """The server's certificate as it presents it (through the proxy when one is set)."""
    import ssl
    proxy = proxy_for(host)
    try:
        if proxy is None:
            return ssl.get_server_certificate((host, port), timeout=10)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE   # only fetched, to be shown and pinned; nothing is sent
        with ctx.wrap_socket(tunnel(proxy, host, port), server_hostname=host) as tls:
            return ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))
    except (OSError, ssl.SSLError) as exc:
        where = f" through the proxy {shown_proxy(proxy)}" if proxy else ""
        raise IroncoreError(f"Cannot reach {host}:{port}{where}: {exc}.",
                            "Check the address and that 'ironfs serve' runs there.") from None


def fingerprint(cert_pem: str) -> str:
    import ssl
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest()


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """Trust this one certificate and nothing else (host names are not checked:
    the pin is stronger than a name)."""
    import ssl
    ctx = ssl.create_default_context(cadata=cert_pem)
    ctx.check_hostname = False
    return ctx


def state_path() -> str:
    return os.path.join(config.home(), "server.json")


def load_state() -> dict:
    try:
        with open(state_path()) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError("This machine is not logged in to a server.",
                         "Run 'ironcore login --server URL --account NAME'.") from None


def save_state(state: dict) -> None:
    path = state_path()
    write_atomic(path, json.dumps(state, indent=1).encode())
    os.chmod(path, 0o600)   # holds the machine token


def raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:200] or response.reason_phrase}
    raise ServerError(response.status_code, body.get("error") or f"HTTP {response.status_code}", body.get("hint"))


class Unreachable(IroncoreError):
    """The network or the server failed before an answer came: worth retrying."""


class ServerClient:
    """HTTPS to one server with the pinned certificate."""

    def __init__(self, url: str, cert_pem: str | None, auth=None, token: str | None = None,
                 retry_seconds: float = RETRY_SECONDS, notice=None):
        self.url = url.rstrip("/")
        self.retry_seconds = retry_seconds   # a call's whole time when the caller gives none, retries and waits for answers included
        self.notice = notice                 # notice(message, seconds_left) while `call` retries
        scheme, self.host, self.port = split_url(url)
        self.cert_pem = cert_pem
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify = pinned_context(cert_pem) if scheme == "https" else False
        import httpx
        self.http = httpx.Client(base_url=self.url, verify=verify, auth=auth, headers=headers,
                                 timeout=httpx.Timeout(TIMEOUT, connect=CONNECT_TIMEOUT),
                                 limits=httpx.Limits(max_connections=16), trust_env=True)   # HTTPS_PROXY etc.
        self.bucket: TokenBucket | None = None
        self.bytes_sent = 0     # upload bodies (packs, commits), retries included

    def limit_uploads(self, bytes_per_second: int | None) -> None:
        """Upload bodies keep to this rate from now on (None: no limit)."""
        self.bucket = TokenBucket(bytes_per_second) if bytes_per_second else None

    def _count(self, n: int) -> None:
        self.bytes_sent += n

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        import httpx
        try:
            response = self.http.request(method, path, **kw)
        except httpx.ProxyError as exc:
            raise proxy_refused(proxy_for(self.host), self.port, str(exc)) from None
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) and self.cert_pem:
                now = fingerprint(fetch_certificate(self.host, self.port))
                raise CertificateChanged(
                    f"The server's certificate changed: pinned {fingerprint(self.cert_pem)}, now {now}.",
                    "If the administrator confirms the new fingerprint, log in again with "
                    f"'ironcore login --server {self.url} --account NAME --fingerprint {now}'. "
                    "Otherwise someone may be between you and the server.") from None
            raise Unreachable(f"Cannot reach {self.url}: {exc}.", "Check the network and the server.") from None
        except httpx.TransportError as exc:
            raise Unreachable(f"Connection to {self.url} failed: {exc}.", "Try again.") from None
        raise_for(response)
        return response

    def call(self, method: str, path: str, retry_for: float | None = None, body=None, **kw) -> httpx.Response:
        """`request`, retried with growing pauses while the server is unreachable or
        answers 5xx, for up to `retry_for` seconds (default: the client's budget; a
        restarted server, a network blip), telling `notice` at once and each second; no
        attempt waits for its answer past that deadline.
        `body` is a callable giving a fresh request body (an iterable of bytes) for each
        attempt; it goes out through the upload limit, if any."""
        import httpx
        deadline = time.monotonic() + (self.retry_seconds if retry_for is None else retry_for)
        pause = 0.25
        while True:
            try:
                if body is not None:
                    kw["content"] = throttled(body(), self.bucket, self._count)
                left = max(deadline - time.monotonic(), 0.1)
                kw["timeout"] = httpx.Timeout(min(TIMEOUT, left), connect=min(CONNECT_TIMEOUT, left))
                return self.request(method, path, **kw)
            except (Unreachable, ServerError) as exc:
                retryable = isinstance(exc, Unreachable) or exc.status in (500, 502, 503, 504)
                if not retryable or time.monotonic() + pause > deadline:
                    raise
                logger.info("retrying %s %s in %.1f s: %s", method, path, pause, exc.message)
                self._wait(pause, deadline, exc.message)
                pause = min(pause * 2, 5.0)

    def _wait(self, pause: float, deadline: float, message: str) -> None:
        """Sleep `pause` seconds, telling `notice` each second how long is left."""
        end = time.monotonic() + pause
        while (left := end - time.monotonic()) > 0:
            if self.notice is not None:
                self.notice(message, deadline - time.monotonic())
            time.sleep(min(left, 1.0))

    def close(self) -> None:
        self.http.close()


def login(url: str, account: str, password: str, expected_fingerprint: str | None) -> dict:
    """Pin the server's certificate, trade the password for a machine token, save both."""
    scheme, host, port = split_url(url)
    cert = fingerprint_now = None
    if scheme == "https":
        cert = fetch_certificate(host, port)
        fingerprint_now = fingerprint(cert)
        wanted = (expected_fingerprint or "").lower().replace(":", "")
        if wanted and wanted != fingerprint_now:
            raise CertificateChanged(f"The server presents certificate {fingerprint_now}, not {wanted}.",
                                     "Do not log in; ask the administrator for the fingerprint "
                                     "'ironfs init' printed.")
        try:
            previous = load_state()
        except UsageError:
            previous = None
        if not wanted and previous and previous.get("url") == url.rstrip("/") \
                and previous.get("fingerprint") != fingerprint_now:
            raise CertificateChanged(
                f"The server's certificate changed: pinned {previous['fingerprint']}, now {fingerprint_now}.",
                f"If the administrator confirms it, log in with --fingerprint {fingerprint_now}.")
    client = ServerClient(url, cert, auth=(account, password))
    config.machine_id()   # made now, so this installation's leases name it from its first backup
    try:
        token = client.request("POST", "/api/v1/tokens", json={"host": config.host_name()}).json()["token"]
    finally:
        client.close()
    state = {"url": url.rstrip("/"), "account": account, "fingerprint": fingerprint_now, "cert_pem": cert,
             "token": token}
    save_state(state)
    return state


def check_password(state: dict, password: str) -> None:
    """WrongSecret-like ServerError (exit 3) unless `password` is the account's."""
    owner = ServerClient(state["url"], state["cert_pem"], auth=(state["account"], password))
    try:
        owner.request("GET", "/api/v1/whoami")
    finally:
        owner.close()


def change_password(state: dict, old: str, new: str) -> dict:
    owner = ServerClient(state["url"], state["cert_pem"], auth=(state["account"], old))
    try:
        return owner.request("POST", "/api/v1/password", json={"old": old, "new": new}).json()
    finally:
        owner.close()


class RetryNotice:
    """Tells the person at the command, on stderr, that the server does not answer and
    that the command keeps trying: a line at once, which on a terminal counts down."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.last: str | None = None

    def __call__(self, message: str, seconds_left: float) -> None:
        left = max(0, round(seconds_left))
        if self.stream.isatty():   # the same line again (cursor up), while the message stays the same
            again = "\x1b[1A\r\x1b[2K" if message == self.last else ""
            self.stream.write(f"{again}{message} Retrying, giving up in {left} s (Ctrl-C stops).\n")
        elif message != self.last:
            self.stream.write(f"{message} Retrying for up to {left} s.\n")
        self.last = message
        self.stream.flush()


def connect(retry_seconds: float = RETRY_SECONDS, password: str | None = None) -> ServerClient:
    """A client for the server this machine is logged in to; a call keeps trying an
    unreachable server for `retry_seconds` (less for commands someone waits at),
    saying so on stderr. With `password` it acts with the account password (what
    the owner may do: docs/SECURITY.md), else with this machine's token."""
    state = load_state()
    credentials = {"auth": (state["account"], password)} if password is not None else {"token": state["token"]}
    return ServerClient(state["url"], state["cert_pem"], retry_seconds=retry_seconds, notice=RetryNotice(),
                        **credentials)


def connect_owner(password_stdin: bool, retry_seconds: float = INTERACTIVE_RETRY_SECONDS) -> ServerClient:
    """`connect` with the account password, read from --password-stdin, IRONCORE_PASSWORD
    or a prompt: for what a machine's token alone may not do at once."""
    password = config.read_secret(password_stdin, prompt="Account password: ").decode()
    return connect(retry_seconds, password=password)
