"""Backups through a real HTTP proxy (tinyproxy from Debian) that requires basic
authentication (FAQ 2.2, 2.23): login, backup and restore tunnel through HTTP
CONNECT as the standard HTTPS_PROXY setting says, at the set's bandwidth limit;
a wrong proxy password or a proxy that refuses the port fails at once with a
message that says what to check and never shows the password."""
import random
import socket
import subprocess
import time

import pytest

from conftest import assert_same_tree
from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_remote import add_server_set

PROXY_USER, PROXY_SECRET = "proxyuser", "s3cret-proxy-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TinyProxy:
    def __init__(self, folder, extra: str = ""):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = folder / "tinyproxy.log"
        conf = folder / "tinyproxy.conf"
        conf.write_text(f'Port {self.port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nLogFile "{self.log}"\n'
                        f'LogLevel Connect\nPidFile "{folder}/tinyproxy.pid"\nAllow 127.0.0.1\n'
                        f"BasicAuth {PROXY_USER} {PROXY_SECRET}\n{extra}")
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"tinyproxy exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise AssertionError("tinyproxy did not start")

    def url(self, user=PROXY_USER, secret=PROXY_SECRET) -> str:
        return f"http://{user}:{secret}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def proxy(tmp_path):
    p = TinyProxy(tmp_path / "proxy")
    yield p
    p.stop()


def through(env, proxy_url: str) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        env.env.pop(name, None)
    env.env["HTTPS_PROXY"] = proxy_url


def test_backup_and_restore_through_an_authenticating_proxy(env, server, proxy, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(5)
    (src / "big.bin").write_bytes(rnd.randbytes(1536 * 1024))
    for i in range(10):
        (src / f"small{i}.txt").write_bytes(rnd.randbytes(500))
    through(env, proxy.url())
    login(env, server.url)                      # the certificate, then the token, both through the tunnel
    add_server_set(env, "docs", src)
    env.ironcore("set", "edit", "docs", "--bandwidth-limit", "512K")
    started = time.monotonic()
    run = env.backup_json("docs")
    took = time.monotonic() - started
    assert run["status"] == "ok" and run["bytes_sent"] > 1536 * 1024
    # 1.5 MiB at 512 KiB/s, less the bucket's first 128 KiB: at least 2.75 s of sending
    assert took >= 2.7 and run["duration_s"] >= 2.7, (took, run["duration_s"])
    out = tmp_path / "out"
    env.ironcore("restore", "docs", "--to", out)
    assert_same_tree(src, env.restored(out, src))
    log = proxy.log.read_text()
    assert f"CONNECT 127.0.0.1:{server.port}" in log, log[-2000:]
    assert log.count("CONNECT 127.0.0.1") >= 3      # login, backup, restore each tunnelled

    # the same through a proxy that does not know us: refused at once, plainly, no password shown
    through(env, proxy.url(secret="wrong-password"))
    started = time.monotonic()
    proc = env.ironcore("backup", "docs", check=False)
    assert time.monotonic() - started < 20          # not retried like a server restart
    err = proc.stderr.decode()
    assert proc.returncode == 7 and "refused the tunnel" in err and ("407" in err or "401" in err), err
    assert "HTTPS_PROXY" in err and "wrong-password" not in err and "Traceback" not in err
    proc = login(env, server.url, check=False)
    assert proc.returncode != 0 and b"wrong-password" not in proc.stderr


def test_a_proxy_that_refuses_the_port_says_so(env, server, tmp_path):
    strict = TinyProxy(tmp_path / "strict", extra="ConnectPort 443\n")   # as many proxies are set up (FAQ 2.23)
    try:
        through(env, strict.url())
        proc = login(env, server.url, check=False)
        err = proc.stderr.decode()
        assert proc.returncode != 0 and "refused the tunnel" in err and f"port {server.port}" in err, err
        assert PROXY_SECRET not in err
    finally:
        strict.stop()
