"""Workers of a backup or a restore (client.sealers, client.restore): forked
processes, each with an interpreter of its own, so the two cores are not shared
through one GIL; or threads, where forking is not safe or not wanted."""
import ctypes
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

PR_SET_PDEATHSIG = 1   # prctl(2)

_state = None   # a worker process's own, made by _start


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


def _start(parent: int, make_state) -> None:
    global _state
    if not become_worker(parent):
        os._exit(1)
    _state = make_state()


def _run(fn, *args):
    return fn(_state, *args)


class Workers:
    """Runs jobs `fn(state, *args)`. With `fork`, while this process can fork
    safely: on `count` worker processes, forked here and now, each with the
    state `make_state()` returns in it. Otherwise: on `thread_count` (default
    `count`) threads sharing the state `thread_state()` (default `make_state()`)
    returns here, closed (if it has a close) on shutdown."""

    def __init__(self, count: int, make_state, thread_count: int | None = None, thread_state=None,
                 fork: bool = True, name: str = "worker"):
        self.processes = fork and safe_to_fork()
        self._state = None
        if self.processes:
            self.count = count
            self.executor = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork"),
                                                initializer=_start, initargs=(os.getpid(), make_state))
            self.executor.submit(os.getpid).result()   # forks every worker now, while there is no other thread
        else:
            self.count = thread_count or count
            self._state = (thread_state or make_state)()
            self.executor = ThreadPoolExecutor(self.count, thread_name_prefix=name)

    def submit(self, fn, *args):
        if self.processes:
            return self.executor.submit(_run, fn, *args)
        return self.executor.submit(fn, self._state, *args)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        if hasattr(self._state, "close"):
            self._state.close()
