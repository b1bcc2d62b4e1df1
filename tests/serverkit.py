"""A real `ironfs serve` process on loopback for tests, and the steps every
server test starts with (a data root, an account, a logged-in client)."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import BIN

ADMIN_PW = "admin password"


class Server:
    def __init__(self, root, listen="127.0.0.1:0", extra=()):
        self.root = root
        self.proc = subprocess.Popen([BIN / "ironfs", "serve", "--data-root", root, "--listen", listen, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"listening on ") or self.proc.poll() is not None:
                break
        if not line.startswith(b"listening on "):
            self.proc.kill()
            raise AssertionError(f"server did not start: {self.proc.stderr.read().decode()}")
        self.url = line.decode().split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        # The server logs every request to stderr: read it all the time, or a run of
        # a thousand requests fills the pipe and the server stalls on its next log line.
        self._stderr = bytearray()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read_stderr(self) -> None:
        while chunk := self.proc.stderr.read1(1 << 16):
            self._stderr += chunk

    def stop(self) -> int:
        """SIGTERM and wait; the exit code (again on later calls)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
        return self.proc.returncode

    def output(self) -> bytes:
        """Everything the stopped server printed."""
        self._stderr_reader.join()
        return self.proc.stdout.read() + bytes(self._stderr)


def advance_clock(root, seconds: float) -> float:
    """Move the server clock of data root `root` forward (ironfs/store/clock.py): a
    running server sees the new offset at its next look at the time. The new offset."""
    path = os.path.join(root, "ironfs.json")
    with open(path) as f:
        settings = json.load(f)
    settings["clock_offset_s"] = settings.get("clock_offset_s", 0) + seconds
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(settings, f)
    os.replace(tmp, path)
    return settings["clock_offset_s"]


def make_root(env, path):
    env.ironfs("init", "--data-root", path, "--password-stdin", input=ADMIN_PW.encode() + b"\n")
    env.ironfs("account", "add", "alice", "--data-root", path, "--quota", "1G", "--password-stdin",
               input=b"alice pw\n")


@pytest.fixture
def server(env, tmp_path):
    make_root(env, tmp_path / "root")
    srv = Server(tmp_path / "root")
    yield srv
    assert srv.stop() == 0


def login(env, server_url, account="alice", password="alice pw", *extra, check=True):
    return env.ironcore("login", "--server", server_url, "--account", account, "--password-stdin", *extra,
                        input=password.encode() + b"\n", check=check)
