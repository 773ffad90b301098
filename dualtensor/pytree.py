"""Minimal pytrees: nested tuples, lists and dicts whose leaves are arrays (or anything else)."""
from __future__ import annotations

from typing import Any, Callable


def flatten(tree: Any) -> tuple[list, Any]:
    """Leaves in a fixed order and a structure description to rebuild the tree."""
    leaves: list = []

    def rec(t: Any) -> Any:
        if isinstance(t, (tuple, list)):
            return (type(t), [rec(c) for c in t])
        if isinstance(t, dict):
            return (dict, [(key, rec(t[key])) for key in t])
        leaves.append(t)
        return None

    return leaves, rec(tree)


def unflatten(treedef: Any, leaves: list) -> Any:
    """Inverse of :func:`flatten`."""
    it = iter(leaves)

    def rec(d: Any) -> Any:
        if d is None:
            return next(it)
        kind, children = d
        if kind is dict:
            return {key: rec(c) for key, c in children}
        return kind(rec(c) for c in children)

    return rec(treedef)


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise over one or more trees of the same structure."""
    leaves, d = flatten(tree)
    others = [flatten(r) for r in rest]
    for ol, od in others:
        if od != d:
            raise ValueError("tree_map: trees have different structures")
    return unflatten(d, [fn(x, *(ol[i] for ol, _ in others)) for i, x in enumerate(leaves)])
