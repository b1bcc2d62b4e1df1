"""`ironfs verify`: check a volume's structure, pack hashes and catalog against
its log, and with a key every blob and every file content.

Damaged blobs found with the key are recorded in a `damage` commit: the next
backup then stores those blobs again (they are named by their plaintext), which
heals every older version that shares them."""
import logging
import os
import shutil
import tempfile

from ironfs.errors import IroncoreError, VolumeBusy
from ironfs.format import log as commitlog, pack as packfmt
from ironfs.format.catalog import DERIVED_TABLES
from ironfs.format.content import ContentHasher

logger = logging.getLogger(__name__)


def verify_volume(volume, read_data: bool = False, record_damage: bool = True) -> dict:
    report = {"volume": volume.root, "commits": 0, "packs": 0, "blobs": 0, "contents_checked": 0,
              "errors": [], "warnings": [], "damaged_packs": [], "damaged_blobs": [], "affected": []}
    errors, warnings = report["errors"], report["warnings"]
    try:
        seqs = volume.seqs()
    except IroncoreError as exc:
        errors.append(exc.message)
        return report
    report["commits"] = len(seqs)
    referenced: set[str] = set()
    dropped: set[str] = set()
    log_ok = True
    for seq in seqs:
        try:
            for rec in commitlog.read_commit(volume.commit_path(seq)):
                if rec["t"] == "pack":
                    referenced.add(rec["name"])
                    dropped.discard(rec["name"])
                elif rec["t"] == "drop":
                    dropped.add(rec["name"])
        except IroncoreError as exc:
            errors.append(exc.message)
            log_ok = False
    live = referenced - dropped
    on_disk = volume.all_pack_files()
    report["packs"] = len(live)
    for name in sorted(live - on_disk.keys()):
        errors.append(f"Pack {name} named by the log is missing.")
    for name, path in sorted(on_disk.items()):
        if packfmt.file_sha256(path) != name:
            errors.append(f"Pack {name} is damaged: its SHA-256 does not match its name.")
            report["damaged_packs"].append(name)
        elif name not in referenced and log_ok:   # with an unreadable log, nothing can be called unreferenced
            warnings.append(f"Pack {name} is not referenced by any commit (left by an interrupted run; "
                            "the next backup adopts it, gc removes it).")
    if not log_ok:
        return report
    _check_catalog(volume, report)
    catalog = volume.catalog()
    report["blobs"] = catalog.db.execute("SELECT count(*) FROM blobs").fetchone()[0]
    for cid in sorted(catalog.contents_using(set(), missing=True, live_only=True)):
        errors.append(f"Content {cid.hex()[:16]} refers to blobs that no pack holds.")
        _add_affected(catalog, report, cid)
    if read_data:
        _read_data(volume, report, record_damage)
    return report


def _check_catalog(volume, report) -> None:
    tmpdir = tempfile.mkdtemp(prefix="ironfs-verify-")
    try:
        rebuilt = volume.build_catalog_at(os.path.join(tmpdir, "catalog.db"))
        current = volume.catalog()
        differs = [t for t in DERIVED_TABLES if rebuilt.table_digest(t) != current.table_digest(t)]
        rebuilt.close()
        if differs:
            report["warnings"].append(f"The catalog differed from the log ({', '.join(differs)}); it was rebuilt.")
            current.close()
            volume._local.catalog = None
            volume.rebuild_catalog()
    except IroncoreError as exc:
        report["errors"].append(f"The log cannot be replayed: {exc.message}")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _add_affected(catalog, report, cid: bytes) -> None:
    for path, born, died in catalog.paths_of_content(cid):
        report["affected"].append({"path": os.fsdecode(path), "from_snapshot": born, "until_snapshot": died})


def _read_data(volume, report, record_damage: bool) -> None:
    volume.require_key()
    catalog = volume.catalog()
    bad: dict[bytes, str] = {}
    for name, _size in catalog.live_packs():
        try:
            entries = volume.pack_index(name)
        except IroncoreError as exc:
            report["errors"].append(exc.message)
            continue
        for e in entries:
            try:
                volume.sealer.open(e.blob_id, volume.read_sealed(name, e.offset, e.length), e.raw_length)
            except IroncoreError:
                row = catalog.db.execute("SELECT pack FROM blobs WHERE id=?", (e.blob_id,)).fetchone()
                if row is not None and row[0] != name:
                    # a stale copy: the blob was stored again (healed) and the volume reads it
                    # from another pack; recording it as damage would undo the healing
                    report["warnings"].append(f"Pack {name} holds a damaged copy of blob {e.blob_id.hex()}; "
                                              f"the volume uses its sound copy in pack {row[0]}.")
                    continue
                bad[e.blob_id] = name
    for blob_id, pack in sorted(bad.items()):
        report["damaged_blobs"].append({"blob": blob_id.hex(), "pack": pack})
        report["errors"].append(f"Blob {blob_id.hex()} in pack {pack} is damaged.")
        if pack not in report["damaged_packs"]:
            report["damaged_packs"].append(pack)
    affected = catalog.contents_using(set(bad))
    for cid in sorted(affected):
        _add_affected(catalog, report, cid)
    for (cid,) in catalog.db.execute("SELECT id FROM contents").fetchall():
        if cid in affected:
            continue
        report["contents_checked"] += 1
        content = catalog.content(cid)
        h = ContentHasher(volume.key)
        try:
            for blob, off, length in content["ext"]:
                data = bytes(length) if blob is None else volume.read_blob(blob)
                h.add_extent(blob, off, memoryview(data)[off:off + length] if blob else data, len(data),
                             content["size"])
            for blob, off, length in content["sig"]:
                volume.read_blob(blob)
        except IroncoreError as exc:
            report["errors"].append(f"Content {cid.hex()[:16]} cannot be read: {exc.message}")
            _add_affected(catalog, report, cid)
            continue
        if h.digest() != cid or h.size != content["size"]:
            report["errors"].append(f"Content {cid.hex()[:16]} does not match its hash.")
            _add_affected(catalog, report, cid)
    new_bad = [b for b in bad if catalog.blob(b) is not None]
    if new_bad and record_damage:
        try:
            with volume.writer() as writer:
                commit = writer.start_commit("damage")
                commit.add({"t": "damaged", "blobs": sorted(new_bad)})
                seq = writer.finish_commit(commit)
            report["warnings"].append(f"Recorded {len(new_bad)} damaged blobs in commit {seq}: the next backup "
                                      "of the same files stores them again and heals older versions.")
        except VolumeBusy as exc:
            report["warnings"].append(f"Damage not recorded: {exc.message}")
