"""The paper's models: shapes, parameter counts, block partitions (activation sizes n of Table I),
and that they run in eval/train mode, forward mode and reverse mode."""
import math

import numpy as np
import pytest
from scipy.special import erf
from test_nn import _mha_ref, check_modes

from dualtensor import nn
from dualtensor.nn.models import MODELS, BasicBlock, mlp, resnet18, vit
from dualtensor.nn.models.vit import EncoderBlock, Head, PatchEmbed
from dualtensor.tensor import DualTensor

F64 = np.float64


def _run_modes(model, x):
    """eval and train mode run; train mode updates batch-norm statistics once; forward mode primal == plain."""
    model.eval()
    bufs = {n: b.copy() for n, b in model.named_buffers()}
    y_eval = model(x)
    for n, b in model.named_buffers():
        np.testing.assert_array_equal(b, bufs[n])
    model.train()
    y_train = model(x)
    assert y_eval.shape == y_train.shape == (x.shape[0], 10)
    assert np.all(np.isfinite(y_eval)) and np.all(np.isfinite(y_train))
    return y_eval, y_train


def test_mlp_shapes_blocks_and_count():
    m = mlp(784, 256, 2, 10)
    blocks = m.blocks()
    assert len(blocks) == 3
    assert m.activation_sizes((784,)) == [256, 256, 10]
    assert m.activation_sizes((1, 28, 28)) == [256, 256, 10]
    m.train()
    blocks[1].eval()  # per-module training flags survive the size probe
    m.activation_sizes((784,))
    assert m.training and blocks[0].training and not blocks[1].training and not blocks[1][0].training
    assert m.num_parameters() == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert [n for n, _ in m.named_parameters()] == [f"body.{i}.{j}.{w}" for i, j in ((0, 1), (1, 0), (2, 0))
                                                     for w in ("weight", "bias")]
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = m(x)
    assert y.shape == (4, 10) and y.dtype == np.float32
    h = x
    for b in blocks:  # composing the blocks is the forward pass
        h = b(h)
    np.testing.assert_array_equal(h, y)
    # the first block flattens and ends with a ReLU
    np.testing.assert_allclose(blocks[0](x), np.maximum(x.reshape(4, -1) @ blocks[0][1].weight.data.T
                                                        + blocks[0][1].bias.data, 0), rtol=1e-5, atol=1e-6)
    m0 = mlp(6, 5, 0, 3)
    assert len(m0.blocks()) == 1 and m0(np.ones((2, 2, 3), np.float32)).shape == (2, 3)
    assert mlp(784, 1024, 2, 10).num_parameters() == 1_863_690  # Baydin et al.'s 784-1024-1024-10
    with pytest.raises(ValueError, match="depth"):
        mlp(depth=-1)
    assert set(MODELS) == {"mlp", "resnet18", "vit"}


def test_mlp_three_modes_float64():
    rng = np.random.default_rng(1)
    m = mlp(6, 5, 2, 3).astype(F64)
    check_modes(m, [rng.standard_normal((3, 6))])


def test_resnet18_counts_and_blocks():
    m = resnet18(3, 10)
    assert m.num_parameters() == 11_181_642  # torchvision resnet18(num_classes=10)
    assert len([n for n, _ in m.named_parameters()]) == 62
    # buffers: running mean/var of the 20 batch norms
    assert len(list(m.named_buffers())) == 40
    assert len(m.blocks()) == 6 and len(m.blocks(fine=True)) == 10
    sizes = m.activation_sizes((3, 32, 32))
    assert sizes == [4096, 4096, 2048, 1024, 512, 10] and sum(sizes) == 11_786  # Table I: 11.8e3
    m1 = resnet18(in_channels=1)
    assert m1.num_parameters() == 11_181_642 - 64 * 2 * 49
    assert m1.activation_sizes((1, 28, 28)) == [3136, 3136, 2048, 1024, 512, 10]
    # torchvision's conv init: kaiming normal, fan_out, relu
    w = m.blocks()[1][0].conv1.weight.data
    assert w.shape == (64, 64, 3, 3) and abs(w.std() - math.sqrt(2 / (64 * 9))) < 0.02 * math.sqrt(2 / (64 * 9))
    bb = m.blocks()[2][0]
    assert isinstance(bb, BasicBlock) and isinstance(bb.downsample, nn.Sequential)
    assert isinstance(m.blocks()[1][0].downsample, nn.Identity)
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="nope")
    mc = resnet18(3, 10, stem="cifar")
    assert mc.num_parameters() == 11_181_642 - 64 * 3 * 49 + 64 * 3 * 9
    assert mc.activation_sizes((3, 32, 32)) == [65536, 65536, 32768, 16384, 8192, 10]


def test_resnet18_runs_cifar_and_mnist_shapes():
    rng = np.random.default_rng(2)
    m = resnet18(3, 10)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    y_eval, _ = _run_modes(m, x)
    assert y_eval.dtype == np.float32
    # composition of the blocks, and of the fine blocks, is the forward pass
    y_eval = m.eval()(x)  # (the train-mode call moved the running statistics)
    h = hf = x
    for b in m.blocks():
        h = b(h)
    for b in m.blocks(fine=True):
        hf = b(hf)
    np.testing.assert_array_equal(h, y_eval)
    np.testing.assert_array_equal(hf, y_eval)
    m1 = resnet18(in_channels=1)
    xm = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    _run_modes(m1, xm)
    # forward mode on the full network: primal equals the plain forward; tangents are finite
    m1.eval()
    out = m1(DualTensor(xm, rng.standard_normal((2, *xm.shape)).astype(np.float32)))
    np.testing.assert_allclose(out.primal, m1(xm), rtol=1e-5, atol=1e-5)
    assert out.tangent.shape == (2, 2, 10) and np.all(np.isfinite(out.tangent))
    # batch norm in train mode: running stats updated exactly once per forward call
    m1.train()
    bn = m1.blocks()[0][1]
    before = bn.running_mean.copy()
    stem_conv = m1.blocks()[0][0](xm)
    m1(DualTensor(xm, rng.standard_normal((3, *xm.shape)).astype(np.float32)))
    np.testing.assert_allclose(bn.running_mean, 0.9 * before + 0.1 * stem_conv.mean(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-6)


def test_basic_block_three_modes_float64():
    rng = np.random.default_rng(3)
    for cin, cout, stride in ((2, 2, 1), (2, 3, 2)):
        b = BasicBlock(cin, cout, stride).astype(F64)
        for m in b.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data[...] = 1 + 0.1 * rng.standard_normal(cout)
                m.running_mean[...] = 0.1 * rng.standard_normal(cout)
        x = rng.standard_normal((2, cin, 4, 4))
        check_modes(b.eval(), [x])
        check_modes(b.train(), [x])


def _ln(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def _vit_ref(model, x):
    """The paper's ViT in plain NumPy, reading the model's parameters."""
    embed = next(m for m in model.modules() if isinstance(m, PatchEmbed))
    encs = [m for m in model.modules() if isinstance(m, EncoderBlock)]
    head = next(m for m in model.modules() if isinstance(m, Head))
    W, bias = embed.proj.weight.data, embed.proj.bias.data
    D, C, p, _ = W.shape
    B, _, H, _ = x.shape
    g = H // p
    patches = x.reshape(B, C, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)
    t = patches @ W.reshape(D, -1).T + bias
    t = np.concatenate([np.broadcast_to(embed.cls_token.data, (B, 1, D)), t], axis=1) + embed.pos_embedding.data
    for e in encs:
        h = _ln(t, e.norm1.weight.data, e.norm1.bias.data)
        t = t + _mha_ref(e.attn, h, h, h)
        h = _ln(t, e.norm2.weight.data, e.norm2.bias.data)
        f1, f2 = e.mlp[0], e.mlp[2]
        h = h @ f1.weight.data.T + f1.bias.data
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        t = t + h @ f2.weight.data.T + f2.bias.data
    return _ln(t[:, 0], head.norm.weight.data, head.norm.bias.data) @ head.fc.weight.data.T + head.fc.bias.data


def _vit_count(image, channels, dim=256, depth=6, mlp_dim=512, classes=10, patch=4):
    tokens = (image // patch) ** 2 + 1
    embed = channels * patch * patch * dim + dim + dim + tokens * dim
    enc = 4 * dim + 3 * dim * dim + 3 * dim + dim * dim + dim + 2 * dim * mlp_dim + mlp_dim + dim
    return embed + depth * enc + 2 * dim + dim * classes + classes


def test_vit_paper_configurations():
    rng = np.random.default_rng(4)
    mn = vit(image_size=28, in_channels=1)
    assert mn.num_parameters() == _vit_count(28, 1) == 3_183_114
    sizes = mn.activation_sizes((1, 28, 28))
    assert sizes == [50 * 256] * 5 + [10] and sum(sizes) == 64_010  # Table I: 64.0e3
    assert len(mn.blocks()) == 6
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    y_eval, y_train = _run_modes(mn, x)
    np.testing.assert_array_equal(y_eval, y_train)  # no dropout or batch norm
    np.testing.assert_allclose(y_eval, _vit_ref(mn, x.astype(F64)), rtol=2e-4, atol=2e-5)
    cf = vit(32, in_channels=3)
    assert cf.num_parameters() == _vit_count(32, 3) == 3_195_146
    sizes = cf.activation_sizes((3, 32, 32))
    assert sizes == [65 * 256] * 5 + [10] and sum(sizes) == 83_210  # Table I: 83.2e3
    _run_modes(cf, rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    # initialisation: trunc-normal(0.02) encoder linears with zero bias; zero class token
    lin = cf.blocks()[1].mlp[0]
    assert abs(lin.weight.data.std() - 0.02) < 0.002 and np.all(lin.bias.data == 0)
    assert np.abs(lin.weight.data).max() <= 2.0
    emb = next(m for m in cf.modules() if isinstance(m, PatchEmbed))
    assert np.all(emb.cls_token.data == 0) and emb.pos_embedding.data.shape == (1, 65, 256)


def test_vit_small_three_modes_and_reference():
    rng = np.random.default_rng(5)
    for depth in (1, 2, 3):
        m = vit(image_size=8, patch_size=4, in_channels=2, dim=8, depth=depth, heads=2, mlp_dim=16).astype(F64)
        assert len(m.blocks()) == max(1, depth) and m.activation_sizes((2, 8, 8)) == [5 * 8] * (depth - 1) + [10]
        for p in m.parameters():  # non-trivial values everywhere (biases, cls token, norms)
            p.data[...] += 0.1 * rng.standard_normal(p.data.shape)
        x = rng.standard_normal((2, 2, 8, 8))
        plain, _ = check_modes(m, [x])
        np.testing.assert_allclose(plain, _vit_ref(m, x), rtol=1e-9, atol=1e-12)
    m = vit(image_size=8, dim=32, depth=2, heads=4, mlp_dim=64)
    assert m(rng.standard_normal((3, 3, 8, 8)).astype(np.float32)).shape == (3, 10)
    with pytest.raises(ValueError, match="divisible"):
        vit(image_size=30)
    with pytest.raises(ValueError, match="depth"):
        vit(depth=0)


def test_models_state_dict_roundtrip():
    a, b = resnet18(in_channels=1), resnet18(in_channels=1)
    a.train()(np.random.default_rng(6).standard_normal((2, 1, 28, 28)).astype(np.float32))  # move running stats
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(7).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))
    v1, v2 = vit(8, dim=16, depth=2, heads=2, mlp_dim=32), vit(8, dim=16, depth=2, heads=2, mlp_dim=32)
    v2.load_state_dict(v1.state_dict())
    y = x[:, :, :8, :8].repeat(3, axis=1)
    np.testing.assert_array_equal(v1(y), v2(y))
