"""Random trees (hypothesis) back up and restore identical in content and
metadata: files, folders, symlinks, empty and sparse files, names that are not
UTF-8, modes, owners, mtimes, xattrs and POSIX ACLs."""
import os
import random
import shutil
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from client.backup import Backup
from client.config import BackupSet
from client.restore import Restore, segments
from conftest import describe_tree
from ironfs.format.volume import Volume

FAST_KDF = {"alg": "argon2id", "time_cost": 1, "memory_cost": 1024, "parallelism": 1}

names = st.binary(min_size=1, max_size=10).filter(lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b".."))
modes = st.sampled_from([0o644, 0o600, 0o755, 0o640, 0o4755, 0o444])
owners = st.sampled_from([(0, 0), (65534, 65534), (4321, 4321)])   # root, nobody, ids with no name
mtimes = st.integers(min_value=0, max_value=4_000_000_000 * 10**9)
xattr_sets = st.dictionaries(st.sampled_from(["user.a", "user.comment", "user.x-y"]),
                             st.binary(min_size=0, max_size=40), max_size=2)

contents = st.one_of(
    st.just(("empty",)),
    st.tuples(st.just("bytes"), st.binary(max_size=3000)),
    st.tuples(st.just("random"), st.integers(0, 2**32), st.integers(1, 400_000)),
    st.tuples(st.just("sparse"), st.integers(0, 2**32), st.integers(1 << 20, 8 << 20)),
)
files = st.fixed_dictionaries({"kind": st.just("f"), "content": contents, "mode": modes, "owner": owners,
                               "mtime": mtimes, "xattrs": xattr_sets, "acl": st.booleans()})
links = st.fixed_dictionaries({"kind": st.just("l"), "target": names, "owner": owners, "mtime": mtimes})
fifos = st.fixed_dictionaries({"kind": st.just("p"), "mode": modes, "owner": owners, "mtime": mtimes})
trees = st.recursive(
    st.one_of(files, links, fifos),
    lambda children: st.fixed_dictionaries({
        "kind": st.just("d"), "children": st.dictionaries(names, children, max_size=5),
        "mode": st.sampled_from([0o755, 0o700, 0o1777, 0o2755]), "owner": owners, "mtime": mtimes,
        "xattrs": xattr_sets}),
    max_leaves=14)


def acl_xattr() -> bytes:
    """system.posix_acl_access value: owner rw, user nobody r, group r, mask r, other none."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, 65534), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
               (0x20, 0, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def write_content(path: bytes, spec) -> None:
    with open(path, "wb") as f:
        if spec[0] == "bytes":
            f.write(spec[1])
        elif spec[0] == "random":
            f.write(random.Random(spec[1]).randbytes(spec[2]))
        elif spec[0] == "sparse":
            rnd = random.Random(spec[1])
            f.truncate(spec[2])
            f.seek(rnd.randrange(0, spec[2] - 5000) // 4096 * 4096)
            f.write(rnd.randbytes(5000))


def build(path: bytes, node) -> None:
    kind = node["kind"]
    if kind == "f":
        write_content(path, node["content"])
    elif kind == "l":
        os.symlink(node["target"], path)
    elif kind == "p":
        os.mkfifo(path)
    else:
        os.mkdir(path)
        for name, child in node["children"].items():
            build(os.path.join(path, name), child)
    os.chown(path, *node["owner"], follow_symlinks=False)
    if kind != "l":
        os.chmod(path, node["mode"])
        for k, v in node.get("xattrs", {}).items():
            os.setxattr(path, k, v)
        if node.get("acl"):
            os.setxattr(path, "system.posix_acl_access", acl_xattr())
    os.utime(path, ns=(node["mtime"], node["mtime"]), follow_symlinks=False)


def sparse_files(node, path=b""):
    if node["kind"] == "f" and node["content"][0] == "sparse":
        yield path
    for name, child in node.get("children", {}).items():
        yield from sparse_files(child, os.path.join(path, name))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(first=trees, second=trees)
def test_random_trees_round_trip(tmp_path_factory, first, second):
    tmp = tmp_path_factory.mktemp("rt")
    src = tmp / "src"
    volume = Volume.create(str(tmp / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    bset = BackupSet(name="rt", sources=[str(src)], destination=f"file://{tmp}/vol")
    expected = {}
    for label, tree in (("one", first), ("two", second)):
        if src.exists():
            shutil.rmtree(src)
        root = {"kind": "d", "children": {b"data": tree}, "mode": 0o755, "owner": (0, 0), "mtime": 10**18,
                "xattrs": {}}
        build(os.fsencode(src), root)
        expected[label] = (describe_tree(src), list(sparse_files(root)))
        report = Backup(volume, bset, str(tmp / "cache")).run()
        assert report["errors"] == []
        expected[label] += (report["snapshot"],)
    for label, (described, sparse, seq) in expected.items():
        target = tmp / f"restore-{label}"
        report = Restore(volume, seq, str(target)).run()
        assert report["errors"] == []
        restored = target / str(src).lstrip("/")
        assert describe_tree(restored) == described
        for rel in sparse:
            st_ = os.stat(os.path.join(os.fsencode(restored), rel))
            assert st_.st_blocks * 512 < st_.st_size // 2, f"{rel!r} was not restored sparse"
    volume.close()


def test_owner_by_name_with_numeric_fallback(tmp_path):
    """A file owned by a named user restores to that name's id; an unnamed id stays numeric."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "named").write_bytes(b"n")
    (src / "numeric").write_bytes(b"x")
    os.chown(src / "named", 65534, 65534)
    os.chown(src / "numeric", 54321, 54321)
    volume = Volume.create(str(tmp_path / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    bset = BackupSet(name="o", sources=[str(src)], destination=f"file://{tmp_path}/vol")
    seq = Backup(volume, bset, str(tmp_path / "cache")).run()["snapshot"]
    entry = volume.catalog().lookup(os.fsencode(src).lstrip(b"/") + b"/named", seq)
    assert entry.user == "nobody" and entry.uid == 65534
    Restore(volume, seq, str(tmp_path / "out")).run()
    out = Path(tmp_path / "out" / str(src).lstrip("/"))
    assert os.stat(out / "named").st_uid == 65534
    assert os.stat(out / "numeric").st_uid == 54321


def test_restore_progress_counts_every_file_as_its_job_ends(tmp_path):
    """Progress moves per job, large files (their own lane) and small ones alike,
    and adds up to the bytes restored; failed files add nothing."""
    import threading

    src = tmp_path / "src"
    (src / "big").mkdir(parents=True)
    (src / "big" / "image").write_bytes(os.urandom(5 << 20))   # above SMALL_FILE: the large-file lane
    (src / "small").mkdir()
    for i in range(40):
        (src / "small" / f"f{i}").write_bytes(os.urandom(1000 + i))
    volume = Volume.create(str(tmp_path / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    bset = BackupSet(name="p", sources=[str(src)], destination=f"file://{tmp_path}/vol")
    seq = Backup(volume, bset, str(tmp_path / "cache")).run()["snapshot"]

    class Recorder:
        def __init__(self):
            self.lock, self.calls, self.files = threading.Lock(), [], 0

        def bytes(self, n):
            with self.lock:
                self.calls.append(n)

        def entry(self):
            self.files += 1
    seen = Recorder()
    report = Restore(volume, seq, str(tmp_path / "out"), progress=seen).run()
    assert report["errors"] == [] and report["files"] == 41 == seen.files
    assert sum(seen.calls) == report["bytes"] == (5 << 20) + sum(1000 + i for i in range(40))
    assert (5 << 20) in seen.calls and len(seen.calls) >= 2   # the large file's job on its own
    volume.close()


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 300)), max_size=30), st.sampled_from([128, 256, 1024]))
def test_parts_of_a_large_file_cover_its_extents_in_order(pieces, size):
    """A large file's parts (written by separate workers) start every `size` bytes
    and together name exactly the bytes of its extents, holes included."""
    extents = [[None, 0, n] if hole else [b"blob%d" % i, 7, n] for i, (hole, n) in enumerate(pieces)]

    def bytes_of(exts):   # (blob, offset in blob) per byte
        return [(blob, None if blob is None else off + k) for blob, off, n in exts for k in range(n)]
    whole = bytes_of(extents)
    pos = 0
    for start, part in segments(extents, size):
        got = bytes_of(part)
        assert start == pos and got == whole[start:start + len(got)]
        assert len(got) == size or start + len(got) == len(whole)
        pos += len(got)
    assert pos == len(whole)


def test_with_another_thread_running_the_work_stays_in_threads(tmp_path):
    """A process that runs other threads is not forked (a fork copies the locks
    they hold): backup and restore then do the same work in threads."""
    import threading

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "big").write_bytes(os.urandom(6 << 20))
    for i in range(30):
        (src / "d" / f"f{i}").write_bytes(os.urandom(100 * i))
    volume = Volume.create(str(tmp_path / "vol"), {"private": b"pw"}, kdf_params=FAST_KDF)
    bset = BackupSet(name="t", sources=[str(src)], destination=f"file://{tmp_path}/vol")
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        backup = Backup(volume, bset, str(tmp_path / "cache"))
        assert not backup.sealers.pool.processes
        seq = backup.run()["snapshot"]
        restore = Restore(volume, seq, str(tmp_path / "out"))
        assert not restore._workers.processes
        report = restore.run()
    finally:
        stop.set()
        other.join()
    assert report["errors"] == [] and report["files"] == 31
    assert describe_tree(src) == describe_tree(tmp_path / "out" / str(src).lstrip("/"))
    volume.close()


def test_every_kind_round_trips_through_worker_processes(env, tmp_path):
    """The command line forks its workers (the test process itself runs threads
    under xdist, so the tests above may run them as threads): every kind of entry,
    a large sparse file written in parts included, comes back the same."""
    def f(content, mode=0o644, owner=(0, 0), xattrs=None, acl=False):
        return {"kind": "f", "content": content, "mode": mode, "owner": owner, "mtime": 1_600_000_000 * 10**9,
                "xattrs": xattrs or {}, "acl": acl}
    small = {b"f%02d" % i: f(("random", i, 50 * i + 1)) for i in range(40)}
    tree = {"kind": "d", "mode": 0o750, "owner": (4321, 4321), "mtime": 10**18, "xattrs": {"user.a": b"dir"},
            "children": {
                b"caf\xe9-latin1": f(("random", 1, 1000), 0o640, (65534, 65534), {"user.comment": b"x"}, True),
                b"sparse.img": f(("sparse", 7, 6 << 20)),
                b"whole.bin": f(("random", 3, 5 << 20), 0o600),
                b"empty": f(("empty",), 0o444),
                b"link": {"kind": "l", "target": b"caf\xe9-latin1", "owner": (0, 0), "mtime": 10**18},
                b"fifo": {"kind": "p", "mode": 0o600, "owner": (0, 0), "mtime": 10**18},
                b"sub": {"kind": "d", "mode": 0o755, "owner": (0, 0), "mtime": 10**18, "children": small}}}
    src = tmp_path / "src"
    build(os.fsencode(src), tree)
    env.add_set("s", src)
    assert env.backup_json()["errors"] == []
    env.ironcore("restore", "s", "--to", tmp_path / "out")
    restored = env.restored(tmp_path / "out", src)
    assert describe_tree(restored) == describe_tree(src)
    st_ = os.stat(restored / "sparse.img")
    assert st_.st_blocks * 512 < st_.st_size // 2, "the sparse file was not restored sparse"
