"""Scale-out over MPI (mpi4py): ranks, a communicator for NumPy and CuPy arrays, work splits.

``init()`` gives the communicator of the job (``MPI.COMM_WORLD`` when mpi4py is installed and the
process was started by ``mpiexec``/``srun``; a one-process :class:`Serial` communicator otherwise),
so the same code runs on a laptop and on a cluster. Arrays travel as typed buffers (never pickled).
CuPy arrays are staged through host memory unless the MPI library reports CUDA support
(``MPIX_Query_cuda_support``, or ``DUALTENSOR_MPI_CUDA_AWARE=1``), in which case device buffers are
passed to MPI directly.

Tangent parallelism (``split="tangents"`` in :func:`~dualtensor.fgrad.forward_gradient` and
:func:`~dualtensor.fgrad.activity_gradient`): each rank carries its share of the k tangents
through its own forward pass (the primal is recomputed on every rank), the directional
derivatives are gathered, and every rank computes the same estimate from the step's keyed tangents
(:class:`~dualtensor.fgrad.streams.KeyedTangents`: it draws the ones it lacks, or with activity
perturbation's sample split receives them from the ranks that drew them). Data parallelism
(``split="data"``): each rank takes its shard of the batch, one Allreduce sums.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backend import get_xp, is_cupy, to_host

__all__ = ["Communicator", "Serial", "MPICommunicator", "init", "available", "launched", "launcher_rank", "mpiexec",
           "split_range", "bind_device", "agreed", "abort_on_error", "allreduce_grads", "PeerFailed",
           "DistributedError"]


class DistributedError(RuntimeError):
    """The ranks of a job disagree (their parameters differ), or MPI is missing (CLI exit status 2)."""


def split_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s share ``(lo, hi)`` of ``n`` items over ``size`` ranks: contiguous, the first
    ``n % size`` ranks one item more."""
    q, r = divmod(int(n), int(size))
    lo = rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


def available() -> bool:
    """True when mpi4py can be imported."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS",
                  "HYDRA_CONTROL_FD", "MPI_LOCALNRANKS")


def mpiexec() -> str | None:
    """The ``mpiexec`` to start jobs with: the one beside this Python (the mpich wheel installs it
    into the environment), else the first on PATH; None when there is none."""
    here = Path(sys.executable).with_name("mpiexec")
    return str(here) if here.is_file() else shutil.which("mpiexec")


def launcher_rank() -> int | None:
    """This process's rank as the MPI launcher set it in the environment (None outside a launcher),
    known before MPI is initialised (e.g. to print a command-line error once)."""
    for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    return None


def launched() -> bool:
    """True when this process was started by an MPI launcher (mpiexec, mpirun, srun)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


class Communicator:
    """What the estimators and the training loop need from a group of ranks. Collective methods
    must be called by every rank in the same order."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    bytes_sent: int = 0  # payload bytes this rank has handed to collectives (for benchmarks)

    @property
    def is_root(self) -> bool:
        """True on rank 0 (the rank that writes files and prints)."""
        return self.rank == 0

    def split(self, n: int) -> tuple[int, int]:
        """This rank's share of ``n`` items (see :func:`split_range`)."""
        return split_range(n, self.size, self.rank)

    def allgather(self, x: Any) -> Any:
        """Every rank's ``x`` concatenated along axis 0 in rank order (the leading sizes may differ;
        the other axes must agree); same array module as ``x``."""
        raise NotImplementedError

    def allreduce(self, x: Any) -> Any:
        """The elementwise sum of every rank's ``x`` (same shape and dtype on all ranks)."""
        raise NotImplementedError

    def allreduce_many(self, arrays: list, scale: float = 1.0) -> list:
        """The sums over the ranks of ``scale`` times each array, in one Allreduce of one flat
        buffer (the arrays' common dtype); each result keeps its array's shape and dtype."""
        xp = get_xp(*arrays)
        dtype = np.result_type(*[a.dtype for a in arrays])
        flat = xp.empty(sum(a.size for a in arrays), dtype=dtype)
        off = 0
        for a in arrays:  # copied and scaled in one pass
            view = flat[off:off + a.size].reshape(a.shape)
            if scale != 1.0:
                xp.multiply(a, dtype.type(scale), out=view, dtype=dtype)  # in the buffer's precision
            else:
                view[...] = a
            off += a.size
        flat = self.allreduce_inplace(flat)
        out, off = [], 0
        for a in arrays:
            out.append(flat[off:off + a.size].reshape(a.shape).astype(a.dtype, copy=False))
            off += a.size
        return out

    def allreduce_inplace(self, x: Any) -> Any:
        """:meth:`allreduce` into ``x`` itself when MPI can read and write it (a contiguous host
        array, or a device one with CUDA-aware MPI); returns the sum."""
        return self.allreduce(x)

    def bcast(self, x: Any, root: int = 0) -> Any:
        """Rank ``root``'s array ``x`` on every rank (the others pass an array of the same shape and
        dtype to receive into)."""
        raise NotImplementedError

    def alltoallv(self, send: Any, send_parts: Sequence[tuple[int, int]], out: Any,
                  out_parts: Sequence[tuple[int, int]]) -> Any:
        """A personalised exchange of flat (1-d) buffers of one dtype: ``send[o:o + n]`` for
        ``(o, n) = send_parts[r]`` goes to rank r, and what rank r sends this one lands in
        ``out[o:o + n]`` for ``(o, n) = out_parts[r]`` (each pair of ranks must agree on n; the rest
        of ``out`` is left as it is). Returns ``out``."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait for every rank."""

    def abort(self, code: int = 1) -> None:
        """End the whole job now with exit status ``code`` (MPI_Abort): for an error on one rank
        that the others, waiting in a collective, would never see."""
        sys.exit(code)


class Serial(Communicator):
    """One process: every collective is the identity (no MPI needed)."""

    def allgather(self, x: Any) -> Any:
        return x

    def allreduce(self, x: Any) -> Any:
        return x

    def bcast(self, x: Any, root: int = 0) -> Any:
        return x

    def alltoallv(self, send: Any, send_parts: Sequence[tuple[int, int]], out: Any,
                  out_parts: Sequence[tuple[int, int]]) -> Any:
        (o, n), (p, m) = send_parts[0], out_parts[0]
        if n != m:
            raise ValueError(f"alltoallv: this rank sends itself {n} items but expects {m}")
        out[p:p + m] = send[o:o + n]
        return out

    def __repr__(self) -> str:
        return "Serial()"


def _cuda_aware(MPI: Any) -> bool:
    """Whether MPI takes device buffers: ``DUALTENSOR_MPI_CUDA_AWARE=1``/``0`` decides, else the MPI's own
    answer where mpi4py exposes one (``MPIX_Query_cuda_support``), else no."""
    forced = os.environ.get("DUALTENSOR_MPI_CUDA_AWARE")
    if forced in ("0", "1"):
        return forced == "1"
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query is not None else False
    except Exception:  # noqa: BLE001 - an MPI without the extension
        return False


class MPICommunicator(Communicator):
    """An mpi4py communicator (``MPI.COMM_WORLD`` by default) for NumPy and CuPy arrays."""

    def __init__(self, comm: Any = None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        self.cuda_aware = _cuda_aware(MPI)
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size})"

    def _staged(self, x: Any) -> tuple[Any, bool]:
        """(a contiguous buffer MPI can read, whether it is a host copy of a device array)."""
        if is_cupy(x) and not self.cuda_aware:
            return np.ascontiguousarray(to_host(x)), True
        xp = get_xp(x)
        return xp.ascontiguousarray(x), False

    def _back(self, host: np.ndarray, like: Any, staged: bool) -> Any:
        return get_xp(like).asarray(host) if staged else host

    def _sync(self, x: Any) -> None:
        if is_cupy(x):  # MPI reads device memory outside CuPy's stream
            from .backend import synchronize

            synchronize(get_xp(x))

    def allgather(self, x: Any) -> Any:
        buf, staged = self._staged(x)
        self._sync(buf)
        counts = np.empty(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([buf.shape[0] if buf.ndim else 1], dtype=np.int64), counts)
        counts = counts.tolist()
        row = int(np.prod(buf.shape[1:])) if buf.ndim > 1 else 1
        xp = np if staged else get_xp(buf)
        out = xp.empty((sum(counts), *buf.shape[1:]), dtype=buf.dtype)
        sizes = [c * row for c in counts]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        self.comm.Allgatherv(buf, [out, sizes, displs, self.MPI.Datatype.fromcode(buf.dtype.char)])
        self.bytes_sent += buf.nbytes
        return self._back(out, x, staged)

    def allreduce(self, x: Any) -> Any:
        buf, staged = self._staged(x)
        self._sync(buf)
        out = (np if staged else get_xp(buf)).empty_like(buf)
        self.comm.Allreduce(buf, out, op=self.MPI.SUM)
        self.bytes_sent += buf.nbytes
        return self._back(out, x, staged)

    def allreduce_inplace(self, x: Any) -> Any:
        buf, staged = self._staged(x)
        if staged or buf is not x:
            return self.allreduce(x)
        self._sync(buf)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        self.bytes_sent += buf.nbytes
        return buf

    def bcast(self, x: Any, root: int = 0) -> Any:
        buf, staged = self._staged(x)
        self._sync(buf)
        self.comm.Bcast(buf, root=root)
        if self.rank == root:
            self.bytes_sent += buf.nbytes
        return self._back(buf, x, staged)

    def alltoallv(self, send: Any, send_parts: Sequence[tuple[int, int]], out: Any,
                  out_parts: Sequence[tuple[int, int]]) -> Any:
        if send.dtype != out.dtype or send.ndim != 1 or out.ndim != 1:
            raise ValueError(f"alltoallv: send and out must be 1-d buffers of one dtype, got {send.dtype} "
                             f"{tuple(send.shape)} and {out.dtype} {tuple(out.shape)}")
        staged = (is_cupy(send) or is_cupy(out)) and not self.cuda_aware  # MPI reads and writes host memory
        buf = np.ascontiguousarray(to_host(send)) if staged else get_xp(send).ascontiguousarray(send)
        recv = np.empty(out.shape, dtype=out.dtype) if staged else out
        if not recv.flags.c_contiguous:
            raise ValueError("alltoallv: out must be a contiguous buffer")
        self._sync(buf)
        self._sync(recv)
        kind = self.MPI.Datatype.fromcode(buf.dtype.char)
        self.comm.Alltoallv([buf, [n for _, n in send_parts], [o for o, _ in send_parts], kind],
                            [recv, [n for _, n in out_parts], [o for o, _ in out_parts], kind])
        self.bytes_sent += buf.itemsize * sum(n for r, (_, n) in enumerate(send_parts) if r != self.rank)
        if staged:  # only the received parts go back to the device
            xp = get_xp(out)
            for o, n in out_parts:
                out[o:o + n] = xp.asarray(recv[o:o + n])
        return out

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


class PeerFailed(RuntimeError):
    """Another rank failed where this one did not; ``code`` is the exit status the job ends with."""

    def __init__(self, code: int):
        super().__init__(f"another MPI rank failed (exit status {code})")
        self.code = code


def agreed(comm: Communicator, fn: Any) -> Any:
    """``fn()`` on every rank, then one collective: if it raised on any rank, it raises there and
    :class:`PeerFailed` on the others (with exit status 2 when every failure was a usage error),
    so no rank goes on to wait for one that stopped."""
    from .errors import UsageError

    error = None
    try:
        result = fn()
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the others know
        error = e
    if comm.size > 1:
        failed = [error is not None, error is not None and not isinstance(error, UsageError)]
        failed, other = (int(c) for c in comm.allreduce(np.array(failed, dtype=np.int64)))
        if failed and error is None:
            raise PeerFailed(1 if other else 2)
        if error is not None:
            error.all_ranks = failed == comm.size  # the same failure everywhere: rank 0 reports it
    if error is not None:
        raise error
    return result


@contextlib.contextmanager
def abort_on_error(comm: Communicator, passes: tuple = ()) -> Iterator[None]:
    """Within it, an exception on one rank of a multi-rank job (other than ``passes``,
    :class:`PeerFailed`, ``KeyboardInterrupt`` and ``SystemExit``) is printed with its rank and
    ends the whole job at once (MPI_Abort, exit status 1) instead of leaving the other ranks
    waiting for it in a collective forever."""
    try:
        yield
    except (PeerFailed, KeyboardInterrupt, SystemExit, *passes):
        raise
    except BaseException:
        if comm.size == 1:
            raise
        print(f"rank {comm.rank} of {comm.size} failed; ending the job:\n{traceback.format_exc()}", file=sys.stderr,
              flush=True)
        comm.abort(1)


def allreduce_grads(comm: Communicator, loss: Any, grads: dict, weight: float) -> tuple[Any, dict]:
    """The ``weight``-ed sums over the ranks of a loss and a dict of gradients (this rank's shard:
    weight = shard size / global batch), in one flat Allreduce; every rank gets the same."""
    names = sorted(grads)
    summed = comm.allreduce_many([loss, *(grads[n] for n in names)], weight)
    return summed[0], dict(zip(names, summed[1:]))


_WORLD: Communicator | None = None


def init(require: bool = False) -> Communicator:
    """The job's communicator: :class:`MPICommunicator` over ``COMM_WORLD`` when mpi4py is
    installed (and, unless ``require``, only when an MPI launcher started this process), else
    :class:`Serial`. ``require=True`` raises :class:`DistributedError` without mpi4py."""
    global _WORLD
    if _WORLD is not None and not (require and isinstance(_WORLD, Serial)):
        return _WORLD
    if available() and (require or launched()):
        _WORLD = MPICommunicator()
    elif require or launched():  # under a launcher without mpi4py: P independent runs would start
        raise DistributedError("MPI is not available (mpi4py is not installed): install the mpi extra "
                               "(pip install -e \".[mpi]\", which brings mpi4py and an MPI with mpiexec) and start "
                               "the job with mpiexec -n P python -m dualtensor ...")
    else:
        _WORLD = Serial()
    return _WORLD


def bind_device(comm: Communicator, device: str) -> int | None:
    """One GPU per rank on a multi-GPU node: on ``"gpu"`` make GPU ``local rank mod GPUs`` this
    process's current device and return its index (None on the CPU)."""
    if device != "gpu":
        return None
    from .backend import gpu_count, select_gpu

    index = comm.local_rank % max(1, gpu_count())
    select_gpu(index)
    return index
