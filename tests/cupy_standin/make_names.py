"""Write names.json: the public names (and signatures where introspectable) of real CuPy.

Run with CuPy installed; no GPU is needed (``pip install cupy-cuda12x`` imports without one; only
device calls fail)::

    python tests/cupy_standin/make_names.py            # writes tests/cupy_standin/names.json

The CuPy stand-in (tests/cupy_standin/__init__.py) offers exactly these names, and a static test
checks that every ``xp.<name>`` the package uses is one of them. A submodule that cannot be
imported without CUDA libraries (cupyx.scipy.linalg needs cuBLAS) is read from its source instead.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import re
from pathlib import Path

MODULES = ("cupy", "cupy.linalg", "cupy.random", "cupy.fft", "cupy.lib", "cupy.lib.stride_tricks", "cupy.cuda",
           "cupyx", "cupyx.scipy", "cupyx.scipy.special", "cupyx.scipy.linalg")
CLASSES = ("cupy.ndarray", "cupy.random.Generator", "cupy.random.BitGenerator", "cupy.random.XORWOW",
           "cupy._core.flags.Flags",
           "cupy.cuda.Stream", "cupy.cuda.MemoryPool")
_SIG = re.compile(r"^\s*(?:[\w.]+\.)?(\w+)(\(.*\))")


def signature(obj: object) -> str | None:
    """``(args)`` of a callable: from inspect where it works, else from the docstring's first line."""
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        pass
    first = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    m = _SIG.match(first[0]) if first else None
    return m.group(2) if m else None


def public(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("_"))


def from_source(module: str) -> dict[str, str | None]:
    """Names a package's __init__.py imports or defines (for modules that need CUDA to import)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return {n: None for n in public(list(names))}


def members(obj: object) -> dict[str, str | None]:
    out = {}
    for name in public(dir(obj)):
        try:
            value = getattr(obj, name)
        except Exception:  # a property that needs a device
            out[name] = None
            continue
        out[name] = signature(value) if callable(value) and not inspect.isclass(value) else None
    return out


def resolve(path: str) -> object:
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def main() -> None:
    import cupy

    result: dict = {"cupy_version": cupy.__version__, "modules": {}, "classes": {}, "from_source": []}
    for name in MODULES:
        try:
            result["modules"][name] = members(importlib.import_module(name))
        except ImportError:
            result["modules"][name] = from_source(name)
            result["from_source"].append(name)
    for name in CLASSES:
        result["classes"][name] = members(resolve(name))
    out = Path(__file__).with_name("names.json")
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: CuPy {cupy.__version__}, {sum(map(len, result['modules'].values()))} module names, "
          f"{sum(map(len, result['classes'].values()))} class members")


if __name__ == "__main__":
    main()
