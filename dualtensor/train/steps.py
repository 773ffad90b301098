"""One factory for the step function of every gradient mode.

A step takes a batch ``(x, y)`` and returns :class:`StepOutput`: the mean training loss (a 0-d
array on the batch's device: reading it as a number is a device-to-host sync, which the loop
batches), a gradient (or gradient estimate) for every parameter, and the logits it computed.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .build import RandomStreams, model_blocks
from .config import TrainConfig

if TYPE_CHECKING:
    from ..distributed import Communicator

__all__ = ["StepOutput", "Step", "make_step"]


class StepOutput(NamedTuple):
    """What one gradient step computed on a batch (``targets``: the labels ``logits`` belong to
    when they are not the whole batch's, e.g. one rank's shard)."""

    loss: Any
    grads: dict[str, Any]
    logits: Any
    targets: Any = None


Step = Callable[[Any, Any], StepOutput]


def make_step(model: Any, config: TrainConfig, tangents: Any, comm: Communicator | None = None) -> Step:
    """The step of ``config.grad`` (backprop, forward, simulated) and ``config.perturb`` (activity,
    weight) for ``model``; forward gradients draw their tangents from ``tangents``: a generator, or
    the run's :class:`RandomStreams` (keyed tangents, one set per step). With ``config.parallel``
    ``"tangents"`` or ``"data"`` the step splits the tangents, or the batch, over the ranks of
    ``comm`` (a :mod:`dualtensor.distributed` communicator); every rank gets the same gradients."""
    from ..distributed import Serial

    comm = Serial() if comm is None else comm
    split = config.parallel if config.parallel != "none" and comm.size > 1 else None
    if config.grad == "backprop":
        return _sharded(_backprop_step(model, comm if split else None), split, comm)
    from ..fgrad import get_sampler

    params = ({"alpha": config.cone_alpha} if config.cone_alpha is not None else
              {"L": config.tangent_length} if config.tangent_length is not None else {})
    sampler = get_sampler(config.tangents, **params)
    factory = _activity_step if config.perturb == "activity" else _weight_step
    current = tangents.next_tangents if isinstance(tangents, RandomStreams) else (lambda: tangents)
    step = factory(model, config, sampler, current, simulated=config.grad == "simulated",
                   comm=comm if split else None, split=split or "tangents")
    return _sharded(step, split, comm)


def _sharded(step: Callable, split: str | None, comm: Any) -> Step:
    """``step(x, y, rows)`` on this rank's rows of each batch (data parallelism), else on all of it."""
    if split != "data":
        return lambda x, y: step(x, y, None)

    def sharded(x: Any, y: Any) -> StepOutput:
        lo, hi = comm.split(int(x.shape[0]))
        out = step(x[lo:hi], y[lo:hi], (lo, hi, int(x.shape[0])))
        return out._replace(targets=y[lo:hi])

    return sharded


def _parameters(model: Any) -> Callable[[], dict]:
    params = dict(model.named_parameters())
    return lambda: {n: p.data for n, p in params.items()}


def _backprop_step(model: Any, comm: Any) -> Callable:
    from .. import autodiff
    from ..distributed import allreduce_grads
    from ..tensor import primal_of
    from ..nn import functional as F
    from ..nn import functional_call

    current = _parameters(model)

    def objective(P: dict, x: Any, y: Any):
        logits = functional_call(model, P, x)
        return F.cross_entropy(logits, y, reduction="mean"), primal_of(logits)

    vg = autodiff.value_and_grad(objective, has_aux=True)

    def step(x: Any, y: Any, rows: Any) -> StepOutput:
        (loss, logits), grads = vg(current(), x, y)
        loss = primal_of(loss)
        if rows is not None:  # this rank's shard: the weighted sum over the ranks, one flat Allreduce
            loss, grads = allreduce_grads(comm, loss, grads, (rows[1] - rows[0]) / rows[2])
        return StepOutput(loss, grads, logits)

    return step


def _activity_step(model: Any, config: TrainConfig, sampler: Any, rng: Any, *, simulated: bool, comm: Any,
                   split: str) -> Callable:
    from ..tensor import primal_of
    from ..fgrad import activity_gradient
    from ..nn import functional as F

    blocks = model_blocks(model, config)

    def step(x: Any, y: Any, rows: Any) -> StepOutput:
        seen: dict = {}

        def per_sample_loss(logits: Any, target: Any):
            seen["logits"] = logits
            return F.cross_entropy(logits, target, reduction="none")

        keys = rng()
        res = activity_gradient(model, per_sample_loss, x, y, k=config.k, sampler=sampler,
                                aggregate=config.aggregate, rng=keys if rows is None else keys.rows(*rows),
                                shared=config.shared_tangents, simulated=simulated, keep=config.keep, blocks=blocks,
                                comm=comm, split=split, estimator=config.estimator,
                                other_tangents=config.other_tangents)
        return StepOutput(primal_of(res.loss), res.grads, primal_of(seen["logits"]))

    return step


def _weight_step(model: Any, config: TrainConfig, sampler: Any, rng: Any, *, simulated: bool, comm: Any,
                 split: str) -> Callable:
    from ..tensor import primal_of
    from ..fgrad import forward_gradient, simulated_forward_gradient
    from ..nn import functional as F
    from ..nn import functional_call

    estimator = simulated_forward_gradient if simulated else forward_gradient
    current = _parameters(model)

    def step(x: Any, y: Any, rows: Any) -> StepOutput:
        seen: dict = {}

        def f(P: dict):
            logits = functional_call(model, P, x)
            seen["logits"] = logits
            return F.cross_entropy(logits, y, reduction="mean")

        weight = None if rows is None else (rows[1] - rows[0]) / rows[2]
        loss, grads, _ = estimator(f, current(), config.k, sampler=sampler, aggregate=config.aggregate,
                                   rng=rng(), shared=config.shared_tangents, comm=comm, split=split, weight=weight)
        return StepOutput(primal_of(loss), grads, primal_of(seen["logits"]))

    return step
