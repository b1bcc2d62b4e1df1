"""`ironfs serve` as a real process on loopback (TLS with the data root's
certificate) and `ironcore login` against it: pinning, wrong passwords, rate
limits, plain HTTP only on loopback, graceful SIGTERM."""
import json
import os
import subprocess

import httpx

from conftest import BIN
from serverkit import ADMIN_PW, Server, login, make_root, server  # noqa: F401 (server is a fixture)


def test_login_pins_certificate_and_gets_a_machine_token(env, server):
    out = login(env, server.url)
    state = json.loads((env.home / "server.json").read_text())
    assert os.stat(env.home / "server.json").st_mode & 0o077 == 0
    assert state["fingerprint"] in out.stdout.decode() and "alice pw" not in json.dumps(state)
    # the token works over TLS that trusts only the pinned certificate
    import ssl
    ctx = ssl.create_default_context(cadata=state["cert_pem"])
    ctx.check_hostname = False
    who = httpx.get(server.url + "/api/v1/whoami", verify=ctx, headers={"Authorization": f"Bearer {state['token']}"})
    assert who.json() == {"account": "alice", "admin": False, "role": "client", "quota": 1 << 30}
    # a client token cannot mint more tokens: that needs the password
    again = httpx.post(server.url + "/api/v1/tokens", verify=ctx, headers={"Authorization": f"Bearer {state['token']}"})
    assert again.status_code == 403


def test_wrong_password_and_wrong_fingerprint_are_refused(env, server):
    bad = login(env, server.url, password="nope", check=False)
    assert bad.returncode == 3 and b"Wrong account name or password" in bad.stderr
    assert not (env.home / "server.json").exists()
    wrong = login(env, server.url, "alice", "alice pw", "--fingerprint", "00" * 32, check=False)
    assert wrong.returncode == 6 and b"not " + b"00" * 32 in wrong.stderr
    assert not (env.home / "server.json").exists()


def test_changed_certificate_is_refused_with_its_new_fingerprint(env, tmp_path, server):
    login(env, server.url)
    port = server.port
    assert server.stop() == 0
    make_root(env, tmp_path / "other-root")   # a different certificate on the same address
    impostor = Server(tmp_path / "other-root", listen=f"127.0.0.1:{port}")
    try:
        proc = login(env, server.url, check=False)
        assert proc.returncode == 6 and b"certificate changed" in proc.stderr
        new_fp = json.loads(subprocess.run([BIN / "python", "-c", "import ssl,hashlib,sys;"
                                            f"print(repr(hashlib.sha256(ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(('127.0.0.1',{port})))).hexdigest()))"],
                                           capture_output=True).stdout.decode().strip().replace("'", '"'))
        assert new_fp.encode() in proc.stderr
        ok = login(env, server.url, "alice", "alice pw", "--fingerprint", new_fp)
        assert ok.returncode == 0
    finally:
        assert impostor.stop() == 0


def test_failed_logins_are_rate_limited(env, server):
    for _ in range(5):
        assert login(env, server.url, password="wrong", check=False).returncode == 3
    limited = login(env, server.url, check=False)   # even the right password waits now
    assert limited.returncode != 0 and b"Too many failed logins" in limited.stderr


def test_metrics_for_the_admin_only(env, server):
    login(env, server.url)
    import ssl
    state = json.loads((env.home / "server.json").read_text())
    ctx = ssl.create_default_context(cadata=state["cert_pem"])
    ctx.check_hostname = False
    assert httpx.get(server.url + "/metrics", verify=ctx, auth=("alice", "alice pw")).status_code == 403
    text = httpx.get(server.url + "/metrics", verify=ctx, auth=("admin", ADMIN_PW)).text
    assert 'ironfs_requests_total{endpoint="tokens"' not in text and "ironfs_requests_total" in text
    assert ADMIN_PW not in text and "alice pw" not in text


def test_plain_http_only_on_loopback(env, tmp_path):
    make_root(env, tmp_path / "root")
    proc = env.ironfs("serve", "--data-root", tmp_path / "root", "--listen", "0.0.0.0:0", "--plain-http", check=False)
    assert proc.returncode == 2 and b"only allowed on a loopback address" in proc.stderr
    srv = Server(tmp_path / "root", extra=["--plain-http"])
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        assert httpx.get(srv.url + "/api/v1/whoami", auth=("alice", "alice pw")).json()["account"] == "alice"
    finally:
        assert srv.stop() == 0


def test_requests_are_logged_under_the_data_root_without_secrets(env, server):
    login(env, server.url)
    login(env, server.url, password="wrong", check=False)
    token = json.loads((env.home / "server.json").read_text())["token"]
    assert server.stop() == 0
    log = (server.root / "logs" / "ironfs.log").read_bytes()
    assert b"event=request method=POST endpoint=new_token status=201" in log
    assert b"status=401" in log and b"event=stop" in log
    printed = server.output() + log
    for secret in (b"alice pw", b"wrong", token.encode(), token.split("_", 2)[2].encode()):
        assert secret not in printed
