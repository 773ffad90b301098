"""CPU threads: backend.cpu_threads and run_parallel (and the float32 normal sampler on them), and
backend.let_idle_blas_threads_sleep (OpenBLAS's idle workers stop holding a core soon after a product).

Each let_idle_blas_threads_sleep case runs in a fresh interpreter with two OpenBLAS threads and
counts, 20 ms after a product, the process's threads that are running or runnable besides the main one
(a spinning worker is; a sleeping one is not). OpenBLAS's own default keeps a worker spinning for about
0.1 s, which is what the first count of every case shows, so the tests see the change rather than assume
it."""
import json
import os
import subprocess
import sys

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from dualtensor import backend
from dualtensor.fgrad import samplers

needs_worker = pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                                  reason="needs Linux's /proc and two CPUs (an OpenBLAS worker thread)")


@pytest.mark.parametrize("n", [1, 2])
def test_cpu_threads_follows_the_blas_limit(n):
    with threadpool_limits(limits=n, user_api="blas"):
        assert backend.cpu_threads() == min(n, os.cpu_count() or 1)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("earlier_pool", [0, 4])
def test_run_parallel_runs_every_task_once_on_at_most_n_threads(n, earlier_pool):
    """Each task once, prepared in order, never more running at once than the limit, also after a call
    under a higher limit started a larger pool."""
    if earlier_pool:
        backend._POOL.get(earlier_pool)
    prepared, ran, lock, running, most = [], [], threading.Lock(), [0], [0]

    def tasks():
        for i in range(40):
            prepared.append(i)  # prepared in order, on the calling thread

            def task(i=i):
                with lock:
                    running[0] += 1
                    most[0] = max(most[0], running[0])
                a = np.full(200_000, float(i))
                np.sqrt(a, out=a)
                threading.Event().wait(0.002)
                with lock:
                    running[0] -= 1
                    ran.append((i, threading.get_ident()))
            yield task

    with threadpool_limits(limits=n, user_api="blas"):
        backend.run_parallel(tasks())
        limit = backend.cpu_threads()
    assert prepared == list(range(40))
    assert sorted(i for i, _ in ran) == list(range(40))
    assert len({t for _, t in ran}) <= limit and most[0] <= limit
    if limit > 1:
        assert most[0] > 1  # and it did run tasks side by side


@needs_worker
def test_the_caller_takes_back_tasks_no_worker_has_started():
    """The worker is held by the first task until the second has run: the second must run on the caller
    (taken back from the queue), not wait behind the first."""
    release, where = threading.Event(), {}

    def first():
        release.wait(5)
        where["first"] = threading.get_ident()

    def second():
        where["second"] = threading.get_ident()
        release.set()

    with threadpool_limits(limits=2, user_api="blas"):
        if backend.cpu_threads() < 2:
            pytest.skip("OpenBLAS runs one thread here")
        backend.run_parallel([first, second])
    assert where["second"] == threading.get_ident() != where["first"]


def test_run_parallel_inside_a_task_runs_inline():
    """A task on a worker thread that calls run_parallel runs those tasks itself (handing them to the pool
    it occupies could only queue them behind it)."""
    seen = []

    def outer():
        me = threading.get_ident()
        inner = [threading.Event().wait(0.001) or (lambda: seen.append((me, threading.get_ident())))
                 for _ in range(6)]
        backend.run_parallel(inner)

    with threadpool_limits(limits=2, user_api="blas"):
        if backend.cpu_threads() < 2:
            pytest.skip("OpenBLAS runs one thread here")
        caller = threading.Thread(target=backend.run_parallel, args=([outer] * 8,), daemon=True)
        caller.start()
        caller.join(30)
    assert not caller.is_alive(), "nested run_parallel hung"
    main = caller.ident
    on_workers = [(o, i) for o, i in seen if o != main]
    assert on_workers and all(o == i for o, i in on_workers)


def test_run_parallel_from_several_threads_at_once():
    totals, errors = [], []

    def caller(j):
        try:
            for _ in range(20):
                out = np.zeros(8)

                def tasks():
                    for i in range(8):
                        yield lambda i=i: out.__setitem__(i, np.sqrt(np.full(20_000, float(i + j))).sum())
                backend.run_parallel(tasks())
                totals.append(out.sum())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with threadpool_limits(limits=2, user_api="blas"):
        callers = [threading.Thread(target=caller, args=(j,)) for j in range(3)]
        for c in callers:
            c.start()
        for c in callers:
            c.join(60)
    assert not errors and len(totals) == 60


def test_no_task_starts_after_one_failed():
    started, raising = [], threading.Event()

    def bad():
        raising.set()
        raise ValueError("task 0 failed")

    def tasks():
        yield bad
        raising.wait(10)
        threading.Event().wait(0.2)  # task 0 has failed by now, also on a loaded machine
        for i in range(1, 6):
            yield lambda i=i: started.append(i)

    with threadpool_limits(limits=2, user_api="blas"), pytest.raises(ValueError, match="task 0"):
        backend.run_parallel(tasks())
    assert started == []


def test_run_parallel_reraises_a_task_error():
    def bad():
        raise ValueError("task 3 failed")

    with threadpool_limits(limits=2, user_api="blas"), pytest.raises(ValueError, match="task 3"):
        backend.run_parallel([lambda: None, lambda: None, bad, lambda: None])


def test_normal_float32_gives_the_same_numbers_on_any_thread_count():
    count = 5 * 2 * samplers._BM_CHUNK + 7  # five full chunks and an odd overhang
    draws = []
    for n in (1, 2, 3):
        with threadpool_limits(limits=n, user_api="blas"):
            draws.append(samplers.normal(1, count, 5, dtype=np.float32))
    assert all(np.array_equal(draws[0], d) for d in draws[1:])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_run_parallel_works_in_a_forked_child():
    with threadpool_limits(limits=2, user_api="blas"):
        backend.run_parallel([lambda: None] * 4)  # the parent's pool exists
        pid = os.fork()
        if pid == 0:  # the child: its pool must be started afresh, not wait on the parent's threads
            try:
                v = samplers.normal(2, 3 * 2 * samplers._BM_CHUNK, 1, dtype=np.float32)
                os._exit(0 if np.isfinite(v).all() else 1)
            finally:
                os._exit(1)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in run_parallel")
    assert os.waitstatus_to_exitcode(status) == 0

_SCRIPT = r"""
import json, os, sys, threading, time
import numpy as np
from dualtensor import backend

a = np.ones((384, 384), np.float32)

def busy_after_product():
    b = a @ a
    time.sleep(0.02)
    me, n = threading.get_native_id(), 0
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        n += int(t) != me and state == "R"
    return n, bool((b == 384).all())

before = busy_after_product()
if sys.argv[1] == "call":
    changed = backend.let_idle_blas_threads_sleep()
else:
    from dualtensor import onednn
    changed = onednn.available()
    if sys.argv[1] == "conv":
        geo = ((1, 1), ((1, 1), (1, 1)), (1, 1), 1)
        y = onednn.conv_forward(np.ones((2, 8, 12, 12), np.float32), np.ones((8, 8, 3, 3), np.float32), None, *geo)
        assert y is not None and np.allclose(y[:, :, 1:-1, 1:-1], 72)
after = [busy_after_product() for _ in range(3)]
print(json.dumps({"before": before, "after": after, "changed": changed,
                  "env_left": "OPENBLAS_THREAD_TIMEOUT" in os.environ}))
"""


def _run(how: str, **env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS")}
    # oneDNN's OpenMP threads must not spin after a convolution either: only OpenBLAS's workers are counted
    e.update(OPENBLAS_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE", **env)
    r = subprocess.run([sys.executable, "-c", _SCRIPT, how], capture_output=True, text=True, timeout=120, env=e)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@needs_worker
def test_workers_sleep_soon_after_a_product():
    out = _run("call")
    assert out["before"] == [1, True]                    # OpenBLAS's default: the worker still spins at 20 ms
    assert any(p.endswith(".so") or ".so." in p for p in out["changed"])
    assert all(n == 0 and ok for n, ok in out["after"])  # asleep now, and products still right
    assert not out["env_left"]                            # child processes start with OpenBLAS's default


@needs_worker
def test_a_timeout_the_user_set_is_left_in_force():
    out = _run("call", OPENBLAS_THREAD_TIMEOUT="28")
    assert out["changed"] == []
    assert out["before"][0] == 1 and all(n == 1 for n, _ in out["after"])


@needs_worker
@pytest.mark.parametrize("how", ["onednn", "conv"])
def test_the_first_onednn_convolution_applies_it(how):
    """Loading oneDNN alone keeps OpenBLAS's default (waking a sleeping worker costs more than a short
    spin where no other pool needs the core); the first convolution oneDNN runs shortens the spin."""
    from dualtensor import onednn

    if not onednn.available():
        pytest.skip("oneDNN (the onednn extra) is not installed")
    out = _run(how)
    assert out["changed"] is True and out["before"][0] == 1
    assert all(n == (1 if how == "onednn" else 0) and ok for n, ok in out["after"])


@pytest.mark.parametrize("sampler", ["normal", "rademacher"])
def test_keyed_tangents_are_the_same_on_any_thread_count(sampler):
    from dualtensor.fgrad.streams import KeyedTangents

    draws = []
    for n in (1, 2, 3):
        with threadpool_limits(limits=n, user_api="blas"):
            keys = KeyedTangents(7, 3)
            draws.append((keys.weight(sampler, 3, 700_001, dtype=np.float32),
                          keys.activity(sampler, 4, 9)(30_001, np.float32)))
    for w, a in draws[1:]:
        assert np.array_equal(draws[0][0], w) and np.array_equal(draws[0][1], a)


def test_run_parallel_waits_for_the_workers_when_a_task_on_the_caller_raises():
    done = []

    def slow():
        threading.Event().wait(0.2)
        done.append(True)

    def tasks():
        yield slow
        yield slow
        yield slow  # both queue places taken: later tasks run on the caller
        raise RuntimeError("preparing the next task failed")

    with threadpool_limits(limits=2, user_api="blas"), pytest.raises(RuntimeError, match="preparing"):
        backend.run_parallel(tasks())
    assert len(done) == 3  # every submitted or started task finished before the error surfaced
