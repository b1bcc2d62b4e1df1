"""`ironfs serve`: the WSGI application on cheroot, over TLS with the data
root's certificate. Plain HTTP only on loopback. SIGTERM and SIGINT stop it
gracefully: cheroot finishes the requests in progress before it returns."""
import ipaddress
import logging
import logging.handlers
import os
import signal
import ssl
import sys
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from ironfs.errors import UsageError
from ironfs.server.app import ApiApp
from ironfs.server.dav import dav_app
from ironfs.store.sets import LEASE_SECONDS, SetStore

logger = logging.getLogger(__name__)

LOG_BYTES = 10 << 20    # the server log rotates at this size, keeping LOG_KEEP old files
LOG_KEEP = 5
WORKERS = 128           # a slow client holds a worker; enough that a few hundred cannot starve the rest
SOCKET_TIMEOUT = 20     # seconds a client may stay silent mid-request
MAX_HEADER_BYTES = 64 * 1024   # request line and headers; more is answered 413


class WorkerHandshakeTLS(BuiltinSSLAdapter):
    """TLS whose handshake runs in the worker that serves the connection. cheroot's
    adapter shakes hands in its one accepting thread, so a client that connects and
    stays silent stops every new connection for the socket timeout; here such a
    client never becomes readable and costs nothing."""

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
    """Server logs go to <data root>/logs/ironfs.log, rotated; lines are key=value."""
    handler = logging.handlers.RotatingFileHandler(os.path.join(root.path, "logs", "ironfs.log"),
                                                   maxBytes=LOG_BYTES, backupCount=LOG_KEEP)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    top = logging.getLogger("ironfs")
    top.addHandler(handler)
    top.setLevel(logging.INFO)
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
    server = wsgi.Server((host, port), app, numthreads=WORKERS, timeout=SOCKET_TIMEOUT,
                         server_name="ironcore")
    server.max_request_header_size = MAX_HEADER_BYTES
    server.error_log = connection_log
    if not plain_http:
        server.ssl_adapter = WorkerHandshakeTLS(root.cert_path, root.key_path)
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
