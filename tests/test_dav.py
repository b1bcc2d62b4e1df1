"""The WebDAV share under /dav/ with real clients against a real `ironfs serve`
over TLS: a davfs2 mount, rclone, cadaver and litmus, then the protocol by hand
with httpx (ranges, validators, PROPFIND depths, the refused write methods,
accounts, awkward names, a private-key set, the HTML view).

One server per module (per xdist worker) holds: set `docs` with three snapshots
and a copy of its source taken at each; set `vault` with a private key; set
`odd` with a file name that is not UTF-8; account bob with no sets. Every
client pins the server's self-signed certificate."""
import email.parser
import email.policy
import errno
import filecmp
import grp
import html.parser
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import httpx
import pytest

from conftest import Env
from ironfs.format.snapshots import snapshot_name
from serverkit import Server, login, make_root
from test_remote import add_server_set, make_tree

ALICE = ("alice", "alice pw")
BOB = ("bob", "bob pw")
DAV = "{DAV:}"
KiB = 1 << 10

# names that need percent-encoding, or are the same text in NFC and NFD (two files)
NAMES = ["with space.txt", "100%.txt", "%41.txt", "a#b.txt", "what?.txt", "amp&eq=;+.txt",
         unicodedata.normalize("NFC", "caf\u00e9.txt"), unicodedata.normalize("NFD", "caf\u00e9.txt"),
         "\u65e5\u672c\u8a9e.txt", "\u00fcber #1 100% ?.txt"]
ODD_NAME = b"caf\xe9-latin1.txt"   # Latin-1 bytes: a legal Linux name that is not UTF-8


@dataclass
class Share:
    env: Env
    server: Server
    tmp: Path
    src: Path                      # the source of set docs
    copies: dict[int, Path]        # seq -> copy of src taken right after that backup
    snap_names: dict[int, str]     # seq -> the name under /dav/docs/snapshots/
    vault_src: Path

    @property
    def cert(self) -> Path:
        return self.server.root / "tls" / "cert.pem"

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def latest(self, rel: str = "") -> str:
        """The URL path of a path of the source in the latest snapshot of docs."""
        return "/dav/docs/latest" + quote(str(self.src)) + ("/" + quote(rel) if rel else "")


def drain(server: Server) -> None:
    """Read the server's stdout as it runs (serverkit reads its stderr, where it logs
    a line per request): a full pipe would stop it mid-test. `server.log` keeps the
    last bytes of stdout; `server_log` gives both."""
    server.log = bytearray()

    def pump(stream):
        for line in iter(stream.readline, b""):
            server.log += line
            del server.log[:-256 * KiB]
    threading.Thread(target=pump, args=(server.proc.stdout,), daemon=True).start()


def server_log(server: Server, tail: int = 4000) -> str:
    """The last `tail` bytes the running server printed, stdout then stderr, for a failure message."""
    return (bytes(server.log) + bytes(server._stderr))[-tail:].decode(errors="replace")


def dav_snapshot_names(snaps: list[dict]) -> dict[int, str]:
    """The server's naming: UTC second, and `-seq` for a second snapshot in the same second."""
    names: dict[int, str] = {}
    for s in snaps:
        name = snapshot_name(s["time_ns"])
        names[s["seq"]] = name if name not in names.values() else f"{name}-{s['seq']}"
    return names


def volume_state(share: Share) -> dict:
    """Every file of every account's sets on the server: path -> (size, mtime)."""
    out = {}
    for dirpath, _, files in os.walk(share.server.root / "accounts"):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dav")
    env = Env(tmp)
    make_root(env, tmp / "root")
    server = Server(tmp / "root")
    drain(server)
    try:
        login(env, server.url)
        src = tmp / "src"
        make_tree(src, random.Random(11), big=600 * KiB)
        (src / "names").mkdir()
        for i, name in enumerate(NAMES):
            (src / "names" / name).write_bytes(f"{i}: {name}\n".encode() * (i + 1))
        add_server_set(env, "docs", src)
        copies = {}
        for seq in (1, 2, 3):
            if seq == 2:
                (src / "docs" / "note005.txt").write_bytes(b"second words\n" * 200)
                (src / "docs" / "note006.txt").unlink()
                (src / "docs" / "new-in-2.txt").write_bytes(os.urandom(5000))
                with open(src / "big.bin", "ab") as f:
                    f.write(os.urandom(70 * KiB))
            if seq == 3:
                (src / "docs" / "deep").rename(src / "docs" / "deeper")
                (src / "docs" / "note005.txt").write_bytes(b"third\n")
                (src / "sparse.img").unlink()
                (src / "names" / "late #3 100%.txt").write_bytes(b"late\n")
            report = env.backup_json("docs")
            assert report["snapshot"] == seq and report["errors"] == []
            copies[seq] = tmp / "copies" / str(seq)
            shutil.copytree(src, copies[seq], symlinks=True)
        snaps = json.loads(env.ironcore("snapshots", "docs", "--json").stdout)

        vault_src = tmp / "vault"
        vault_src.mkdir()
        (vault_src / "secret.txt").write_bytes(b"only with the private key\n")
        keyfile = tmp / "vault.key"
        keyfile.write_bytes(b"a private key the server never sees\n")
        add_server_set(env, "vault", vault_src, extra=["--private-key-file", keyfile])
        key_env = dict(env.env, IRONCORE_PASSWORD=keyfile.read_text().strip())
        env.ironcore("backup", "vault", env=key_env)

        odd_src = tmp / "odd"
        odd_src.mkdir()
        (odd_src / "ok.txt").write_bytes(b"fine\n")
        with open(os.path.join(os.fsencode(odd_src), ODD_NAME), "wb") as f:
            f.write(b"latin-1 name\n")
        add_server_set(env, "odd", odd_src)
        env.backup_json("odd")

        env.ironfs("account", "add", "bob", "--data-root", server.root, "--password-stdin", input=b"bob pw\n")
        yield Share(env, server, tmp, src, copies, dav_snapshot_names(snaps), vault_src)
    finally:
        code = server.stop()
    assert code == 0, server_log(server)


@pytest.fixture
def dav(share):
    with client(share) as c:
        yield c


def client(share, auth=ALICE) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(share.cert))   # the pinned self-signed certificate
    return httpx.Client(base_url=share.base, verify=ctx, auth=auth, timeout=30)


def propfind(c: httpx.Client, path: str, depth: str) -> ET.Element:
    r = c.request("PROPFIND", path, headers={"Depth": depth})
    assert r.status_code == 207, (r.status_code, r.text[:500])
    return ET.fromstring(r.content)


def hrefs(tree: ET.Element) -> list[bytes]:
    return [unquote_to_bytes(h.text) for h in tree.iter(DAV + "href")]


def listed(copy_dir: Path) -> set[bytes]:
    """What WebDAV shows of a folder: its folders and regular files (links and devices are left out)."""
    out = set()
    for entry in os.scandir(os.fsencode(copy_dir)):
        if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
            out.add(entry.name)
    return out


def assert_same_files(copy: Path, seen: Path) -> int:
    """Every folder lists the same names, every regular file has the same bytes. Returns the files compared."""
    compared = 0
    copy_b, seen_b = os.fsencode(copy), os.fsencode(seen)
    for dirpath, _, _ in os.walk(copy_b):
        rel = os.path.relpath(dirpath, copy_b)
        there = os.path.normpath(os.path.join(seen_b, rel))
        names = listed(Path(os.fsdecode(dirpath)))
        assert set(os.listdir(there)) == names, f"{rel!r}: {set(os.listdir(there)) ^ names}"
        for name in names:
            a = os.path.join(dirpath, name)
            if os.path.isfile(a) and not os.path.islink(a):
                b = os.path.join(there, name)
                assert os.path.getsize(a) == os.path.getsize(b), b
                assert filecmp.cmp(a, b, shallow=False), f"{b!r} differs from the source at that time"
                compared += 1
    return compared


# --- davfs2 ------------------------------------------------------------------------------
def unmount(mnt: Path) -> None:
    """umount (which waits for mount.davfs to finish); if that fails, as when busy, a lazy umount."""
    if subprocess.run(["umount", mnt], capture_output=True, timeout=60).returncode != 0:
        subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=60)


def test_davfs2_mount_shows_every_snapshot_as_it_was_and_refuses_writes(share):
    # mount.davfs runs as user davfs2: its files live in a folder it can reach
    # (pytest's tmp is 0700), and its cache folder must belong to group davfs2
    work = Path(tempfile.mkdtemp(prefix="ironcore-davfs2-"))
    os.chmod(work, 0o755)
    mnt = work / "mnt"
    mnt.mkdir()
    cache = work / "cache"
    cache.mkdir()
    os.chown(cache, 0, grp.getgrnam("davfs2").gr_gid)
    os.chmod(cache, 0o775)
    shutil.copy(share.cert, work / "cert.pem")
    os.chmod(work / "cert.pem", 0o644)
    url = f"{share.base}/dav/docs/"
    secrets = work / "secrets"
    secrets.write_text(f'{url} {ALICE[0]} "{ALICE[1]}"\n')
    os.chmod(secrets, 0o600)
    conf = work / "davfs2.conf"
    conf.write_text(f"buf_size 64\n"                    # davfs2 1.6 on this kernel: `ls` fails with EINVAL without it
                    f"trust_server_cert {work / 'cert.pem'}\n"
                    f"secrets {secrets}\n"
                    f"cache_dir {cache}\n"
                    f"use_locks 0\n")
    before = volume_state(share)
    try:
        mounted = subprocess.run(["mount", "-t", "davfs", "-o", f"ro,conf={conf}", url, mnt],
                                 capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        assert mounted.returncode == 0, mounted.stderr.decode(errors="replace")
        assert {"latest", "snapshots"} <= set(os.listdir(mnt))
        assert sorted(os.listdir(mnt / "snapshots")) == sorted(share.snap_names.values())
        inside = str(share.src).lstrip("/")
        for seq, name in share.snap_names.items():
            assert assert_same_files(share.copies[seq], mnt / "snapshots" / name / inside) > 120
        assert_same_files(share.copies[3], mnt / "latest" / inside)
        # the snapshots differ where the source changed between them
        assert (mnt / "snapshots" / share.snap_names[1] / inside / "docs" / "note006.txt").exists()
        assert not (mnt / "latest" / inside / "docs" / "note006.txt").exists()
        assert (mnt / "latest" / inside / "docs" / "note005.txt").read_bytes() == b"third\n"

        ls = subprocess.run(["ls", "-1", mnt / "latest" / inside / "names"], capture_output=True, timeout=30)
        assert ls.returncode == 0, ls.stderr
        assert set(ls.stdout.splitlines()) == listed(share.copies[3] / "names")

        target = mnt / "latest" / inside / "docs"
        for attempt in (lambda: open(target / "new.txt", "wb"),
                        lambda: open(target / "note000.txt", "r+b"),
                        lambda: os.mkdir(target / "newdir"),
                        lambda: os.unlink(target / "note000.txt"),
                        lambda: os.rename(target / "note000.txt", target / "renamed.txt")):
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS
        assert filecmp.cmp(target / "note000.txt", share.copies[3] / "docs" / "note000.txt", shallow=False)
    finally:
        unmount(mnt)   # also after a failed or timed-out mount: nothing may stay mounted
        if not os.path.ismount(mnt):
            shutil.rmtree(work, ignore_errors=True)
    assert not os.path.ismount(mnt)
    assert volume_state(share) == before


# --- rclone and cadaver -----------------------------------------------------------------
def test_rclone_lists_and_copies_a_snapshot(share, tmp_path):
    obscured = subprocess.run(["rclone", "obscure", ALICE[1]], capture_output=True, check=True).stdout.strip()
    env = dict(os.environ, RCLONE_CONFIG=str(tmp_path / "none.conf"), RCLONE_WEBDAV_URL=f"{share.base}/dav/docs",
               RCLONE_WEBDAV_VENDOR="other", RCLONE_WEBDAV_USER=ALICE[0], RCLONE_WEBDAV_PASS=obscured.decode())
    # NFC and NFD forms of one name are two files here: keep rclone from folding them
    common = ["--ca-cert", str(share.cert), "--no-unicode-normalization", "--retries", "1",
              "--low-level-retries", "1"]

    def rclone(*args, check=True):
        proc = subprocess.run(["rclone", *common, *args], capture_output=True, env=env, timeout=60)
        assert not check or proc.returncode == 0, proc.stderr.decode(errors="replace")
        return proc

    lsf = rclone("lsf", ":webdav:snapshots/")
    assert sorted(lsf.stdout.decode().split()) == sorted(name + "/" for name in share.snap_names.values())
    inside = str(share.src).lstrip("/")
    lsf = rclone("lsf", "-R", "--files-only", f":webdav:latest/{inside}")
    expected = {os.path.relpath(os.path.join(d, f), os.fsencode(share.copies[3]))
                for d, _, files in os.walk(os.fsencode(share.copies[3])) for f in files
                if not os.path.islink(os.path.join(d, f))}
    assert set(lsf.stdout.splitlines()) == expected

    first = share.snap_names[1]
    rclone("copy", f":webdav:snapshots/{first}/{inside}", tmp_path / "out")
    assert assert_same_files(share.copies[1], tmp_path / "out") > 120
    # rclone sets each file's mtime from getlastmodified (whole seconds)
    for rel in ("docs/note010.txt", "big.bin", "names/with space.txt"):
        assert int((tmp_path / "out" / rel).stat().st_mtime) == int((share.copies[1] / rel).stat().st_mtime)

    # without the pinned certificate rclone refuses the server
    bare = subprocess.run(["rclone", "--retries", "1", "--low-level-retries", "1", "lsf", ":webdav:"],
                          capture_output=True, env=env, timeout=60)
    assert bare.returncode != 0 and b"certificate" in bare.stderr


def test_cadaver_lists_and_gets_with_netrc_credentials(share, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text(f'machine 127.0.0.1\nlogin {ALICE[0]}\npassword "{ALICE[1]}"\n')
    os.chmod(home / ".netrc", 0o600)
    inside = str(share.src).lstrip("/")
    script = tmp_path / "cadaver.cmds"
    script.write_text(f"ls snapshots\n"
                      f"cd latest/{inside}/names\n"
                      f"ls\n"
                      f'get "with space.txt" {tmp_path}/got-space\n'
                      f'get "100%.txt" {tmp_path}/got-percent\n'
                      f"get ../big.bin {tmp_path}/got-big\n"
                      f"put {script} uploaded.txt\n"
                      f"quit\n")
    url = f"{share.base}/dav/docs/"
    env = dict(os.environ, HOME=str(home))
    # cadaver (neon on GnuTLS) trusts only the system CA bundle and rejects an unknown
    # certificate without a terminal: here it refuses the server
    bare = subprocess.run(["cadaver", "-r", script, url], capture_output=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert b"Certificate rejected" in bare.stdout + bare.stderr and not (tmp_path / "got-big").exists()
    # pinned: the certificate is the only CA bundle in a private mount namespace for this one process
    pinned = subprocess.run(["unshare", "-m", "sh", "-c",
                             'mount --bind "$0" /etc/ssl/certs/ca-certificates.crt && exec cadaver -r "$1" "$2"',
                             share.cert, script, url], capture_output=True, env=env, stdin=subprocess.DEVNULL,
                            timeout=60)
    out = pinned.stdout.decode()
    assert pinned.returncode == 0, pinned.stderr
    for name in share.snap_names.values():
        assert name in out
    assert "with space.txt" in out and "a#b.txt" in out
    assert (tmp_path / "got-space").read_bytes() == (share.src / "names" / "with space.txt").read_bytes()
    assert (tmp_path / "got-percent").read_bytes() == (share.src / "names" / "100%.txt").read_bytes()
    assert filecmp.cmp(tmp_path / "got-big", share.src / "big.bin", shallow=False)
    assert re.search(r"Uploading .*uploaded\.txt.*failed:\s+405 Method Not Allowed", out), out


# --- litmus ------------------------------------------------------------------------------
LITMUS_GROUPS = ["basic", "copymove", "props", "locks", "http"]


def test_litmus_runs_to_the_end_and_the_server_still_answers(share, dav):
    """litmus needs a writable collection (every group starts by MKCOL litmus/); on this
    read-only share each group's `begin` fails with 405 and the group stops there.
    docs/WEBDAV.md has the record."""
    before = volume_state(share)
    url = f"{share.base}/dav/docs/latest/"
    proc = subprocess.run(["litmus", "-k", url, *ALICE], capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout.decode(errors="replace").replace("\r", "\n")
    summaries = re.findall(r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed", out)
    assert [s[0] for s in summaries] == LITMUS_GROUPS, out
    per_group, group = {}, None
    for line in out.splitlines():
        if m := re.match(r"-> running `(\w+)'", line):
            group = m[1]
        elif m := re.match(r"^ *\d+\. (\w+)\.* (pass|FAIL)\b ?(.*)$", line):
            per_group.setdefault(group, []).append((m[1], m[2], m[3]))
    for g in LITMUS_GROUPS:   # init passes; begin's MKCOL is refused, and a group stops at a failed begin
        assert [(name, outcome) for name, outcome, _ in per_group[g]] == [("init", "pass"), ("begin", "FAIL")], out
        assert "405 Method Not Allowed" in per_group[g][1][2]
    assert out.count("Server must allow `MKCOL /dav/docs/latest/litmus/'") == len(LITMUS_GROUPS)
    assert not re.search(r"\b5\d\d [A-Z]", out), "litmus saw a server error"
    r = dav.get(share.latest("docs/note000.txt"))
    assert r.status_code == 200 and r.content == (share.copies[3] / "docs" / "note000.txt").read_bytes()
    assert volume_state(share) == before


# --- the protocol with httpx -------------------------------------------------------------
def test_litmus_read_only_checks_replayed_by_hand(share, dav):
    """The litmus tests that need no write, which litmus itself never reaches here
    (each group stops at its MKCOL): the same requests, the same expectations."""
    base = "/dav/docs/latest/"
    # basic/options: class 1 claimed; without class 2 litmus warns, and locks/precond skips its group
    assert [c.strip() for c in dav.options(base).headers["dav"].split(",")] == ["1"]

    def pfind(body: bytes, path=base):
        return dav.request("PROPFIND", path, headers={"Depth": "0"}, content=body)
    # props/propfind_invalid and propfind_invalid2: a body that is not XML, an undeclared prefix: 400
    assert pfind(b"<foo>").status_code == 400
    assert pfind(b'<D:propfind xmlns:D="DAV:"><D:prop><bar:foo xmlns:bar=""/></D:prop></D:propfind>').status_code == 400
    # props/propfind_d0: named properties of the base collection, which says it is a collection
    r = pfind(b'<?xml version="1.0" encoding="utf-8" ?><propfind xmlns="DAV:"><prop><getcontentlength/>'
              b'<getlastmodified/><displayname/><resourcetype/><foo xmlns="http://example.com/neon/litmus/"/>'
              b'</prop></propfind>')
    assert r.status_code == 207
    tree = ET.fromstring(r.content)
    assert hrefs(tree) == [base.encode()]
    assert tree.find(f"{DAV}response/{DAV}propstat/{DAV}prop/{DAV}resourcetype/{DAV}collection") is not None
    # props/propextended and propwformed: an unknown element beside allprop, a property in an
    # empty namespace: well-formed 207 answers (here on an existing file instead of litmus' own)
    path = share.latest("docs/note000.txt")
    for body in (b'<?xml version="1.0" encoding="utf-8" ?><propfind xmlns="DAV:"><foobar/><allprop/></propfind>',
                 b'<?xml version="1.0" encoding="utf-8" ?><propfind xmlns="DAV:"><prop><nonamespace xmlns=""/>'
                 b'</prop></propfind>'):
        r = pfind(body, path)
        assert r.status_code == 207 and ET.fromstring(r.content).find(DAV + "response") is not None


def parse_byteranges(r: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Range, body) of each part of a multipart/byteranges answer."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + r.headers["content-type"].encode() + b"\r\n\r\n" + r.content)
    assert message.is_multipart()
    return [(part["Content-Range"], part.get_payload(decode=True)) for part in message.iter_parts()]


def test_ranges_head_and_validators(share, dav):
    data = (share.src / "big.bin").read_bytes()
    size = len(data)
    path = share.latest("big.bin")
    head = dav.head(path)
    assert head.status_code == 200 and int(head.headers["content-length"]) == size and not head.content
    etag, modified = head.headers["etag"], head.headers["last-modified"]
    assert re.fullmatch(r'"[^"]+"', etag) and modified.endswith(" GMT")
    assert head.headers["accept-ranges"] == "bytes"

    r = dav.get(path, headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{size}"
    r = dav.get(path, headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]

    r = dav.get(path, headers={"Range": "bytes=0-9,5000-5099,-7"})
    assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert r.headers["etag"] == etag
    assert parse_byteranges(r) == [(f"bytes 0-9/{size}", data[:10]), (f"bytes 5000-5099/{size}", data[5000:5100]),
                                   (f"bytes {size - 7}-{size - 1}/{size}", data[-7:])]
    r = dav.get(path, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"

    r = dav.get(path)
    assert r.status_code == 200 and r.content == data
    assert r.headers["etag"] == etag and r.headers["last-modified"] == modified
    r = dav.get(path, headers={"If-None-Match": etag})
    assert r.status_code == 304 and not r.content
    r = dav.get(path, headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200 and r.content == data
    # another snapshot's version of a changed file has another ETag
    older = dav.head(f"/dav/docs/snapshots/{share.snap_names[1]}{quote(str(share.src))}/big.bin")
    assert older.headers["etag"] != etag
    assert int(older.headers["content-length"]) == (share.copies[1] / "big.bin").stat().st_size


def test_a_304_repeats_the_etag_and_no_false_length(share, dav):
    path = share.latest("docs/note000.txt")
    etag = dav.head(path).headers["etag"]
    r = dav.get(path, headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.headers.get("etag") == etag
    assert r.headers.get("content-length") in (None, str((share.src / "docs" / "note000.txt").stat().st_size))


def test_if_modified_since_the_own_last_modified_gives_304(share, dav):
    path = share.latest("docs/note000.txt")
    modified = dav.head(path).headers["last-modified"]
    r = dav.get(path, headers={"If-Modified-Since": modified})
    assert r.status_code == 304


def test_several_ranges_with_a_matching_if_range_get_every_range(share, dav):
    path = share.latest("big.bin")
    etag = dav.head(path).headers["etag"]
    r = dav.get(path, headers={"Range": "bytes=0-9,100-109", "If-Range": etag})
    assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges")


def test_propfind_depth_0_1_and_infinity(share, dav):
    src_copy = share.copies[3]
    tree = propfind(dav, share.latest("docs/note000.txt"), "0")
    (resp,) = tree.findall(DAV + "response")
    prop = resp.find(f"{DAV}propstat/{DAV}prop")
    assert int(prop.findtext(DAV + "getcontentlength")) == (src_copy / "docs" / "note000.txt").stat().st_size
    assert prop.find(f"{DAV}resourcetype/{DAV}collection") is None
    assert prop.findtext(DAV + "getlastmodified").endswith(" GMT") and prop.findtext(DAV + "getetag")

    folder = share.latest("docs") + "/"
    tree = propfind(dav, folder, "1")
    got = hrefs(tree)
    base = unquote_to_bytes(folder)
    assert got[0] == base
    assert {h[len(base):].rstrip(b"/") for h in got[1:]} == listed(src_copy / "docs")
    assert tree.find(f"{DAV}response/{DAV}propstat/{DAV}prop/{DAV}resourcetype/{DAV}collection") is not None

    # the snapshot list and the account's top
    assert {h.rstrip(b"/").rsplit(b"/", 1)[-1] for h in hrefs(propfind(dav, "/dav/docs/snapshots/", "1"))[1:]} \
        == {n.encode() for n in share.snap_names.values()}
    top = hrefs(propfind(dav, "/dav/", "1"))
    assert top[0] == b"/dav/" and sorted(top[1:]) == [b"/dav/docs/", b"/dav/odd/", b"/dav/vault/"]

    # Depth: infinity, and no Depth (which means infinity), are refused with propfind-finite-depth
    for headers in ({"Depth": "infinity"}, {}):
        r = dav.request("PROPFIND", "/dav/docs/latest/", headers=headers)
        assert r.status_code == 403
        assert ET.fromstring(r.content).find(DAV + "propfind-finite-depth") is not None


def test_propfind_getetag_is_the_etag_header(share, dav):
    path = share.latest("docs/note000.txt")
    tree = propfind(dav, path, "0")
    assert tree.findtext(f"{DAV}response/{DAV}propstat/{DAV}prop/{DAV}getetag") == dav.head(path).headers["etag"]


def test_options_shows_dav_class_1_without_lock(share, dav):
    for path in ("/dav/", share.latest("docs/note000.txt"), share.latest("docs") + "/"):
        r = dav.options(path)
        assert r.status_code == 200
        assert [c.strip() for c in r.headers["dav"].split(",")] == ["1"]
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert {"GET", "HEAD", "OPTIONS", "PROPFIND"} <= allowed
        assert not allowed & {"LOCK", "UNLOCK", "PUT", "DELETE", "MKCOL", "MOVE", "COPY", "PROPPATCH"}


WRITES = [
    ("PUT", "docs/note000.txt", {}, b"overwritten"),
    ("PUT", "docs/brand-new.txt", {}, b"new"),
    ("DELETE", "docs/note000.txt", {}, None),
    ("DELETE", "docs", {}, None),
    ("MKCOL", "docs/newdir", {}, None),
    ("MOVE", "docs/note000.txt", {"Destination": "docs/moved.txt"}, None),
    ("COPY", "docs/note000.txt", {"Destination": "docs/copied.txt"}, None),
    ("PROPPATCH", "docs/note000.txt", {},
     b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:displayname>x</D:displayname>'
     b'</D:prop></D:set></D:propertyupdate>'),
    ("LOCK", "docs/note000.txt", {},
     b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
     b'<D:locktype><D:write/></D:locktype></D:lockinfo>'),
    ("UNLOCK", "docs/note000.txt", {"Lock-Token": "<opaquelocktoken:0000>"}, None),
]


def write_requests(share):
    for method, rel, headers, body in WRITES:
        headers = {k: share.base + share.latest(v) if k == "Destination" else v for k, v in headers.items()}
        yield method, share.latest(rel), headers, body
    # and outside any snapshot: a new set, a file at the top, a set itself
    yield "MKCOL", "/dav/newset/", {}, None
    yield "PUT", "/dav/top.txt", {}, b"x"
    yield "DELETE", "/dav/docs/", {}, None
    yield "MKCOL", f"/dav/docs/snapshots/{share.snap_names[1]}x/", {}, None


def test_every_write_method_is_refused_and_nothing_changes(share, dav):
    before = volume_state(share)
    listing = hrefs(propfind(dav, share.latest("docs") + "/", "1"))
    for method, path, headers, body in write_requests(share):
        r = dav.request(method, path, headers=headers, content=body)
        assert r.status_code in (403, 405, 409), (method, path, r.status_code)
    assert volume_state(share) == before
    assert hrefs(propfind(dav, share.latest("docs") + "/", "1")) == listing
    assert dav.get(share.latest("docs/note000.txt")).content == (share.src / "docs" / "note000.txt").read_bytes()
    assert dav.head("/dav/docs/latest/").status_code == 200


def test_a_405_names_the_allowed_methods(share, dav):
    r = dav.put(share.latest("docs/note000.txt"), content=b"x")
    assert r.status_code == 405
    assert "GET" in r.headers.get("allow", "")


def test_wrong_password_gets_401_and_another_account_sees_nothing(share):
    with client(share, auth=(ALICE[0], "not alice pw")) as wrong:
        r = wrong.get(share.latest("docs/note000.txt"))
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="ironcore"'
        assert b"Traceback" not in r.content
    with client(share, auth=None) as anonymous:
        assert anonymous.request("PROPFIND", "/dav/", headers={"Depth": "1"}).status_code == 401
    with client(share, auth=BOB) as bob:
        assert hrefs(propfind(bob, "/dav/", "1")) == [b"/dav/"]
        for path in ("/dav/docs/", share.latest("docs/note000.txt"), "/dav/vault/latest/"):
            assert bob.get(path).status_code == 404
            assert bob.request("PROPFIND", path, headers={"Depth": "0"}).status_code == 404
        page = bob.get("/dav/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "docs" not in page.text and "vault" not in page.text
    with client(share) as alice:   # alice herself still gets in
        assert alice.get(share.latest("docs/note000.txt")).status_code == 200


def test_names_needing_encoding_and_nfc_nfd_round_trip(share, dav):
    folder = share.latest("names") + "/"
    listed_names = {h.rsplit(b"/", 1)[-1] for h in hrefs(propfind(dav, folder, "1"))[1:]}
    assert listed_names == listed(share.copies[3] / "names")
    nfc, nfd = NAMES[6].encode(), NAMES[7].encode()
    assert nfc != nfd and {nfc, nfd} <= listed_names   # two files, neither folded into the other
    for name in sorted(listed_names):
        r = dav.get(folder + quote(name, safe=""))
        assert r.status_code == 200, name
        assert r.content == (share.copies[3] / "names" / os.fsdecode(name)).read_bytes(), name
    assert dav.get(folder + quote(nfc)).content != dav.get(folder + quote(nfd)).content


def test_a_folder_with_a_name_that_is_not_utf8_lists(share, dav):
    folder = "/dav/odd/latest" + quote(str(share.tmp / "odd")) + "/"
    r = dav.request("PROPFIND", folder, headers={"Depth": "1"})
    assert r.status_code == 207, r.text[-600:]
    listed = hrefs(ET.fromstring(r.content))
    assert len(listed) == 3
    assert dav.get(folder, headers={"Accept": "text/html"}).status_code == 200
    # the name is shown with \xNN for its bytes that are not UTF-8, and fetches by that name
    shown = ODD_NAME.decode("utf-8", "backslashreplace")
    assert any(h.endswith(shown.encode()) for h in listed), listed
    r = dav.get(folder + quote(shown))
    assert r.status_code == 200 and r.content == (share.tmp / "odd" / os.fsdecode(ODD_NAME)).read_bytes()


def test_a_url_that_is_not_utf8_gets_an_answer(share):
    with client(share) as c:
        try:
            r = c.get("/dav/odd/latest" + quote(str(share.tmp / "odd")) + "/" + quote(ODD_NAME))
        except httpx.RemoteProtocolError as exc:
            pytest.fail(f"no HTTP answer: {exc}")
        assert r.status_code == 400 and "UTF-8" in r.text


def test_private_key_set_lists_names_and_sizes_but_refuses_contents(share, dav):
    folder = "/dav/vault/latest" + quote(str(share.vault_src)) + "/"
    tree = propfind(dav, folder, "1")
    assert hrefs(tree)[1].endswith(b"/secret.txt")
    size = (share.vault_src / "secret.txt").stat().st_size
    assert [int(e.text) for e in tree.iter(DAV + "getcontentlength")] == [size]
    assert int(dav.head(folder + "secret.txt").headers["content-length"]) == size
    for headers in ({}, {"Range": "bytes=0-3"}, {"Range": "bytes=0-1,4-5"}):
        r = dav.get(folder + "secret.txt", headers=headers)
        assert r.status_code == 403, headers
        assert "private key" in r.text and "ironcore restore" in r.text
        assert b"only with the private key" not in r.content


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self._href = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._text = dict(attrs)["href"], ""

    def handle_data(self, data):
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._text))
            self._href = None


def test_html_view_lists_the_entries(share, dav):
    r = dav.get(share.latest("names") + "/", headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    parser = Links()
    parser.feed(r.text)
    links = [(href, text) for href, text in parser.links if href != ".."]
    names = listed(share.copies[3] / "names")
    assert {unquote_to_bytes(href) for href, _ in links} == names   # hrefs percent-encoded, relative
    assert {text.encode() for _, text in links} == names            # texts HTML-escaped, shown as they are
    for href, _ in links:
        assert dav.get(share.latest("names") + "/" + href).status_code == 200
    top = dav.get("/dav/docs/snapshots/", headers={"Accept": "text/html"})
    assert all(name in top.text for name in share.snap_names.values())
