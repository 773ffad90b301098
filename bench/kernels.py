"""Kernel A/B of the convolution layouts and the max-pool algorithm, layer by layer (NumPy, float32).

* conv: every 3x3 convolution shape of the Baydin CNN and of ResNet18 on CIFAR, timed in each layout
  conv2d can take: the shifted GEMMs over channels-last rows (``shift``) against im2col + GEMM (the
  batched/flat choice conv2d makes by output size), and oneDNN's direct convolutions (``onednn``, where
  the onednn extra is installed), for the primal, the JVP of k input tangents and the VJP (input and
  weight), interleaved.
* pool: max_pool2d (running maximum over strided slices, bit-mask selection: ``arrays``) against the
  window-last argmax it replaced (im2col copy, argmax, int64 positions, one gather), written out here as
  reference; and the compiled one-pass kernels (``compiled``, 2 x 2 windows, the numba extra) against
  ``arrays`` for the primal, the JVP and the VJP (a taped forward and its pullback).

    python bench/kernels.py [--batch 64] [--k 4] [--repeats 7] [--threads 1] [--json PATH]

Prints Markdown tables (min ms over the repeats; ratio = shift / im2col, onednn / shift or new / reference) and writes
JSON (default bench/results/kernels-<threads>t.json).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

import _timing as T

import dualtensor as dt
from dualtensor.allocator import heap_arrays
from dualtensor import onednn
from dualtensor import jit
from dualtensor.ops import conv as conv_mod
from dualtensor.ops import pool_kernels

# (name, input (C, H, W), output channels): 3x3, padding 1, stride 1
CONV_LAYERS = [("cnn conv1", (1, 28, 28), 64), ("cnn conv2", (64, 28, 28), 64), ("cnn conv3/4", (64, 14, 14), 64),
               ("resnet cifar-stem stage1", (64, 32, 32), 64), ("resnet cifar-stem stage2", (128, 16, 16), 128),
               ("resnet cifar-stem stage3", (256, 8, 8), 256), ("resnet stage1 (imagenet stem)", (64, 8, 8), 64),
               ("resnet stage2 (imagenet stem)", (128, 4, 4), 128)]
CONV_VARIANTS = ("shift", "im2col") + (("onednn",) if onednn.available() else ())
POOL_VARIANTS = ("arrays",) + (("compiled",) if jit.available() else ())
POOL_LAYERS = [("cnn pool1", (64, 28, 28), 2, 2, 0), ("cnn pool2", (64, 14, 14), 2, 2, 0),
               ("resnet stem pool", (64, 32, 32), 3, 2, 1)]


@contextlib.contextmanager
def conv_layout(name: str):
    """``shift``: shifted GEMMs wherever they apply; ``im2col``: never; ``onednn``: oneDNN's direct
    convolutions (conv2d's default where the onednn extra is installed; GEMMs where it declines)."""
    names = ("_USE_DIRECT", "_SHIFT_MAX_WASTE", "_SHIFT_MAX_WASTE_WIDE", "_SHIFT_MIN_CHANNELS")
    old = [getattr(conv_mod, n) for n in names]
    values = {"shift": (False, 1e9, 1e9, 1), "im2col": (False, 0, 0, 1 << 30), "onednn": (True, *old[1:])}[name]
    for n, v in zip(names, values):
        setattr(conv_mod, n, v)
    try:
        yield
    finally:
        for n, v in zip(names, old):
            setattr(conv_mod, n, v)


def conv_steps(shape: tuple, out_ch: int, batch: int, k: int, rng) -> dict:
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    w = (rng.standard_normal((out_ch, shape[0], 3, 3)) / np.sqrt(9 * shape[0])).astype(np.float32)
    b = np.zeros(out_ch, np.float32)
    tx = rng.standard_normal((k, batch, *shape)).astype(np.float32)
    g = rng.standard_normal((batch, out_ch, shape[1], shape[2])).astype(np.float32)

    def in_layout(name, fn):
        def run():
            with conv_layout(name):
                return fn()
        return run

    steps = {}
    for lay in CONV_VARIANTS:
        steps[("primal", lay)] = in_layout(lay, lambda: dt.conv2d(x, w, b, padding=1))
        steps[("jvp", lay)] = in_layout(lay, lambda: dt.conv2d(dt.DualTensor(x, tx), w, b, padding=1))
        steps[("vjp", lay)] = in_layout(lay, lambda: dt.vjp(lambda x, w: dt.conv2d(x, w, b, padding=1), x, w)[1](g))
    return steps


@contextlib.contextmanager
def pool_variant(name: str):
    """``compiled``: max_pool2d as it runs (the compiled kernels where they apply); ``arrays``: never."""
    usable = pool_kernels.usable
    if name == "arrays":
        pool_kernels.usable = lambda *a: False
    try:
        yield
    finally:
        pool_kernels.usable = usable


def reference_max_pool(x, kernel: int, stride: int, pad: int, t=None):
    """The previous max_pool2d: window-last im2col copy, argmax, int64 flat positions, one gather of t."""
    from dualtensor.ops.conv import _pad, _windows

    h, w = x.shape[-2:]
    v = _windows(_pad(x, ((pad, pad), (pad, pad)), -np.inf), (kernel, kernel), (stride, stride), (1, 1))
    ho, wo = v.shape[-2:]
    cols = np.moveaxis(v, (-4, -3), (-2, -1)).reshape(x.shape[:-2] + (ho, wo, kernel * kernel))
    arg = cols.argmax(axis=-1)
    out = np.take_along_axis(cols, arg[..., None], axis=-1)[..., 0]
    if t is None:
        return out
    offset = np.asarray([i * w + j for i in range(kernel) for j in range(kernel)])
    planes = np.arange(out.size // (ho * wo)).reshape(x.shape[:-2] + (1, 1)) * (h * w)
    flat = planes + ((np.arange(ho) * stride - pad) * w)[:, None] + (np.arange(wo) * stride - pad) + offset[arg]
    np.clip(flat, 0, x.size - 1, out=flat)
    return out, np.take(t.reshape(t.shape[0], -1), flat, axis=1)


def pool_steps(shape: tuple, kernel: int, stride: int, pad: int, batch: int, k: int, rng) -> dict:
    # channels-last memory, as the shifted convolutions hand their results on
    x = np.ascontiguousarray(rng.standard_normal((batch, shape[1], shape[2], shape[0])).astype(np.float32))
    x = x.transpose(0, 3, 1, 2)
    t = np.ascontiguousarray(rng.standard_normal((k, batch, shape[1], shape[2], shape[0])).astype(np.float32))
    t = t.transpose(0, 1, 4, 2, 3)
    g = rng.standard_normal(dt.max_pool2d(x, kernel, stride, pad).shape).astype(np.float32)

    def vjp():
        _, pullback = dt.vjp(lambda a: dt.max_pool2d(a, kernel, stride, pad), x)
        return pullback(g)

    def in_variant(name, fn):
        def run():
            with pool_variant(name):
                return fn()
        return run

    steps = {("primal", "reference"): lambda: reference_max_pool(x, kernel, stride, pad),
             ("jvp", "reference"): lambda: reference_max_pool(x, kernel, stride, pad, t)}
    for name in POOL_VARIANTS:
        steps[("primal", name)] = in_variant(name, lambda: dt.max_pool2d(x, kernel, stride, pad))
        steps[("jvp", name)] = in_variant(name, lambda: dt.max_pool2d(dt.DualTensor(x, t), kernel, stride, pad))
        steps[("vjp", name)] = in_variant(name, vjp)
    return steps


def measure(steps: dict, repeats: int) -> dict:
    times = T.interleaved({f"{a}|{b}": fn for (a, b), fn in steps.items()}, repeats=repeats, warmup=1)
    return {name: T.summarize(ts)["min"] for name, ts in times.items()}


def table(title: str, rows: list, pair: tuple, parts: tuple) -> str:
    a, b = pair
    head = f"| {title} | " + " | ".join(f"{p}: {a} / {b} (ms) | ratio" for p in parts) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(parts)]
    for name, res in rows:
        cells = []
        for p in parts:
            x, y = res[f"{p}|{a}"], res[f"{p}|{b}"]
            cells += [f"{x:.1f} / {y:.1f}", f"{x / y:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="tangents of the JVP rows")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    ap.add_argument("--parts", default="conv,pool", help="comma list from conv,pool")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or parts - {"conv", "pool"}:
        ap.error(f"--parts: a comma list from conv,pool, got {args.parts!r}")
    T.limit_threads(args.threads)
    heap_arrays()
    rng = np.random.default_rng(0)
    conv_rows = [(name, measure(conv_steps(shape, o, args.batch, args.k, rng), args.repeats))
                 for name, shape, o in CONV_LAYERS] if "conv" in parts else []
    pool_rows = [(name, measure(pool_steps(shape, kk, s, p, args.batch, args.k, rng), args.repeats))
                 for name, shape, kk, s, p in POOL_LAYERS] if "pool" in parts else []
    if conv_rows:
        print_conv(conv_rows, args)
    if pool_rows:
        print_pool(pool_rows, args)
    path = args.json or Path(__file__).with_name("results") / f"kernels-{args.threads}t.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                "environment": T.environment(np), "conv": dict(conv_rows),
                                "pool": dict(pool_rows)}, indent=1))
    return 0


def print_conv(conv_rows: list, args: argparse.Namespace) -> None:
    print(f"conv2d 3x3 padding 1, batch {args.batch}, k = {args.k}, {args.threads} BLAS thread(s), min of "
          f"{args.repeats}\n")
    print(table("layer", conv_rows, ("shift", "im2col"), ("primal", "jvp", "vjp")))
    if "onednn" in CONV_VARIANTS:
        print(f"\noneDNN {onednn.version()} (conv2d's default with the onednn extra) against the shifted GEMMs\n")
        print(table("layer", conv_rows, ("onednn", "shift"), ("primal", "jvp", "vjp")))
    else:
        print("\noneDNN not installed (the onednn extra): its column is left out")


def print_pool(pool_rows: list, args: argparse.Namespace) -> None:
    print(f"\nmax_pool2d, channels-last input, batch {args.batch}, k = {args.k}\n")
    print(table("layer", pool_rows, ("arrays", "reference"), ("primal", "jvp")))
    if "compiled" in POOL_VARIANTS:
        print(f"\nmax_pool2d compiled (numba; 2 x 2 windows only, the others run the arrays) against arrays, "
              f"{args.threads} thread(s)\n")
        print(table("layer", pool_rows, ("compiled", "arrays"), ("primal", "jvp", "vjp")))
    else:
        print("\nnumba not installed (the numba extra): the compiled max-pool column is left out")


if __name__ == "__main__":
    sys.exit(main())
