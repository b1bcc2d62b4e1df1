"""Forked worker processes of a backup or a restore (client.sealers,
client.restore): each has an interpreter of its own, so the two cores are not
shared through one GIL."""
import ctypes
import os
import signal
import threading

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
