"""Local copy (FAQ 2.38): a set may also keep its packs and commits in a folder on
this machine (a second disk, a USB drive). The folder is a volume like any other
(same volume.json, so the same key), which `ironcore decrypt DIR --to OUT`
restores without the server.

During a run each pack is linked (or copied) into the folder as it is uploaded;
after the run the commits the folder lacks are copied from the set's mirror, and
packs it lacks (history from before the copy was switched on, packs adopted
from an interrupted run) are fetched from the server once. Packs go in before
the commits that name them, each written to a temporary name, fsynced and
renamed, so the folder is a readable volume at every instant."""
import hashlib
import json
import logging
import os
import shutil

from ironfs.errors import CorruptData, IroncoreError, UsageError
from ironfs.format import log as commitlog, pack as packfmt
from ironfs.format.fsutil import publish, tmp_name, write_atomic

logger = logging.getLogger(__name__)


class LocalCopyError(IroncoreError):
    """The local copy could not be written (the backup to the server is not affected)."""


class LocalCopy:
    def __init__(self, folder: str, remote):
        self.folder = os.path.abspath(folder)
        self.remote = remote
        self.packs_linked = 0

    def prepare(self) -> None:
        """Make the folder a volume of this set, or check that it is one."""
        try:
            os.makedirs(os.path.join(self.folder, "log"), mode=0o700, exist_ok=True)
            os.makedirs(os.path.join(self.folder, "packs"), mode=0o700, exist_ok=True)
            path = os.path.join(self.folder, "volume.json")
            if os.path.exists(path):
                with open(path) as f:
                    held = json.load(f).get("id")
                if held != self.remote.info["volume"]["id"]:
                    raise UsageError(f"The local copy folder {self.folder} holds another set's volume.",
                                     "Give the set a folder of its own with 'ironcore set edit NAME --local-copy DIR'.")
            # always rewritten: key slots re-wrapped on the server (a new password) reach the copy too
            write_atomic(path, json.dumps(self.remote.info["volume"], indent=1).encode())
        except OSError as exc:
            raise LocalCopyError(f"The local copy folder {self.folder} cannot be written: {exc.strerror or exc}.",
                                 "Check that the disk is mounted and writable.") from None

    def _pack_path(self, name: str) -> str:
        return os.path.join(self.folder, packfmt.pack_relpath(name))

    def keep_pack(self, name: str, path: str) -> None:
        """A pack just uploaded (its file is about to be removed): hard-link or copy it in."""
        final = self._pack_path(name)
        if os.path.exists(final):
            return
        try:
            os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
            tmp = tmp_name(os.path.dirname(final))
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            publish(tmp, final)
            self.packs_linked += 1
        except OSError as exc:   # the upload goes on; catch_up fetches the pack or reports the folder
            logger.warning("event=local-copy-failed pack=%s error=%r", name, exc.strerror or str(exc))

    def _fetch_pack(self, name: str) -> int:
        data = self.remote.server.call("GET", self.remote.api(f"/packs/{name}")).content
        if hashlib.sha256(data).hexdigest() != name:
            raise CorruptData(f"Pack {name} came from the server damaged.", "Run the backup again.")
        final = self._pack_path(name)
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        tmp = tmp_name(os.path.dirname(final))
        with open(tmp, "wb") as f:
            f.write(data)
        publish(tmp, final)
        return len(data)

    def catch_up(self) -> dict:
        """After a run: bring the folder level with the set's log. Returns what was added."""
        try:
            catalog = self.remote.refresh()
            live = [name for name, _ in catalog.live_packs()]
            fetched = fetched_bytes = 0
            for name in live:
                if not os.path.exists(self._pack_path(name)):
                    fetched_bytes += self._fetch_pack(name)
                    fetched += 1
            log_dir = os.path.join(self.folder, "log")
            have = set(commitlog.list_seqs(log_dir))
            commits = 0
            for seq in self.remote.seqs():
                if seq not in have:
                    tmp = tmp_name(log_dir)
                    shutil.copyfile(self.remote.commit_path(seq), tmp)
                    publish(tmp, os.path.join(log_dir, commitlog.commit_name(seq)))
                    commits += 1
        except OSError as exc:
            raise LocalCopyError(f"The local copy folder {self.folder} cannot be written: {exc.strerror or exc}.",
                                 "Check that the disk is mounted and has room; the next run completes it.") from None
        logger.info("event=local-copy folder=%r packs_linked=%d packs_fetched=%d commits=%d", self.folder,
                    self.packs_linked, fetched, commits)
        return {"folder": self.folder, "packs_linked": self.packs_linked, "packs_fetched": fetched,
                "bytes_fetched": fetched_bytes, "commits_added": commits}
