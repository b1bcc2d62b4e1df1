"""The worker pool of backup and restore (client.worker_process): jobs go to
forked processes over sockets and come back in order, with their exceptions;
a worker that dies fails its jobs with a plain error instead of hanging; a
pool whose answers are left unread (a failed run) still ends at once.

Each case runs in a fresh interpreter: the test process runs threads under
xdist, and the pool forks only where no other thread runs."""
import subprocess
import sys
import textwrap

PRELUDE = '''
import os, signal, sys, time
from client.worker_process import Workers, WorkerDied

def double(state, x):
    return state * x

def fail(state, message):
    raise OSError(5, message)

def unpicklable(state):
    return lambda: None

def pid(state):
    return os.getpid()

def slow(state, seconds):
    time.sleep(seconds)
    return seconds
'''


def run(body: str) -> str:
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_answers_come_back_in_order_with_their_errors():
    out = run('''
        pool = Workers(3, lambda: 10)
        assert pool.processes and pool.count == 3
        jobs = [pool.submit(double, i) for i in range(200)]
        assert [j.result() for j in jobs] == [10 * i for i in range(200)]
        spread = [pool.submit(pid) for _ in range(30)]   # to the worker with the fewest jobs waiting
        assert len({j.result() for j in spread} - {os.getpid()}) == 3
        failed = pool.submit(fail, "disk on fire")
        try:
            failed.result()
        except OSError as exc:
            print("raised", exc.errno, exc.strerror)
        print("exception", type(failed.exception()).__name__, failed.cancelled())
        bad = pool.submit(unpicklable)
        try:
            bad.result()
        except RuntimeError as exc:
            print("unpicklable", "cannot be sent" in str(exc))
        print("after", pool.submit(double, 4).result())
        seen = []
        job = pool.submit(double, 2)
        job.add_done_callback(lambda j: seen.append(j.result()))
        job.result()
        print("callback", seen)
        pool.shutdown()
    ''')
    assert "raised 5 disk on fire" in out and "exception OSError False" in out
    assert "unpicklable True" in out
    assert "after 40" in out
    assert "callback [20]" in out


def test_wait_first_returns_on_the_first_answer():
    out = run('''
        pool = Workers(2, lambda: None)
        slow_job = pool.submit(slow, 3.0)
        quick = pool.submit(slow, 0.1)
        started = time.monotonic()
        pool.wait_first([slow_job, quick])
        print("waited", round(time.monotonic() - started, 1), quick.done(), slow_job.done())
        pool.shutdown()
    ''')
    waited, quick_done, slow_done = out.split()[1:]
    assert float(waited) < 2.0 and quick_done == "True" and slow_done == "False"


def test_a_dead_worker_fails_its_jobs_plainly():
    out = run('''
        pool = Workers(1, lambda: None)
        worker_pid = pool.submit(pid).result()
        job = pool.submit(slow, 30)
        time.sleep(0.3)
        os.kill(worker_pid, signal.SIGKILL)
        try:
            job.result()
        except WorkerDied as exc:
            print("died:", exc.message)
        pool.shutdown()
    ''')
    assert "died: A worker process ended without finishing its work." in out


def test_shutdown_with_answers_unread_ends_after_the_job_in_hand():
    out = run('''
        pool = Workers(2, lambda: None)
        jobs = [pool.submit(slow, 0.5) for _ in range(20)]   # ten each: five seconds of work
        time.sleep(0.2)
        started = time.monotonic()
        pool.shutdown()
        print("shutdown", round(time.monotonic() - started, 1))
    ''')
    assert float(out.split()[1]) < 2.0


def test_with_threads_the_same_calls_work():
    out = run('''
        import threading
        other = threading.Thread(target=time.sleep, args=(2,))
        other.start()
        pool = Workers(2, lambda: 3, thread_count=2)
        assert not pool.processes
        jobs = [pool.submit(double, i) for i in range(10)]
        pool.wait_first(jobs)
        print([j.result() for j in jobs])
        pool.shutdown()
    ''')
    assert out.strip() == str([3 * i for i in range(10)])
