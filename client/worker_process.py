"""Workers of a backup or a restore (client.sealers, client.restore): forked
processes, each with an interpreter of its own, so the two cores are not shared
through one GIL; or threads, where forking is not safe or not wanted."""
import ctypes
import os
import pickle
import signal
import socket
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from multiprocessing.connection import Connection, wait as connection_wait

from ironfs.errors import IroncoreError

PR_SET_PDEATHSIG = 1   # prctl(2)


def safe_to_fork() -> bool:
    """Only while this process has no other thread: a fork copies the locks other
    threads may hold at that moment (of stdio, logging, SQLite), held forever."""
    return threading.active_count() == 1


def become_worker(parent: int) -> bool:
    """First thing in a forked worker: leave Ctrl-C and SIGTERM (stop at the next
    safe point) to the parent, and end with it however it ends, even by SIGKILL.
    False if the parent is gone already."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent


class WorkerDied(IroncoreError):
    """A worker process ended before it answered (killed, or out of memory)."""


_PENDING, _OK, _FAILED = 0, 1, 2
SOCKET_BUFFER = 4 << 20   # jobs and answers in flight fit without either side blocking the other


class Job:
    """A job sent to a worker process. Its answer is read when asked for
    (`done`, `result`, Workers.wait_first): the worker answers in order, on a
    socket of its own, so no thread of this process has to wait for it."""

    __slots__ = ("process", "_state", "_value", "_callbacks")

    def __init__(self, process: "_Process"):
        self.process, self._state, self._value, self._callbacks = process, _PENDING, None, None

    def done(self) -> bool:
        if self._state == _PENDING:
            self.process.collect(block=False)
        return self._state != _PENDING

    def result(self):
        while self._state == _PENDING:
            self.process.collect(block=True)
        if self._state == _FAILED:
            raise self._value
        return self._value

    def exception(self):
        try:
            self.result()
        except BaseException as exc:  # noqa: BLE001 - that is what is asked for
            return exc
        return None

    def cancel(self) -> bool:
        return False   # a job sent is done by its worker

    def cancelled(self) -> bool:
        return False

    def add_done_callback(self, fn) -> None:
        """`fn(job)` once the answer is read (on the thread that reads it)."""
        if self._state != _PENDING:
            fn(self)
        else:
            self._callbacks = (self._callbacks or []) + [fn]

    def _settle(self, state: int, value) -> None:
        self._state, self._value = state, value
        for fn in self._callbacks or ():
            fn(self)


class _Process:
    """One forked worker and the parent's end of its socket."""

    def __init__(self, make_state, others: list):
        parent = os.getpid()
        mine, theirs = socket.socketpair()
        for sock in (mine, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self.pid = os.fork()
        if self.pid == 0:   # the worker
            status = 1
            try:
                mine.close()
                for other in others:
                    other.conn.close()
                if become_worker(parent):
                    _serve(Connection(theirs.detach()), make_state())
                    status = 0
            finally:
                os._exit(status)
        theirs.close()
        self.conn = Connection(mine.detach())
        self.jobs: deque[Job] = deque()   # sent and not answered yet, in order

    def send(self, fn, args) -> Job:
        job = Job(self)
        self.conn.send((fn, args))
        self.jobs.append(job)
        return job

    def collect(self, block: bool) -> None:
        """Read one answer, if one is there (or, with block, once it is)."""
        if not self.jobs or (not block and not self.conn.poll()):
            return
        try:
            ok, value = self.conn.recv()
        except (EOFError, OSError):
            died = WorkerDied("A worker process ended without finishing its work.",
                              "Look for an out-of-memory kill in the system log, then run the command again.")
            while self.jobs:
                self.jobs.popleft()._settle(_FAILED, died)
            return
        self.jobs.popleft()._settle(_OK if ok else _FAILED, value)

    def stop(self) -> None:
        """End the worker once its job in hand is done: after the last answer
        read it finds the stop message; with answers left unread (a run that
        failed) its next answer meets a closed socket and it ends there."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        self.jobs.clear()
        os.waitpid(self.pid, 0)


def _serve(conn, state) -> None:
    """A worker's loop: run each job on its state and answer, until told to stop."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        fn, args = message
        try:
            answer = (True, fn(state, *args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            answer = (False, exc)
        try:
            conn.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:   # an answer that does not pickle
            conn.send((False, RuntimeError(f"{fn.__qualname__} gave an answer that cannot be sent: {exc}")))


class Workers:
    """Runs jobs `fn(state, *args)`. With `fork`, while this process can fork
    safely: on `count` worker processes, forked here and now, each with the
    state `make_state()` returns in it; a job goes to the worker with the
    fewest jobs waiting, and comes back as a Job. Otherwise: on `thread_count`
    (default `count`) threads sharing the state `thread_state()` (default
    `make_state()`) returns here, closed (if it has a close) on shutdown; a job
    comes back as a Future. A Job answers what a Future does, but for waiting
    on several at once: that is `wait_first`.

    ProcessPoolExecutor did the same with two threads of this process between
    the caller and the workers, whose Python took about 0.4 s of CPU and turns
    at the GIL in a backup of 20,000 files; here the caller writes each job to
    its worker's socket and reads the answers itself."""

    def __init__(self, count: int, make_state, thread_count: int | None = None, thread_state=None,
                 fork: bool = True, name: str = "worker"):
        self.processes = fork and safe_to_fork()
        self._state = None
        self._workers: list[_Process] = []
        self.executor = None
        if self.processes:
            self.count = count
            for _ in range(count):
                self._workers.append(_Process(make_state, self._workers))
        else:
            self.count = thread_count or count
            self._state = (thread_state or make_state)()
            self.executor = ThreadPoolExecutor(self.count, thread_name_prefix=name)

    def submit(self, fn, *args):
        if not self.processes:
            return self.executor.submit(fn, self._state, *args)
        return min(self._workers, key=lambda w: len(w.jobs)).send(fn, args)

    def wait_first(self, jobs) -> None:
        """Return once one of `jobs` (of this pool) is done."""
        jobs = list(jobs)
        if not self.processes:
            wait(jobs, return_when=FIRST_COMPLETED)
            return
        while not any(job.done() for job in jobs):
            busy = {job.process for job in jobs}
            for conn in connection_wait([w.conn for w in busy]):
                next(w for w in busy if w.conn is conn).collect(block=True)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        for worker in self._workers:
            worker.stop()
        self._workers = []
        if hasattr(self._state, "close"):
            self._state.close()
