#!/usr/bin/env python3
"""Backup and restore benchmark: Ironcore against restic and borg on one tree.

A plain script, not a test. It builds a deterministic mixed tree (about 1.5 GiB
at --scale 1) in a temporary folder, then runs every tool on the same files:

  initial    first backup of the whole tree
  day        incremental backup after "a day's changes": 1 % of the 8 KiB pages
             of the database-like file rewritten in place at random aligned
             offsets, ~1 % of the small files modified, 100 new small files
  db-only    incremental backup after another 1 % of the database pages changed
             and nothing else, so the bytes a tool stores for a changed
             database can be compared with the bytes that changed
  restore    full restore of the latest snapshot into an empty folder, checked
             against the source (file count, total size, SHA-256 of a sample)

For every phase and tool it records wall time, CPU time and peak memory of the
tool's process, and the bytes added to the repository folder (apparent size, as
`du -sb`, before and after). Page caches are dropped before every timed step
when the kernel allows it (root), so every tool starts cold alike.

    .venv/bin/python bench/bench_backup.py --markdown /tmp/fragment.md --json /tmp/results.json

Needs `restic` and `borg` on PATH and `ironcore` (found on PATH or in the
project's .venv). Everything it creates lives under one temporary folder that
is removed at the end (unless --keep).
"""
import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000
PAGE = 8 * KiB
PASSWORD = "bench-password-not-secret"
TOOLS = ("ironcore", "restic", "borg")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there had been one all we their has would when if so no what up out more can who "
         "backup restore snapshot volume server client delta block signature catalog commit pack blob extent "
         "database page index table row column query transaction journal checkpoint replica account quota "
         "error warning info debug request response latency throughput disk memory network cpu thread").split()


def ironcore_version() -> str:
    """The installed version with the git commit, and whether product code has uncommitted changes."""
    try:
        from importlib.metadata import version
        v = version("ironcore")
    except Exception:  # noqa: BLE001 - the script may run outside the venv
        v = "?"
    git = ["git", "-C", REPO_ROOT]
    rev = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--", "client", "ironfs", "native"],
                           capture_output=True, text=True).stdout.split("\n")
    dirty = [line[3:] for line in dirty if line[:2].strip() and not line.startswith("??")]
    return f"ironcore {v} (git {rev or '?'}" + (f", uncommitted changes in {', '.join(dirty)})" if dirty else ")")


# --- the tree -----------------------------------------------------------------------------------


class Spec:
    """Sizes of the generated tree for a given scale (1.0 = about 1.5 GiB)."""

    def __init__(self, scale: float):
        self.scale = scale
        self.small_files = max(200, int(20_000 * scale))
        self.small_dirs = (20, 10)                       # top folders x subfolders
        self.small_min, self.small_max = 1 * KiB, 64 * KiB
        self.text_share = 0.5                           # share of small files that are text
        # (name, size, compressible)
        self.large = [(f"large-{i}.bin", max(1 * MiB, int(s * MiB * scale)), c)
                      for i, (s, c) in enumerate([(20, False), (40, True), (60, False), (100, False)])]
        self.db_size = max(64 * PAGE, int(1 * GiB * scale) // PAGE * PAGE)
        self.page_fraction = 0.01
        self.modify_fraction = 0.01
        self.new_files = max(10, int(100 * min(1.0, scale * 10)))


def text_corpus(rng: random.Random, size: int) -> bytes:
    """Pseudo-English lines: compresses about like real text and logs."""
    words = rng.choices(WORDS, k=size // 4)
    out = bytearray()
    line = []
    for i, w in enumerate(words):
        line.append(w)
        if len(line) >= 8 + (i * 7919) % 9:
            out += (" ".join(line) + ".\n").encode()
            line = []
        if len(out) >= size:
            break
    while len(out) < size:
        out += out[: size - len(out)]
    return bytes(out[:size])


def write_file(path: str, data) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def random_stream(rng: random.Random, size: int, chunk: int = 4 * MiB):
    left = size
    while left > 0:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def small_size(rng: random.Random, spec: Spec) -> int:
    """Log-uniform between 1 and 64 KiB (many small, some larger), mean about 15 KiB."""
    lo, hi = spec.small_min, spec.small_max
    return int(lo * (hi / lo) ** rng.random())


def small_content(rng: random.Random, corpus: bytes, size: int, text: bool) -> bytes:
    if text:
        off = rng.randrange(0, len(corpus) - size)
        return corpus[off:off + size]
    return rng.randbytes(size)


def build_tree(root: str, spec: Spec, seed: int) -> dict:
    rng = random.Random(seed)
    corpus = text_corpus(random.Random(seed + 1), 8 * MiB)
    small = []
    tops, subs = spec.small_dirs
    per_dir = -(-spec.small_files // (tops * subs))
    n = 0
    for t in range(tops):
        for s in range(subs):
            d = os.path.join(root, "docs", f"dir{t:02d}", f"sub{s:02d}")
            os.makedirs(d, exist_ok=True)
            for _ in range(per_dir):
                if n >= spec.small_files:
                    break
                text = rng.random() < spec.text_share
                size = small_size(rng, spec)
                path = os.path.join(d, f"file{n:05d}.{'txt' if text else 'dat'}")
                write_file(path, small_content(rng, corpus, size, text))
                small.append(path)
                n += 1
    big = os.path.join(root, "media")
    os.makedirs(big, exist_ok=True)
    for name, size, compressible in spec.large:
        path = os.path.join(big, name)
        with open(path, "wb") as f:
            if compressible:
                left = size
                while left > 0:
                    take = min(left, 1 * MiB)
                    off = rng.randrange(0, len(corpus) - take)
                    f.write(corpus[off:off + take])
                    left -= take
            else:
                for chunk in random_stream(rng, size):
                    f.write(chunk)
    dbdir = os.path.join(root, "db")
    os.makedirs(dbdir, exist_ok=True)
    db = os.path.join(dbdir, "store.db")
    with open(db, "wb") as f:
        for chunk in random_stream(rng, spec.db_size):
            f.write(chunk)
    return {"small": small, "db": db, "corpus": corpus}


def change_db_pages(db: str, rng: random.Random, fraction: float) -> int:
    """Rewrite `fraction` of the 8 KiB pages in place (same inode); returns the bytes changed."""
    pages = os.path.getsize(db) // PAGE
    chosen = sorted(rng.sample(range(pages), max(1, round(pages * fraction))))
    fd = os.open(db, os.O_WRONLY)
    try:
        for p in chosen:
            os.pwrite(fd, rng.randbytes(PAGE), p * PAGE)
    finally:
        os.close(fd)
    return len(chosen) * PAGE


def days_changes(root: str, tree: dict, spec: Spec, seed: int) -> dict:
    rng = random.Random(seed)
    db_changed = change_db_pages(tree["db"], rng, spec.page_fraction)
    small = tree["small"]
    modified = rng.sample(small, max(1, round(len(small) * spec.modify_fraction)))
    modified_bytes = 0
    for path in modified:
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            n = min(size, rng.randint(256, 4 * KiB))
            off = rng.randrange(0, size - n + 1)
            f.seek(off)
            f.write(rng.randbytes(n))
            if path.endswith(".txt") and rng.random() < 0.5:
                f.seek(0, os.SEEK_END)
                f.write(b"appended line of the day\n" * rng.randint(1, 40))
            modified_bytes += os.fstat(f.fileno()).st_size
    newdir = os.path.join(root, "docs", "new-today")
    os.makedirs(newdir, exist_ok=True)
    new_bytes = 0
    for i in range(spec.new_files):
        text = rng.random() < spec.text_share
        size = small_size(rng, spec)
        path = os.path.join(newdir, f"new{i:03d}.{'txt' if text else 'dat'}")
        write_file(path, small_content(rng, tree["corpus"], size, text))
        small.append(path)
        new_bytes += size
    return {"db_changed_bytes": db_changed, "small_modified_files": len(modified),
            "small_modified_bytes": modified_bytes, "new_files": spec.new_files, "new_bytes": new_bytes}


def tree_stats(root: str) -> tuple[int, int]:
    files = total = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            files += 1
            total += st.st_size
    return files, total


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def manifest(root: str, tree: dict, seed: int, sample: int = 1000) -> dict:
    """SHA-256 of every large file, the database and a sample of small files (relative paths)."""
    rng = random.Random(seed)
    paths = [tree["db"]] + [os.path.join(root, "media", n) for n in sorted(os.listdir(os.path.join(root, "media")))]
    paths += rng.sample(tree["small"], min(sample, len(tree["small"])))
    return {os.path.relpath(p, root): sha256_file(p) for p in paths}


# --- running the tools -------------------------------------------------------------------------

def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def disk_activity() -> tuple[int, int]:
    """(sectors written, I/Os in flight) over the machine's disks (/proc/diskstats)."""
    written = inflight = 0
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            if fields[2].startswith(("loop", "ram", "zram")):
                continue
            written += int(fields[9])
            inflight += int(fields[11])
    return written, inflight


def wait_disk_quiet(limit_s: float = 60.0) -> float:
    """Wait until the disks have written nothing for a second (after a sync the
    device may still be busy with what it was handed); returns the seconds waited."""
    start = time.monotonic()
    written, _ = disk_activity()
    while time.monotonic() - start < limit_s:
        time.sleep(1.0)
        now, inflight = disk_activity()
        if now == written and inflight == 0:
            break
        written = now
    return round(time.monotonic() - start, 1)


def du_bytes(path: str) -> int:
    """Apparent size of a folder, like `du -sb` (files only, no directory blocks)."""
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except FileNotFoundError:
                pass
    return total


def du_breakdown(path: str) -> dict:
    out = {}
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        out[name] = du_bytes(p) if os.path.isdir(p) else os.lstat(p).st_size
    return out


class CommandFailed(RuntimeError):
    pass


def run(cmd: list, env: dict, cwd: str | None = None, stdin: bytes | None = None) -> dict:
    """Run one command; returns wall/cpu seconds, peak RSS and its output. Raises on a non-zero exit."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        if stdin is not None:
            inp.write(stdin)
            inp.seek(0)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=inp, stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{stdout[-4000:]}\n"
                            f"--- stderr\n{stderr[-4000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "maxrss_mib": ru.ru_maxrss / 1024, "stdout": stdout, "stderr": stderr}


def last_json(text: str):
    """The last JSON document of a tool's output (restic --json prints one object per line)."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


class Tool:
    name = "?"

    def __init__(self, work: str, source: str):
        self.work = work
        self.source = source
        self.repo = os.path.join(work, f"repo-{self.name}")
        self.home = os.path.join(work, f"home-{self.name}")
        os.makedirs(self.home, exist_ok=True)
        self.env = dict(os.environ)
        self.runs = 0

    def version(self) -> str:
        raise NotImplementedError

    def init(self) -> None:
        raise NotImplementedError

    def backup(self) -> dict:
        raise NotImplementedError

    def restore(self, target: str) -> dict:
        raise NotImplementedError

    def restored_root(self, target: str) -> str:
        """All three tools restore the absolute source path below the target."""
        return os.path.join(target, self.source.lstrip("/"))


class Ironcore(Tool):
    name = "ironcore"

    def __init__(self, work, source, exe):
        super().__init__(work, source)
        self.exe = exe
        self.env.update(IRONCORE_HOME=self.home, IRONCORE_PASSWORD=PASSWORD)

    def version(self):
        return ironcore_version()

    def init(self):
        run([self.exe, "set", "add", "bench", "--source", self.source, "--to", f"file://{self.repo}"], self.env)

    def backup(self):
        r = run([self.exe, "backup", "bench", "--json"], self.env)
        r["report"] = last_json(r["stdout"])
        return r

    def restore(self, target):
        r = run([self.exe, "restore", "bench", "--to", target, "--json"], self.env)
        r["report"] = last_json(r["stdout"])
        return r


class Restic(Tool):
    name = "restic"

    def __init__(self, work, source):
        super().__init__(work, source)
        self.env.update(RESTIC_PASSWORD=PASSWORD, RESTIC_REPOSITORY=self.repo,
                        RESTIC_CACHE_DIR=os.path.join(self.home, "cache"))

    def version(self):
        return subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()

    def init(self):
        run(["restic", "init"], self.env)

    def backup(self):
        r = run(["restic", "backup", "--json", self.source], self.env)
        summary = last_json(r["stdout"])
        r["report"] = {k: summary.get(k) for k in ("data_added", "files_new", "files_changed", "files_unmodified",
                                                   "total_bytes_processed", "snapshot_id")} if summary else None
        return r

    def restore(self, target):
        return run(["restic", "restore", "latest", "--target", target], self.env)


class Borg(Tool):
    name = "borg"

    def __init__(self, work, source):
        super().__init__(work, source)
        self.env.update(BORG_PASSPHRASE=PASSWORD, BORG_REPO=self.repo, BORG_BASE_DIR=self.home,
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")

    def version(self):
        return subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout.strip()

    def init(self):
        run(["borg", "init", "-e", "repokey"], self.env)

    def backup(self):
        self.runs += 1
        r = run(["borg", "create", "--json", f"::snap{self.runs}", self.source], self.env)
        info = last_json(r["stdout"])
        try:
            stats = info["archive"]["stats"]
            r["report"] = {k: stats.get(k) for k in ("deduplicated_size", "compressed_size", "original_size", "nfiles")}
        except (TypeError, KeyError):
            r["report"] = None
        return r

    def restore(self, target):
        os.makedirs(target, exist_ok=True)
        return run(["borg", "extract", f"::snap{self.runs}"], self.env, cwd=target)


# --- the benchmark ------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1)}


def disk_of(path: str) -> str:
    try:
        out = subprocess.run(["df", "--output=source,fstype,size", path], capture_output=True, text=True).stdout
        src, fstype, size = out.splitlines()[1].split()
        dev = os.path.basename(src)
        rota = open(f"/sys/block/{dev}/queue/rotational").read().strip() if os.path.exists(
            f"/sys/block/{dev}/queue/rotational") else "?"
        return f"{src} ({fstype}, {int(size) // (1024 * 1024)} GiB, rotational={rota})"
    except Exception:  # noqa: BLE001 - descriptive only
        return "?"


def verify_restore(restored: str, source_files: int, source_bytes: int, digests: dict) -> dict:
    files, total = tree_stats(restored) if os.path.isdir(restored) else (0, 0)
    bad = [rel for rel, h in digests.items()
           if not os.path.isfile(os.path.join(restored, rel)) or sha256_file(os.path.join(restored, rel)) != h]
    ok = files == source_files and total == source_bytes and not bad
    return {"ok": ok, "files": files, "bytes": total, "hash_checked": len(digests), "hash_mismatch": bad[:10]}


def bench(args) -> dict:
    spec = Spec(args.scale)
    parent = args.dir or None
    work = tempfile.mkdtemp(prefix="ironcore-bench-", dir=parent)
    source = os.path.join(work, "tree")
    os.makedirs(source)
    result = {"command": " ".join([os.path.relpath(sys.executable, REPO_ROOT)
                                   if sys.executable.startswith(REPO_ROOT) else sys.executable] + sys.argv),
              "machine": machine(), "disk": disk_of(work), "work": work, "seed": args.seed, "scale": args.scale,
              "phases": {}, "drop_caches": [], "loadavg_before": os.getloadavg()}
    try:
        tools = []
        for name in args.tools:
            if name == "ironcore":
                tools.append(Ironcore(work, source, args.ironcore))
            elif name == "restic":
                tools.append(Restic(work, source))
            elif name == "borg":
                tools.append(Borg(work, source))
        result["versions"] = {t.name: t.version() for t in tools}

        log(f"building the tree in {source} (scale {args.scale}, seed {args.seed})")
        t0 = time.perf_counter()
        tree = build_tree(source, spec, args.seed)
        files, total = tree_stats(source)
        result["tree"] = {"files": files, "bytes": total, "small_files": spec.small_files,
                          "large_files": [[n, s, c] for n, s, c in spec.large], "db_bytes": spec.db_size,
                          "build_s": round(time.perf_counter() - t0, 1)}
        log(f"tree: {files} files, {fmt_bytes(total)} in {result['tree']['build_s']} s")

        for t in tools:
            t.init()

        def phase(name: str, fn, source_bytes: int):
            rows = {}
            for t in tools:
                dropped = drop_caches()
                result["drop_caches"].append(dropped)
                result.setdefault("disk_quiet_s", []).append(wait_disk_quiet())
                before = du_bytes(t.repo)
                log(f"{name}: {t.name} ...")
                r = fn(t)
                after = du_bytes(t.repo)
                row = {"wall_s": round(r["wall_s"], 2), "cpu_s": round(r["cpu_s"], 2),
                       "user_s": round(r["user_s"], 2), "sys_s": round(r["sys_s"], 2),
                       "maxrss_mib": round(r["maxrss_mib"]), "repo_before": before, "repo_after": after,
                       "added": after - before, "mb_s": round(source_bytes / MB / r["wall_s"], 1),
                       "caches_dropped": dropped}
                for k in ("report", "verify"):
                    if r.get(k) is not None:
                        row[k] = r[k]
                if t.name == "ironcore" and name != "restore":
                    row["repo_breakdown"] = du_breakdown(t.repo)
                rows[t.name] = row
                log(f"{name}: {t.name}: {row['wall_s']} s wall, {row['cpu_s']} s cpu, {row['mb_s']} MB/s, "
                    f"added {fmt_bytes(row['added'])}" + (f", verify {r['verify']}" if "verify" in r else ""))
            result["phases"][name] = rows

        phase("initial", lambda t: t.backup(), total)

        log("applying a day's changes")
        changes = days_changes(source, tree, spec, args.seed + 100)
        files, total = tree_stats(source)
        changes.update(files=files, bytes=total)
        result["changes_day"] = changes
        log(f"changes: {changes}")
        phase("day", lambda t: t.backup(), total)

        log("changing another 1% of the database pages (nothing else)")
        db_only = change_db_pages(tree["db"], random.Random(args.seed + 200), spec.page_fraction)
        result["changes_db_only"] = {"db_changed_bytes": db_only}
        phase("db-only", lambda t: t.backup(), total)

        log("hashing the source sample for the restore check")
        digests = manifest(source, tree, args.seed + 300, args.hash_sample)

        def restore(t):
            target = os.path.join(work, f"restore-{t.name}")
            os.makedirs(target)
            r = t.restore(target)
            r["verify"] = verify_restore(t.restored_root(target), files, total, digests)
            shutil.rmtree(target)
            return r

        phase("restore", restore, total)
        result["loadavg_after"] = os.getloadavg()
        result["repo_final"] = {t.name: du_bytes(t.repo) for t in tools}
        result["client_cache"] = {t.name: du_bytes(t.home) for t in tools}
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            log(f"removed {work}")
    return result


# --- reporting ----------------------------------------------------------------------------------

def ratio(a, b):
    return a / b if a and b else float("nan")


def summarize(res: dict) -> dict:
    ph = res["phases"]
    out = {"goals": []}
    ic = "ironcore"
    if ic in ph.get("initial", {}) and "restic" in ph["initial"]:
        sp = ratio(ph["initial"]["restic"]["wall_s"], ph["initial"][ic]["wall_s"])
        out["goals"].append(("initial backup at least 2x as fast as restic", f"{sp:.2f}x", sp >= 2))
    if ic in ph.get("restore", {}) and "restic" in ph["restore"]:
        sp = ratio(ph["restore"]["restic"]["wall_s"], ph["restore"][ic]["wall_s"])
        out["goals"].append(("restore at least 2x as fast as restic", f"{sp:.2f}x", sp >= 2))
    if ic in ph.get("db-only", {}):
        r = ratio(ph["db-only"][ic]["added"], res["changes_db_only"]["db_changed_bytes"])
        out["goals"].append(("database file: stored <= 1.2x its changed bytes (db-only phase)", f"{r:.2f}x", r <= 1.2))
    return out


PHASE_TITLES = {"initial": "initial backup", "day": "incremental (day)", "db-only": "incremental (db only)",
                "restore": "full restore"}


def table_rows(res: dict) -> list[list[str]]:
    rows = []
    ph = res["phases"]
    for name in ("initial", "day", "db-only", "restore"):
        for tool, r in ph.get(name, {}).items():
            if name == "day":
                rel = f"{ratio(r['added'], res['changes_day']['db_changed_bytes']):.2f}"
            elif name == "db-only":
                rel = f"{ratio(r['added'], res['changes_db_only']['db_changed_bytes']):.2f}"
            else:
                rel = ""
            speed = f"{r['mb_s']:.1f}" if name in ("initial", "restore") else ""
            added = f"{r['added'] / MB:,.1f}" if name != "restore" else ""
            check = ""
            if "verify" in r:
                check = "ok" if r["verify"]["ok"] else "MISMATCH"
            rows.append([PHASE_TITLES[name], tool, f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['maxrss_mib']}",
                         speed, added, rel, check])
    return rows


HEAD = ["phase", "tool", "wall s", "CPU s", "peak RSS MiB", "MB/s", "repo added MB", "added / db changed", "check"]


def ratio_rows(res: dict) -> list[list[str]]:
    rows = []
    ph = res["phases"]
    for name in ("initial", "day", "db-only", "restore"):
        p = ph.get(name, {})
        if "ironcore" not in p:
            continue
        cells = [PHASE_TITLES[name]]
        for other in ("restic", "borg"):
            if other in p:
                t = ratio(p[other]["wall_s"], p["ironcore"]["wall_s"])
                cells.append(f"{t:.2f}x")
                if name != "restore":
                    cells.append(f"{ratio(p['ironcore']['added'], p[other]['added']):.2f}")
                else:
                    cells.append("")
            else:
                cells += ["", ""]
        rows.append(cells)
    return rows


RATIO_HEAD = ["phase", "speed vs restic", "stored vs restic", "speed vs borg", "stored vs borg"]


def text_table(head, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def md_table(head, rows) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def fmt_load(load) -> str:
    return " ".join(f"{x:.2f}" for x in load) if load else "?"


def markdown(res: dict) -> str:
    m = res["machine"]
    t = res["tree"]
    d = res["changes_day"]
    dropped = res["drop_caches"]
    drop_text = ("yes, before every timed step" if dropped and all(dropped)
                 else "no (not permitted)" if not any(dropped) else f"only {sum(dropped)} of {len(dropped)} times")
    s = summarize(res)
    lines = [
        f"- Command: `{res['command']}`",
        f"- Machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']};"
        f" disk {res['disk']}",
        "- Versions: " + "; ".join(res["versions"].values()),
        f"- Tree (seed {res['seed']}, scale {res['scale']}): {t['files']:,} files, {t['bytes'] / MB:,.0f} MB:"
        f" {t['small_files']:,} small files of 1-64 KiB (half text, half random), large files of "
        + ", ".join(f"{s_ // MiB} MiB{' (text)' if c else ''}" for _, s_, c in t["large_files"])
        + f", one {t['db_bytes'] / MiB:,.0f} MiB database-like file of random 8 KiB pages.",
        f"- Day's changes: {d['db_changed_bytes'] / MB:.1f} MB of database pages (1 %) rewritten in place,"
        f" {d['small_modified_files']} small files modified ({d['small_modified_bytes'] / MB:.1f} MB),"
        f" {d['new_files']} new small files ({d['new_bytes'] / MB:.1f} MB)."
        f" The db-only step rewrites another {res['changes_db_only']['db_changed_bytes'] / MB:.1f} MB of pages"
        f" and nothing else.",
        f"- Page caches dropped: {drop_text}; then the disks were let go quiet (nothing written for a second)"
        f" before each timed step, waits of {', '.join(str(w) for w in res.get('disk_quiet_s', []))} s."
        f" Repository growth is the apparent size of the repository folder"
        f" (as `du -sb`) after minus before; Ironcore's includes its `catalog.db`. MB = 10^6 bytes; MB/s is"
        f" tree bytes / wall time.",
        f"- Load average (1, 5, 15 min) before the run: {fmt_load(res.get('loadavg_before'))};"
        f" after: {fmt_load(res.get('loadavg_after'))}.",
        "",
        md_table(HEAD, table_rows(res)),
        "",
        "Ratios (speed: other tool's wall time / Ironcore's, above 1 means Ironcore is faster;"
        " stored: Ironcore's repository growth / the other's):",
        "",
        md_table(RATIO_HEAD, ratio_rows(res)),
        "",
        "Goals:",
        "",
    ]
    lines += [f"- {g}: {v} — {'met' if ok else 'NOT met'}" for g, v, ok in s["goals"]]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="tree size factor (1.0 = about 1.5 GiB)")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--dir", help="parent folder of the temporary work folder (default: the system temp dir)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    ap.add_argument("--ironcore", default=shutil.which("ironcore") or os.path.join(REPO_ROOT, ".venv/bin/ironcore"))
    ap.add_argument("--hash-sample", type=int, default=1000, help="small files hash-checked after restore")
    ap.add_argument("--markdown", help="write a markdown fragment (for docs/PERFORMANCE.md) to this file")
    ap.add_argument("--json", help="write all figures as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in args.tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}")
    res = bench(args)
    res["summary"] = summarize(res)
    print()
    print(text_table(HEAD, table_rows(res)))
    print()
    if ratio_rows(res):
        print(text_table(RATIO_HEAD, ratio_rows(res)))
        print()
    for g, v, ok in res["summary"]["goals"]:
        print(f"goal: {g}: {v} -> {'met' if ok else 'NOT met'}")
    print(f"page caches dropped: {res['drop_caches']}")
    print(f"load average before: {fmt_load(res.get('loadavg_before'))}, after: {fmt_load(res.get('loadavg_after'))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(res))
    failed = [(p, t) for p, rows in res["phases"].items() for t, r in rows.items()
              if "verify" in r and not r["verify"]["ok"]]
    if failed:
        print(f"restore check FAILED for {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
