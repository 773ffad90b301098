"""Flatten optimizer / scheduler state dicts into ``{str: numpy array}`` and back.

The flat form saves with ``np.savez`` and loads with ``np.load(..., allow_pickle=False)``:
every array of the state dict becomes its own entry (named by its path, e.g.
``"state/0/exp_avg"``), everything else (numbers, bools, strings, None, lists, tuples, dicts
with int/str keys) goes into one JSON string stored under ``"__meta__"``. Python floats
survive exactly (JSON uses ``repr``), so a resumed optimizer continues bit for bit.
A ``prefix`` lets several states share one checkpoint file with model parameters.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..backend import is_array, to_host

__all__ = ["state_to_arrays", "state_from_arrays",
           "optimizer_state_to_arrays", "optimizer_state_from_arrays"]

_META = "__meta__"


def state_to_arrays(state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten a state dict into ``{prefix + name: numpy array}`` (arrays copied to the host)."""
    arrays: dict[str, np.ndarray] = {}

    def encode(obj: Any, path: str) -> Any:
        if is_array(obj):
            key = prefix + path
            if key in arrays or path == _META:
                raise ValueError(f"state_to_arrays: two arrays would be stored under {key!r}")
            arrays[key] = np.array(to_host(obj), copy=True)
            return {"__array__": path}
        if isinstance(obj, np.generic):
            return obj.item()
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        sub = f"{path}/" if path else ""
        if isinstance(obj, Mapping):
            for k in obj:
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise TypeError(f"state_to_arrays: unsupported key {k!r} at {path or '/'!r}")
            return {"__dict__": [[k, encode(v, f"{sub}{k}")] for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [encode(v, f"{sub}{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [encode(v, f"{sub}{i}") for i, v in enumerate(obj)]
        raise TypeError(f"state_to_arrays: cannot store {type(obj).__name__} at {path or '/'!r}")

    meta = json.dumps(encode(state_dict, ""))
    arrays[prefix + _META] = np.array(meta)
    return arrays


def state_from_arrays(arrays: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Rebuild the state dict stored by :func:`state_to_arrays` (e.g. from an ``NpzFile``)."""
    try:
        meta = arrays[prefix + _META]
    except KeyError:
        raise KeyError(f"state_from_arrays: no stored state under prefix {prefix!r} "
                       f"(missing {prefix + _META!r})") from None

    def decode(obj: Any) -> Any:
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        if isinstance(obj, dict):
            if "__array__" in obj:
                return np.array(arrays[prefix + obj["__array__"]], copy=True)
            if "__tuple__" in obj:
                return tuple(decode(v) for v in obj["__tuple__"])
            return {k: decode(v) for k, v in obj["__dict__"]}
        return obj

    return decode(json.loads(str(np.asarray(meta)[()])))


# the names used by training code; they work for scheduler state dicts too
optimizer_state_to_arrays = state_to_arrays
optimizer_state_from_arrays = state_from_arrays
