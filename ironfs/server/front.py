"""The connection front of `ironfs serve`: cheroot's selector thread, taught to
own every connection that is not in the middle of a request.

cheroot hands each new connection to a worker at once, and the worker then
blocks reading the request, one socket timeout per read: 128 clients that send
nothing, or a byte now and then, hold all 128 workers. Here the selector
thread accepts, shakes hands (TLS) and reads each request head without
blocking, and gives a connection to a worker only when its whole head has
arrived. A head has HEAD_SECONDS in all to arrive, however it trickles; an
address may hold MAX_CONNECTIONS_PER_ADDRESS connections and the server
MAX_CONNECTIONS, and a connection beyond either is answered 503 and closed.
Plain HTTP sent to the TLS port is answered 400 naming the https URL."""
import json
import logging
import math
import re
import selectors
import socket
import ssl
import threading
import time
from collections import Counter

import _pyio
from cheroot import connections, server as cheroot_server, wsgi
from cheroot.makefile import StreamReader, StreamWriter

logger = logging.getLogger(__name__)

HEAD_SECONDS = 10.0                # a request line and headers must arrive within this, in all
MAX_CONNECTIONS_PER_ADDRESS = 64   # open connections one client address may hold
MAX_CONNECTIONS = 4096             # open connections the server holds (each costs a descriptor)
TICK_SECONDS = 0.25                # how often overdue heads and idle connections are closed
ACCEPT_BATCH = 256                 # connections taken from the listen queue per wake-up
TLS_HANDSHAKE_RECORD = 0x16        # the first byte a TLS client sends
HEAD_END = re.compile(rb"\r?\n\r?\n")
SAFE_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")
SAFE_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/\-]*")


def refusal(status: str, error: str, hint: str, headers: tuple = ()) -> bytes:
    """A whole HTTP answer in the API's error shape, for answering without a worker."""
    body = json.dumps({"error": error, "hint": hint}).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class Admissions:
    """Open connections per client address and in all; thread-safe, since workers close connections."""

    def __init__(self, per_address: int = MAX_CONNECTIONS_PER_ADDRESS, total: int = MAX_CONNECTIONS):
        self.per_address, self.total = per_address, total
        self._open: Counter = Counter()
        self._open_total = 0
        self._lock = threading.Lock()

    def admit(self, address: str) -> "Admission | None":
        with self._lock:
            if self._open[address] >= self.per_address or self._open_total >= self.total:
                return None
            self._open[address] += 1
            self._open_total += 1
        return Admission(self, address)

    def release(self, address: str) -> None:
        with self._lock:
            self._open_total -= 1
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]


class Admission:
    """One connection's place in Admissions, given back once whoever closes it first."""

    def __init__(self, admissions: Admissions, address: str):
        self.admissions, self.address = admissions, address
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.admissions.release(self.address)


class PrefetchedSocketIO(socket.SocketIO):
    """A socket's raw reader that first returns the bytes the front read for it."""

    def __init__(self, sock, mode):
        super().__init__(sock, mode)
        self.prefetched = bytearray()

    def readinto(self, b):
        if self.prefetched:
            n = min(len(b), len(self.prefetched))
            b[:n] = self.prefetched[:n]
            del self.prefetched[:n]
            return n
        return super().readinto(b)


class PrefetchedReader(StreamReader):
    """cheroot's socket reader over PrefetchedSocketIO."""

    def __init__(self, sock, mode="rb", bufsize=_pyio.DEFAULT_BUFFER_SIZE):
        self.socket_io = PrefetchedSocketIO(sock, mode)
        _pyio.BufferedReader.__init__(self, self.socket_io, bufsize)
        self.bytes_read = 0

    def has_data(self):
        return super().has_data() or bool(self.socket_io.prefetched)


def make_file(sock, mode="r", bufsize=_pyio.DEFAULT_BUFFER_SIZE):
    return PrefetchedReader(sock, mode, bufsize) if "r" in mode else StreamWriter(sock, mode, bufsize)


class FrontConnection(cheroot_server.HTTPConnection):
    """A connection that holds its Admission until it is closed."""

    admission = None

    def close(self):
        try:
            super().close()
        finally:
            if self.admission is not None:
                self.admission.release()


class Waiting:
    """A connection the front holds until its next request head is in: a new one
    (`conn` is None until a TLS client's first byte says it speaks TLS) or one
    kept alive between requests."""

    def __init__(self, sock, address, admission, deadline: float, conn=None, kept_alive: bool = False):
        self.sock, self.address, self.admission, self.deadline, self.conn = sock, address, admission, deadline, conn
        self.kept_alive = kept_alive   # idle until the next head starts; then that head has HEAD_SECONDS
        self.head = bytearray()
        self.handshaken = conn is not None
        self.plain_on_tls = False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        else:
            self.sock.close()
            self.admission.release()


class FrontConnectionManager(connections.ConnectionManager):
    """The selector loop: accepts, reads heads, then hands over to a worker (see module doc)."""

    def __init__(self, server):
        super().__init__(server)
        self.admissions = Admissions(total=server.max_connections)

    def put(self, conn):
        """A worker is done with a kept-alive connection: wait here for its next request."""
        conn.last_used = time.time()
        if conn.rfile.has_data():
            self.server.process_conn(conn)
            return
        conn.socket.setblocking(False)
        waiting = Waiting(conn.socket, (conn.remote_addr, conn.remote_port), conn.admission,
                          time.monotonic() + self.server.timeout, conn, kept_alive=True)
        self._selector.register(conn.socket.fileno(), selectors.EVENT_READ, data=waiting)

    def _run(self, expiration_interval):
        next_expiry = time.monotonic() + TICK_SECONDS
        while not self._stop_requested:
            try:
                ready = list(self._selector.select(timeout=TICK_SECONDS))
            except OSError:
                self._remove_invalid_sockets()
                continue
            for fd, item in ready:
                if item is self.server:
                    self._accept()
                else:
                    self._advance(fd, item)
            now = time.monotonic()
            if now >= next_expiry:
                self._expire_overdue(now)
                next_expiry = now + TICK_SECONDS

    # --- arriving -------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self.server.socket.accept()
            except (BlockingIOError, InterruptedError, socket.timeout):
                return
            except OSError as exc:   # out of descriptors: leave the rest queued until some close
                logger.warning("event=accept-failed error=%r", str(exc))
                return
            sock.setblocking(False)
            admission = self.admissions.admit(address[0])
            if admission is None:
                logger.info("event=connection-refused client=%s reason=too-many-connections", address[0])
                self._refuse(sock)
                continue
            conn = None if self.server.ssl_adapter else self._connection(sock, address, admission, {})
            waiting = Waiting(sock, address, admission, time.monotonic() + HEAD_SECONDS, conn)
            self._selector.register(sock.fileno(), selectors.EVENT_READ, data=waiting)

    def _refuse(self, sock) -> None:
        """Beyond a cap: a plain socket is told why; a TLS one is closed (no handshake spent on it)."""
        if self.server.ssl_adapter is None:
            try:
                sock.send(refusal("503 Service Unavailable", "Too many connections from this address.",
                                  "Close idle connections and try again.", ("Retry-After: 5",)))
            except OSError:
                pass
        sock.close()

    def _connection(self, sock, address, admission, ssl_env) -> FrontConnection:
        conn = self.server.ConnectionClass(self.server, sock, make_file)
        conn.remote_addr, conn.remote_port = address[0], address[1]
        conn.ssl_env = ssl_env
        conn.admission = admission
        return conn

    # --- reading a head -------------------------------------------------------------------
    def _advance(self, fd, waiting: Waiting) -> None:
        try:
            if not self._read_head(waiting):
                return
        except (OSError, ssl.SSLError) as exc:   # reset, or a failed handshake
            logger.info("event=connection-dropped client=%s reason=%r", waiting.address[0], str(exc))
            self._drop(fd, waiting)
            return
        self._selector.unregister(fd)
        if waiting.plain_on_tls:
            self._answer_plain_on_tls(waiting)
            return
        conn = waiting.conn
        conn.rfile.socket_io.prefetched += waiting.head
        conn.socket.settimeout(self.server.timeout)
        self.server.process_conn(conn)

    def _read_head(self, waiting: Waiting) -> bool:
        """Read what has arrived; True once the head is complete (or too big, for
        cheroot to refuse). A closed connection raises ConnectionError."""
        if self.server.ssl_adapter is not None and waiting.conn is None and not waiting.plain_on_tls:
            first = waiting.sock.recv(1, socket.MSG_PEEK)
            if not first:
                raise ConnectionResetError("closed before the TLS handshake")
            if first[0] != TLS_HANDSHAKE_RECORD:
                waiting.plain_on_tls = True
            else:
                tls_sock, ssl_env = self.server.ssl_adapter.wrap(waiting.sock)
                waiting.sock = tls_sock
                waiting.conn = self._connection(tls_sock, waiting.address, waiting.admission, ssl_env)
        if not waiting.handshaken and not waiting.plain_on_tls:
            try:
                waiting.sock.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            waiting.handshaken = True
        limit = self.server.max_request_header_size or math.inf   # cheroot's 0: no limit
        while len(waiting.head) <= limit:
            try:
                chunk = waiting.sock.recv(64 * 1024)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            if not chunk:
                raise ConnectionResetError("closed by the client")
            if not waiting.head:
                chunk = chunk.lstrip(b"\r\n")   # blank lines before a request line mean nothing
                if not chunk:
                    continue
                if waiting.kept_alive:
                    waiting.kept_alive = False
                    waiting.deadline = time.monotonic() + HEAD_SECONDS
            scanned = max(0, len(waiting.head) - 3)
            waiting.head += chunk
            if HEAD_END.search(waiting.head, scanned):
                return True
        return True

    def _answer_plain_on_tls(self, waiting: Waiting) -> None:
        """Name the https URL the client meant, from its own Host and path where they are plain."""
        request_line, _, rest = bytes(waiting.head).partition(b"\n")
        parts = request_line.decode("latin-1").split()
        path = parts[1] if len(parts) > 1 and SAFE_PATH.fullmatch(parts[1]) else "/"
        host_match = re.search(rb"(?im)^host:[ \t]*([^\r\n]*)", rest)
        host = host_match.group(1).decode("latin-1").strip() if host_match else ""
        if not SAFE_HOST.fullmatch(host):
            bound_host, bound_port = self.server.bind_addr[:2]
            host = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        url = f"https://{host}{path}"
        logger.info("event=plain-http-on-tls-port client=%s", waiting.address[0])
        try:
            waiting.sock.settimeout(1)
            waiting.sock.sendall(refusal("400 Bad Request", "This port speaks HTTPS only.", f"Use {url}"))
        except OSError:
            pass
        waiting.close()

    # --- closing --------------------------------------------------------------------------
    def _drop(self, fd, waiting: Waiting) -> None:
        self._selector.unregister(fd)
        waiting.close()

    def _expire_overdue(self, now: float) -> None:
        overdue = [(fd, w) for fd, w in self._selector.connections
                   if w is not self.server and w.deadline <= now]
        for fd, waiting in overdue:
            if waiting.head and waiting.handshaken and waiting.conn is not None:
                logger.info("event=request-head-timeout client=%s", waiting.address[0])
                try:
                    waiting.sock.send(refusal("408 Request Timeout",
                                              f"The request's headers did not arrive within {HEAD_SECONDS:.0f} s.",
                                              "Send the whole request head at once."))
                except OSError:
                    pass
            self._drop(fd, waiting)


class FrontServer(wsgi.Server):
    """cheroot's WSGI server with the FrontConnectionManager, and SO_REUSEADDR
    always (cheroot leaves it off for port 0; then the connections a killed server
    leaves behind hold the port it got for a minute)."""

    ConnectionClass = FrontConnection
    max_connections = MAX_CONNECTIONS   # lower where the descriptor limit leaves less room

    def bind(self, family, type, proto=0):
        super().bind(family, type, proto)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def prepare(self):
        super().prepare()
        self._connections.close()   # cheroot's own manager, replaced before it served anything
        self._connections = FrontConnectionManager(self)
        self.socket.setblocking(False)
        self.keep_alive_conn_limit = self.max_connections
