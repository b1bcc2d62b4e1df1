"""Memory stays bounded as the tree grows: backing up five times as many files
must not take much more memory (a client that held the tree would grow ~5x)."""
import json
import os
import subprocess

from conftest import BIN, PASSWORD


def make_tree(root, files: int) -> None:
    per_dir = 200
    for d in range(files // per_dir):
        folder = root / f"dir{d:05}"
        folder.mkdir(parents=True)
        for i in range(per_dir):
            fd = os.open(folder / f"file{i:04}", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"%d/%d" % (d, i))
            os.close(fd)


def peak_rss_of_backup(tmp, files: int) -> tuple[int, dict]:
    src = tmp / f"src{files}"
    make_tree(src, files)
    env = dict(os.environ, IRONCORE_HOME=str(tmp / f"home{files}"), IRONCORE_PASSWORD=PASSWORD)
    subprocess.run([BIN / "ironcore", "set", "add", "m", "--source", src, "--to", f"file://{tmp}/vol{files}"],
                   env=env, check=True, capture_output=True)
    proc = subprocess.Popen([BIN / "ironcore", "backup", "m", "--json"], env=env, stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss * 1024, json.loads(out)


def test_backup_memory_does_not_grow_with_the_tree(tmp_path):
    small_rss, small = peak_rss_of_backup(tmp_path, 20_000)
    large_rss, large = peak_rss_of_backup(tmp_path, 100_000)
    assert small["files_new"] == 20_000 and large["files_new"] == 100_000
    growth = large_rss - small_rss
    print(f"peak RSS: 20k files {small_rss >> 20} MiB, 100k files {large_rss >> 20} MiB")
    assert growth < 24 << 20, f"memory grew by {growth >> 20} MiB for 80,000 more files"
