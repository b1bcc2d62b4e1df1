"""Reading and restoring file metadata: kind, mode, owner (by name, numeric as
fallback), mtime, xattrs and POSIX ACLs (kept as their system.posix_acl_* xattrs)."""
import errno
import functools
import grp
import os
import pwd
import stat

KINDS = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
         stat.S_IFCHR: "c", stat.S_IFBLK: "b"}


@functools.lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@functools.lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


@functools.lru_cache(maxsize=4096)
def uid_for(name: str | None, fallback: int) -> int:
    if name:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            pass
    return fallback


@functools.lru_cache(maxsize=4096)
def gid_for(name: str | None, fallback: int) -> int:
    if name:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
    return fallback


def kind_of(st: os.stat_result) -> str | None:
    """The stored kind letter, or None for what is not backed up (sockets)."""
    return KINDS.get(stat.S_IFMT(st.st_mode))


def read_xattrs(path: bytes, kind: str) -> list[list[bytes]]:
    """Sorted [name, value] pairs; empty where the filesystem has none or refuses."""
    if kind not in ("f", "d", "l"):
        return []
    follow = kind != "l"
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOENT):
            return []
        raise
    out = []
    for name in sorted(names):
        try:
            out.append([name.encode(), os.getxattr(path, name, follow_symlinks=follow)])
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOENT):
                raise
    return out


def version_record(path: bytes, rel: bytes, st: os.stat_result, kind: str) -> dict:
    """The commit's "ver" record for a path, without its content id."""
    rec = {"t": "ver", "p": rel, "k": kind, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
           "user": user_name(st.st_uid), "group": group_name(st.st_gid), "mtime_ns": st.st_mtime_ns,
           "size": st.st_size if kind in ("f", "l") else 0}
    if kind == "l":
        rec["target"] = os.readlink(path)
    if kind in ("c", "b"):
        rec["rdev"] = st.st_rdev
    xattrs = read_xattrs(path, kind)
    if xattrs:
        rec["x"] = xattrs
    return rec


def apply_metadata(parent_fd: int, name: bytes, entry, is_root: bool) -> list[str]:
    """Owner, mode, xattrs/ACLs and mtime for one restored entry, relative to its
    parent folder's fd so that no symlink is followed. Returns warnings."""
    warnings = []
    link = entry.kind == "l"
    uid = uid_for(entry.user, entry.uid) if entry.uid is not None else -1
    gid = gid_for(entry.group, entry.gid) if entry.gid is not None else -1
    try:
        os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
    except PermissionError:
        if is_root:
            warnings.append("could not set owner")
    if not link and entry.mode is not None:
        os.chmod(name, entry.mode, dir_fd=parent_fd)
    proc_path = b"/proc/self/fd/%d/%s" % (parent_fd, name)
    for xname, value in entry.xattrs:
        try:
            os.setxattr(proc_path, xname, value, follow_symlinks=False)
        except OSError as exc:
            warnings.append(f"could not set xattr {xname.decode(errors='replace')}: {exc.strerror}")
    os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
    return warnings
