"""Tests of dualtensor.optim: optimizers vs hand-written reference formulas, checkpoints, schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dualtensor.optim import (SGD, Adam, AdamW, ConstantLR, CosineAnnealingLR, ExpDecayLR,
                              ExponentialLR, Optimizer, StepLR, make_optimizer, make_schedule,
                              optimizer_state_from_arrays, optimizer_state_to_arrays,
                              state_from_arrays, state_to_arrays)


class P:
    """Minimal stand-in for dualtensor.nn.Parameter."""

    def __init__(self, data, grad=None):
        self.data = data
        self.grad = grad


class ElementwiseEqP(P):
    """A parameter whose == is elementwise, hence unhashable (like many tensor classes)."""

    __hash__ = None

    def __eq__(self, other):
        return self.data == getattr(other, "data", other)


def _quad(seed: int = 0, n: int = 5):
    """A, b, x* of the quadratic 0.5 x^T A x - b^T x (A symmetric positive definite)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(np.linspace(1.0, 5.0, n)) @ q.T
    b = rng.standard_normal(n)
    return a, b, np.linalg.solve(a, b)


def _grad_fn(seed: int = 1, steps: int = 20, n: int = 5):
    """Parameter-dependent gradients with per-step noise: g_t(x) = A x - b + noise_t."""
    a, b, _ = _quad(seed, n)
    noise = np.random.default_rng(seed + 100).standard_normal((steps, n))
    return lambda x, t: a @ x - b + noise[t]


# ----------------------------------------------------------------- reference formulas
def sgd_ref(x, grad, steps, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
            nesterov=False, maximize=False):
    x = x.copy()
    buf = None
    for t in range(steps):
        g = grad(x, t)
        if maximize:
            g = -g
        g = g + weight_decay * x
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        x = x - lr * g
    return x


def adam_ref(x, grad, steps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
             amsgrad=False, maximize=False, decoupled=False):
    b1, b2 = betas
    x = x.copy()
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    vmax = np.zeros_like(x)
    for t in range(1, steps + 1):
        g = grad(x, t - 1)
        if maximize:
            g = -g
        if decoupled:
            x = x * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if amsgrad:
            vmax = np.maximum(vmax, v)
        vhat = (vmax if amsgrad else v) / (1 - b2 ** t)
        x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(vhat) + eps)
    return x


def run(opt, params, grad, steps):
    for t in range(steps):
        for p in params:
            p.grad = grad(p.data, t)
        opt.step()
        opt.zero_grad()


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True, maximize=True),
    dict(lr=0.02, momentum=0.5, dampening=0.5, weight_decay=0.2, maximize=True),
]

ADAM_CONFIGS = [
    dict(),
    dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, amsgrad=True),
    dict(lr=0.05, amsgrad=True, weight_decay=0.05, maximize=True),
    dict(lr=0.05, betas=(0.0, 0.9)),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=str)
def test_sgd_matches_reference(cfg):
    grad = _grad_fn()
    x0 = np.random.default_rng(3).standard_normal(5)
    p = P(x0.copy())
    run(SGD([p], **cfg), [p], grad, 12)
    np.testing.assert_allclose(p.data, sgd_ref(x0, grad, 12, **cfg), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", ADAM_CONFIGS, ids=str)
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_adam_adamw_match_reference(cls, cfg):
    grad = _grad_fn()
    x0 = np.random.default_rng(4).standard_normal(5)
    p = P(x0.copy())
    run(cls([p], **cfg), [p], grad, 12)
    wd = cfg.get("weight_decay", 1e-2 if cls is AdamW else 0.0)
    ref = adam_ref(x0, grad, 12, **{**cfg, "weight_decay": wd}, decoupled=cls is AdamW)
    np.testing.assert_allclose(p.data, ref, rtol=1e-10, atol=1e-12)


def test_adam_beta1_zero_keeps_exactly_the_last_gradient():
    p = P(np.zeros(2))
    opt = Adam([p], betas=(0.0, 0.9))
    for g in (np.array([1e8, -3.0]), np.array([1e-8, 2.0])):
        p.grad = g
        opt.step()
        np.testing.assert_array_equal(opt.state[p]["exp_avg"], g)  # torch's lerp is exact at weight 1


def test_defaults_match_torch():
    p = P(np.zeros(2))
    sgd, adam, adamw = SGD([p]), Adam([P(np.zeros(2))]), AdamW([P(np.zeros(2))])
    assert sgd.defaults == dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                                nesterov=False, maximize=False)
    assert adam.defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                 amsgrad=False, maximize=False)
    assert adamw.defaults["weight_decay"] == 1e-2


def test_param_groups_use_their_own_options():
    grad = _grad_fn()
    rng = np.random.default_rng(5)
    x0, y0 = rng.standard_normal(5), rng.standard_normal(5)
    p, q = P(x0.copy()), P(y0.copy())
    opt = SGD([{"params": [p]}, {"params": q, "lr": 0.01, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    run(opt, [p, q], grad, 8)
    np.testing.assert_allclose(p.data, sgd_ref(x0, grad, 8, lr=0.1), rtol=1e-12)
    np.testing.assert_allclose(q.data, sgd_ref(y0, grad, 8, lr=0.01, momentum=0.9), rtol=1e-12)

    r0 = rng.standard_normal(5)
    r = P(r0.copy())
    adam = Adam([p], lr=0.1)
    adam.add_param_group({"params": [r], "lr": 0.02, "amsgrad": True})
    assert adam.param_groups[1]["betas"] == (0.9, 0.999)
    run(adam, [r], grad, 6)
    np.testing.assert_allclose(r.data, adam_ref(r0, grad, 6, lr=0.02, amsgrad=True), rtol=1e-10)


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: Adam(ps, lr=0.1),
    lambda ps: AdamW(ps, lr=0.1, weight_decay=0.0, amsgrad=True),
])
def test_minimises_quadratic(make):
    a, b, xstar = _quad(7)
    p = P(np.zeros(5))
    opt = make([p])
    for _ in range(600):
        p.grad = a @ p.data - b
        opt.step()
    np.testing.assert_allclose(p.data, xstar, atol=1e-4)


def test_maximize_ascends():
    a, b, xstar = _quad(8)
    p = P(np.zeros(5))
    opt = Adam([p], lr=0.1, maximize=True)
    for _ in range(600):
        p.grad = -(a @ p.data - b)  # gradient of the concave -f
        opt.step()
    np.testing.assert_allclose(p.data, xstar, atol=1e-4)


def test_closure_is_called_and_returned():
    p = P(np.ones(3), np.ones(3))
    calls = []
    loss = SGD([p], lr=0.5).step(lambda: calls.append(1) or 42.0)
    assert loss == 42.0 and calls == [1]
    np.testing.assert_array_equal(p.data, 0.5)


def test_zero_grad():
    p, q = P(np.ones(3), np.full(3, 2.0)), P(np.ones(2))
    opt = SGD([p, q], lr=0.1)
    grad = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad and np.all(grad == 0) and q.grad is None
    opt.zero_grad()
    assert p.grad is None and q.grad is None


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps)])
def test_none_grads_are_skipped(make):
    p, q = P(np.ones(3), np.ones(3)), P(np.ones(3))
    opt = make([p, q])
    opt.step()
    np.testing.assert_array_equal(q.data, 1.0)
    assert q not in opt.state and p in opt.state
    assert list(opt.state_dict()["state"]) == [0]


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True),
    lambda ps: Adam(ps, weight_decay=0.1, maximize=True, amsgrad=True),
    lambda ps: AdamW(ps),
])
def test_in_place_and_grad_untouched(make):
    data, grad = np.arange(4.0), np.linspace(-1, 1, 4)
    p = P(data, grad.copy())
    opt = make([p])
    for _ in range(3):
        opt.step()
    assert p.data is data
    np.testing.assert_array_equal(p.grad, grad)
    assert not np.array_equal(data, np.arange(4.0))


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1, amsgrad=True),
    lambda ps: AdamW(ps, lr=0.1),
])
def test_float32_stays_float32(make):
    p = P(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3))
    data = p.data
    opt = make([p])
    for _ in range(3):
        p.grad = np.cos(p.data.astype(np.float64))  # float64 grads are cast, not promoted
        opt.step()
    assert p.data is data and data.dtype == np.float32
    for s in opt.state.values():
        for v in s.values():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.float32


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_zero_dim_parameters(cls):
    kw = dict(lr=0.1, momentum=0.9) if cls is SGD else dict(lr=0.1, amsgrad=True)
    grad = _grad_fn(n=1)
    p0, p1 = P(np.array(0.3)), P(np.array([0.3]))
    opt0, opt1 = cls([p0], **kw), cls([p1], **kw)
    for t in range(5):
        p0.grad = grad(p0.data.reshape(1), t).reshape(())
        p1.grad = grad(p1.data, t)
        opt0.step()
        opt1.step()
    assert isinstance(p0.data, np.ndarray) and p0.data.shape == ()
    assert float(p0.data) == pytest.approx(float(p1.data[0]), rel=1e-14)


def test_unhashable_parameters_work():
    p = ElementwiseEqP(np.ones(3), np.ones(3))
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    opt.step()
    assert p in opt.state
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], 1.9)


# ----------------------------------------------------------------- checkpoints
CKPT_CASES = {
    "sgd": (lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
            lambda o: StepLR(o, step_size=3, gamma=0.5)),
    "adam": (lambda ps: Adam(ps, lr=0.05, weight_decay=1e-3, amsgrad=True),
             lambda o: CosineAnnealingLR(o, T_max=10, eta_min=1e-3)),
    "adamw": (lambda ps: AdamW(ps, lr=0.05, maximize=True),
              lambda o: ExpDecayLR(o, decay=0.1)),
}


def _ckpt_params(dtype):
    rng = np.random.default_rng(11)
    return [P(rng.standard_normal((3, 2)).astype(dtype)), P(rng.standard_normal(4).astype(dtype)),
            P(rng.standard_normal(2).astype(dtype))]  # the last never gets a gradient


def _groups(params):
    return [{"params": params[:1]}, {"params": params[1:], "lr": 0.02}]


def _train(opt, sched, params, t0, t1):
    for t in range(t0, t1):
        for i, p in enumerate(params[:2]):
            rng = np.random.default_rng(1000 * t + i)
            p.grad = (np.sin(p.data) + rng.standard_normal(p.data.shape)).astype(p.data.dtype)
        opt.step()
        sched.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_resume_from_npz_is_bit_exact(case, dtype, tmp_path):
    make_opt, make_sched = CKPT_CASES[case]
    ref = _ckpt_params(dtype)
    opt = make_opt(_groups(ref))
    sched = make_sched(opt)
    _train(opt, sched, ref, 0, 10)

    first = _ckpt_params(dtype)
    opt = make_opt(_groups(first))
    sched = make_sched(opt)
    _train(opt, sched, first, 0, 5)
    arrays = {f"param/{i}": p.data for i, p in enumerate(first)}
    arrays.update(optimizer_state_to_arrays(opt.state_dict(), prefix="optim/"))
    arrays.update(state_to_arrays(sched.state_dict(), prefix="sched/"))
    np.savez(tmp_path / "ckpt.npz", **arrays)

    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
        resumed = [P(f[f"param/{i}"]) for i in range(3)]
        opt2 = make_opt(_groups(resumed))
        opt2.load_state_dict(optimizer_state_from_arrays(f, prefix="optim/"))
        sched2 = make_sched(opt2)
        sched2.load_state_dict(state_from_arrays(f, prefix="sched/"))
    assert opt2.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    _train(opt2, sched2, resumed, 5, 10)

    for a, b in zip(ref, resumed):
        assert b.data.dtype == dtype
        np.testing.assert_array_equal(a.data, b.data)
    final = make_opt(_groups(ref))
    final.load_state_dict(opt2.state_dict())
    sd_ref, sd_res = final.state_dict(), opt2.state_dict()
    assert sd_ref["param_groups"] == sd_res["param_groups"]
    assert sd_res["state"].keys() == {0, 1}
    for k, s in sd_res["state"].items():
        for name, v in s.items():
            np.testing.assert_array_equal(v, sd_ref["state"][k][name])
    assert sched2.get_last_lr() == [g["lr"] for g in opt2.param_groups]


def test_state_dict_layout_like_torch():
    p, q = P(np.ones(2), np.ones(2)), P(np.ones(3), np.ones(3))
    opt = Adam([{"params": [p]}, {"params": [q], "lr": 0.5}], amsgrad=True)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert sd["param_groups"][1]["lr"] == 0.5
    assert set(sd["state"][1]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][1]["step"] == 1


def test_state_arrays_round_trip_generic(tmp_path):
    sd = {"state": {0: {"step": 3, "buf": np.arange(3.0), "none": None}, 7: {}},
          "param_groups": [{"lr": 0.1 + 0.2, "betas": (0.9, 0.999), "flag": True,
                            "name": "x", "params": [0, 7], "inf": math.inf,
                            "np": np.float32(0.5)}]}
    arrays = state_to_arrays(sd, prefix="o/")
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    np.savez(tmp_path / "s.npz", **arrays)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        back = state_from_arrays(f, prefix="o/")
    np.testing.assert_array_equal(back["state"][0].pop("buf"), np.arange(3.0))
    sd["state"][0].pop("buf")
    sd["param_groups"][0]["np"] = 0.5
    assert back == sd
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    with pytest.raises(KeyError, match="prefix"):
        state_from_arrays(arrays, prefix="other/")


def test_load_state_dict_mismatch_raises():
    p, q = P(np.ones(2), np.ones(2)), P(np.ones(2), np.ones(2))
    opt = SGD([p, q], lr=0.1, momentum=0.9)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="parameter groups"):
        SGD([{"params": [p]}, {"params": [q]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 0 has 2 parameters"):
        SGD([p], lr=0.1).load_state_dict(sd)
    sd["state"][0]["momentum_buffer"] = np.ones(5)
    with pytest.raises(ValueError, match="shape"):
        SGD([P(np.ones(2)), P(np.ones(2))], lr=0.1).load_state_dict(sd)


def test_loaded_state_is_a_copy():
    p = P(np.ones(2), np.ones(2))
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()
    q = P(np.ones(2), np.ones(2))
    opt2 = SGD([q], lr=0.1, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    opt2.step()
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], 1.0)


# ----------------------------------------------------------------- schedules
def _sched_opt():
    return SGD([{"params": [P(np.ones(1))]}, {"params": [P(np.ones(1))], "lr": 0.5}], lr=0.1)


@pytest.mark.parametrize("make, closed", [
    (lambda o: ConstantLR(o), lambda b, e: b / 3 if e < 5 else b),
    (lambda o: make_schedule("constant", o), lambda b, e: b),
    (lambda o: StepLR(o, step_size=4, gamma=0.3), lambda b, e: b * 0.3 ** (e // 4)),
    (lambda o: ExponentialLR(o, gamma=0.9), lambda b, e: b * 0.9 ** e),
    (lambda o: ExpDecayLR(o, decay=0.05), lambda b, e: b * math.exp(-e * 0.05)),
    (lambda o: CosineAnnealingLR(o, T_max=10, eta_min=0.01),
     lambda b, e: 0.01 + (b - 0.01) * (1 + math.cos(math.pi * e / 10)) / 2),
])
def test_schedule_values(make, closed):
    opt = _sched_opt()
    sched = make(opt)
    for epoch in range(25):
        expected = [closed(0.1, epoch), closed(0.5, epoch)]
        assert sched.get_last_lr() == pytest.approx(expected, rel=1e-14, abs=1e-15)
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
        sched.step()
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.5]


def test_cosine_endpoints_and_exponential_equivalence():
    opt = _sched_opt()
    cos = CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    for _ in range(4):
        cos.step()
    assert cos.get_last_lr() == pytest.approx([0.0, 0.0], abs=1e-17)
    a, b = ExpDecayLR(_sched_opt(), decay=0.2), ExponentialLR(_sched_opt(), gamma=math.exp(-0.2))
    for _ in range(10):
        a.step()
        b.step()
    assert a.get_last_lr() == pytest.approx(b.get_last_lr(), rel=1e-12)


def test_make_schedule_factory():
    assert isinstance(make_schedule("step", _sched_opt(), step_size=2, gamma=None), StepLR)
    assert isinstance(make_schedule("exponential", _sched_opt(), gamma=0.9), ExponentialLR)
    assert isinstance(make_schedule("exponential", _sched_opt(), decay=0.1), ExpDecayLR)
    assert isinstance(make_schedule("ExpDecay", _sched_opt(), decay=0.1), ExpDecayLR)
    assert isinstance(make_schedule("cosine", _sched_opt(), T_max=5), CosineAnnealingLR)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        make_schedule("linear", _sched_opt())
    with pytest.raises(ValueError, match="not both"):
        make_schedule("exponential", _sched_opt(), gamma=0.9, decay=0.1)
    with pytest.raises(TypeError, match="step"):
        make_schedule("step", _sched_opt(), T_max=3)


def test_make_optimizer_factory():
    p = P(np.ones(2))
    opt = make_optimizer("AdamW", [p], lr=0.1, weight_decay=None)
    assert isinstance(opt, AdamW) and opt.param_groups[0]["weight_decay"] == 1e-2
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", [p])


def test_scheduler_state_round_trip_and_last_epoch():
    opt = _sched_opt()
    sched = StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(5):
        sched.step()
    sd = state_from_arrays(state_to_arrays(sched.state_dict()))
    opt2 = _sched_opt()
    for g in opt2.param_groups:  # e.g. an optimizer restored mid-schedule
        g["lr"] = 9.0
    sched2 = StepLR(opt2, step_size=7, gamma=0.1)
    sched2.load_state_dict(sd)
    assert [g["lr"] for g in opt2.param_groups] == sched.get_last_lr()
    assert [g["initial_lr"] for g in opt2.param_groups] == [0.1, 0.5]
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() == [0.1 * 0.125, 0.5 * 0.125]
    with pytest.raises(KeyError, match="initial_lr"):
        StepLR(_sched_opt(), step_size=2, last_epoch=3)
    resumed = StepLR(opt, step_size=2, gamma=0.5, last_epoch=5)  # continues at epoch 6
    assert resumed.get_last_lr() == [0.1 * 0.125, 0.5 * 0.125]


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("make, match", [
    (lambda p: SGD(p, lr=-0.1), r"SGD: invalid learning rate: -0\.1"),
    (lambda p: SGD(p, lr=float("nan")), "SGD: invalid learning rate"),
    (lambda p: SGD(p, momentum=-1), "SGD: invalid momentum: -1"),
    (lambda p: SGD(p, weight_decay=-1e-3), "SGD: invalid weight_decay"),
    (lambda p: SGD(p, nesterov=True), "SGD: Nesterov momentum requires"),
    (lambda p: SGD(p, momentum=0.9, dampening=0.1, nesterov=True), "dampening=0.1"),
    (lambda p: SGD([{"params": p, "lr": -1}], lr=0.1), "SGD: invalid learning rate: -1"),
    (lambda p: Adam(p, lr=-1), "Adam: invalid learning rate: -1"),
    (lambda p: Adam(p, eps=-1e-8), "Adam: invalid epsilon value: -1e-08"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), "Adam: invalid beta parameter at index 0: 1.0"),
    (lambda p: Adam(p, betas=(0.9, -0.1)), "Adam: invalid beta parameter at index 1: -0.1"),
    (lambda p: Adam(p, betas=(0.9,)), "Adam: betas must be a pair"),
    (lambda p: AdamW(p, weight_decay=-0.1), "AdamW: invalid weight_decay value: -0.1"),
    (lambda p: AdamW(p, betas=(0.9, 1.5)), "AdamW: invalid beta parameter at index 1"),
    (lambda p: SGD([], lr=0.1), "SGD: got an empty parameter list"),
    (lambda p: SGD(p + p, lr=0.1), "same parameter twice"),
    (lambda p: SGD([{"params": p}, {"params": p}], lr=0.1), "more than one parameter group"),
])
def test_invalid_optimizer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make([P(np.ones(2))])


def test_invalid_params_types():
    p = P(np.ones(2))
    with pytest.raises(TypeError, match="iterable"):
        SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="mix"):
        SGD([p, {"params": [P(np.ones(1))]}], lr=0.1)
    with pytest.raises(TypeError, match=r"\.data and \.grad"):
        SGD([np.ones(2)], lr=0.1)
    with pytest.raises(ValueError, match="gradient shape"):
        SGD([P(np.ones(2), np.ones(3))], lr=0.1).step()
    with pytest.raises(NotImplementedError):
        Optimizer([P(np.ones(2), np.ones(2))], {}).step()


@pytest.mark.parametrize("make, match", [
    (lambda o: StepLR(o, step_size=0), "StepLR: step_size must be a positive integer"),
    (lambda o: ExponentialLR(o, gamma=-0.5), "ExponentialLR: gamma must be >= 0"),
    (lambda o: ExpDecayLR(o, decay=-1.0), "ExpDecayLR: decay must be >= 0"),
    (lambda o: CosineAnnealingLR(o, T_max=0), "CosineAnnealingLR: T_max must be > 0"),
    (lambda o: ConstantLR(o, factor=2.0), r"ConstantLR: factor must be in \[0, 1\]"),
])
def test_invalid_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(_sched_opt())


# ----------------------------------------------------------------- optional: against torch
def test_against_torch_if_available():
    torch = pytest.importorskip("torch")
    grad = _grad_fn()
    x0 = np.random.default_rng(9).standard_normal(5)
    cases = [(SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
             (Adam, torch.optim.Adam, dict(lr=0.05, weight_decay=0.01, amsgrad=True)),
             (AdamW, torch.optim.AdamW, dict(lr=0.05, maximize=True))]
    for ours_cls, torch_cls, cfg in cases:
        p = P(x0.copy())
        tp = torch.nn.Parameter(torch.tensor(x0.copy()))
        ours, theirs = ours_cls([p], **cfg), torch_cls([tp], **cfg)
        for t in range(10):
            p.grad = grad(p.data, t)
            tp.grad = torch.tensor(grad(tp.detach().numpy().copy(), t))
            ours.step()
            theirs.step()
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)
