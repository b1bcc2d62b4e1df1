"""Crash-safe file writes: temporary name, fsync, rename, fsync of the folder.

Every durable file of a volume (packs, commits, volume.json) goes through here,
so a crash at any instant leaves either the old state or the new one."""
import errno
import os
import secrets

from ironfs.errors import DiskFull

TMP_PREFIX = ".tmp-"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(folder: str, hint: str = "") -> str:
    return os.path.join(folder, f"{TMP_PREFIX}{hint}{secrets.token_hex(6)}")


def raise_if_full(exc: OSError, where: str) -> None:
    """Turn ENOSPC/EDQUOT into the typed DiskFull error; re-raise anything else."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFull(
            f"The destination is full while writing {where}.",
            "Free some space or choose another destination, then run the backup again; "
            "earlier snapshots are intact and this run's partial data was removed.",
        ) from exc
    raise exc


def discard(file, tmp_path: str) -> None:
    """Close and remove an unfinished temporary file, whatever state it is in."""
    try:
        file.close()
    except OSError:
        pass
    try:
        os.unlink(tmp_path)
    except FileNotFoundError:
        pass


def publish(tmp_path: str, final_path: str) -> None:
    """fsync `tmp_path`, rename it to `final_path`, fsync the destination folder."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp_path, final_path)
    fsync_dir(os.path.dirname(final_path))


def write_atomic(final_path: str, data: bytes) -> None:
    folder = os.path.dirname(final_path)
    tmp = tmp_name(folder)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        publish(tmp, final_path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise_if_full(exc, final_path)
