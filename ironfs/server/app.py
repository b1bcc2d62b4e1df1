"""The `/api/v1` JSON API and `/metrics`, as one Werkzeug WSGI application.

Every error leaves as JSON {"error": message, "hint": next step} with a status
that says what kind it is; nothing in a response or a log carries a secret."""
import json
import logging
import threading
import time
from collections import Counter

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound as RouteNotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ironfs.errors import CorruptData, DiskFull, Forbidden, IroncoreError, NotFound, UsageError
from ironfs.server import feed, reports, sync
from ironfs.server.auth import Authenticator, TooManyFailures
from ironfs.server.responses import json_response
from ironfs.store.accounts import AuthFailed
from ironfs.store.sets import QuotaExceeded, SetStore

logger = logging.getLogger(__name__)

MAX_JSON_BODY = 1 << 20


class BodyTooLarge(UsageError):
    """Answered 413, and cheroot then closes the connection rather than read the rest."""

    def __init__(self, limit: int):
        super().__init__(f"The request body is too large (at most {limit} bytes here).",
                         "Send less in one request.")


class Metrics:
    """Counters for /metrics (Prometheus text format)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.commits = 0

    def record(self, endpoint: str, status: int, bytes_in: int, bytes_out: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out

    def count_commit(self) -> None:
        with self._lock:
            self.commits += 1

    def text(self, usage: dict[str, int], limiter_keys: int) -> str:
        """`usage`: bytes stored per account; `limiter_keys`: accounts and addresses with recent failed logins."""
        with self._lock:
            lines = ["# TYPE ironfs_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'ironfs_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            lines += ["# TYPE ironfs_bytes_in_total counter", f"ironfs_bytes_in_total {self.bytes_in}",
                      "# TYPE ironfs_bytes_out_total counter", f"ironfs_bytes_out_total {self.bytes_out}",
                      "# TYPE ironfs_commits_total counter", f"ironfs_commits_total {self.commits}"]
            errors = sum(n for (_, status), n in self.requests.items() if status >= 400)
            lines += ["# TYPE ironfs_errors_total counter", f"ironfs_errors_total {errors}"]
        lines += ["# TYPE ironfs_login_limiter_keys gauge", f"ironfs_login_limiter_keys {limiter_keys}"]
        lines.append("# TYPE ironfs_account_usage_bytes gauge")
        lines += [f'ironfs_account_usage_bytes{{account="{name}"}} {used}' for name, used in sorted(usage.items())]
        return "\n".join(lines) + "\n"


class ReadOnlyServer(Forbidden):
    def __init__(self):
        super().__init__("This server is a read-only replica: it serves restores and nothing that changes a set.",
                         "Back up to the source server, or make this one writable with 'ironfs replica promote'.")


class NotJson(UsageError):
    """A body that must be JSON declared another type: what a browser's form or a page's
    text/plain request sends without asking the server first."""

    def __init__(self):
        super().__init__("This request's body must be sent as Content-Type: application/json.",
                         "Send the JSON body with that header (the ironcore client does).")


# The only requests other than GET and HEAD that a read-only server answers: a machine's
# login (it only adds a token) and the question which blobs a set lacks.
READ_ONLY_POSTS = {"new_token", "check_blobs"}


class ApiApp:
    def __init__(self, root, authenticator: Authenticator | None = None, sets: SetStore | None = None,
                 read_only: bool = False):
        self.root = root
        self.auth = authenticator or Authenticator(root)
        self.metrics = Metrics()
        self.sets = sets or SetStore(root)
        self.read_only = read_only
        self.sync = sync.SyncApi(root, self.sets, self.metrics, self._json_body)
        self.feed = feed.FeedApi(root, self.sets, self.sync)
        self.reports = reports.ReportsApi(self.sets, self._json_body)
        self.url_map = Map([
            Rule("/api/v1/whoami", endpoint="whoami", methods=["GET"]),
            Rule("/api/v1/tokens", endpoint="new_token", methods=["POST"]),
            Rule("/metrics", endpoint="metrics", methods=["GET"]),
        ] + sync.RULES + feed.RULES + reports.RULES)

    def _account_route(self, request: Request, endpoint: str, args: dict) -> Response:
        """A route that acts for the authenticated caller: the feed for replicas,
        the sync API for everyone else."""
        account = self.auth(request.environ)
        if endpoint in feed.ENDPOINTS:
            return getattr(self.feed, endpoint)(request, account, **args)
        if account["role"] == "replica":
            raise Forbidden("A replication token opens the replication feed and nothing else.")
        if self.read_only and request.method not in ("GET", "HEAD") and endpoint not in READ_ONLY_POSTS:
            raise ReadOnlyServer()
        if endpoint in reports.ENDPOINTS:
            return getattr(self.reports, endpoint)(request, account, **args)
        return getattr(self.sync, endpoint)(request, account, **args)

    def __call__(self, environ, start_response):
        request = Request(environ)
        started = time.monotonic()
        endpoint = "unknown"
        try:
            endpoint, args = self.url_map.bind_to_environ(environ).match()
            handler = getattr(self, "on_" + endpoint, None)
            if handler is not None:
                response = handler(request, **args)
            else:
                response = self._account_route(request, endpoint, args)
        except TooManyFailures as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 429,
                                     {"Retry-After": str(exc.retry_after)})
        except AuthFailed as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 401,
                                     {"WWW-Authenticate": 'Basic realm="ironcore"'})
        except Forbidden as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 403)
        except NotJson as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 415)
        except NotFound as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 404)
        except BodyTooLarge as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 413)
        except sync.TooManyLongPolls as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 429,
                                     {"Retry-After": str(exc.retry_after)})
        except (UsageError, CorruptData) as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 400)
        except (QuotaExceeded, DiskFull) as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 507)
        except IroncoreError as exc:
            response = json_response({"error": exc.message, "hint": exc.hint}, 409)
        except (RouteNotFound, MethodNotAllowed) as exc:
            response = json_response({"error": exc.description}, exc.code)
        except HTTPException as exc:
            response = json_response({"error": exc.description}, exc.code)
        self.metrics.record(endpoint, response.status_code, request.content_length or 0,
                            response.content_length or 0)
        # the access log: never headers or bodies, so never a password or token
        logger.info("event=request method=%s endpoint=%s status=%d client=%s ms=%.1f", request.method, endpoint,
                    response.status_code, request.remote_addr, (time.monotonic() - started) * 1000)
        return response(environ, start_response)

    def _json_body(self, request: Request, limit: int = MAX_JSON_BODY) -> dict:
        """The body as a JSON object, read no further than `limit` bytes whatever its
        framing (a chunked body declares no length)."""
        if (request.content_length or 0) > limit:
            raise BodyTooLarge(limit)
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise BodyTooLarge(limit)
        try:
            data = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            raise UsageError("The request body is not JSON (or nests too deeply).") from None
        if not isinstance(data, dict):
            raise UsageError("The request body must be a JSON object.")
        return data

    def on_whoami(self, request: Request) -> Response:
        account = self.auth(request.environ)
        return json_response({"account": account["name"], "admin": account["admin"], "role": account["role"],
                              "quota": account["quota"]})

    def on_new_token(self, request: Request) -> Response:
        """A machine logs in: password in, token out (the password is not kept)."""
        account = self.auth(request.environ)
        if account["role"] != "owner":
            raise Forbidden("A new machine login needs the account password.")
        if request.mimetype != "application/json":
            raise NotJson()
        body = self._json_body(request)
        host = str(body.get("host", ""))[:255]
        role = body.get("role", "client")
        if role not in ("client", "replica") or (role == "replica" and not account["admin"]):
            raise Forbidden("Only the admin can make a replication token; other logins are machine logins.")
        token = self.root.accounts.issue_token(account["name"], host, role)
        logger.info("event=machine-login account=%s host=%r role=%s", account["name"], host, role)
        return json_response({"token": token, "account": account["name"]}, 201)

    def on_metrics(self, request: Request) -> Response:
        account = self.auth(request.environ)
        if not account["admin"] or account["role"] == "replica":
            raise Forbidden("Metrics are for the admin.")
        usage = {a["name"]: self.sets.usage(a["name"]) for a in self.root.accounts.list()}
        return Response(self.metrics.text(usage, len(self.auth.limiter)), mimetype="text/plain; version=0.0.4")
