"""`ironcore daemon`: runs the sets this machine is allowed to run, on their schedules.

One trio nursery holds a scheduler task and one task per run in progress.
The scheduler reads the sets from the server every --poll-seconds (so settings
changed from another machine or the console apply without a restart), asks
client.schedule which are due, and starts each due set that is not running
already. A run is a child process, `python -m client.cli backup SET --json
--reason R` (the same code path as a backup by hand, which runs the set's
commands, keeps its local copy and sends its report); one run at a time, the
others queue.

Off-line backup: when the server cannot be reached nothing runs, and a due set
runs at the first poll that reaches it. A run that failed because the network
went away does not count as a run, so it is tried again at the next poll.
Runs missed while the machine was off (or the daemon stopped) are due at the
first poll after start, once.

Files, under $IRONCORE_HOME:
    daemon/daemon.pid    the running daemon's pid; flock()ed while it runs
    daemon/state.json    per set: first seen, last run started, last status
    logs/daemon.log      key=value lines, rotated (--log-size, five old files kept)

SIGTERM or SIGINT (what `ironcore daemon --stop` sends) stops scheduling and
passes SIGTERM to the running backup, which stops at its next safe point
(client.runner); after --stop-timeout seconds it is killed. A second signal
kills at once."""
import errno
import fcntl
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time

import trio

from client import config, remote, schedule
from ironfs.errors import IroncoreError, UsageError
from ironfs.format.fsutil import write_atomic

logger = logging.getLogger("client.daemon")

LOG_KEEP = 5
NETWORK_ERRORS = {"Unreachable", "ProxyRefused"}   # a run that failed so does not count: tried at the next poll


def daemon_dir() -> str:
    path = os.path.join(config.home(), "daemon")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def pid_path() -> str:
    return os.path.join(daemon_dir(), "daemon.pid")


class State:
    """What the daemon remembers across restarts, per set: first_seen, last_run, last_status."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path) as f:
                self.sets = json.load(f).get("sets", {})
        except (FileNotFoundError, ValueError):
            self.sets = {}

    def of(self, name: str, now: float) -> dict:
        if name not in self.sets:
            self.sets[name] = {"first_seen": now, "last_run": None, "last_status": None}
            self.save()
        return self.sets[name]

    def baseline(self, name: str, now: float) -> float:
        """The time the schedule counts from: the last run's start, else when the daemon first saw the set."""
        entry = self.of(name, now)
        return entry["last_run"] if entry["last_run"] is not None else entry["first_seen"]

    def ran(self, name: str, started: float, status: str, counts: bool) -> None:
        entry = self.of(name, started)
        entry["last_status"] = status
        if counts:
            entry["last_run"] = started
        self.save()

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"sets": self.sets}, indent=1).encode())


def setup_log(log_size: int) -> logging.Handler:
    folder = os.path.join(config.home(), "logs")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(os.path.join(folder, "daemon.log"), maxBytes=log_size,
                                                   backupCount=LOG_KEEP)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    top = logging.getLogger("client")
    top.addHandler(handler)
    top.setLevel(logging.INFO)
    return handler


class Daemon:
    def __init__(self, poll_seconds: float = 60.0, stop_timeout: float = 120.0, clock=time.time, tz=None):
        self.poll_seconds, self.stop_timeout = poll_seconds, stop_timeout
        self.clock = clock
        self.tz = tz or schedule.local_zone()
        self.state = State(os.path.join(daemon_dir(), "state.json"))
        self.host = config.host_name()
        self.queued: set[str] = set()              # sets with a run task (waiting or running)
        self.children: dict[str, trio.Process] = {}
        self.one_at_a_time = trio.CapacityLimiter(1)
        self.wake = trio.Event()
        self.stopping = False
        self.reachable: bool | None = None

    async def main(self) -> None:
        logger.info("event=daemon-start pid=%d host=%r poll_seconds=%g", os.getpid(), self.host, self.poll_seconds)
        self.scheduler_scope = trio.CancelScope()
        self.stop_scope = trio.CancelScope()    # the signal watch; cancelled once the last run has ended
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, signals)
                nursery.start_soon(self._scheduler, nursery)
        logger.info("event=daemon-stop pid=%d", os.getpid())

    # --- stopping ---------------------------------------------------------------------
    async def _signals(self, signals) -> None:
        with self.stop_scope:
            async for signum in signals:
                if self.stopping:
                    logger.warning("event=stopping-now signal=%d", signum)
                    self._kill_children()
                    continue
                self.stopping = True
                logger.info("event=stopping signal=%d running=%s", signum, ",".join(sorted(self.children)) or "-")
                self.scheduler_scope.cancel()
                for proc in self.children.values():
                    proc.send_signal(signal.SIGTERM)    # the run stops at its next safe point
                if not self.queued:
                    return
                break
            with trio.move_on_after(self.stop_timeout):
                async for signum in signals:   # a second signal: no more waiting
                    logger.warning("event=stopping-now signal=%d", signum)
                    break
            logger.warning("event=stop-killing running=%s", ",".join(sorted(self.children)) or "-")
            self._kill_children()
            await trio.sleep_forever()         # until the killed runs have ended

    def _kill_children(self) -> None:
        for proc in self.children.values():
            proc.kill()

    # --- scheduling -----------------------------------------------------------------------
    def _fetch_sets(self) -> list[dict] | None:
        """The account's sets from the server, or None when it cannot be reached (worker thread)."""
        try:
            server = remote.connect()
        except IroncoreError as exc:
            logger.error("event=not-logged-in error=%r", exc.message)
            return None
        try:
            return server.request("GET", "/api/v1/sets").json()
        except IroncoreError as exc:
            if self.reachable is not False:
                logger.warning("event=server-unreachable error=%r", exc.message)
            return None
        finally:
            server.close()

    async def _scheduler(self, nursery) -> None:
        with self.scheduler_scope:
            while True:
                sets = await trio.to_thread.run_sync(self._fetch_sets, abandon_on_cancel=True)
                if sets is not None and self.reachable is False:
                    logger.info("event=server-reachable")
                self.reachable = sets is not None
                wake_at = self.clock() + self.poll_seconds
                for info in sets or []:
                    due = self.consider(info)
                    if due is None:
                        continue
                    reason, at = due
                    if reason is not None:
                        self.queued.add(info["name"])
                        nursery.start_soon(self._run, info["name"], reason)
                    elif at is not None:
                        wake_at = min(wake_at, at)
                with trio.move_on_after(max(0.0, wake_at - self.clock())):
                    await self.wake.wait()
                self.wake = trio.Event()

    def consider(self, info: dict) -> tuple[str | None, float | None] | None:
        """(reason to run now or None, next due time) for a set; None when this machine does not run it."""
        name = info["name"]
        rules = info["settings"].get("schedule") or []
        if not info["machines"].get(self.host, {}).get("scheduled") or not rules or name in self.queued:
            return None
        now = self.clock()
        last = self.state.baseline(name, now)
        reason = schedule.due_reason(rules, last, now, self.tz)
        return reason, schedule.next_due(rules, last, self.tz)

    # --- one run ---------------------------------------------------------------------------
    async def _run(self, name: str, reason: str) -> None:
        try:
            async with self.one_at_a_time:
                if self.stopping:
                    return
                await self._run_child(name, reason)
        finally:
            self.queued.discard(name)
            self.wake.set()
            if self.stopping and not self.queued:
                self.stop_scope.cancel()

    async def _run_child(self, name: str, reason: str) -> None:
        started = self.clock()
        logger.info("event=run-start set=%s reason=%s", name, reason)
        cmd = [sys.executable, "-m", "client.cli", "backup", name, "--json", "--reason", reason]
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, start_new_session=True,
                                                env={**os.environ, "IRONCORE_LOG": "INFO"})
        self.children[name] = proc
        out, err = bytearray(), bytearray()
        try:
            async with trio.open_nursery() as n:
                n.start_soon(_read_all, proc.stdout, out)
                n.start_soon(_read_all, proc.stderr, err)
                await proc.wait()
        finally:
            del self.children[name]
            if proc.returncode is None:
                proc.kill()
        report = _parse_report(bytes(out))
        message = _pass_on_log(name, bytes(err).decode(errors="replace"))
        if report is None:   # the run died before it could report (killed, crashed): report for it
            report = await trio.to_thread.run_sync(self._report_death, name, reason, started, proc.returncode,
                                                   message)
        status = report["status"]
        counts = status != "stopped" and report.get("error_type") not in NETWORK_ERRORS
        self.state.ran(name, started, status, counts)
        logger.info("event=run-exit set=%s status=%s exit=%s snapshot=%s new=%s changed=%s deleted=%s failed=%s "
                    "bytes_read=%s bytes_sent=%s seconds=%s counted=%s", name, status, proc.returncode,
                    report.get("snapshot"), report.get("files_new"), report.get("files_changed"),
                    report.get("files_deleted"), report.get("files_failed"), report.get("bytes_read"),
                    report.get("bytes_sent"), report.get("duration_s"), counts)
        if status in ("failed", "skipped"):
            logger.warning("event=run-failed set=%s error=%r", name, report.get("error") or message)

    def _report_death(self, name, reason, started, returncode, stderr) -> dict:
        from client import reports
        from client.runner import new_report
        report = new_report(name, reason)
        report["started_ns"] = int(started * 1e9)
        report["finished_ns"] = time.time_ns()
        report["duration_s"] = round(time.time() - started, 3)
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
        report["error"] = f"The backup process {how} before it could report: {stderr or 'no message'}"
        report["status"] = "stopped" if self.stopping else "failed"
        try:
            server = remote.connect()
            try:
                reports.send(server, report)
            finally:
                server.close()
        except IroncoreError as exc:
            logger.warning("event=report-not-sent set=%s error=%r", name, exc.message)
        return report


def _pass_on_log(name: str, stderr: str) -> str:
    """The run's own log lines (its stderr) into the daemon log; returns its last error message."""
    run_log = logging.getLogger("client.run")
    errors = []
    for text in stderr.splitlines():
        level, _, rest = text.partition(" ")
        if level in ("INFO", "WARNING", "ERROR", "CRITICAL"):
            if rest.startswith(("client", "ironfs")):   # not the HTTP library's line per request
                run_log.log(getattr(logging, level), "set=%s %s", name, rest)
        elif text.strip():
            errors.append(text.strip())
    return " ".join(errors)[-2000:]


async def _read_all(stream, into: bytearray) -> None:
    async with stream:
        while chunk := await stream.receive_some(65536):
            into += chunk


def _parse_report(out: bytes) -> dict | None:
    try:
        report = json.loads(out)
    except ValueError:
        return None
    return report if isinstance(report, dict) and "status" in report else None


# --- the pid file ------------------------------------------------------------------------------
def _lock_pidfile() -> int:
    fd = os.open(pid_path(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UsageError(f"A daemon runs already for {config.home()} (pid {pid}).",
                         "Stop it first with 'ironcore daemon --stop'.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.fsync(fd)
    return fd


def run_daemon(poll_seconds: float = 60.0, log_size: int = 1 << 20, stop_timeout: float = 120.0) -> None:
    remote.load_state()   # not logged in: say so now rather than in the log every minute
    fd = _lock_pidfile()
    handler = setup_log(log_size)
    try:
        trio.run(Daemon(poll_seconds, stop_timeout).main)
    finally:
        os.ftruncate(fd, 0)
        os.close(fd)
        logging.getLogger("client").removeHandler(handler)
        handler.close()


def running_pid() -> int | None:
    """The pid of the daemon running for this $IRONCORE_HOME, or None."""
    try:
        fd = os.open(pid_path(), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None   # nobody holds it: no daemon
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
    finally:
        os.close(fd)


def stop_daemon(timeout: float) -> int:
    """SIGTERM the running daemon and wait until it has ended; its pid."""
    pid = running_pid()
    if pid is None:
        raise UsageError(f"No daemon runs for {config.home()}.", "Start one with 'ironcore daemon'.")
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return pid
        raise UsageError(f"Cannot signal the daemon (pid {pid}): {exc.strerror}.",
                         "Stop it as the user that started it.") from None
    deadline = time.monotonic() + timeout + 10
    while time.monotonic() < deadline:
        if running_pid() is None:
            return pid
        time.sleep(0.1)
    raise IroncoreError(f"The daemon (pid {pid}) has not stopped within {timeout + 10:g} s.",
                        "It may be waiting for a backup to reach a safe point; check logs/daemon.log.")
