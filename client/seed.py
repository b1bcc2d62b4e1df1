"""`ironcore seed-load SET --to DIR` (FAQ 2.14): the first backup of a set on a
server, written to a folder (a removable disk) instead of sent. The folder is
the set's volume (the same volume.json, so the same key), holding one snapshot
commit and its packs; the administrator loads it with `ironfs import-seed
ACCOUNT SET DIR`. The file cache here then knows every file, so the next backup
over the network sends only what changed since the seed."""
import json
import os

from client import config
from client.backup import Backup
from client.remote_volume import RemoteVolume
from ironfs.errors import UsageError
from ironfs.format import log as commitlog
from ironfs.format.fsutil import write_atomic
from ironfs.format.volume import Volume, VolumeWriter


class SeedWriter(VolumeWriter):
    def start_commit(self, kind: str, **header) -> commitlog.CommitWriter:
        header.setdefault("host", config.host_name())   # as a network backup from here would name it
        return super().start_commit(kind, **header)


class SeedVolume(Volume):
    def writer(self) -> SeedWriter:
        return SeedWriter(self)


def seed_load(server, name: str, bset, info: dict, folder: str, read_secret, progress=None) -> dict:
    remote = RemoteVolume(server, name, info)
    try:
        remote.open_key(read_secret)
        if remote.refresh().snapshots(include_forgotten=True):
            raise UsageError(f"Set {name} has backups on the server already; a seed is only its first backup.",
                             f"Back it up over the network: 'ironcore backup {name}' sends only what changed.")
        key = remote.key
    finally:
        remote.close()
    folder = os.path.abspath(folder)
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise UsageError(f"{folder} exists and is not an empty folder.", "Give a new or empty folder.")
    os.makedirs(os.path.join(folder, "log"), mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(folder, "packs"), mode=0o700, exist_ok=True)
    write_atomic(os.path.join(folder, "volume.json"), json.dumps(info["volume"], indent=1).encode())
    seed = SeedVolume(folder)
    seed.use_key(key)
    try:
        report = Backup(seed, bset, os.path.join(config.home(), "cache"), progress=progress).run()
    finally:
        seed.close()
    report["folder"] = folder
    return report
