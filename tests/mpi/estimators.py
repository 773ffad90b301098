"""Run under mpiexec -n P (P = 2 or 3): every split estimator equals the one-process estimator (exit 1 if not)."""
import sys
from pathlib import Path

import numpy as np

import dualtensor as dt
from dualtensor import distributed
from dualtensor.fgrad import activity_gradient, forward_gradient, simulated_forward_gradient
from dualtensor.fgrad.streams import KeyedTangents
from dualtensor.nn import functional as F
from dualtensor.nn import functional_call, models

comm = distributed.init(require=True)
assert comm.size in (2, 3), comm.size
dt.backend.set_default_dtype("float64")  # float64: a split may only change the order of sums
dt.nn.init.manual_seed(0)
model = models.mlp(20, width=16, depth=2, classes=5)
x = np.random.default_rng(0).standard_normal((11, 20))
y = np.random.default_rng(1).integers(0, 5, 11)
loss = lambda lg, t: F.cross_entropy(lg, t, reduction="none")  # noqa: E731
P = {n: p.data for n, p in model.named_parameters()}
lo, hi = comm.split(len(x))
failures = []


def close(name, a, b, tol=1e-10):
    err = max(float(np.abs(a[n] - b[n]).max()) for n in a) if isinstance(a, dict) else float(np.abs(a - b).max())
    if not err <= tol:
        failures.append(f"{name}: {err:.3g}")


for k in (3, 4):  # 3: an uneven split
    for sampler in ("normal", "rademacher", "orthonormal", "cone"):
        for aggregate in ("projection", "mean"):
            for shared in (False, True):
                keys = KeyedTangents(7, k)
                kw = dict(k=k, rng=keys, sampler=sampler, aggregate=aggregate, shared=shared)
                one = activity_gradient(model, loss, x, y, **kw)
                tp = activity_gradient(model, loss, x, y, comm=comm, **kw)
                drawn = activity_gradient(model, loss, x, y, comm=comm, other_tangents="draw", **kw)
                dp = activity_gradient(model, loss, x[lo:hi], y[lo:hi], comm=comm, split="data", **kw)
                tag = f"activity k={k} {sampler} {aggregate} shared={shared}"
                close(tag + " tangents", one.grads, tp.grads)
                close(tag + " tangents d", one.d, tp.d)
                # the same numbers (where the samples are split: normal, rademacher, not shared; elsewhere both
                # regenerate every tangent)
                close(tag + " tangents, the others' drawn", tp.grads, drawn.grads, 0.0)
                close(tag + " data", one.grads, dp.grads)
                close(tag + " data loss", one.loss, dp.loss)
                close(tag + " data d", one.d[:, lo:hi], dp.d)
        for simulated in (False, True):  # the paper's batch-shared estimator
            kw = dict(k=k, rng=KeyedTangents(7, k), sampler=sampler, estimator="batch", simulated=simulated)
            one = activity_gradient(model, loss, x, y, **kw)
            dp = activity_gradient(model, loss, x[lo:hi], y[lo:hi], comm=comm, split="data", **kw)
            tag = f"activity batch estimator k={k} {sampler} simulated={simulated}"
            if not simulated:
                close(tag + " tangents", one.grads, activity_gradient(model, loss, x, y, comm=comm, **kw).grads)
            close(tag + " data", one.grads, dp.grads)
    whole = lambda P: F.cross_entropy(functional_call(model, P, x), y)  # noqa: E731
    shard = lambda P: F.cross_entropy(functional_call(model, P, x[lo:hi]), y[lo:hi])  # noqa: E731
    for sampler in ("normal", "orthonormal"):
        keys = KeyedTangents(7, k)
        one = forward_gradient(whole, P, k, rng=keys, sampler=sampler)
        tp = forward_gradient(whole, P, k, rng=keys, sampler=sampler, comm=comm)
        dp = forward_gradient(shard, P, k, rng=keys, sampler=sampler, comm=comm, split="data", weight=(hi - lo) / 11)
        sim = simulated_forward_gradient(shard, P, k, rng=keys, sampler=sampler, comm=comm, split="data",
                                         weight=(hi - lo) / 11)
        close(f"weight k={k} {sampler} tangents", one[1], tp[1])
        close(f"weight k={k} {sampler} data", one[1], dp[1])
        close(f"weight k={k} {sampler} simulated data", one[1], sim[1], 1e-8)
        close(f"weight k={k} {sampler} data loss", one[0], dp[0])

# fewer samples than ranks: a rank with no rows to aggregate still sends its tangents' rows to the others
for B_small in (1, 2):
    kw = dict(k=comm.size + 1, rng=KeyedTangents(3, B_small))
    one = activity_gradient(model, loss, x[:B_small], y[:B_small], **kw)
    for other in ("exchange", "draw"):
        tp = activity_gradient(model, loss, x[:B_small], y[:B_small], comm=comm, other_tangents=other, **kw)
        close(f"activity tangents B={B_small} {other}", one.grads, tp.grads)

# what moved: tangents mode gathers k x B directional derivatives, weight data mode k + 1 numbers
before = comm.bytes_sent
forward_gradient(shard, P, 4, rng=KeyedTangents(0), comm=comm, split="data", weight=(hi - lo) / 11)
if comm.bytes_sent - before != 5 * 8:
    failures.append(f"weight data-parallel sent {comm.bytes_sent - before} bytes, expected 5 float64")
mine = (comm.split(4)[1] - comm.split(4)[0]) * 11 * 8  # this rank's (k/P, B) directional derivatives, float64
before = comm.bytes_sent
activity_gradient(model, loss, x, y, k=4, rng=KeyedTangents(0), comm=comm, sampler="orthonormal")  # regenerates
if comm.bytes_sent - before != mine:
    failures.append(f"activity tangent-parallel (orthonormal) sent {comm.bytes_sent - before} bytes, expected {mine}")
estimate = (hi - lo) * 37 * 8  # this rank's rows of the (B, n) estimate, n = 16 + 16 + 5
# exchange: this rank's k/P tangents for the other ranks' rows (all n entries of each)
exchanged = (comm.split(4)[1] - comm.split(4)[0]) * (11 - (hi - lo)) * 37 * 8
for aggregate in ("projection", "mean"):  # split by samples: d, then the estimate
    for other, expected in (("exchange", mine + exchanged + estimate), ("draw", mine + estimate)):
        before = comm.bytes_sent
        activity_gradient(model, loss, x, y, k=4, rng=KeyedTangents(0), comm=comm, aggregate=aggregate,
                          other_tangents=other)
        if comm.bytes_sent - before != expected:
            failures.append(f"activity tangent-parallel ({aggregate}, {other}) sent {comm.bytes_sent - before} "
                            f"bytes, expected {expected}")
before = comm.bytes_sent
custom = lambda d, V: dt.fgrad.get_aggregator("mean")(d, V)  # noqa: E731 - a user's: the samples may couple
activity_gradient(model, loss, x, y, k=4, rng=KeyedTangents(0), comm=comm, aggregate=custom)  # regenerates
if comm.bytes_sent - before != mine:
    failures.append(f"activity tangent-parallel (a user's aggregator) sent {comm.bytes_sent - before} bytes, "
                    f"expected {mine}")

try:
    forward_gradient(whole, P, 4, rng=np.random.default_rng(0), comm=comm)
    failures.append("a generator rng was accepted over two ranks")
except ValueError as e:
    assert "KeyedTangents" in str(e)
try:
    activity_gradient(model, loss, x, y, k=1, rng=KeyedTangents(0), comm=comm)
    failures.append("k=1 was split over two ranks")
except ValueError as e:
    assert "need k >= ranks" in str(e)

# CuPy arrays (the stand-in where there is no GPU) travel through host buffers and come back on the device
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not dt.backend.gpu_available():
    import cupy_standin

    cupy_standin.install()
import cupy  # noqa: E402

a = cupy.asarray(np.arange(3.0) + comm.rank)
gathered, summed = comm.allgather(a[None]), comm.allreduce(a)
if not (dt.backend.is_cupy(gathered) and dt.backend.is_cupy(summed)):
    failures.append("CuPy arrays came back as host arrays")
elif dt.backend.to_host(summed).tolist() != (np.arange(3.0) * comm.size + sum(range(comm.size))).tolist():
    failures.append(f"CuPy allreduce gave {dt.backend.to_host(summed)}")
elif dt.backend.to_host(gathered).shape != (comm.size, 3):
    failures.append(f"CuPy allgather gave shape {gathered.shape}")

# alltoallv: rank s sends rank r (s + 1)·(r + 1) copies of 10·s + r; received in rank order after a gap of one
me, size = comm.rank, comm.size
counts = [(me + 1) * (r + 1) for r in range(size)]
send_parts = [(int(sum(counts[:r])), counts[r]) for r in range(size)]
got = [(s + 1) * (me + 1) for s in range(size)]
out_parts = [(1 + int(sum(got[:s])), got[s]) for s in range(size)]
expected = np.concatenate([[-1.0]] + [np.full(g, 10.0 * s + me) for s, g in enumerate(got)])
for xs, xo in ((np, np), (cupy, cupy), (np, cupy)):  # (a host send buffer into a device one: staged too)
    send = xs.asarray(np.concatenate([np.full(c, 10.0 * me + r) for r, c in enumerate(counts)]))
    out = xo.asarray(np.full(1 + sum(got), -1.0))
    back = comm.alltoallv(send, send_parts, out, out_parts)
    if back is not out or dt.backend.to_host(out).tolist() != expected.tolist():
        failures.append(f"alltoallv ({xs.__name__} into {xo.__name__}) gave {dt.backend.to_host(out)}, "
                        f"expected {expected}")
try:
    comm.alltoallv(np.zeros(sum(counts), np.float32), send_parts, np.zeros(1 + sum(got)), out_parts)
    failures.append("alltoallv took buffers of two dtypes")
except ValueError as e:
    assert "one dtype" in str(e)

print(f"rank {comm.rank}: " + ("ok" if not failures else "; ".join(failures)), flush=True)
sys.exit(1 if failures else 0)
