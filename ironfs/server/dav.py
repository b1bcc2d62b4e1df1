"""WebDAV under /dav/: every set of the logged-in account, read-only.

    /dav/<set>/latest/...                          the newest snapshot
    /dav/<set>/snapshots/<YYYY-MM-DDTHH-MM-SSZ>/... any snapshot, by its UTC name

wsgidav speaks the protocol; this module gives it a provider over the
catalogs and an authenticator over the account store. The account password
(HTTP Basic, over TLS) opens each set's `login` key slot; the opened keys and
the password stay in memory, per login, for SESSION_SECONDS, or until the
account's password changes or it is removed. File contents go out as
attachments in a sandbox unless their type cannot run script. A set with only a
private key lists names and sizes, and its file contents are refused with a
message that says how to restore them. The provider itself is read-only, with
no lock manager and no property store: wsgidav then advertises DAV class 1 and
answers every other method with 405."""
import email.utils
import hashlib
import io
import logging
import mimetypes
import os
import secrets
import threading
import time
from collections import OrderedDict
from urllib.parse import quote

from wsgidav.dav_error import HTTP_FORBIDDEN, HTTP_INSUFFICIENT_STORAGE, DAVError
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider
from wsgidav.dc.base_dc import BaseDomainController
from wsgidav.dir_browser import WsgiDavDirBrowser
from wsgidav.error_printer import ErrorPrinter
from wsgidav.http_authenticator import HTTPAuthenticator
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.request_resolver import RequestResolver
from wsgidav import util
from wsgidav.wsgidav_app import WsgiDAVApp

from ironfs.errors import IroncoreError, WrongSecret
from ironfs.format import crypto
from ironfs.format.catalog import ROOT, split_path
from ironfs.format.reader import ContentReader
from ironfs.format.snapshots import snapshot_names
from ironfs.server.auth import Authenticator, TooManyFailures, login_keys
from ironfs.store.accounts import AuthFailed

logger = logging.getLogger(__name__)

SESSION_SECONDS = 600   # a login's opened keys live this long after it was checked
MAX_SESSIONS = 1000
REALM = "ironcore"
ADMIN_VIEW = "@accounts"   # an admin's view of every account, when ironfs.json allows it (not a valid set name)
MAX_BODY = 64 * 1024
HTDOCS = os.path.join(os.path.dirname(__file__), "htdocs")   # our directory page template
FINITE_DEPTH = (b'<?xml version="1.0" encoding="utf-8"?>\n'
                b'<D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>\n')
MAX_RANGES = 64
MAX_LISTING = 250_000   # entries one PROPFIND or folder page may list (about 125 MB of XML)
READ_METHODS = ("OPTIONS", "HEAD", "GET", "PROPFIND")   # a read-only share answers nothing else
SEND_BLOCK = 256 * 1024   # GET bodies go out in pieces this big (wsgidav's default 8 KiB costs a call each)
# File types a browser shows without running anything in them; any other file (HTML, SVG, XML,
# PDF, scripts, unknown) is sent as an attachment, to be saved rather than shown.
INLINE_TYPES = frozenset({"text/plain", "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif",
                          "image/bmp", "audio/mpeg", "audio/ogg", "audio/flac", "video/mp4", "video/webm"})


class Session:
    """One account logged in with one password: the set keys it opened, valid while the
    account's stored credential is the one it was checked against."""

    def __init__(self, account: str, password: str, credential: str | None):
        self.account, self.password, self.credential = account, password, credential
        self.expires = time.monotonic() + SESSION_SECONDS
        self.keys: dict[str, crypto.MasterKey | None] = {}
        self.lock = threading.Lock()

    def key_for(self, owner: str, set_name: str, volume) -> crypto.MasterKey | None:
        """The set's key if the password opens its login slot (None for a private-key set,
        and for another account's set that an admin looks at)."""
        if owner != self.account:
            return None
        with self.lock:
            if set_name not in self.keys:
                slots = [s for s in volume.config["slots"] if s["name"] == "login"]
                try:
                    master, _ = crypto.open_slots(slots, self.password.encode(), volume.id) if slots else (None, None)
                except WrongSecret:
                    master = None
                self.keys[set_name] = crypto.MasterKey(master) if master else None
            return self.keys[set_name]


class Sessions:
    """Checked logins by (account, SHA-256 of name and password), bounded in time and number,
    so a file manager's hundreds of requests cost one argon2 check, not hundreds.

    Every request first asks the failed-login limiter (a limited name gets no answer,
    not even from a session: else a guess that hits the cached password would show),
    then reads the account's stored credential: a new password or a removal ends the
    account's sessions and their opened keys at once."""

    def __init__(self, authenticator: Authenticator):
        self.auth = authenticator
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def login(self, name: str, password: str, address: str) -> Session | None:
        tag = hashlib.sha256(f"{name}\0{password}".encode()).hexdigest()
        now = time.monotonic()
        try:
            self.auth.limiter.check(*login_keys(address, name))
            credential = self.auth.root.accounts.credential(name)
            with self._lock:
                session = self._sessions.get(tag)
                if session is not None and session.expires > now and session.credential == credential:
                    return session
                if session is not None and session.credential != credential:
                    self._forget_stale(name, credential)
            self.auth.password_login(name, password, address)
        except AuthFailed:
            logger.info("event=dav-login-failed account=%r client=%s", name, address)
            return None
        except TooManyFailures:
            logger.info("event=dav-login-limited account=%r client=%s", name, address)
            return None
        session = Session(name, password, credential)
        with self._lock:
            self._sessions[tag] = session
            while self._sessions and (len(self._sessions) > MAX_SESSIONS
                                      or next(iter(self._sessions.values())).expires <= now):
                self._sessions.popitem(last=False)   # oldest first: they also expire first
        return session

    def _forget_stale(self, account: str, credential: str | None) -> None:
        """Drop the sessions of `account` checked against another credential than
        `credential`, opened keys and all; the caller holds the lock."""
        for tag in [t for t, s in self._sessions.items() if s.account == account and s.credential != credential]:
            del self._sessions[tag]


def domain_controller(sessions: Sessions):
    """A wsgidav domain controller class bound to our account store."""

    class AccountDomainController(BaseDomainController):
        def get_domain_realm(self, path_info, environ):
            return REALM

        def require_authentication(self, realm, environ):
            return True

        def supports_http_digest_auth(self):
            return False   # digest needs the password in the clear on the server; we keep only argon2id hashes

        def basic_auth_user(self, realm, user_name, password, environ):
            session = sessions.login(user_name, password, environ.get("REMOTE_ADDR", "?"))
            if session is None:
                return False
            environ["ironcore.session"] = session
            return True

    return AccountDomainController


def decode_name(name: bytes) -> str:
    """A stored name as WebDAV shows it: UTF-8, with each byte that is not valid
    UTF-8 written as \\xNN, so names from other encodings stay listable and reachable."""
    return name.decode("utf-8", "backslashreplace")


def find_entry(catalog, parts: list[str], snapshot: int):
    """The entry a URL's path names, or None. A part holding \\x may stand for bytes
    that are not UTF-8: then the folder is searched for the name shown that way."""
    entry, parent = None, ROOT
    for part in parts:
        try:
            entry = catalog.child(parent, split_path(part.encode("utf-8", "surrogateescape"))[0], snapshot)
        except IroncoreError:
            return None   # a name the catalog could never hold, such as ".."
        if entry is None and "\\x" in part:
            entry = next((e for e in catalog.iter_dir(parent, snapshot) if decode_name(e.name) == part), None)
        if entry is None:
            return None
        parent = entry.path_id
    return entry


class View:
    """What one request sees of one set: its volume, the session's key for it, and a snapshot."""

    def __init__(self, provider, environ, owner: str, set_name: str):
        self.session: Session = environ["ironcore.session"]
        self.owner, self.set_name = owner, set_name
        self.volume = provider.sets.volume(owner, set_name)
        self.catalog = self.volume.refresh()

    def snapshot_names(self) -> dict[str, int]:
        return snapshot_names(self.catalog.snapshots())

    def read_content(self, content_id: bytes, path: str):
        key = self.session.key_for(self.owner, self.set_name, self.volume)
        if key is None and self.owner != self.session.account:
            raise DAVError(HTTP_FORBIDDEN, f"Set {self.set_name} belongs to {self.owner}: its contents open only "
                                           f"with {self.owner}'s own login.")
        if key is None and any(s["name"] == "login" for s in self.volume.config["slots"]):
            raise DAVError(HTTP_FORBIDDEN, f"Set {self.set_name}'s login key slot does not open with this password "
                                           f"(the administrator set a new one). Run 'ironcore login' on a machine "
                                           f"that holds the set's keys: it re-wraps the slot.")
        if key is None:
            raise DAVError(HTTP_FORBIDDEN, f"Set {self.set_name} is encrypted with a private key, which the server "
                                           f"never sees. Restore it with the client: ironcore restore "
                                           f"{self.set_name} --path ... --to DIR")
        content = self.catalog.content(content_id)
        if content is None:
            raise DAVError(HTTP_FORBIDDEN, f"The data of {path} is missing from the set.")
        return ContentReader(KeyedVolume(self.volume, key), content)


class KeyedVolume:
    """A shared server volume read with one session's key (the volume object itself stays keyless)."""

    def __init__(self, volume, key: crypto.MasterKey):
        self.volume = volume
        self.sealer = crypto.BlobSealer(key)

    def read_blobs(self, blob_ids) -> dict:
        return self.volume.read_blobs(blob_ids, self.sealer)


# --- resources ---------------------------------------------------------------------------
class PathFolder(DAVCollection):
    """A folder whose members are found by the provider at the path below it."""

    def get_member(self, name):
        return self.provider.get_resource_inst(f"{self.path.rstrip('/')}/{name}", self.environ)


class AccountRoot(PathFolder):
    """The account's sets; for an admin, when the server allows it, also ADMIN_VIEW."""

    def get_member_names(self):
        session = self.environ["ironcore.session"]
        names = self.provider.sets.names(session.account)
        return names + [ADMIN_VIEW] if self.provider.admin_view_for(session) else names


class AccountList(PathFolder):
    """Every account, for an admin (names and sizes only: their keys stay closed)."""

    def get_member_names(self):
        return [a["name"] for a in self.provider.root.accounts.list()]


class OwnerSets(PathFolder):
    def __init__(self, path, environ, owner: str):
        super().__init__(path, environ)
        self.owner = owner

    def get_member_names(self):
        return self.provider.sets.names(self.owner)


class SetFolder(PathFolder):
    def __init__(self, path, environ, view: View):
        super().__init__(path, environ)
        self.view = view

    def get_member_names(self):
        return ["latest", "snapshots"] if self.view.catalog.snapshots() else ["snapshots"]


class SnapshotList(PathFolder):
    def __init__(self, path, environ, view: View):
        super().__init__(path, environ)
        self.view = view

    def get_member_names(self):
        return list(self.view.snapshot_names())


class Folder(PathFolder):
    """A folder of a snapshot (or its top)."""

    def __init__(self, path, environ, view: View, seq: int, path_id: int, mtime_ns: int | None):
        super().__init__(path, environ)
        self.view, self.seq, self.path_id, self.mtime_ns = view, seq, path_id, mtime_ns

    def get_last_modified(self):
        return self.mtime_ns / 1e9 if self.mtime_ns else None

    def _entries(self):
        """Folders and regular files: what WebDAV can show (links and devices are left out)."""
        for entry in self.view.catalog.iter_dir(self.path_id, self.seq):
            if entry.kind in ("d", "f"):
                yield entry

    def get_member_names(self):
        return [decode_name(e.name) for e in self._entries()]

    def get_member_list(self):
        base = self.path.rstrip("/")
        members = []
        for e in self._entries():
            if len(members) == MAX_LISTING:
                raise DAVError(HTTP_INSUFFICIENT_STORAGE, f"{self.path} holds more than {MAX_LISTING} entries, more "
                                                          "than one answer may list; restore it with the client.")
            members.append(make_entry(f"{base}/{decode_name(e.name)}", self.environ, self.view, self.seq, e))
        return members


class File(DAVNonCollection):
    def __init__(self, path, environ, view: View, seq: int, entry):
        super().__init__(path, environ)
        self.view, self.seq, self.entry = view, seq, entry

    def get_content_length(self):
        return self.entry.size

    def get_content_type(self):
        return mimetypes.guess_type(self.name)[0] or "application/octet-stream"

    def get_last_modified(self):
        return self.entry.mtime_ns / 1e9

    def get_creation_date(self):
        return None

    def get_etag(self):
        return (self.entry.content or b"empty").hex()[:32] + f"-{self.entry.size:x}"

    def support_etag(self):
        return True

    def get_property_value(self, name):
        if name == "{DAV:}getetag":   # RFC 4918 15.6: an entity-tag, quoted as in the ETag header
            return f'"{self.get_etag()}"'
        return super().get_property_value(name)

    def support_ranges(self):
        return True

    def get_content(self):
        if not self.entry.content:
            return io.BytesIO(b"")
        return self.view.read_content(self.entry.content, self.path)


def make_entry(path, environ, view, seq, entry):
    if entry.kind == "d":
        return Folder(path, environ, view, seq, entry.path_id, entry.mtime_ns)
    return File(path, environ, view, seq, entry)


class SnapshotProvider(DAVProvider):
    def __init__(self, root, sets):
        super().__init__()
        self.root, self.sets = root, sets

    def is_readonly(self):
        return True

    def admin_view_for(self, session: Session) -> bool:
        return bool(self.root.settings.get("admin_sees_all_accounts")) and self.root.accounts.get(
            session.account)["admin"]

    def get_resource_inst(self, path: str, environ: dict):
        self._count_get_resource_inst += 1
        parts = [p for p in path.split("/") if p]
        if not parts:
            return AccountRoot("/", environ)
        session = environ["ironcore.session"]
        owner, top = session.account, ""
        if parts[0] == ADMIN_VIEW and self.admin_view_for(session):
            if len(parts) == 1:
                return AccountList("/" + ADMIN_VIEW, environ)
            owner, top, parts = parts[1], f"/{ADMIN_VIEW}/{parts[1]}", parts[2:]
            if owner not in {a["name"] for a in self.root.accounts.list()}:
                return None
            if not parts:
                return OwnerSets(top, environ, owner)
        set_name = parts[0]
        if set_name not in self.sets.names(owner):
            return None
        view = View(self, environ, owner, set_name)
        top = f"{top}/{set_name}"
        if len(parts) == 1:
            return SetFolder(top, environ, view)
        if parts[1] == "latest":
            snaps = view.catalog.snapshots()
            if not snaps:
                return None
            seq, rest, base = snaps[-1]["seq"], parts[2:], f"{top}/latest"
        elif parts[1] == "snapshots":
            if len(parts) == 2:
                return SnapshotList(f"{top}/snapshots", environ, view)
            seq = view.snapshot_names().get(parts[2])
            if seq is None:
                return None
            rest, base = parts[3:], f"{top}/snapshots/{parts[2]}"
        else:
            return None
        if not rest:
            return Folder(base, environ, view, seq, ROOT, None)
        entry = find_entry(view.catalog, rest, seq)
        if entry is None or entry.kind not in ("d", "f"):
            return None
        return make_entry(base + "/" + "/".join(rest), environ, view, seq, entry)


def content_headers(res: File) -> list[tuple[str, str]]:
    """What keeps a backed-up file from acting as a page of this origin, where the API
    takes the Basic credentials a browser resends: no type sniffing, a sandbox (no
    script, an origin of its own), and an attachment unless its type is in INLINE_TYPES."""
    headers = [("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", "sandbox")]
    if res.get_content_type() not in INLINE_TYPES:
        headers.append(("Content-Disposition", "attachment; filename*=UTF-8''" + quote(res.name, safe="")))
    return headers


def not_modified(environ, etag: str, modified: int) -> bool:
    """RFC 9110 13.1.2-3: If-None-Match wins over If-Modified-Since; dates compare to the second."""
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return "*" in tags or etag in tags
    since = parse_http_date(environ.get("HTTP_IF_MODIFIED_SINCE"))
    return since is not None and modified <= since


def parse_http_date(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError):
        return None


class ReadAnswers(BaseMiddleware):
    """GET and HEAD of a file, where stock wsgidav falls short of RFC 9110: a 304
    carries ETag and Last-Modified and no false length, dates compare to the second,
    If-Range is checked against the quoted ETag, and several ranges are answered as
    multipart/byteranges (at most MAX_RANGES parts; more get the whole file). Every
    answer for a file carries content_headers."""

    def __call__(self, environ, start_response):
        provider = environ.get("wsgidav.provider")
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD") or provider is None:
            return self.next_app(environ, start_response)
        res = provider.get_resource_inst(environ["PATH_INFO"], environ)
        if not isinstance(res, File):
            return self.next_app(environ, start_response)
        safety = content_headers(res)

        def start(status, headers, exc_info=None):
            return start_response(status, headers + safety, exc_info)
        etag, modified = f'"{res.get_etag()}"', int(res.get_last_modified())
        validators = [("ETag", etag), ("Last-Modified", util.get_rfc1123_time(modified))]
        if not_modified(environ, etag, modified):
            start("304 Not Modified", validators)
            return [b""]
        if_range = environ.pop("HTTP_IF_RANGE", None)   # decided here; wsgidav compares it unquoted
        if if_range is not None and if_range.strip() != etag and parse_http_date(if_range) != modified:
            environ.pop("HTTP_RANGE", None)   # the file changed since: the whole of it
        header = environ.get("HTTP_RANGE", "")
        if environ["REQUEST_METHOD"] != "GET" or "," not in header:
            return self.next_app(environ, start)
        size = res.get_content_length()
        try:
            ranges, _ = util.obtain_content_ranges(header, size)
        except DAVError:
            return self.next_app(environ, start)   # wsgidav answers 416
        ranges.sort()
        if len(ranges) < 2 or len(ranges) > MAX_RANGES:
            if len(ranges) > MAX_RANGES:
                del environ["HTTP_RANGE"]
            return self.next_app(environ, start)
        boundary = secrets.token_hex(16)
        kind = res.get_content_type()
        heads = [(f"--{boundary}\r\nContent-Type: {kind}\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n").encode()
                 for a, b, _ in ranges]
        closing = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + n + 2 for h, (_, _, n) in zip(heads, ranges)) + len(closing)
        start("206 Partial Content", [
            ("Content-Type", f"multipart/byteranges; boundary={boundary}"), ("Content-Length", str(length)),
            ("Accept-Ranges", "bytes"), *validators])

        def body():
            reader = res.get_content()
            try:
                for head, (start, _, left) in zip(heads, ranges):
                    yield head
                    reader.seek(start)
                    while left:
                        piece = reader.read(min(left, SEND_BLOCK))
                        if not piece:
                            raise OSError(f"{res.path} ended early")
                        left -= len(piece)
                        yield piece
                    yield b"\r\n"
                yield closing
            finally:
                reader.close()
        return body()


def guarded(app):
    """Limits stock wsgidav does not set: no request body over MAX_BODY (a read-only
    share needs none bigger than a PROPFIND), no chunked bodies, and no PROPFIND of
    unbounded depth (RFC 4918 9.1: absent Depth means infinity)."""
    def guard(environ, start_response):
        def refuse(status: str, text: str, body: bytes | None = None):
            payload = body or (text + "\n").encode()
            kind = "application/xml; charset=utf-8" if body else "text/plain; charset=utf-8"
            start_response(status, [("Content-Type", kind), ("Content-Length", str(len(payload)))])
            return [payload]
        if environ["REQUEST_METHOD"] not in READ_METHODS:
            start_response("405 Method Not Allowed", [("Allow", ", ".join(READ_METHODS)), ("Content-Length", "0")])
            return [b""]
        try:
            environ["PATH_INFO"].encode("latin-1").decode("utf-8")
        except UnicodeError:
            return refuse("400 Bad Request", "Paths here are UTF-8; names in other encodings are listed with \\xNN.")
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return refuse("411 Length Required", "Request bodies must declare their length.")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return refuse("400 Bad Request", "Content-Length is not a number.")
        if length > MAX_BODY:
            return refuse("413 Content Too Large", f"Request bodies here are at most {MAX_BODY} bytes.")
        if environ["REQUEST_METHOD"] == "PROPFIND" and environ.get("HTTP_DEPTH", "infinity").lower() == "infinity":
            return refuse("403 Forbidden", "", FINITE_DEPTH)
        return app(environ, start_response)

    def logged(environ, start_response):
        """The access log, as for the API: never headers or bodies, so never a password."""
        started = time.monotonic()

        def start(status, headers, exc_info=None):
            logger.info("event=request method=%s endpoint=dav status=%s client=%s ms=%.1f",
                        environ["REQUEST_METHOD"], status.split(" ", 1)[0], environ.get("REMOTE_ADDR"),
                        (time.monotonic() - started) * 1000)
            return start_response(status, headers, exc_info)
        return guard(environ, start)
    return logged


def dav_app(root, sets, limiter):
    """The WebDAV application for mounting at /dav; `limiter` is the API's, so failed
    logins count the same wherever they are tried."""
    util.public_wsgidav_info = "Ironcore"   # error pages name no library version
    sessions = Sessions(Authenticator(root, limiter))
    return guarded(WsgiDAVApp({
        "mount_path": "/dav",
        "provider_mapping": {"/": SnapshotProvider(root, sets)},
        "http_authenticator": {"domain_controller": domain_controller(sessions), "accept_basic": True,
                               "accept_digest": False, "default_to_digest": False},
        "block_size": SEND_BLOCK,
        "middleware_stack": [ErrorPrinter, HTTPAuthenticator, WsgiDavDirBrowser, ReadAnswers, RequestResolver],
        "lock_storage": False,
        "property_manager": None,
        "suppress_version_info": True,
        "verbose": 1,
        "logging": {"enable": False},
        "dir_browser": {"enable": True, "htdocs_path": HTDOCS, "response_trailer": False, "davmount": False,
                        "ms_sharepoint_support": False, "libre_office_support": False, "show_user": True},
    }))
