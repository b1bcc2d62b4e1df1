"""WebDAV for the administrator (other accounts only when the server allows it,
and never their contents) and failed WebDAV logins limited like API logins."""
import json
import ssl

import httpx

from serverkit import ADMIN_PW, Server, login, make_root
from test_remote import add_server_set


def dav_client(srv, auth) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(srv.root / "tls" / "cert.pem"))
    ctx.check_hostname = False
    return httpx.Client(base_url=srv.url, verify=ctx, auth=auth, timeout=30)


def names(response) -> list[str]:
    return [h.split("/dav/", 1)[1] for h in
            (line.split("</ns0:href>")[0] for line in response.text.split("<ns0:href>")[1:])]


def backed_up_root(env, tmp_path):
    make_root(env, tmp_path / "root")
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret.txt").write_bytes(b"alice's own words\n")
    return src


def test_admin_sees_other_accounts_only_when_allowed_and_never_their_contents(env, tmp_path):
    src = backed_up_root(env, tmp_path)
    for allowed in (False, True):
        settings_path = tmp_path / "root" / "ironfs.json"
        settings = json.loads(settings_path.read_text())
        settings["admin_sees_all_accounts"] = allowed
        settings_path.write_text(json.dumps(settings))
        srv = Server(tmp_path / "root")
        try:
            if not allowed:
                login(env, srv.url)
                add_server_set(env, "docs", src)
                env.backup_json("docs")
            with dav_client(srv, ("admin", ADMIN_PW)) as admin:
                top = admin.request("PROPFIND", "/dav/", headers={"Depth": "1"})
                assert top.status_code == 207
                other = f"/dav/@accounts/alice/docs/latest{src}/secret.txt"
                if not allowed:
                    assert names(top) == [""]
                    assert admin.get(other).status_code == 404
                    continue
                assert "%40accounts/" in names(top)
                listing = admin.request("PROPFIND", "/dav/@accounts/", headers={"Depth": "1"})
                assert "%40accounts/alice/" in names(listing)
                assert admin.head(other).headers["content-length"] == str(len(b"alice's own words\n"))
                refused = admin.get(other)
                assert refused.status_code == 403 and "alice" in refused.text
                assert b"alice's own words" not in refused.content
            with dav_client(srv, ("alice", "alice pw")) as alice:   # an account that is not admin
                assert alice.get("/dav/@accounts/").status_code == 404
                assert alice.get(f"/dav/docs/latest{src}/secret.txt").content == b"alice's own words\n"
        finally:
            assert srv.stop() == 0


def test_failed_webdav_logins_are_limited(env, tmp_path):
    backed_up_root(env, tmp_path)
    srv = Server(tmp_path / "root")
    try:
        with dav_client(srv, ("alice", "wrong")) as wrong:
            for _ in range(5):
                assert wrong.request("PROPFIND", "/dav/", headers={"Depth": "0"}).status_code == 401
        # the right password is refused too while the window lasts
        with dav_client(srv, ("alice", "alice pw")) as right:
            assert right.request("PROPFIND", "/dav/", headers={"Depth": "0"}).status_code == 401
        log = (srv.root / "logs" / "ironfs.log").read_text()
        assert "event=dav-login-limited account='alice'" in log and "alice pw" not in log
    finally:
        assert srv.stop() == 0
