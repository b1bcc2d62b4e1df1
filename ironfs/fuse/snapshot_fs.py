"""Snapshots as folders through FUSE (pyfuse3 on trio), read-only.

    <mountpoint>/<set>/latest -> snapshots/<newest>     a symlink, so it follows new snapshots
    <mountpoint>/<set>/snapshots/<YYYY-MM-DDTHH-MM-SSZ>/...

Inode numbers are computed, not remembered: (set number, snapshot, path id)
packed into 64 bits, so they are stable while mounted and listing a snapshot
of a million files keeps nothing per file in memory. Catalog queries are
quick indexed lookups made on the trio thread, in the catalog as it is here;
new snapshots are taken in by a background task every REFRESH_EVERY seconds,
so a slow or unreachable server delays them, never a FUSE call. Decryption and
pack reads run in worker threads, so a slow read does not stall others; a read
gives up with EIO after `read_timeout` seconds (a server outage), and at once
when the process that opened the file is being killed. A handler that fails
answers EIO for that call only; every write answers EROFS."""
import errno
import logging
import os
import signal
import stat
import time
from collections.abc import Callable

import pyfuse3
import trio

from ironfs.errors import IroncoreError
from ironfs.format.catalog import ROOT
from ironfs.format.reader import ContentReader
from ironfs.format.snapshots import snapshot_names

logger = logging.getLogger(__name__)

SET_BITS, SEQ_BITS, PATH_BITS = 8, 24, 32
SNAPSHOTS_ID, LATEST_ID = 1, 2   # path ids of the virtual entries of a set (with snapshot 0)
KIND_BITS = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO,
             "c": stat.S_IFCHR, "b": stat.S_IFBLK}
VIRTUAL_TIMEOUT = 1.0     # seconds the kernel may cache virtual entries: new snapshots show up quickly
STORED_TIMEOUT = 300.0    # a stored entry never changes
REFRESH_EVERY = 2.0       # seconds between looks for new snapshots (a GET of the log head for a server set)
KILLED_POLL = 0.2         # seconds between looks at whether a waiting reader is being killed
SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def pack_inode(set_no: int, seq: int, path_id: int) -> int:
    if path_id >= 1 << PATH_BITS or seq >= 1 << SEQ_BITS:
        raise pyfuse3.FUSEError(errno.EOVERFLOW)
    return (set_no << (SEQ_BITS + PATH_BITS)) | (seq << PATH_BITS) | path_id


def unpack_inode(inode: int) -> tuple[int, int, int]:
    return inode >> (SEQ_BITS + PATH_BITS), (inode >> PATH_BITS) & ((1 << SEQ_BITS) - 1), inode & ((1 << PATH_BITS) - 1)


def failing_as_eio(fn: Callable) -> Callable:
    """One failed call answers EIO; the filesystem stays up."""
    async def wrapper(*args, **kw):
        try:
            return await fn(*args, **kw)
        except pyfuse3.FUSEError:
            raise
        except Exception:   # noqa: BLE001 - any bug or damaged data must not take the mount down
            logger.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    wrapper.__name__ = fn.__name__
    return wrapper


async def read_only(*_args, **_kw):
    raise pyfuse3.FUSEError(errno.EROFS)


class SnapshotFS(pyfuse3.Operations):
    """`sets`: set name -> an opened Volume (unlocked when its key is known); `read_timeout`:
    seconds a read may wait for its data (the CLIs' --read-timeout)."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = True   # the kernel checks the stored system.posix_acl_access (got through getxattr) too

    def __init__(self, sets: dict, read_timeout: float):
        super().__init__()
        self.read_timeout = read_timeout
        self.names = sorted(sets)
        if len(self.names) >= (1 << SET_BITS) - 1:
            raise IroncoreError(f"At most {(1 << SET_BITS) - 2} sets can be mounted at once.")
        self.volumes = [sets[n] for n in self.names]
        self.open_files: dict[int, tuple[ContentReader, int]] = {}   # fh -> (reader, pid of the opener)
        self.dir_cursors: dict[int, tuple] = {}
        self._next_fh = 1
        self.uid, self.gid = os.getuid(), os.getgid()
        self.refresh_failed: set[str] = set()
        for name, volume in zip(self.names, self.volumes):
            self._refresh(name, volume)

    def _refresh(self, name: str, volume) -> None:
        """Take in new commits; while that fails (an unreachable server), the catalog
        as mirrored here keeps answering. Logged when it starts and stops failing."""
        try:
            volume.refresh()
        except Exception as exc:   # noqa: BLE001 - whatever fails, the mount goes on with what it has
            if name not in self.refresh_failed:
                logger.warning("event=refresh_failed set=%s error=%s", name, exc)
            self.refresh_failed.add(name)
            return
        if name in self.refresh_failed:
            logger.info("event=refresh_recovered set=%s", name)
        self.refresh_failed.discard(name)

    async def follow_new_snapshots(self) -> None:
        while True:
            await trio.sleep(REFRESH_EVERY)
            for name, volume in zip(self.names, self.volumes):
                await trio.to_thread.run_sync(self._refresh, name, volume, abandon_on_cancel=True)

    # --- inodes ---------------------------------------------------------------------
    def _volume(self, set_no: int):
        if not 1 <= set_no <= len(self.volumes):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.volumes[set_no - 1]

    def _snapshot_names(self, volume) -> dict[str, int]:
        return snapshot_names(volume.catalog().snapshots())

    def _virtual_attr(self, inode: int, kind: int, mode: int, size: int = 0) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = kind | mode
        attr.st_nlink = 2 if kind == stat.S_IFDIR else 1
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_size = size
        attr.st_blksize = 4096
        attr.entry_timeout = attr.attr_timeout = VIRTUAL_TIMEOUT
        return attr

    def _entry_attr(self, inode: int, entry) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = KIND_BITS[entry.kind] | (entry.mode or 0)
        attr.st_nlink = 2 if entry.kind == "d" else 1
        attr.st_uid, attr.st_gid = entry.uid or 0, entry.gid or 0
        attr.st_size = len(entry.target) if entry.kind == "l" and entry.target else entry.size or 0
        attr.st_rdev = entry.rdev or 0
        attr.st_mtime_ns = attr.st_ctime_ns = attr.st_atime_ns = entry.mtime_ns or 0
        attr.st_blksize = 128 * 1024
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.entry_timeout = attr.attr_timeout = STORED_TIMEOUT
        return attr

    def _stored(self, inode: int):
        """(volume, seq, entry or None for a snapshot's top) of a stored inode."""
        set_no, seq, path_id = unpack_inode(inode)
        volume = self._volume(set_no)
        if seq == 0:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if path_id == ROOT:
            return volume, seq, None
        entry = volume.catalog().entry(path_id, seq)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return volume, seq, entry

    async def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        if inode == pyfuse3.ROOT_INODE:
            return self._virtual_attr(inode, stat.S_IFDIR, 0o555)
        set_no, seq, path_id = unpack_inode(inode)
        volume = self._volume(set_no)
        if seq == 0:
            if path_id == ROOT or path_id == SNAPSHOTS_ID:
                return self._virtual_attr(inode, stat.S_IFDIR, 0o555)
            if path_id == LATEST_ID:
                return self._virtual_attr(inode, stat.S_IFLNK, 0o777, len(self._latest_target(volume)))
            raise pyfuse3.FUSEError(errno.ENOENT)
        volume, seq, entry = self._stored(inode)
        if entry is None:
            attr = self._virtual_attr(inode, stat.S_IFDIR, 0o555)
            attr.entry_timeout = attr.attr_timeout = STORED_TIMEOUT
            return attr
        attr = self._entry_attr(inode, entry)
        if entry.link is not None:   # hard links: their count, and the inode of the group's smallest path id
            attr.st_nlink, first = volume.catalog().link_group(entry.link, seq)
            attr.st_ino = pack_inode(set_no, seq, first)
        return attr

    def _latest_target(self, volume) -> bytes:
        names = list(self._snapshot_names(volume))
        if not names:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return b"snapshots/" + names[-1].encode()

    # --- reading the tree -----------------------------------------------------------------
    @failing_as_eio
    async def getattr(self, inode, ctx=None):
        return await self._attr(inode)

    @failing_as_eio
    async def lookup(self, parent_inode, name, ctx=None):
        return await self._attr(self._child(parent_inode, name))

    def _child(self, parent: int, name: bytes) -> int:
        if parent == pyfuse3.ROOT_INODE:
            try:
                return pack_inode(self.names.index(os.fsdecode(name)) + 1, 0, ROOT)
            except ValueError:
                raise pyfuse3.FUSEError(errno.ENOENT) from None
        set_no, seq, path_id = unpack_inode(parent)
        volume = self._volume(set_no)
        if seq == 0 and path_id == ROOT:
            wanted = {b"snapshots": SNAPSHOTS_ID, b"latest": LATEST_ID}.get(name)
            if wanted is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return pack_inode(set_no, 0, wanted)
        if seq == 0 and path_id == SNAPSHOTS_ID:
            seq = self._snapshot_names(volume).get(os.fsdecode(name))
            if seq is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return pack_inode(set_no, seq, ROOT)
        if seq == 0:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        entry = volume.catalog().child(path_id, name, seq)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return pack_inode(set_no, seq, entry.path_id)

    @failing_as_eio
    async def readlink(self, inode, ctx):
        set_no, seq, path_id = unpack_inode(inode)
        if seq == 0 and path_id == LATEST_ID:
            return self._latest_target(self._volume(set_no))
        _, _, entry = self._stored(inode)
        if entry is None or entry.kind != "l":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return entry.target or b""

    @failing_as_eio
    async def opendir(self, inode, ctx):
        attr = await self._attr(inode)
        if not stat.S_ISDIR(attr.st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @failing_as_eio
    async def readdir(self, inode, start_id, token):
        """Offsets are positions in name order. A listing that goes on where the last
        call ended resumes after that name (no rescan), any other offset is sought."""
        for offset, name, child in self._listing(inode, start_id):
            if not pyfuse3.readdir_reply(token, name, await self._attr(child), offset):
                return
            self.dir_cursors[inode] = (offset, name)

    def _listing(self, inode: int, start: int):
        if inode == pyfuse3.ROOT_INODE:
            for i, name in enumerate(self.names[start:], start + 1):
                yield i, os.fsencode(name), pack_inode(i, 0, ROOT)
            return
        set_no, seq, path_id = unpack_inode(inode)
        volume = self._volume(set_no)
        if seq == 0 and path_id == ROOT:
            children = [(b"latest", LATEST_ID), (b"snapshots", SNAPSHOTS_ID)] if volume.catalog().snapshots() \
                else [(b"snapshots", SNAPSHOTS_ID)]
            for i, (name, pid) in enumerate(children[start:], start + 1):
                yield i, name, pack_inode(set_no, 0, pid)
            return
        if seq == 0:
            for i, (name, snap) in enumerate(list(self._snapshot_names(volume).items())[start:], start + 1):
                yield i, name.encode(), pack_inode(set_no, snap, ROOT)
            return
        catalog = volume.catalog()
        cursor = self.dir_cursors.get(inode)
        if start == 0:
            after, position = None, 0
        elif cursor and cursor[0] == start:
            after, position = cursor[1], start
        else:   # a seek: find the name at that position
            skipped = catalog.list_dir(path_id, seq, None, start)
            if len(skipped) < start:
                return
            after, position = skipped[-1].name, start
        while True:
            page = catalog.list_dir(path_id, seq, after, 1000)
            for entry in page:
                position += 1
                yield position, entry.name, pack_inode(set_no, seq, entry.path_id)
            if len(page) < 1000:
                return
            after = page[-1].name

    async def releasedir(self, fh):
        self.dir_cursors.pop(fh, None)

    @failing_as_eio
    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        volume, _, entry = self._stored(inode)
        if entry is None or entry.kind != "f":
            raise pyfuse3.FUSEError(errno.EISDIR if entry is None or entry.kind == "d" else errno.EINVAL)
        if volume.key is None:
            raise pyfuse3.FUSEError(errno.EACCES)   # names and sizes only: the set's key was not given
        content = {"ext": [], "size": 0}
        if entry.content:
            content = volume.catalog().content(entry.content)
            if content is None:
                raise pyfuse3.FUSEError(errno.EIO)
        fh = self._next_fh
        self._next_fh += 1
        self.open_files[fh] = ContentReader(volume, content), ctx.pid
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @failing_as_eio
    async def read(self, fh, off, size):
        reader, opener = self.open_files[fh]
        return await self._bounded(opener, reader.read_at, off, size)

    async def _bounded(self, opener: int, fn, *args):
        """fn(*args) in a worker thread, given up with EIO after `read_timeout` seconds,
        or with EINTR as soon as process `opener` is being killed: pyfuse3 does not pass
        FUSE interrupts on, and the kernel keeps a killed reader until we answer."""
        outcome: dict = {}
        with trio.move_on_after(self.read_timeout):
            async with trio.open_nursery() as nursery:
                async def work():
                    try:
                        outcome["value"] = await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
                    except Exception as exc:   # noqa: BLE001 - raised again below, outside the nursery
                        outcome["error"] = exc
                    nursery.cancel_scope.cancel()

                async def watch():
                    while not being_killed(opener):
                        await trio.sleep(KILLED_POLL)
                    outcome["killed"] = True
                    nursery.cancel_scope.cancel()
                nursery.start_soon(work)
                nursery.start_soon(watch)
        if "value" in outcome:
            return outcome["value"]
        if "error" in outcome:
            raise outcome["error"]
        if "killed" in outcome:
            raise pyfuse3.FUSEError(errno.EINTR)
        logger.warning("event=read_timeout seconds=%g", self.read_timeout)
        raise pyfuse3.FUSEError(errno.EIO)

    async def release(self, fh):
        self.open_files.pop(fh, None)

    @failing_as_eio
    async def listxattr(self, inode, ctx):
        if unpack_inode(inode)[1] == 0 or inode == pyfuse3.ROOT_INODE:
            return []
        _, _, entry = self._stored(inode)
        return [name for name, _ in entry.xattrs] if entry else []

    @failing_as_eio
    async def getxattr(self, inode, name, ctx):
        if unpack_inode(inode)[1] != 0 and inode != pyfuse3.ROOT_INODE:
            _, _, entry = self._stored(inode)
            for xname, value in (entry.xattrs if entry else []):
                if xname == name:
                    return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def statfs(self, ctx):
        info = pyfuse3.StatvfsData()
        info.f_bsize = info.f_frsize = 128 * 1024
        info.f_namemax = 255
        return info

    # every write answers "read-only file system"
    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = create = write = read_only
    setxattr = removexattr = read_only


def being_killed(pid: int) -> bool:
    """True when process (or thread) `pid` has SIGKILL pending: it only waits for our answer to exit."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & SIGKILL_BIT
                       for line in f)
    except OSError:   # gone, or another process now holds the file
        return False


async def run(fs: SnapshotFS, mountpoint: str, allow_other: bool) -> None:
    """Serve until SIGINT, SIGTERM or `fusermount3 -u`; always unmount."""
    options = set(pyfuse3.default_options) | {"fsname=ironcore", "ro", "default_permissions"}
    if allow_other:
        options.add("allow_other")
    pyfuse3.init(fs, mountpoint, options)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal, nursery.cancel_scope)
            nursery.start_soon(fs.follow_new_snapshots)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


async def stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("event=unmount signal=%d", signum)
            scope.cancel()
            return


def mount_and_serve(make_fs, mountpoint: str, foreground: bool, allow_other: bool, detached_logging) -> None:
    """Mount and serve. Unless `foreground`, the caller returns once the mount is up
    and a detached child serves it (its output goes to `detached_logging()`'s log);
    the filesystem is made (`make_fs()`) in the process that serves it."""
    mountpoint = os.path.abspath(mountpoint)
    if not foreground and os.fork() != 0:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mountpoint):
            if time.monotonic() > deadline:
                raise IroncoreError(f"{mountpoint} did not come up within 15 s.",
                                    "Run again with --foreground to see why.")
            time.sleep(0.05)
        print(f"Mounted; unmount with 'fusermount3 -u {mountpoint}'.", flush=True)
        return
    if not foreground:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        detached_logging()
    trio.run(run, make_fs(), mountpoint, allow_other)
