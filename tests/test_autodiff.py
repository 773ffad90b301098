"""jvp over pytrees, reverse mode (vjp / value_and_grad), DualTensor construction and bad input."""
import numpy as np
import pytest

import dualtensor as dt
from dualtensor.tensor import Zero


def f_tree(p):
    return {"y": dt.tanh(p["a"]) * p["b"], "z": dt.exp(p["a"])}


def test_jvp_pytree_dict_and_tuple():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(3), rng.standard_normal(3)
    ta, tb = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    out, tout = dt.jvp(f_tree, {"a": a, "b": b}, {"a": ta, "b": tb})
    np.testing.assert_allclose(out["y"], np.tanh(a) * b)
    np.testing.assert_allclose(tout["y"], ta * (1 - np.tanh(a) ** 2) * b + np.tanh(a) * tb)
    np.testing.assert_allclose(tout["z"], ta * np.exp(a))
    # tuple primals are positional arguments
    out, tout = dt.jvp(lambda x, y: x * y, (a, b), (ta, tb))
    np.testing.assert_allclose(tout, ta * b + a * tb)


def test_jvp_k1_and_constant_output():
    x = np.arange(3.0)
    out, tout = dt.jvp(lambda x: (x * 2, np.ones(2)), (x,), (np.ones((1, 3)),))
    assert tout[0].shape == (1, 3) and np.all(tout[1] == 0) and tout[1].shape == (1, 2)


def test_jvp_errors():
    with pytest.raises(ValueError, match="same pytree structure"):
        dt.jvp(lambda x, y: x, (np.ones(2), np.ones(2)), (np.ones((1, 2)),))
    with pytest.raises(ValueError, match="same k"):
        dt.jvp(lambda x, y: x * y, (np.ones(2), np.ones(2)), (np.ones((1, 2)), np.ones((3, 2))))
    with pytest.raises(ValueError, match=r"tangent must have shape \(k, \*primal.shape\)"):
        dt.jvp(lambda x: x, (np.ones((2, 3)),), (np.ones((2, 3)),))


def test_dualtensor_construction_errors():
    with pytest.raises(ValueError, match=r"tangent shape \(2, 4\) for primal shape \(3,\)"):
        dt.dual(np.ones(3), np.ones((2, 4)))
    with pytest.raises(TypeError, match="floating dtype.*int64"):
        dt.dual(np.arange(3), np.ones((1, 3)))
    with pytest.raises(TypeError, match="floating dtype.*bool"):
        dt.DualTensor(np.ones(3, bool), np.ones((1, 3)))
    with pytest.raises(ValueError, match="needs k"):
        dt.DualTensor(np.ones(3), None)
    d = dt.DualTensor(np.ones(3), Zero(4, (3,), np.float64))
    assert d.k == 4 and d.tangent_array().shape == (4, 3)
    assert dt.dual(np.ones(2, np.float32), np.ones((1, 2))).tangent.dtype == np.float32


def test_k_mismatch_between_operands():
    a = dt.dual(np.ones(3), np.ones((2, 3)))
    b = dt.dual(np.ones(3), np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"multiply: operands carry different numbers of tangents .*k=2.*k=5"):
        a * b


def test_k_axis_never_broadcasts_against_data():
    # primal (3,), k=3: a (3, 3) constant must broadcast against the data axis only
    a = dt.dual(np.arange(3.0), np.eye(3))
    c = np.arange(9.0).reshape(3, 3)
    out = a * c
    assert out.shape == (3, 3) and out.tangent.shape == (3, 3, 3)
    np.testing.assert_allclose(out.tangent, np.eye(3)[:, None, :] * c[None])


def test_numpy_cupy_mixing_is_rejected():
    class FakeCupy(np.ndarray):
        pass
    FakeCupy.__module__ = "cupy._core.core"
    fake = np.ones(3).view(FakeCupy)
    with pytest.raises(TypeError, match="add: cannot mix numpy and cupy arrays"):
        dt.add(dt.dual(np.ones(3), np.ones((1, 3))), fake)


def test_forward_tangents_ride_along_a_reverse_tape():
    # Traced w is a constant for the tangents of the dual x; the primal is recorded on w's tape.
    rng = np.random.default_rng(3)
    w, x, tx = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal((2, 3))
    seen = {}

    def f(w):
        y = dt.tanh(dt.dual(x, tx) * w)
        seen["y"] = y
        return y

    out, fn = dt.vjp(f, w)
    y = seen["y"]
    assert isinstance(y, dt.DualTensor) and y.trace is not None
    np.testing.assert_allclose(y.tangent, tx * w * (1 - np.tanh(x * w) ** 2))
    g = rng.standard_normal(3)
    np.testing.assert_allclose(fn(g)[0], g * x * (1 - np.tanh(x * w) ** 2))


def test_value_and_grad_pytree_and_argnums():
    rng = np.random.default_rng(1)
    w, x = rng.standard_normal(4), rng.standard_normal(4)

    def loss(params, x):
        h = dt.tanh(params["w"] * x) + params["c"]
        return dt.sum(h * h)

    v, g = dt.value_and_grad(loss)({"w": w, "c": np.array(0.5)}, x)
    h = np.tanh(w * x) + 0.5
    np.testing.assert_allclose(v, np.sum(h * h))
    np.testing.assert_allclose(g["w"], 2 * h * (1 - np.tanh(w * x) ** 2) * x)
    np.testing.assert_allclose(g["c"], np.sum(2 * h))
    _, (gp, gx) = dt.value_and_grad(loss, argnums=(0, 1))({"w": w, "c": np.array(0.5)}, x)
    np.testing.assert_allclose(gx, 2 * h * (1 - np.tanh(w * x) ** 2) * w)


def test_reverse_mode_reuse_and_fanout():
    # x used several times: cotangents accumulate
    g = dt.grad(lambda x: x * x * x + dt.exp(x))(np.array(2.0))
    np.testing.assert_allclose(g, 12.0 + np.exp(2.0))


def test_value_and_grad_requires_scalar():
    with pytest.raises(ValueError, match="must return a scalar"):
        dt.value_and_grad(lambda x: x * 2)(np.ones(3))


def test_vjp_cotangent_shape_checked():
    out, fn = dt.vjp(lambda x: x * 2, np.ones(3))
    with pytest.raises(ValueError, match="cotangent shape"):
        fn(np.ones(4))
    np.testing.assert_allclose(fn(np.ones(3))[0], 2 * np.ones(3))


def test_comparisons_return_plain_arrays():
    d = dt.dual(np.array([1.0, -1.0]), np.ones((2, 2)))
    assert isinstance(d > 0, np.ndarray) and (d > 0).tolist() == [True, False]
    with pytest.raises(TypeError, match="ambiguous"):
        bool(d)


def test_float_default_for_python_values():
    d = dt.dual([1, 2], np.ones((1, 2)))
    assert d.dtype == np.float32


def test_observe_sees_every_primitive_in_every_mode_and_names_are_unique():
    from dualtensor.core import PRIMITIVES, Primitive, observe

    seen = []
    x = np.ones((2, 3))
    f = lambda a: dt.sum(dt.tanh(dt.matmul(a, np.ones((3, 2)))))  # noqa: E731
    with observe(lambda prim, args, params, ans: seen.append(prim.name)):
        f(x)
        dt.jvp(f, (x,), (np.ones((1, 2, 3)),))
        dt.value_and_grad(f)(x)
    assert seen == ["matmul", "tanh", "sum"] * 3
    f(x)
    assert len(seen) == 9  # the observer is gone after the block
    assert {"matmul", "tanh", "sum", "batch_norm_train", "batch_norm_eval"} <= set(PRIMITIVES)
    with pytest.raises(ValueError, match="taken"):
        Primitive("matmul", lambda a: a)
