"""Volumes on removable disks: a client's seed loaded into its set (FAQ 2.14), and
a set exported for a huge restore (FAQ 2.15). A seed, an export and a client's
local copy are plain volume folders of the same format; they carry ciphertext
only, and the set's key (kept on the client) opens them.

    ironfs import-seed ACCOUNT SET DIR   # DIR from `ironcore seed-load SET --to DIR`
    ironfs export ACCOUNT SET DIR        # then `ironcore decrypt DIR --to OUT` where the key is

Import checks everything a network backup would be checked for (the seed is
the set's volume, every pack hashes to its name, every commit is a client
snapshot naming packs that are present, the quota holds), under the set's
lease, and only into a set that has no commit yet: then the client's next
backup over the network finds the seed's files and sends only what changed."""
import hashlib
import logging
import os

from ironfs.errors import CorruptData, IroncoreError, UsageError, VolumeBusy
from ironfs.format import pack as packfmt
from ironfs.format.fsutil import discard, fsync_dir, publish, raise_if_full, tmp_name, write_atomic
from ironfs.format.verify import verify_volume
from ironfs.format.volume import Volume
from ironfs.store.sets import QuotaExceeded, SetStore

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


def copy_checked(src: str, folder: str, final: str, name: str | None = None) -> int:
    """Copy `src` to `final` through a temporary file in `folder`; with `name`, the
    bytes must hash to it (a pack). Returns the size."""
    os.makedirs(folder, exist_ok=True)
    tmp = tmp_name(folder, "import-")
    f = open(tmp, "wb")
    try:
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as s:
            while chunk := s.read(CHUNK):
                h.update(chunk)
                f.write(chunk)
                size += len(chunk)
        f.close()
        if name is not None and h.hexdigest() != name:
            raise CorruptData(f"Pack {name} in {os.path.dirname(src)} is damaged: its bytes hash to "
                              f"{h.hexdigest()}.", "Copy the folder again from its source.")
        publish(tmp, final)
        return size
    except OSError as exc:
        discard(f, tmp)
        raise_if_full(exc, os.path.basename(final))
    except BaseException:
        discard(f, tmp)
        raise


def _check_empty_target(folder: str) -> None:
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise UsageError(f"{folder} exists and is not an empty folder.", "Give a new or empty folder.")


def import_seed(sets: SetStore, account: str, name: str, folder: str, quota: int | None) -> dict:
    """Load the seed volume in `folder` into set `name`, which must have no commit yet."""
    target = sets.volume(account, name)
    seed = Volume(folder)
    if seed.id != target.id:
        raise UsageError(f"{folder} holds a seed of another set (volume {seed.id.hex()}, "
                         f"set {name} is volume {target.id.hex()}).",
                         f"Load the seed of set {name}: 'ironcore seed-load {name} --to DIR' on the client.")
    checked = verify_volume(seed)
    seed.close()
    if checked["errors"]:
        raise CorruptData(f"The seed in {folder} is damaged: {checked['errors'][0]}",
                          "Make it again with 'ironcore seed-load', or copy it again from the disk.")
    seqs = seed.seqs()
    if not seqs:
        raise UsageError(f"The seed in {folder} holds no backup.", "Run 'ironcore seed-load' to completion first.")
    packs = sorted(n for n, _ in seed.catalog().live_packs())
    needed = sum(os.path.getsize(seed.pack_path(n)) for n in packs) \
        + sum(os.path.getsize(seed.commit_path(s)) for s in seqs)
    lease = sets.acquire_lease(account, name, "ironfs import-seed", pid=os.getpid())
    try:
        if target.seqs():
            raise VolumeBusy(f"Set {name} has backups already; a seed can only be its first backup.",
                             "Back the set up over the network (it sends only what changed), "
                             "or make a new set for the seed.")
        used = sets.usage(account)
        if quota is not None and used + needed > quota:
            raise QuotaExceeded(f"Quota Exceeded: account {account} uses {used} of its {quota} bytes and the "
                                f"seed needs {needed} more.", "Raise the quota with 'ironfs account quota', "
                                                              "then import again; nothing was imported.")
        added = 0
        for pack in packs:
            final = target.pack_path(pack)
            if not os.path.exists(final):
                added += copy_checked(seed.pack_path(pack), os.path.dirname(final), final, pack)
        log_dir = os.path.join(target.root, "log")
        for seq in seqs:
            tmp = tmp_name(log_dir, "import-")
            copy_checked(seed.commit_path(seq), log_dir, tmp)
            try:
                sets._check_commit(target, tmp, seq)
                publish(tmp, target.commit_path(seq))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            added += os.path.getsize(target.commit_path(seq))
        target.refresh()
        sets.count_stored(account, added)
    finally:
        sets.release_lease(account, name, lease["lease"])
    logger.info("event=import-seed account=%s set=%s commits=%d packs=%d bytes=%d", account, name, len(seqs),
                len(packs), added)
    return {"set": name, "commits": len(seqs), "packs": len(packs), "bytes": added,
            "snapshots": len(target.refresh().snapshots())}


def export(sets: SetStore, account: str, name: str, folder: str) -> dict:
    """Copy set `name` (volume.json, its commits and live packs) into a new folder,
    then verify the copy. Do not run gc on the set meanwhile."""
    source = sets.volume(account, name)
    folder = os.path.abspath(folder)
    _check_empty_target(folder)
    catalog = source.refresh()
    seqs = source.seqs()
    packs = [n for n, _ in catalog.live_packs()]
    os.makedirs(os.path.join(folder, "log"), exist_ok=True)
    os.makedirs(os.path.join(folder, "packs"), exist_ok=True)
    copied = 0
    for pack in packs:
        out = os.path.join(folder, packfmt.pack_relpath(pack))
        copied += copy_checked(source.pack_path(pack), os.path.dirname(out), out, pack)
    for seq in seqs:
        out = os.path.join(folder, "log", os.path.basename(source.commit_path(seq)))
        copied += copy_checked(source.commit_path(seq), os.path.join(folder, "log"), out)
    with open(os.path.join(source.root, "volume.json"), "rb") as f:
        write_atomic(os.path.join(folder, "volume.json"), f.read())
    fsync_dir(folder)
    copy = Volume(folder)
    checked = verify_volume(copy)
    snapshots = len(copy.refresh().snapshots())
    copy.close()
    if checked["errors"]:
        raise IroncoreError(f"The export in {folder} does not verify: {checked['errors'][0]}",
                            "Was gc running on the set? Remove the folder and export again.")
    logger.info("event=export account=%s set=%s commits=%d packs=%d bytes=%d", account, name, len(seqs),
                len(packs), copied)
    return {"set": name, "folder": folder, "commits": len(seqs), "packs": len(packs), "bytes": copied,
            "snapshots": snapshots}
