"""One factory for the step function of every gradient mode.

A step takes a batch ``(x, y)`` and returns :class:`StepOutput`: the mean training loss (a 0-d
array on the batch's device: reading it as a number is a device-to-host sync, which the loop
batches), a gradient (or gradient estimate) for every parameter, and the logits it computed.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .build import RandomStreams, model_blocks
from .config import TrainConfig

__all__ = ["StepOutput", "Step", "make_step"]


class StepOutput(NamedTuple):
    """What one gradient step computed on a batch."""

    loss: Any
    grads: dict[str, Any]
    logits: Any


Step = Callable[[Any, Any], StepOutput]


def make_step(model: Any, config: TrainConfig, tangents: Any) -> Step:
    """The step of ``config.grad`` (backprop, forward, simulated) and ``config.perturb`` (activity,
    weight) for ``model``; forward gradients draw their tangents from ``tangents``: a generator, or
    the run's :class:`RandomStreams` (whose generator of the current epoch is used)."""
    if config.grad == "backprop":
        return _backprop_step(model)
    from ..fgrad import get_sampler

    params = ({"alpha": config.cone_alpha} if config.cone_alpha is not None else
              {"L": config.tangent_length} if config.tangent_length is not None else {})
    sampler = get_sampler(config.tangents, **params)
    factory = _activity_step if config.perturb == "activity" else _weight_step
    current = (lambda: tangents.tangents) if isinstance(tangents, RandomStreams) else (lambda: tangents)
    return factory(model, config, sampler, current, simulated=config.grad == "simulated")


def _parameters(model: Any) -> Callable[[], dict]:
    params = dict(model.named_parameters())
    return lambda: {n: p.data for n, p in params.items()}


def _backprop_step(model: Any) -> Step:
    from .. import autodiff
    from ..tensor import primal_of
    from ..nn import functional as F
    from ..nn import functional_call

    current = _parameters(model)

    def objective(P: dict, x: Any, y: Any):
        logits = functional_call(model, P, x)
        return F.cross_entropy(logits, y, reduction="mean"), primal_of(logits)

    vg = autodiff.value_and_grad(objective, has_aux=True)

    def step(x: Any, y: Any) -> StepOutput:
        (loss, logits), grads = vg(current(), x, y)
        return StepOutput(primal_of(loss), grads, logits)

    return step


def _activity_step(model: Any, config: TrainConfig, sampler: Any, rng: Any, *, simulated: bool) -> Step:
    from ..tensor import primal_of
    from ..fgrad import activity_gradient
    from ..nn import functional as F

    blocks = model_blocks(model, config)

    def step(x: Any, y: Any) -> StepOutput:
        seen: dict = {}

        def per_sample_loss(logits: Any, target: Any):
            seen["logits"] = logits
            return F.cross_entropy(logits, target, reduction="none")

        res = activity_gradient(model, per_sample_loss, x, y, k=config.k, sampler=sampler,
                                aggregate=config.aggregate, rng=rng(), shared=config.shared_tangents,
                                simulated=simulated, keep=config.keep, blocks=blocks)
        return StepOutput(primal_of(res.loss), res.grads, primal_of(seen["logits"]))

    return step


def _weight_step(model: Any, config: TrainConfig, sampler: Any, rng: Any, *, simulated: bool) -> Step:
    from ..tensor import primal_of
    from ..fgrad import forward_gradient, simulated_forward_gradient
    from ..nn import functional as F
    from ..nn import functional_call

    estimator = simulated_forward_gradient if simulated else forward_gradient
    current = _parameters(model)

    def step(x: Any, y: Any) -> StepOutput:
        seen: dict = {}

        def f(P: dict):
            logits = functional_call(model, P, x)
            seen["logits"] = logits
            return F.cross_entropy(logits, y, reduction="mean")

        loss, grads, _ = estimator(f, current(), config.k, sampler=sampler, aggregate=config.aggregate,
                                   rng=rng(), shared=config.shared_tangents)
        return StepOutput(primal_of(loss), grads, primal_of(seen["logits"]))

    return step
