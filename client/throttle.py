"""A set's bandwidth limit: a token bucket that upload bodies pass through.

The bucket holds at most a quarter second of the rate (and at least 64 KiB), so
a limited upload starts at once and then keeps to the rate on average; pieces
are at most 64 KiB, so the connection never sends a long burst."""
import threading
import time

PIECE = 64 * 1024


class TokenBucket:
    def __init__(self, rate: float, clock=time.monotonic, sleep=time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = max(float(PIECE), self.rate / 4)
        self.clock, self.sleep = clock, sleep
        self.tokens = self.capacity
        self.stamp = clock()
        self._lock = threading.Lock()   # one bucket for every upload of a run, whichever thread sends

    def take(self, n: int) -> None:
        """Wait until `n` bytes (at most the capacity) may go."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


def throttled(chunks, bucket: TokenBucket | None, counter=None):
    """Yield the chunks in pieces of at most 64 KiB, each after the bucket lets it
    go (unchanged without a bucket); `counter(n)` is told of every piece sent."""
    for chunk in chunks:
        if bucket is None:    # no limit: pass the chunk on as it is
            if counter is not None:
                counter(len(chunk))
            yield chunk
            continue
        view = memoryview(chunk)
        for i in range(0, len(view), PIECE):
            piece = view[i:i + PIECE]
            bucket.take(len(piece))
            if counter is not None:
                counter(len(piece))
            yield bytes(piece)
