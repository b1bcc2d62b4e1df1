"""Who is asking: HTTP Basic (account password) or Bearer (a machine's token),
with failed logins limited per account and per address."""
import base64
import threading
import time
from collections import defaultdict, deque

from ironfs.errors import IroncoreError
from ironfs.store.accounts import AuthFailed

MAX_FAILURES = 5        # failed logins allowed per window, per account and per address
WINDOW_S = 60.0


class TooManyFailures(IroncoreError):
    def __init__(self, retry_after: int):
        super().__init__("Too many failed logins.", f"Wait {retry_after} s and try again.")
        self.retry_after = retry_after


class FailureLimiter:
    """Sliding-window counts of failed logins; thread-safe (cheroot serves from many threads)."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = WINDOW_S, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._failures: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str) -> deque:
        q = self._failures[key]
        cutoff = self.clock() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def check(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                q = self._recent(key)
                if len(q) >= self.limit:
                    raise TooManyFailures(max(1, int(q[0] + self.window - self.clock()) + 1))

    def failed(self, *keys: str) -> None:
        with self._lock:
            now = self.clock()
            for key in keys:
                self._recent(key).append(now)


class Authenticator:
    def __init__(self, root, limiter: FailureLimiter | None = None):
        self.root = root
        self.limiter = limiter or FailureLimiter()

    def __call__(self, environ) -> dict:
        """The account (with "role": "owner" for a password, the token's role
        otherwise); AuthFailed / TooManyFailures otherwise."""
        header = environ.get("HTTP_AUTHORIZATION", "")
        address = "addr:" + environ.get("REMOTE_ADDR", "?")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthFailed("Malformed Basic credentials.") from None
            keys = (address, "account:" + name)
            self.limiter.check(*keys)
            try:
                account = self.root.accounts.authenticate(name, password)
            except AuthFailed:
                self.limiter.failed(*keys)
                raise
            account["role"] = "owner"
            return account
        if scheme.lower() == "bearer":
            self.limiter.check(address)
            try:
                return self.root.accounts.authenticate_token(value.strip())
            except AuthFailed:
                self.limiter.failed(address)
                raise
        raise AuthFailed("This request needs credentials.", "Log in with 'ironcore login'.")
