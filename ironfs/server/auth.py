"""Who is asking: HTTP Basic (account password) or Bearer (a machine's token),
with failed logins limited per account and per address, and requests that a
browser made for a page of another site refused."""
import base64
import threading
import time
from collections import OrderedDict

from ironfs.errors import Forbidden, IroncoreError
from ironfs.store.accounts import AuthFailed

MAX_FAILURES = 5        # failed logins allowed per window, per account and per address
WINDOW_S = 60.0
MAX_KEYS = 100_000      # accounts and addresses tracked at once; each failure behind one costs an argon2 check
SAME_SITE_FETCHES = ("same-origin", "none")   # Sec-Fetch-Site values of a request no other site made


class TooManyFailures(IroncoreError):
    def __init__(self, retry_after: int):
        super().__init__("Too many failed logins.", f"Wait {retry_after} s and try again.")
        self.retry_after = retry_after


class CrossSiteRequest(Forbidden):
    def __init__(self):
        super().__init__("This API does not answer requests made by web pages of other sites.",
                         "Use the ironcore client, or a program that sends no Origin header.")


class FailureLimiter:
    """Sliding-window counts of failed logins; thread-safe (cheroot serves from many threads).

    Only keys with a failure inside the window are kept, each with at most `limit`
    times, in the order of their last failure: expired keys leave from the front, and
    past `max_keys` the least recently failed go first, so memory stays bounded
    whatever names and addresses are tried."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = WINDOW_S, max_keys: int = MAX_KEYS,
                 clock=time.monotonic):
        self.limit, self.window, self.max_keys, self.clock = limit, window, max_keys, clock
        self._failures: OrderedDict[str, tuple[float, ...]] = OrderedDict()   # key -> its last `limit` times
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many keys are tracked (for /metrics)."""
        with self._lock:
            self._expire(self.clock())
            return len(self._failures)

    def _expire(self, now: float) -> None:
        cutoff = now - self.window
        while self._failures and (len(self._failures) > self.max_keys
                                  or next(iter(self._failures.values()))[-1] < cutoff):
            self._failures.popitem(last=False)

    def check(self, *keys: str) -> None:
        with self._lock:
            now = self.clock()
            self._expire(now)
            for key in keys:
                times = self._failures.get(key)
                if times is not None and len(times) == self.limit and times[0] >= now - self.window:
                    raise TooManyFailures(max(1, int(times[0] + self.window - now) + 1))

    def failed(self, *keys: str) -> None:
        with self._lock:
            now = self.clock()
            for key in keys:
                self._failures[key] = (*self._failures.pop(key, ()), now)[-self.limit:]
            self._expire(now)


def address_key(address: str) -> str:
    return "addr:" + address


def login_keys(address: str, name: str) -> tuple[str, str]:
    """The limiter's keys for a password login: its address and the name it tries."""
    return address_key(address), "account:" + name


def refuse_cross_site(environ) -> None:
    """Browsers resend Basic credentials to this origin for any page that asks, so a
    request that a browser marks as made for another site, or for a sandboxed page
    (Origin: null), is refused before its credentials count. Clients that are not
    browsers send neither header."""
    fetch_site = environ.get("HTTP_SEC_FETCH_SITE")
    if fetch_site is not None and fetch_site.strip().lower() not in SAME_SITE_FETCHES:
        raise CrossSiteRequest()
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None:
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        if origin.strip().rstrip("/").lower() != own.lower():
            raise CrossSiteRequest()


class Authenticator:
    def __init__(self, root, limiter: FailureLimiter | None = None):
        self.root = root
        self.limiter = limiter if limiter is not None else FailureLimiter()   # (an empty one is falsy)

    def password_login(self, name: str, password: str, address: str) -> dict:
        """The account if the password is right, checked against the limiter first;
        AuthFailed (counted) / TooManyFailures otherwise. The API and WebDAV both log in here."""
        keys = login_keys(address, name)
        self.limiter.check(*keys)
        try:
            return self.root.accounts.authenticate(name, password)
        except AuthFailed:
            self.limiter.failed(*keys)
            raise

    def __call__(self, environ) -> dict:
        """The account (with "role": "owner" for a password, the token's role
        otherwise); CrossSiteRequest / AuthFailed / TooManyFailures otherwise."""
        refuse_cross_site(environ)
        header = environ.get("HTTP_AUTHORIZATION", "")
        address = environ.get("REMOTE_ADDR", "?")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthFailed("Malformed Basic credentials.") from None
            account = self.password_login(name, password, address)
            account["role"] = "owner"
            return account
        if scheme.lower() == "bearer":
            self.limiter.check(address_key(address))
            try:
                return self.root.accounts.authenticate_token(value.strip())
            except AuthFailed:
                self.limiter.failed(address_key(address))
                raise
        raise AuthFailed("This request needs credentials.", "Log in with 'ironcore login'.")
