"""Pre- and post-backup commands (FAQ 2.29, 2.47, 2.48): a dump before the
backup, a share mounted, a database stopped and started again.

A command runs with /bin/sh -c in its own process group, standard input
closed, from the user's home folder, with IRONCORE_SET (and for the post
command IRONCORE_BACKUP_STATUS) in its environment, without IRONCORE_PASSWORD
or IRONFS_PASSWORD. After its timeout, or when
the run is asked to stop, the whole group gets SIGTERM, then SIGKILL five
seconds later. Its output (standard output and error together, the last
16 KiB) goes into the run's report; the command line itself is never logged,
as it may hold a password (`net use ... PASSWORD`)."""
import os
import signal
import subprocess
import threading
import time

from ironfs.store.setoptions import HOOK_TIMEOUT_DEFAULT

OUTPUT_KEEP = 16 * 1024
KILL_GRACE_S = 5.0
SECRET_VARIABLES = {"IRONCORE_PASSWORD", "IRONFS_PASSWORD"}


class _Tail:
    """The last OUTPUT_KEEP bytes of a stream, read on a thread of its own."""

    def __init__(self, stream):
        self.data = bytearray()
        self.total = 0
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        while chunk := stream.read1(65536):
            self.total += len(chunk)
            self.data += chunk
            if len(self.data) > 2 * OUTPUT_KEEP:
                del self.data[:-OUTPUT_KEEP]

    def text(self) -> str:
        self.thread.join(timeout=2)
        return bytes(self.data[-OUTPUT_KEEP:]).decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def hook_environment() -> dict:
    """This process's environment less the secrets it may have been given."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}


def run_hook(hook: dict, env_extra: dict, stop: threading.Event | None = None) -> dict:
    """Run one command; its result for the report:
    {"ok", "exit_code", "timed_out", "stopped", "seconds", "output", "output_bytes"}."""
    timeout = float(hook.get("timeout", HOOK_TIMEOUT_DEFAULT))
    started = time.monotonic()
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", hook["command"]], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=os.path.expanduser("~"), env={**hook_environment(), **env_extra})
    except OSError as exc:
        return {"ok": False, "exit_code": None, "timed_out": False, "stopped": False, "seconds": 0.0,
                "output": f"could not start /bin/sh: {exc}", "output_bytes": 0}
    tail = _Tail(proc.stdout)
    timed_out = stopped = False
    try:
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - started > timeout:
                timed_out = True
            elif stop is not None and stop.is_set():
                stopped = True
            else:
                continue
            _kill_group(proc)
            break
    except BaseException:   # Ctrl-C: the command (in a session of its own) does not get it; stop it too
        _kill_group(proc)
        raise
    output = tail.text()
    proc.stdout.close()
    return {"ok": proc.returncode == 0 and not timed_out and not stopped, "exit_code": proc.returncode,
            "timed_out": timed_out, "stopped": stopped, "seconds": round(time.monotonic() - started, 3),
            "output": output, "output_bytes": tail.total}


def describe_failure(name: str, result: dict, timeout: float) -> str:
    """A plain sentence on why a command failed."""
    if result["timed_out"]:
        return f"The {name}-backup command did not finish within {timeout:g} s and was stopped."
    if result["stopped"]:
        return f"The {name}-backup command was stopped because the run was asked to stop."
    if result["exit_code"] is None:
        return f"The {name}-backup command could not be started: {result['output']}."
    if result["exit_code"] < 0:
        return f"The {name}-backup command was killed by signal {-result['exit_code']}."
    return f"The {name}-backup command failed with exit code {result['exit_code']}."
