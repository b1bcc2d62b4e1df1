"""`ironfs serve`: the WSGI application on cheroot, over TLS with the data
root's certificate. Plain HTTP only on loopback. SIGTERM and SIGINT stop it
gracefully: cheroot finishes the requests in progress before it returns."""
import ipaddress
import logging
import logging.handlers
import os
import resource
import signal
import ssl
import sys
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from ironfs.errors import UsageError
from ironfs.server.app import ApiApp
from ironfs.server.dav import dav_app
from ironfs.server.front import MAX_CONNECTIONS, FrontServer
from ironfs.store.sets import LEASE_SECONDS, SetStore

logger = logging.getLogger(__name__)

LOG_BYTES = 10 << 20    # the server log rotates at this size, keeping LOG_KEEP old files
LOG_KEEP = 5
WORKERS = 128           # requests served at once; a connection waiting for its request holds none (front.py)
SOCKET_TIMEOUT = 20     # seconds a client may stay silent mid-request, or idle between requests
MAX_HEADER_BYTES = 64 * 1024   # request line and headers; more is answered 413
LISTEN_BACKLOG = 1024   # connections the kernel queues before the front accepts them
HSTS = "max-age=31536000"      # browsers keep to https for a year once they have seen it
SPARE_DESCRIPTORS = 512        # for packs, databases and logs beside the connections


class DeferredHandshakeTLS(BuiltinSSLAdapter):
    """TLS whose handshake is left to the connection front, which drives it without
    blocking (cheroot's adapter shakes hands in its one accepting thread, so a silent
    client would stop every new connection for the socket timeout)."""

    def wrap(self, sock):
        return self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True), \
            {"wsgi.url_scheme": "https", "HTTPS": "on"}


def connection_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    """cheroot's connection-level messages (dropped handshakes, plain HTTP on the TLS
    port) into the server log as one line each; a traceback only for a real failure."""
    exc = sys.exc_info()[1]
    if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
        logger.info("event=connection-dropped reason=%r", str(exc))
        return
    logger.log(level, "event=http-server %s", msg.strip(), exc_info=traceback)


def with_hsts(app):
    """Every answer over TLS tells browsers to use nothing else for this host."""
    def hsts_app(environ, start_response):
        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, ("Strict-Transport-Security", HSTS)], exc_info)
        return app(environ, start)
    return hsts_app


def raise_descriptor_limit() -> int:
    """Room for MAX_CONNECTIONS open connections, as far as the hard limit allows;
    how many connections the limit then leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_CONNECTIONS + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(1, min(MAX_CONNECTIONS, soft - SPARE_DESCRIPTORS))


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen {listen!r} is not HOST:PORT.", "For example 0.0.0.0:8443 or 127.0.0.1:0.")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def log_to_data_root(root) -> logging.Handler:
    """Server logs go to <data root>/logs/ironfs.log, rotated; lines are key=value.
    Only warnings also go to stderr: a line per request there would fill a pipe
    nobody reads (a supervisor's, a test's) and stop the server mid-write."""
    handler = logging.handlers.RotatingFileHandler(os.path.join(root.path, "logs", "ironfs.log"),
                                                   maxBytes=LOG_BYTES, backupCount=LOG_KEEP)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    warnings.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    top = logging.getLogger("ironfs")
    top.addHandler(handler)
    top.addHandler(warnings)
    top.setLevel(logging.INFO)
    top.propagate = False
    return handler


def serve(root, listen: str, plain_http: bool = False, lease_seconds: float = LEASE_SECONDS, announce=print,
          read_only: bool = False) -> None:
    replica_of = root.settings.get("replica_of")
    if replica_of and not read_only:
        raise UsageError(f"{root.path} is a replica of {replica_of['url']}: serving it writable would fork it.",
                         "Serve it with --read-only for restores, or make it a server of its own with "
                         "'ironfs replica promote' once that source is gone.")
    log_to_data_root(root)
    host, port = parse_listen(listen)
    if plain_http and not is_loopback(host):
        raise UsageError("--plain-http is only allowed on a loopback address.",
                         "Passwords and data would cross the network in the clear; serve TLS instead.")
    sets = SetStore(root, lease_seconds)
    api = ApiApp(root, sets=sets, read_only=read_only)
    app = wsgi.PathInfoDispatcher({"/dav": dav_app(root, sets, api.auth.limiter), "/": api})
    room = raise_descriptor_limit()
    server = FrontServer((host, port), app if plain_http else with_hsts(app), numthreads=WORKERS,
                         timeout=SOCKET_TIMEOUT, server_name="ironcore", request_queue_size=LISTEN_BACKLOG)
    server.max_request_header_size = MAX_HEADER_BYTES
    server.max_connections = room
    server.error_log = connection_log
    if not plain_http:
        server.ssl_adapter = DeferredHandshakeTLS(root.cert_path, root.key_path)
    server.prepare()
    bound_host, bound_port = server.bind_addr[:2]
    scheme = "http" if plain_http else "https"
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    announce(f"listening on {scheme}://{shown}:{bound_port}")
    logger.info("event=start url=%s://%s:%d read_only=%s", scheme, shown, bound_port, read_only)

    def stop(signum, frame):
        logger.info("signal %s: stopping after the requests in progress", signum)
        sets.shutdown()
        threading.Thread(target=server.stop, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve()
    finally:
        server.stop()
        logger.info("event=stop")
