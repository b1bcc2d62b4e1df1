"""The server's clock: what it stamps commits with and measures grace periods by.

A data root's `ironfs.json` may hold `"clock_offset_s"`, seconds added to the
system clock. Tests use it to let days pass without sleeping; the file is read
again whenever it changes, so a running server follows the new offset at once.
Leases and timeouts keep the plain system clock: only the server's record of
when things happened moves."""
import datetime
import json
import os
import threading
import time

OFFSET_KEY = "clock_offset_s"


class ServerClock:
    def __init__(self, settings_path: str):
        self.settings_path = settings_path
        self._lock = threading.Lock()
        self._seen: tuple | None = None
        self._offset_ns = 0

    def _offset(self) -> int:
        try:
            st = os.stat(self.settings_path)
        except FileNotFoundError:
            return 0
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if key != self._seen:
                try:
                    with open(self.settings_path) as f:
                        offset = float(json.load(f).get(OFFSET_KEY, 0))
                except (OSError, ValueError, TypeError, AttributeError):
                    offset = 0.0   # a file caught half-written by hand: the next change is read again
                self._offset_ns = int(offset * 1e9)
                self._seen = key
            return self._offset_ns

    def now_ns(self) -> int:
        return time.time_ns() + self._offset()

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.now_ns() / 1e9, datetime.timezone.utc)
