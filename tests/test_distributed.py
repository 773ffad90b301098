"""dualtensor.distributed without MPI: work splits, the one-process communicator, agreement on failures,
and the checks the split estimators make before any collective (the 2-rank runs are in test_mpi.py)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dualtensor as dt
from dualtensor import distributed
from dualtensor.errors import UsageError
from dualtensor.fgrad import activity_gradient, forward_gradient
from dualtensor.fgrad.streams import KeyedTangents
from dualtensor.nn import functional as F
from dualtensor.nn import models


@given(n=st.integers(0, 200), size=st.integers(1, 17))
def test_split_range_covers_every_item_once_and_evenly(n, size):
    parts = [distributed.split_range(n, size, r) for r in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    lengths = [hi - lo for lo, hi in parts]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_the_serial_communicator_is_the_identity():
    comm = distributed.Serial()
    x = np.arange(6.0).reshape(3, 2)
    assert comm.size == 1 and comm.is_root and comm.split(5) == (0, 5)
    assert comm.allgather(x) is x and comm.allreduce(x) is x
    a, b = comm.allreduce_many([np.float32(2.0) * np.ones(()), np.ones((2, 2), np.float64)], 0.5)
    assert a.shape == () and a.dtype == np.float64 and float(a) == 1.0 and (b == 0.5).all()
    out = np.full(4, -1.0)  # alltoallv: its one part to itself, at the offsets given; the rest untouched
    assert comm.alltoallv(np.arange(5.0), [(1, 3)], out, [(0, 3)]) is out and out.tolist() == [1.0, 2.0, 3.0, -1.0]
    with pytest.raises(ValueError, match="sends itself 3 items but expects 2"):
        comm.alltoallv(np.arange(5.0), [(1, 3)], out, [(0, 2)])


def test_a_launcher_without_mpi4py_is_refused_not_run_as_independent_copies(monkeypatch):
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setattr(distributed, "available", lambda: False)
    monkeypatch.setattr(distributed, "launched", lambda: True)
    with pytest.raises(distributed.DistributedError, match="mpi4py is not installed"):
        distributed.init()


def test_require_does_not_accept_a_cached_serial_communicator(monkeypatch):
    monkeypatch.setattr(distributed, "_WORLD", distributed.Serial())
    monkeypatch.setattr(distributed, "available", lambda: False)
    with pytest.raises(distributed.DistributedError, match="install the mpi extra"):
        distributed.init(require=True)


def test_init_without_a_launcher_is_serial_and_require_names_the_extra(monkeypatch):
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setattr(distributed, "launched", lambda: False)
    assert isinstance(distributed.init(), distributed.Serial)
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setattr(distributed, "available", lambda: False)
    with pytest.raises(distributed.DistributedError, match=r"install the mpi extra"):
        distributed.init(require=True)


class TwoRanks(distributed.Communicator):
    """Rank 0 of a pretend 2-rank job whose collectives must never be reached."""

    rank, size = 0, 2

    def allreduce(self, x):
        return x * 0 + (1 if x.dtype.kind == "i" else x)  # the other rank failed (agreed) / no-op


def _fails(error):
    def fn():
        raise error
    return fn


def test_agreed_raises_peer_failed_where_only_another_rank_failed():
    assert distributed.agreed(distributed.Serial(), lambda: 5) == 5
    with pytest.raises(distributed.PeerFailed) as e:  # the pretend peer reports a failure
        distributed.agreed(TwoRanks(), lambda: 5)
    assert e.value.code == 1
    with pytest.raises(UsageError) as u:  # this rank's own error, marked as not every rank's
        distributed.agreed(TwoRanks(), _fails(UsageError("bad")))
    assert str(u.value) == "bad" and u.value.all_ranks is False
    with pytest.raises(UsageError, match="bad"):
        distributed.agreed(distributed.Serial(), _fails(UsageError("bad")))


def test_split_estimators_refuse_what_they_cannot_split():
    dt.nn.init.manual_seed(0)
    model = models.mlp(6, width=4, depth=1, classes=2)
    x, y = np.ones((3, 6)), np.array([0, 1, 0])
    loss = lambda lg, t: F.cross_entropy(lg, t, reduction="none")  # noqa: E731
    P = {n: p.data for n, p in model.named_parameters()}
    f = lambda P: F.cross_entropy(dt.nn.functional_call(model, P, x), y)  # noqa: E731
    with pytest.raises(ValueError, match="pass rng=KeyedTangents"):
        activity_gradient(model, loss, x, y, k=2, rng=np.random.default_rng(0), comm=TwoRanks())
    with pytest.raises(ValueError, match="k=1 tangents cannot be split over 2 ranks"):
        activity_gradient(model, loss, x, y, k=1, rng=KeyedTangents(0), comm=TwoRanks())
    with pytest.raises(ValueError, match="split must be 'tangents' or 'data'"):
        activity_gradient(model, loss, x, y, k=2, rng=0, comm=TwoRanks(), split="rows")
    with pytest.raises(ValueError, match="other_tangents must be one of exchange, draw, got 'send'"):
        activity_gradient(model, loss, x, y, k=2, rng=0, comm=TwoRanks(), other_tangents="send")
    with pytest.raises(ValueError, match="pass rng=KeyedTangents"):
        forward_gradient(f, P, 2, rng=np.random.default_rng(0), comm=TwoRanks())
    with pytest.raises(ValueError, match="k=1 tangents cannot be split"):
        forward_gradient(f, P, 1, rng=0, comm=TwoRanks())


def test_with_a_communicator_a_seed_means_keyed_tangents_at_any_size():
    dt.nn.init.manual_seed(0)
    model = models.mlp(6, width=4, depth=1, classes=2)
    x, y = np.random.default_rng(0).standard_normal((3, 6)), np.array([0, 1, 0])
    loss = lambda lg, t: F.cross_entropy(lg, t, reduction="none")  # noqa: E731
    keyed = activity_gradient(model, loss, x, y, k=2, rng=KeyedTangents(1))
    drawn = activity_gradient(model, loss, x, y, k=2, rng=1)  # without one: a generator seeded with 1
    assert not all(np.array_equal(keyed.grads[n], drawn.grads[n]) for n in keyed.grads)
    for split in ("tangents", "data"):
        a = activity_gradient(model, loss, x, y, k=2, rng=1, comm=distributed.Serial(), split=split)
        assert all(np.array_equal(a.grads[n], keyed.grads[n]) for n in a.grads)
    P = {n: p.data for n, p in model.named_parameters()}
    f = lambda P: F.cross_entropy(dt.nn.functional_call(model, P, x), y)  # noqa: E731
    g1 = forward_gradient(f, P, 2, rng=1, comm=distributed.Serial())[1]
    g2 = forward_gradient(f, P, 2, rng=KeyedTangents(1))[1]
    assert all(np.array_equal(g1[n], g2[n]) for n in P)


def test_data_parallel_ranks_average_their_batch_norm_statistics():
    from dualtensor import nn
    from dualtensor.train.runner import average_buffers

    class Doubled(TwoRanks):  # the other rank holds the same buffers plus 2
        def allreduce(self, x):
            return 2 * x + 2 * self.scale

    bn = nn.BatchNorm2d(3)
    bn.running_mean[...] = np.array([1.0, 2.0, 3.0], dtype=bn.running_mean.dtype)
    comm = Doubled()
    comm.scale = 1.0 / 2  # allreduce_many scales by 1/P before summing
    average_buffers(bn, comm)
    np.testing.assert_allclose(bn.running_mean, [2.0, 3.0, 4.0])  # (x + (x + 2)) / 2


def test_bind_device_leaves_the_cpu_alone():
    assert distributed.bind_device(distributed.Serial(), "cpu") is None


def test_the_training_config_checks_what_a_split_needs():
    from dualtensor.train import ConfigError, TrainConfig

    base = TrainConfig(width=8, depth=1).resolved()
    with pytest.raises(ConfigError, match="--grad backprop carries none"):
        base.replace(parallel="tangents", grad="backprop").validate()
    with pytest.raises(ConfigError, match="--k 2 tangents cannot be split over 3 ranks"):
        base.replace(parallel="tangents", k=2, ranks=3).validate()
    with pytest.raises(ConfigError, match="--batch-size 2 cannot be split over 3"):
        base.replace(parallel="data", batch_size=2, ranks=3).validate()
    with pytest.raises(ConfigError, match="--parallel none"):
        base.replace(ranks=2).validate()
    with pytest.raises(ConfigError, match="invalid choice 'rows'"):
        base.replace(parallel="rows").validate()
    with pytest.raises(ConfigError, match="--other-tangents draw applies to --parallel tangents with activity"):
        base.replace(parallel="data", other_tangents="draw", ranks=2).validate()
    with pytest.raises(ConfigError, match="--other-tangents draw applies"):
        base.replace(parallel="tangents", perturb="weight", other_tangents="draw", ranks=2).validate()
    with pytest.raises(ConfigError, match="invalid choice 'send'"):
        base.replace(other_tangents="send").validate()
    base.replace(parallel="tangents", other_tangents="draw", ranks=2).validate()  # what it is for
