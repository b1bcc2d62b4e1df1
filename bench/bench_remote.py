#!/usr/bin/env python3
"""Backup and restore over the network: the same tree into a local volume and
to an `ironfs serve` on loopback over TLS, in one run.

A plain script, not a test. It builds one deterministic mixed tree with
bench_backup.py's generator (about 1 GiB by default, --size to scale it), then
for each phase runs the local set first and the server set second, on the same
files:

  initial      first backup of the whole tree
  incremental  backup after a day's changes: 1 % of the 8 KiB pages of the
               database-like file rewritten in place, ~1 % of the small files
               modified, some new small files (bench_backup.py's days_changes)
  restore      full restore of the latest snapshot into an empty folder, checked
               against the source (file count, total size, SHA-256 of the large
               files, the database and a sample of small files)

    local   ironcore set add local --to file:///DIR; ironcore backup local --json;
            ironcore restore local --to DIR
    server  ironfs init; ironfs account add; ironfs serve --listen 127.0.0.1:0
            (TLS, self-signed, a subprocess); ironcore login --server URL
            --account NAME --password-stdin; ironcore set add remote
            --password-stdin (no --to: the logged-in server); then as above

Server and client run on the same machine and share its cores and disk, so
"remote" here is the cost of the protocol (TLS, HTTP, the upload lane, ranged
reads, the server's checks and fsyncs), not of a real network. Page caches are
dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed step when
running as root, so both sides start cold alike. Wall, CPU and peak RSS are
those of the `ironcore` process; the server's CPU is read from /proc for each
step; bytes sent and received are the server's /metrics counters; stored bytes
are the apparent size (as `du -sb`) of the local volume folder and of the set's
volume folder in the server's data root, after minus before.

    .venv/bin/python bench/bench_remote.py --markdown --json /tmp/remote.json
    .venv/bin/python bench/bench_remote.py --size 100M     # a quick check
    .venv/bin/python bench/bench_remote.py --plain-http    # the same without TLS, to tell its share

Everything lives under one temporary folder, removed at the end unless --keep.
The server is always stopped with SIGTERM at the end, error or not.
"""
import argparse
import ctypes
import json
import math
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_backup as bb  # noqa: E402 - the tree generator and helpers of the local benchmark

KiB, MiB, GiB, MB = bb.KiB, bb.MiB, bb.GiB, bb.MB
REPO_ROOT = bb.REPO_ROOT
LOCAL_PASSWORD = "bench-local-password-not-secret"
ADMIN_PASSWORD = "bench-admin-password-not-secret"
ACCOUNT, ACCOUNT_PASSWORD = "bench", "bench-account-password-not-secret"
SIDES = ("local", "remote")
PHASES = ("initial", "incremental", "restore")
PHASE_TITLES = {"initial": "initial backup", "incremental": "incremental backup", "restore": "full restore"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- sizes -------------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1G, 300M or 1.5GiB")
    return int(float(m.group(1)) * {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}[m.group(2)])


def expected_bytes(spec: bb.Spec) -> float:
    lo, hi = spec.small_min, spec.small_max
    mean_small = (hi - lo) / math.log(hi / lo)   # log-uniform sizes
    return spec.small_files * mean_small + sum(s for _, s, _ in spec.large) + spec.db_size


def scale_for(size: int) -> float:
    """The bench_backup.py scale whose tree comes closest to `size` bytes."""
    lo, hi = 1e-5, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_bytes(bb.Spec(mid)) < size:
            lo = mid
        else:
            hi = mid
    return round(hi, 5)


# --- the server --------------------------------------------------------------------------------

def _die_with_parent():
    """Child side of Popen: SIGTERM the server if this script dies without cleaning up (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


class Server:
    """`ironfs serve` as a subprocess, output in files (so no pipe can fill up)."""

    def __init__(self, exe: str, root: str, logdir: str, env: dict, plain_http: bool = False):
        self.root = root
        self.out_path = os.path.join(logdir, "serve.stdout")
        self.err_path = os.path.join(logdir, "serve.stderr")
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen([exe, "serve", "--data-root", root, "--listen", "127.0.0.1:0"]
                                     + (["--plain-http"] if plain_http else []),
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, env=env,
                                     preexec_fn=_die_with_parent)
        self.url = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.out_path, "rb") as f:
                m = re.search(rb"listening on (\S+)", f.read())
            if m:
                self.url = m.group(1).decode()
                break
            time.sleep(0.05)
        if self.url is None:
            self.stop()
            raise RuntimeError(f"ironfs serve did not start:\n{self.output()}")
        self.pid = self.proc.pid
        cert = os.path.join(root, "tls", "cert.pem")
        self._ctx = ssl.create_default_context(cafile=cert) if os.path.exists(cert) else None
        if self._ctx:
            self._ctx.check_hostname = False

    def cpu_s(self) -> float:
        """User + system seconds of the server process so far (all threads)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def metrics(self) -> dict:
        """The server's /metrics counters (admin login), or {} when they cannot be read."""
        try:
            import httpx
            text = httpx.get(self.url + "/metrics", verify=self._ctx or False, auth=("admin", ADMIN_PASSWORD),
                             timeout=30).text
        except Exception as exc:  # noqa: BLE001 - descriptive only
            log(f"could not read /metrics: {exc}")
            return {}
        out = {"_response_bytes": len(text.encode())}   # this very answer is counted in the next reading
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after 30 s); safe to call more than once."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("server did not stop within 30 s of SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        for f in (self._out, self._err):
            if not f.closed:
                f.close()
        return self.proc.returncode

    def output(self) -> str:
        text = ""
        for p in (self.out_path, self.err_path):
            try:
                with open(p, "rb") as f:
                    text += f.read().decode(errors="replace")[-4000:]
            except OSError:
                pass
        return text


def metrics_delta(before: dict, after: dict) -> dict:
    """What the server received and sent between two readings, less the first reading's own answer."""
    out = {"bytes_in": after.get("ironfs_bytes_in_total", 0) - before.get("ironfs_bytes_in_total", 0),
           "bytes_out": after.get("ironfs_bytes_out_total", 0) - before.get("ironfs_bytes_out_total", 0)
           - before.get("_response_bytes", 0)}
    requests = {}
    for k, v in after.items():
        m = re.fullmatch(r'ironfs_requests_total\{endpoint="([^"]+)",status="(\d+)"\}', k)
        if m and m.group(1) != "metrics":
            n = v - before.get(k, 0)
            if n:
                requests[f"{m.group(1)} {m.group(2)}"] = int(n)
    out["requests"] = requests
    return out


# --- the two sides -----------------------------------------------------------------------------

class Side:
    def __init__(self, name: str, work: str, source: str, exe: str):
        self.name, self.work, self.source, self.exe = name, work, source, exe
        self.home = os.path.join(work, f"home-{name}")
        os.makedirs(self.home)
        self.env = dict(os.environ, IRONCORE_HOME=self.home)
        self.server = None

    def ironcore(self, *args, stdin: bytes | None = None) -> dict:
        return bb.run([self.exe, *args], self.env, stdin=stdin)

    def stored(self) -> int:
        return bb.du_bytes(self.volume_dir)

    def backup(self) -> dict:
        r = self.ironcore("backup", self.name, "--json")
        r["report"] = bb.last_json(r["stdout"])
        return r

    def restore(self, target: str) -> dict:
        r = self.ironcore("restore", self.name, "--to", target, "--json")
        r["report"] = bb.last_json(r["stdout"])
        return r


class LocalSide(Side):
    def setup(self) -> dict:
        self.volume_dir = os.path.join(self.work, "volume-local")
        self.env["IRONCORE_PASSWORD"] = LOCAL_PASSWORD
        t0 = time.perf_counter()
        self.ironcore("set", "add", self.name, "--source", self.source, "--to", f"file://{self.volume_dir}")
        return {"set_add_s": round(time.perf_counter() - t0, 2)}


class RemoteSide(Side):
    def setup(self, ironfs: str, plain_http: bool = False) -> dict:
        root = os.path.join(self.work, "server-root")
        fs_env = dict(os.environ)
        t0 = time.perf_counter()
        bb.run([ironfs, "init", "--data-root", root, "--password-stdin"], fs_env,
               stdin=ADMIN_PASSWORD.encode() + b"\n")
        bb.run([ironfs, "account", "add", ACCOUNT, "--data-root", root, "--password-stdin"], fs_env,
               stdin=ACCOUNT_PASSWORD.encode() + b"\n")
        init_s = time.perf_counter() - t0
        self.server = Server(ironfs, root, self.work, fs_env, plain_http)
        log(f"server: pid {self.server.pid}, {self.server.url}")
        self.env["IRONCORE_PASSWORD"] = ACCOUNT_PASSWORD
        t0 = time.perf_counter()
        self.ironcore("login", "--server", self.server.url, "--account", ACCOUNT, "--password-stdin",
                      stdin=ACCOUNT_PASSWORD.encode() + b"\n")
        login_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.ironcore("set", "add", self.name, "--source", self.source, "--password-stdin",
                      stdin=ACCOUNT_PASSWORD.encode() + b"\n")
        set_add_s = time.perf_counter() - t0
        set_dir = os.path.join(root, "accounts", ACCOUNT, self.name)
        self.volume_dir = os.path.join(set_dir, "volume") if os.path.isdir(os.path.join(set_dir, "volume")) \
            else set_dir
        return {"url": self.server.url, "server_init_s": round(init_s, 2), "login_s": round(login_s, 2),
                "set_add_s": round(set_add_s, 2), "server_volume": self.volume_dir}


# --- the benchmark -----------------------------------------------------------------------------

def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def versions() -> dict:
    out = {"ironcore": bb.ironcore_version(),
           "openssl": ssl.OPENSSL_VERSION}
    for pkg in ("cheroot", "httpx"):
        try:
            from importlib.metadata import version
            out[pkg] = f"{pkg} {version(pkg)}"
        except Exception:  # noqa: BLE001
            pass
    return out


def bench(args) -> dict:
    scale = scale_for(args.size)
    spec = bb.Spec(scale)
    work = tempfile.mkdtemp(prefix="ironcore-bench-remote-", dir=args.dir or None)
    source = os.path.join(work, "tree")
    os.makedirs(source)
    exe_shown = os.path.relpath(sys.executable, REPO_ROOT) if sys.executable.startswith(REPO_ROOT) \
        else sys.executable
    res = {"command": " ".join([exe_shown] + sys.argv), "machine": bb.machine(), "disk": bb.disk_of(work),
           "work": work, "seed": args.seed, "size_asked": args.size, "scale": scale, "versions": versions(),
           "load_before": loadavg(), "transport": "plain http" if args.plain_http else "TLS", "phases": {}, "drop_caches": [], "started": time.strftime("%Y-%m-%d %H:%M %Z")}
    local = LocalSide("local", work, source, args.ironcore)
    remote = RemoteSide("remote", work, source, args.ironcore)
    sides = (local, remote)
    try:
        log(f"building the tree in {source} (scale {scale} for {bb.fmt_bytes(args.size)}, seed {args.seed})")
        t0 = time.perf_counter()
        tree = bb.build_tree(source, spec, args.seed)
        files, total = bb.tree_stats(source)
        res["tree"] = {"files": files, "bytes": total, "small_files": spec.small_files,
                       "large_files": [[n, s, c] for n, s, c in spec.large], "db_bytes": spec.db_size,
                       "build_s": round(time.perf_counter() - t0, 1)}
        log(f"tree: {files} files, {bb.fmt_bytes(total)} in {res['tree']['build_s']} s")

        res["setup"] = {"local": local.setup(), "remote": remote.setup(args.ironfs, args.plain_http)}
        log(f"setup: {res['setup']}")
        server = remote.server

        def phase(name: str, fn, source_bytes: int):
            rows = {}
            for side in sides:
                dropped = bb.drop_caches()
                res["drop_caches"].append(dropped)
                before = side.stored()
                m0, c0 = server.metrics(), server.cpu_s()
                log(f"{name}: {side.name} ...")
                r = fn(side)
                c1, m1 = server.cpu_s(), server.metrics()
                after = side.stored()
                row = {"wall_s": round(r["wall_s"], 2), "cpu_s": round(r["cpu_s"], 2),
                       "user_s": round(r["user_s"], 2), "sys_s": round(r["sys_s"], 2),
                       "maxrss_mib": round(r["maxrss_mib"]), "stored_before": before, "stored_after": after,
                       "stored_added": after - before, "mb_s": round(source_bytes / MB / r["wall_s"], 1),
                       "caches_dropped": dropped, "client_state": bb.du_bytes(side.home),
                       "server_cpu_s": round(c1 - c0, 2), "server": metrics_delta(m0, m1)}
                for k in ("report", "verify"):
                    if r.get(k) is not None:
                        row[k] = r[k]
                rows[side.name] = row
                net = row["server"]
                log(f"{name}: {side.name}: {row['wall_s']} s wall, {row['cpu_s']} s client cpu, "
                    f"{row['server_cpu_s']} s server cpu, stored +{bb.fmt_bytes(row['stored_added'])}, "
                    f"server in {bb.fmt_bytes(net['bytes_in'])} out {bb.fmt_bytes(net['bytes_out'])}"
                    + (f", verify {r['verify']}" if "verify" in r else ""))
            res["phases"][name] = rows

        phase("initial", lambda s: s.backup(), total)

        log("applying a day's changes")
        changes = bb.days_changes(source, tree, spec, args.seed + 100)
        files, total = bb.tree_stats(source)
        changes.update(files=files, bytes=total)
        res["changes"] = changes
        log(f"changes: {changes}")
        phase("incremental", lambda s: s.backup(), total)

        log("hashing the source sample for the restore check")
        digests = bb.manifest(source, tree, args.seed + 300, args.hash_sample)

        def restore(side):
            target = os.path.join(work, f"restore-{side.name}")
            os.makedirs(target)
            r = side.restore(target)
            r["verify"] = bb.verify_restore(os.path.join(target, source.lstrip("/")), files, total, digests)
            shutil.rmtree(target)
            return r

        phase("restore", restore, total)
        res["stored_final"] = {s.name: s.stored() for s in sides}
        res["stored_final_breakdown"] = {s.name: bb.du_breakdown(s.volume_dir) for s in sides}
        res["client_state_final"] = {s.name: bb.du_bytes(s.home) for s in sides}
    finally:
        if remote.server is not None:
            code = remote.server.stop()
            res["server_exit"] = code
            log(f"server stopped (SIGTERM), exit code {code}")
            if code not in (0, None):
                log(remote.server.output())
        res["load_after"] = loadavg()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            log(f"removed {work}")
    return res


# --- reporting ---------------------------------------------------------------------------------

HEAD = ["phase", "local s", "remote s", "remote / local", "local MB/s", "remote MB/s", "client CPU s local",
        "client CPU s remote", "server CPU s", "stored MB local", "stored MB remote", "sent MB", "received MB"]


def table_rows(res: dict) -> list[list[str]]:
    rows = []
    for name in PHASES:
        p = res["phases"].get(name)
        if not p or "local" not in p or "remote" not in p:
            continue
        lo, re_ = p["local"], p["remote"]
        backup = name != "restore"
        rows.append([PHASE_TITLES[name], f"{lo['wall_s']:.1f}", f"{re_['wall_s']:.1f}",
                     f"{bb.ratio(re_['wall_s'], lo['wall_s']):.2f}x", f"{lo['mb_s']:.0f}", f"{re_['mb_s']:.0f}",
                     f"{lo['cpu_s']:.1f}", f"{re_['cpu_s']:.1f}", f"{re_['server_cpu_s']:.1f}",
                     f"{lo['stored_added'] / MB:,.1f}" if backup else "",
                     f"{re_['stored_added'] / MB:,.1f}" if backup else "",
                     f"{re_['server']['bytes_in'] / MB:,.1f}", f"{re_['server']['bytes_out'] / MB:,.1f}"])
    return rows


def requests_line(res: dict) -> list[str]:
    out = []
    for name in PHASES:
        req = res["phases"].get(name, {}).get("remote", {}).get("server", {}).get("requests")
        if req:
            out.append(f"{PHASE_TITLES[name]}: " + ", ".join(f"{k} x{v}" for k, v in sorted(req.items())))
    return out


def checks(res: dict) -> str:
    p = res["phases"].get("restore", {})
    return ", ".join(f"{s} {'ok' if p[s]['verify']['ok'] else 'MISMATCH'}" for s in SIDES if s in p
                     and "verify" in p[s])


def markdown(res: dict) -> str:
    m, t = res["machine"], res["tree"]
    d = res.get("changes", {})
    dropped = res["drop_caches"]
    drop_text = ("yes, before every timed step" if dropped and all(dropped)
                 else "no (not permitted)" if not any(dropped) else f"only {sum(dropped)} of {len(dropped)} times")
    lines = [
        f"- Command: `{res['command']}`",
        f"- Machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']};"
        f" disk {res['disk']}; load average {res['load_before']} before, {res['load_after']} after.",
        "- Versions: " + "; ".join(res["versions"].values()),
        f"- Tree (seed {res['seed']}, bench_backup.py scale {res['scale']}): {t['files']:,} files,"
        f" {t['bytes'] / MB:,.0f} MB: {t['small_files']:,} small files of 1-64 KiB, large files of "
        + ", ".join(f"{s_ / MiB:.0f} MiB" for _, s_, _ in t["large_files"])
        + f", one {t['db_bytes'] / MiB:,.0f} MiB database-like file.",
        f"- Changes before the incremental backup: {d.get('db_changed_bytes', 0) / MB:.1f} MB of database pages"
        f" rewritten in place, {d.get('small_modified_files', 0)} small files modified,"
        f" {d.get('new_files', 0)} new small files ({d.get('new_bytes', 0) / MB:.1f} MB).",
        f"- Transport: {res['transport']} on 127.0.0.1. Page caches dropped: {drop_text}. Restore check: {checks(res)}.",
        "",
        bb.md_table(HEAD, table_rows(res)),
        "",
        f"Stored at the end: local volume {res['stored_final']['local'] / MB:,.1f} MB, server volume"
        f" {res['stored_final']['remote'] / MB:,.1f} MB; client state (`IRONCORE_HOME`) local"
        f" {res['client_state_final']['local'] / MB:,.1f} MB, remote {res['client_state_final']['remote'] / MB:,.1f} MB"
        " (the remote one holds the mirrored log, pack indexes and catalog).",
        "",
        "Requests the server answered during the remote steps (endpoint status x count):",
        "",
    ]
    lines += [f"- {line}" for line in requests_line(res)]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=GiB, help="about this much data in the tree (default 1G)")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--dir", help="parent folder of the temporary work folder (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (and the server's data root)")
    venv_bin = os.path.join(REPO_ROOT, ".venv", "bin")
    ap.add_argument("--ironcore", default=shutil.which("ironcore") or os.path.join(venv_bin, "ironcore"))
    ap.add_argument("--ironfs", default=shutil.which("ironfs") or os.path.join(venv_bin, "ironfs"))
    ap.add_argument("--plain-http", action="store_true",
                    help="serve plain HTTP on loopback instead of TLS (to tell TLS's share of the cost)")
    ap.add_argument("--hash-sample", type=int, default=1000, help="small files hash-checked after restore")
    ap.add_argument("--markdown", nargs="?", const="-", metavar="FILE",
                    help="print a markdown fragment for docs/PERFORMANCE.md (to FILE if given)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE", help="print all figures as JSON (to FILE if given)")
    args = ap.parse_args()

    def terminated(signum, frame):
        raise SystemExit(128 + signum)   # so the finally blocks stop the server
    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGHUP, terminated)

    res = bench(args)
    print()
    print(bb.text_table(HEAD, table_rows(res)))
    print()
    for line in requests_line(res):
        print(line)
    print(f"page caches dropped: {res['drop_caches']}; restore check: {checks(res)}")
    for flag, text in ((args.markdown, markdown(res) if args.markdown else None),
                       (args.json, json.dumps(res, indent=1, default=str) + "\n" if args.json else None)):
        if flag == "-":
            print()
            print(text, end="")
        elif flag:
            with open(flag, "w") as f:
                f.write(text)
    failed = [s for s in SIDES if "verify" in res["phases"].get("restore", {}).get(s, {})
              and not res["phases"]["restore"][s]["verify"]["ok"]]
    if failed:
        print(f"restore check FAILED for {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
