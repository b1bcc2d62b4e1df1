"""WebDAV at sizes that break naive servers: ranged reads past 4 GiB of a large
(sparse) file, a large file streamed whole in bounded memory, and a folder of
100,000 entries listed with PROPFIND."""
import hashlib
import os
import ssl

import httpx

from serverkit import login, server  # noqa: F401 (server is a fixture)
from test_remote import add_server_set

GiB = 1 << 30
MiB = 1 << 20


def dav_client(server) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(server.root / "tls" / "cert.pem"))
    ctx.check_hostname = False
    return httpx.Client(base_url=server.url, verify=ctx, auth=("alice", "alice pw"), timeout=120)


def server_rss_peak(server) -> int:
    with open(f"/proc/{server.proc.pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def test_ranges_beyond_4_gib_and_a_large_file_streams_in_bounded_memory(env, server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tail = os.urandom(MiB)
    with open(src / "disk.img", "wb") as f:   # 5 GiB, sparse but for data at 1 GiB and at the end
        f.seek(GiB)
        f.write(b"one gib mark")
        f.seek(5 * GiB - len(tail))
        f.write(tail)
    middle = os.urandom(96 * MiB)
    (src / "middle.bin").write_bytes(middle)
    login(env, server.url)
    add_server_set(env, "docs", src)
    env.backup_json("docs")
    base = f"/dav/docs/latest{src}"
    with dav_client(server) as dav:
        head = dav.head(f"{base}/disk.img")
        assert head.status_code == 200 and int(head.headers["content-length"]) == 5 * GiB
        start = 5 * GiB - len(tail) + 1000
        r = dav.get(f"{base}/disk.img", headers={"Range": f"bytes={start}-{start + 99}"})
        assert r.status_code == 206 and r.content == tail[1000:1100]
        assert r.headers["content-range"] == f"bytes {start}-{start + 99}/{5 * GiB}"
        r = dav.get(f"{base}/disk.img", headers={"Range": f"bytes={GiB - 4}-{GiB + 11}"})
        assert r.content == bytes(4) + b"one gib mark"
        r = dav.get(f"{base}/disk.img", headers={"Range": "bytes=-16"})
        assert r.status_code == 206 and r.content == tail[-16:]

        before = server_rss_peak(server)
        digest = hashlib.sha256()
        with dav.stream("GET", f"{base}/middle.bin") as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                digest.update(chunk)
        assert digest.digest() == hashlib.sha256(middle).digest()
        # the server streamed 96 MiB without holding it: its peak grew by far less
        assert server_rss_peak(server) - before < 48 * MiB


def test_a_folder_of_100000_entries_lists(env, server, tmp_path):
    many = tmp_path / "src" / "many"
    many.mkdir(parents=True)
    for i in range(100_000):
        (many / f"file{i:06d}.txt").write_bytes(b"%d" % i)
    login(env, server.url)
    add_server_set(env, "docs", tmp_path / "src")
    env.backup_json("docs")
    with dav_client(server) as dav:
        r = dav.request("PROPFIND", f"/dav/docs/latest{many}/", headers={"Depth": "1"})
        assert r.status_code == 207
        assert r.text.count("<ns0:response>") == 100_001   # the folder and every entry
        assert f"{many}/file099999.txt" in r.text
        r = dav.get(f"/dav/docs/latest{many}/file054321.txt")
        assert r.content == b"54321"
