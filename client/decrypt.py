"""`ironcore decrypt DIR --to OUT` (FAQ 2.15, the seed's "Decrypt Files Tool"):
restore from a volume folder without the server: an export made by `ironfs
export`, a set's local copy, a seed. The key is the one this machine keeps for
the set (by volume id), else the secret given (the account password opens a
`login` slot, a key file's contents a `private` one). A folder on read-only
media is read where it is; its catalog is then built in this machine's cache."""
import contextlib
import os

from client import config
from client.keys import open_volume_key
from client.restore import Restore
from ironfs.errors import UsageError
from ironfs.format.snapshots import resolve_snapshot
from ironfs.format.volume import Volume, is_volume


def open_folder(folder: str, read_secret) -> Volume:
    if not is_volume(folder):
        raise UsageError(f"{folder} is not a volume folder (it has no volume.json).",
                         "Give the folder 'ironfs export', a local copy or 'ironcore seed-load' wrote.")
    volume = Volume(folder)
    if not os.access(folder, os.W_OK):   # read-only media: the catalog goes to this machine's cache
        volume = Volume(folder, catalog_path=os.path.join(config.home(), "cache",
                                                          f"decrypt-{volume.id.hex()}.catalog.db"))
    open_volume_key(volume, read_secret)
    return volume


def decrypt(folder: str, target: str, snapshot, path, read_secret, progress=None) -> dict:
    """`progress`: a display not yet started (it starts once the restore's workers are)."""
    volume = open_folder(folder, read_secret)
    try:
        snap = resolve_snapshot(volume.refresh(), snapshot)
        restorer = Restore(volume, snap["seq"], target, progress=progress)
        with progress or contextlib.nullcontext():
            report = restorer.run(path)
    finally:
        volume.close()
    report["snapshot"] = snap["seq"]
    return report
