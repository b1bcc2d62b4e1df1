"""Pre- and post-backup commands around real backups to a real server: a dump
made before the backup is in it, output and exit codes reach the report, a
failing or hanging pre-command skips the backup with a clear message (unless
the set continues after it), and the post-command runs in every case."""
import json
import os
import time

from serverkit import server  # noqa: F401 (server is a fixture)
from test_daemon import one_file_set


def last_report(env) -> dict:
    return json.loads(env.ironcore("reports", "docs", "--json", "--limit", "1").stdout)[0]


def snapshot_count(env) -> int:
    return len(json.loads(env.ironcore("snapshots", "docs", "--json").stdout))


def test_pre_and_post_commands_and_their_failures(env, server, tmp_path):
    src = one_file_set(env, server, tmp_path, "data\n")
    marks = tmp_path / "marks"
    marks.mkdir()

    # FAQ 2.48: the pre-command dumps something into the source; the backup takes it
    env.ironcore("set", "edit", "docs",
                 "--pre-command", f"echo dumped > {src}/dump.txt && echo pre says hello",
                 "--post-command", f"echo post saw $IRONCORE_BACKUP_STATUS for $IRONCORE_SET; touch {marks}/post")
    run = env.backup_json("docs")
    assert run["status"] == "ok" and run["files_new"] == 2 and run["snapshot"] == 1
    assert run["hooks"]["pre"]["ok"] and "pre says hello" in run["hooks"]["pre"]["output"]
    assert "post saw ok for docs" in run["hooks"]["post"]["output"]
    stored = last_report(env)
    assert stored["status"] == "ok" and "pre says hello" in stored["hooks"]["pre"]["output"]
    assert stored["hooks"]["post"]["exit_code"] == 0

    # a failing pre-command skips the backup; the post-command still runs (it may restart a service)
    (marks / "post").unlink()
    env.ironcore("set", "edit", "docs", "--pre-command", "echo share not reachable >&2; exit 3")
    proc = env.ironcore("backup", "docs", check=False)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert "pre-backup command failed with exit code 3" in err and "backup was skipped" in err
    assert "--pre-continue-on-error" in err and "Traceback" not in err
    assert snapshot_count(env) == 1 and (marks / "post").exists()
    stored = last_report(env)
    assert stored["status"] == "skipped" and "share not reachable" in stored["hooks"]["pre"]["output"]
    assert stored["hooks"]["pre"]["exit_code"] == 3 and "post saw skipped" in stored["hooks"]["post"]["output"]
    shown = env.ironcore("reports", "docs").stdout.decode()
    assert "skipped" in shown and "FAILED (exit 3" in shown and "| share not reachable" in shown

    # ... unless the set says to continue: then the backup runs, with a warning
    (src / "a.txt").write_text("data, changed\n")
    env.ironcore("set", "edit", "docs", "--pre-continue-on-error")
    run = env.backup_json("docs")
    assert run["status"] == "warning" and run["snapshot"] == 2 and run["files_changed"] == 1
    assert "continues after that" in run["warnings"][0]

    # a hanging pre-command is stopped at its timeout, its whole process group with it
    env.ironcore("set", "edit", "docs", "--pre-stop-on-error", "--pre-timeout", "1",
                 "--pre-command", f"echo $$ > {marks}/pid; sleep 60 & echo $! > {marks}/child; wait")
    started = time.monotonic()
    proc = env.ironcore("backup", "docs", "--json", check=False)
    assert proc.returncode == 1 and time.monotonic() - started < 20
    run = json.loads(proc.stdout)
    assert run["status"] == "skipped" and run["hooks"]["pre"]["timed_out"]
    assert "did not finish within 1 s" in proc.stderr.decode()
    for name in ("pid", "child"):
        pid = int((marks / name).read_text())
        try:
            os.kill(pid, 0)
            alive = not open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        except ProcessLookupError:
            alive = False
        assert not alive, f"the hook's {name} process {pid} outlived its timeout"
    assert snapshot_count(env) == 2

    # removing the commands
    env.ironcore("set", "edit", "docs", "--pre-command", "", "--post-command", "")
    run = env.backup_json("docs")
    assert run["status"] == "ok" and run["hooks"] == {}
