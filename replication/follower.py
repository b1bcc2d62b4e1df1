"""Following sources: a trio task per source long-polls its feed, and a task
per volume fetches what the feed says is new and applies it in order.

Faults are expected, not exceptional: a source that is down, restarts or
answers an error is retried with a growing, jittered pause; a download cut
short resumes from where it stopped; bytes that do not hash to their name are
thrown away and fetched again. Nothing reaches a replica volume unverified
(replication/mirror.py), so a replica killed at any instant resumes from its
own log without fetching again what it has."""
import hashlib
import logging
import os
import random
import signal
import time

import httpx
import trio

from client.remote import fetch_certificate, fingerprint, pinned_context
from ironfs.errors import CorruptData, IroncoreError
from ironfs.format import log as commitlog
from replication.config import Source
from replication.mirror import DAY_NS, ReplicationError, SourceMirror
from replication.state import ReplicaState

logger = logging.getLogger(__name__)

POLL_WAIT = 30           # seconds a feed request waits for a change
PACK_FETCHES = 4         # pack downloads at once, per source
WRITE_BLOCK = 1 << 20    # downloads go to disk in pieces this big
PURGE_EVERY = 60.0


class SourceRefused(IroncoreError):
    """The source answered with an error status."""


class Backoff:
    """Pauses that double up to `cap`, each drawn from [50%, 100%] of the step so that
    many replicas of one source do not all come back at the same instant."""

    def __init__(self, first: float = 0.25, cap: float = 20.0):
        self.first, self.cap, self.step = first, cap, first

    def next(self) -> float:
        pause = self.step * random.uniform(0.5, 1.0)
        self.step = min(self.step * 2, self.cap)
        return pause

    def reset(self) -> None:
        self.step = self.first


RETRYABLE = (httpx.TransportError, IroncoreError, OSError, ValueError)   # ValueError: a body that is not JSON


def first_error(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups: what a nursery's failure was."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    if isinstance(exc, IroncoreError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class FeedClient:
    """HTTP(S) to one source with its pinned certificate and the replica's credentials.

    The feed's long poll is async (trio). Downloads run whole in a worker thread on
    a blocking client instead: there TLS is decrypted by the ssl module in C between
    reads of a megabyte, where trio's TLS stream costs Python work per 16 KiB record
    (measured: 2.3x the CPU for the same 256 MB of packs)."""

    def __init__(self, source: Source, cert_pem: str | None):
        self.source = source
        verify = pinned_context(cert_pem) if source.url.startswith("https:") else False
        timeout = httpx.Timeout(POLL_WAIT + 30, connect=10)
        self.http = httpx.AsyncClient(base_url=source.url, verify=verify, timeout=timeout)
        self.blocking = httpx.Client(base_url=source.url, verify=verify, timeout=timeout,
                                     limits=httpx.Limits(max_connections=PACK_FETCHES + 1))
        self.auth = {"Authorization": f"Bearer {source.token}"} if source.token else {}

    async def log_in(self) -> None:
        """Trade the admin password for a replication token once, rather than have the
        source check the password (argon2, tens of ms by design) on every request."""
        if self.auth:
            return
        response = await self.http.post("/api/v1/tokens", auth=(self.source.user, self.source.password),
                                        json={"host": f"replica:{self.source.name}", "role": "replica"})
        if response.status_code != 201:
            raise self._refused(response)
        self.auth = {"Authorization": f"Bearer {response.json()['token']}"}

    async def aclose(self) -> None:
        self.blocking.close()
        await self.http.aclose()

    def _refused(self, response: httpx.Response) -> SourceRefused:
        """The error for an answer whose body has been read."""
        if response.status_code == 401 and not self.source.token:
            self.auth = {}   # a revoked token: log in again next time
        try:
            body = response.json()
        except ValueError:
            body = {}
        return SourceRefused(f"The source answered {response.status_code}: "
                             f"{body.get('error') or response.reason_phrase}", body.get("hint"))

    async def state(self, after: str, wait: float) -> dict:
        response = await self.http.get("/api/v1/replication/state", params={"after": after, "wait": wait},
                                       headers=self.auth)
        if response.status_code != 200:
            raise self._refused(response)
        return response.json()

    async def fetch(self, path: str, dest: str) -> str | None:
        """Download `path` into `dest`, resuming after the bytes `dest` already has; the
        SHA-256 of the whole file, hashed as it is written, or None if the source has
        no such file. Cancelled, the thread finishes on its own; a later fetch resumes."""
        return await trio.to_thread.run_sync(self._download, path, dest, abandon_on_cancel=True)

    def _download(self, path: str, dest: str) -> str | None:
        have = os.path.getsize(dest) if os.path.exists(dest) else 0
        headers = dict(self.auth, Range=f"bytes={have}-") if have else self.auth
        with self.blocking.stream("GET", path, headers=headers) as response:
            if response.status_code == 404:
                return None
            if response.status_code == 200:
                have = 0
            elif response.status_code not in (206, 416):   # 416: nothing after what we have
                response.read()
                raise self._refused(response)
            with open(dest, "r+b" if have else "wb") as f:
                h = prefix_hash(f, have)
                if response.status_code != 416:
                    for block in response.iter_raw(WRITE_BLOCK):
                        h.update(block)
                        f.write(block)
        return h.hexdigest()


def prefix_hash(f, length: int):
    """A SHA-256 fed with the first `length` bytes of `f` (a resumed download), which it
    then truncates there and leaves positioned at."""
    h = hashlib.sha256()
    left = length
    while left and (block := f.read(min(left, WRITE_BLOCK))):
        h.update(block)
        left -= len(block)
    f.truncate(length - left)
    return h


class VolumeWorker:
    """Brings one replica volume up to the head the feed last reported, commit by commit."""

    def __init__(self, follower: "SourceFollower", account: str, set_name: str):
        self.f, self.account, self.set_name = follower, account, set_name
        self.target = 0
        self.wake = trio.Event()

    @property
    def where(self) -> str:
        return f"{self.f.source.name}/{self.account}/{self.set_name}"

    def want(self, head: int) -> None:
        if head > self.target:
            self.target = head
            self.wake.set()

    async def run(self) -> None:
        backoff = Backoff()
        self._finish_post_steps()   # the replica's database is used from this thread only
        while True:
            self.wake = trio.Event()
            if self.f.mirror.head(self.account, self.set_name) >= self.target:
                await self.wake.wait()
                continue
            error = None
            try:
                await self._catch_up()
                backoff.reset()
            except* RETRYABLE as group:
                error = describe(first_error(group))
            if error:
                self.f.state.volume_error(self.f.source.name, self.account, self.set_name, error)
                logger.warning("event=volume-retry where=%s error=%r", self.where, error)
                await trio.sleep(backoff.next())

    async def _catch_up(self) -> None:
        mirror = self.f.mirror
        head = mirror.head(self.account, self.set_name)
        while head < self.target and not mirror.promoted():
            seq = head + 1
            staged, packs, drops = await self._commit(seq)
            missing = {p: size for p, size in packs.items() if not mirror.has_pack(self.account, self.set_name, p)}
            gone = await self._fetch_packs(missing)
            if gone:   # gc on the source removed them; fine only if a later commit says so
                later = set()
                for after in range(seq + 1, self.target + 1):
                    later.update((await self._commit(after))[2])
                if gone - later:
                    raise ReplicationError(f"The source lacks pack {sorted(gone - later)[0]} of commit {seq} of "
                                           f"{self.where}, and no later commit drops it.",
                                           "Run 'ironfs verify' on the source.")
            await trio.to_thread.run_sync(mirror.publish_commit, self.account, self.set_name, seq, staged)
            self._applied(seq, await trio.to_thread.run_sync(self._hold, drops))
            head = seq
            logger.info("event=applied where=%s seq=%d packs=%d", self.where, seq, len(missing))

    async def _commit(self, seq: int) -> tuple[str, dict, list]:
        """Commit `seq`, downloaded into incoming/ (kept there until applied) and checked."""
        folder = self.f.mirror.incoming(self.account, self.set_name)
        path = os.path.join(folder, commitlog.commit_name(seq))
        if not os.path.exists(path):
            part = path + ".part"
            if os.path.exists(part):
                os.unlink(part)   # commits are small: fetched whole, never resumed
            route = f"/api/v1/replication/accounts/{self.account}/sets/{self.set_name}/log/{seq}"
            if await self.f.feed.fetch(route, part) is None:
                raise ReplicationError(f"The source has no commit {seq} of {self.where} yet.")
            os.replace(part, path)
        try:
            packs, drops = await trio.to_thread.run_sync(self.f.mirror.commit_packs, path, seq)
        except CorruptData:
            os.unlink(path)
            raise
        return path, packs, drops

    async def _fetch_packs(self, missing: dict[str, int]) -> set[str]:
        gone = set()

        async def one(pack: str, size: int) -> None:
            async with self.f.fetches:
                part = os.path.join(self.f.mirror.incoming(self.account, self.set_name), pack + ".part")
                if os.path.exists(part) and os.path.getsize(part) > size:
                    os.unlink(part)
                route = f"/api/v1/replication/accounts/{self.account}/sets/{self.set_name}/packs/{pack}"
                digest = await self.f.feed.fetch(route, part)
                if digest is None:
                    gone.add(pack)
                    return
                await trio.to_thread.run_sync(self.f.mirror.publish_pack, self.account, self.set_name, pack, part,
                                              size, digest)

        async with trio.open_nursery() as nursery:
            for pack, size in missing.items():
                nursery.start_soon(one, pack, size)
        return gone

    def _hold(self, drops: list[str]) -> list[tuple[str, int]]:
        """Move the packs a commit dropped out of the volume (deleted at once without a
        --delete-delay); (pack, size) of those now held. Repeating it does no harm."""
        held = []
        for pack in drops:
            size = self.f.mirror.hold_dropped(self.account, self.set_name, pack)
            if size is None:
                continue
            if self.f.delete_delay_days <= 0:
                self.f.mirror.release_held(self.account, self.set_name, pack)
            else:
                held.append((pack, size))
        return held

    def _applied(self, seq: int, held: list[tuple[str, int]]) -> None:
        until = time.time_ns() + int(self.f.delete_delay_days * DAY_NS)
        for pack, size in held:
            self.f.state.hold(self.f.source.name, self.account, self.set_name, pack, size, until)
        self.f.state.volume_applied(self.f.source.name, self.account, self.set_name, seq)

    def _finish_post_steps(self) -> None:
        """Commits a killed replica published but did not finish applying."""
        mirror = self.f.mirror
        log_dir = os.path.join(mirror.volume_dir(self.account, self.set_name), "log")
        for seq in range(self.f.state.applied(self.f.source.name, self.account, self.set_name) + 1,
                         mirror.head(self.account, self.set_name) + 1):
            _, drops = mirror.commit_packs(os.path.join(log_dir, commitlog.commit_name(seq)), seq)
            self._applied(seq, self._hold(drops))


class SourceFollower:
    def __init__(self, source: Source, mirror: SourceMirror, state: ReplicaState, delete_delay_days: float):
        self.source, self.mirror, self.state = source, mirror, state
        self.delete_delay_days = delete_delay_days
        self.fetches = trio.CapacityLimiter(PACK_FETCHES)
        self.workers: dict[tuple[str, str], VolumeWorker] = {}
        self.feed: FeedClient | None = None

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self.feed is not None:
                with trio.CancelScope(shield=True):
                    await self.feed.aclose()

    async def _run(self) -> None:
        backoff = Backoff()
        while not self.mirror.promoted():
            error = None
            try:
                await self._follow(backoff)
            except* RETRYABLE as group:
                error = describe(first_error(group))
            if error:
                self.state.source_error(self.source.name, error)
                logger.warning("event=source-retry source=%s error=%r", self.source.name, error)
                await trio.sleep(backoff.next())
        logger.info("event=promoted source=%s: no longer followed", self.source.name)

    async def _certificate(self) -> str | None:
        """The source's certificate: pinned in the source's folder on first contact (and
        checked against the configured fingerprint, if any)."""
        if not self.source.url.startswith("https:"):
            return None
        path = os.path.join(self.mirror.root, "source-cert.pem")
        if os.path.exists(path):
            with open(path) as f:
                pem = f.read()
            if not self.source.fingerprint or fingerprint(pem) == self.source.fingerprint:
                return pem
        host_port = self.source.url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        pem = await trio.to_thread.run_sync(fetch_certificate, host.strip("[]"), int(port or 443))
        seen = fingerprint(pem)
        if self.source.fingerprint and seen != self.source.fingerprint:
            raise SourceRefused(f"{self.source.url} presents certificate {seen}, not the configured "
                                f"{self.source.fingerprint}.", "Check the fingerprint with the source's admin.")
        with open(path, "w") as f:
            f.write(pem)
        logger.info("event=pinned source=%s fingerprint=%s", self.source.name, seen)
        return pem

    async def _follow(self, backoff: Backoff) -> None:
        if self.feed is None:   # kept across reconnects: one login per run
            self.feed = FeedClient(self.source, await self._certificate())
        try:
            await self.feed.log_in()
            async with trio.open_nursery() as nursery:
                generation = ""
                while not self.mirror.promoted():
                    state = await self.feed.state(generation, POLL_WAIT)
                    heads = await trio.to_thread.run_sync(self.mirror.apply_state, state)
                    for account, set_name, source_head in heads:
                        key = (account, set_name)
                        self.state.volume_seen(self.source.name, account, set_name,
                                               self.mirror.head(account, set_name), source_head)
                        worker = self.workers.get(key)
                        if worker is None:
                            worker = self.workers[key] = VolumeWorker(self, account, set_name)
                            nursery.start_soon(worker.run)
                        worker.want(source_head)
                    generation = state["generation"]
                    self.state.source_ok(self.source.name)
                    backoff.reset()
                nursery.cancel_scope.cancel()
        finally:
            self.workers.clear()


async def purge_held(state: ReplicaState, mirrors: dict[str, SourceMirror], delete_delay_days: float) -> None:
    """Delete held packs whose --delete-delay has passed (looking often enough for a short delay)."""
    every = min(PURGE_EVERY, max(delete_delay_days * 86400 / 4, 0.5))
    while True:
        for source, account, set_name, pack in state.expired(time.time_ns()):
            mirror = mirrors.get(source)
            if mirror is not None:
                mirror.release_held(account, set_name, pack)
                state.release(source, account, set_name, pack)
                logger.info("event=purged source=%s account=%s set=%s pack=%s", source, account, set_name, pack)
        await trio.sleep(every)


async def run_replica(root: str, sources: list[Source], delete_delay_days: float) -> None:
    """Follow every source until SIGTERM or SIGINT."""
    state = ReplicaState(root)
    mirrors = {}
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for source in sources:
                    mirror = mirrors[source.name] = SourceMirror(root, source.name)
                    mirror.ensure(source.url)
                    if mirror.promoted():
                        logger.warning("event=skip source=%s: promoted, not followed", source.name)
                        continue
                    state.source_seen(source.name, source.url)
                    nursery.start_soon(SourceFollower(source, mirror, state, delete_delay_days).run)
                nursery.start_soon(purge_held, state, mirrors, delete_delay_days)
                async for signum in signals:
                    logger.info("event=stop signal=%d", signum)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        state.close()
