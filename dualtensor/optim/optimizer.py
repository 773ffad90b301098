"""The :class:`Optimizer` base class (torch.optim semantics) and its per-parameter state.

A parameter is any object with a ``.data`` array (NumPy or CuPy, updated in place) and a
``.grad`` array of the same shape, or ``None`` to skip it.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from ..backend import device_of, get_xp, is_array, is_cupy, to_device

__all__ = ["Optimizer", "ParamState"]


def _is_param(x: Any) -> bool:
    return hasattr(x, "data") and hasattr(x, "grad")


class ParamState(MutableMapping):
    """Per-parameter state: a mapping keyed by parameter *identity*.

    Behaves like torch's ``defaultdict(dict)``: ``state[p]`` creates an empty dict for a new
    parameter. Identity keys keep it working for parameter classes whose ``__eq__`` is
    elementwise (and so are unhashable).
    """

    def __init__(self) -> None:
        self._items: dict[int, tuple[Any, dict]] = {}

    def __getitem__(self, p: Any) -> dict:
        entry = self._items.get(id(p))
        if entry is None:
            entry = self._items[id(p)] = (p, {})
        return entry[1]

    def __setitem__(self, p: Any, value: dict) -> None:
        self._items[id(p)] = (p, value)

    def __delitem__(self, p: Any) -> None:
        del self._items[id(p)]

    def __contains__(self, p: object) -> bool:
        return id(p) in self._items

    def get(self, p: Any, default: Any = None) -> Any:
        entry = self._items.get(id(p))
        return default if entry is None else entry[1]

    def __iter__(self) -> Iterator[Any]:
        return (p for p, _ in list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ParamState({len(self)} parameters)"


class Optimizer:
    """Base class of all optimizers, following ``torch.optim.Optimizer``.

    Args:
        params: an iterable of parameters, or of dicts (parameter groups) each holding
            ``"params"`` plus per-group options that override ``defaults``.
        defaults: default values of the optimizer's options.

    Attributes:
        param_groups: list of dicts, each with ``"params"`` (a list) and every option.
        state: :class:`ParamState`, per-parameter state (arrays in the parameter's dtype).

    Subclasses implement :meth:`_update` (one parameter) and may override
    :meth:`_validate_group`.
    """

    def __init__(self, params: Iterable[Any] | Iterable[dict], defaults: Mapping[str, Any]) -> None:
        self.defaults: dict[str, Any] = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state = ParamState()
        if _is_param(params) or is_array(params) or isinstance(params, (dict, str)):
            raise TypeError(f"{self._name}: params must be an iterable of parameters or of dicts, "
                            f"got {type(params).__name__}")
        groups = list(params)
        if not groups:
            raise ValueError(f"{self._name}: got an empty parameter list")
        n_dicts = sum(isinstance(g, Mapping) for g in groups)
        if n_dicts == 0:
            groups = [{"params": groups}]
        elif n_dicts != len(groups):
            raise TypeError(f"{self._name}: params must be all parameters or all dicts, not a mix")
        for group in groups:
            self.add_param_group(group)

    @property
    def _name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        lines = [f"{self._name} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines + [")"])

    # ---------------------------------------------------------------- groups
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a parameter group (dict with ``"params"`` and optional options).

        Missing options take the optimizer's defaults; a parameter may belong to one group only.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"{self._name}: a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{self._name}: a param group needs a 'params' entry")
        group = dict(param_group)
        params = group["params"]
        if _is_param(params):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{self._name}: params must be an ordered collection, not a set")
        else:
            params = list(params)
        for p in params:
            if not _is_param(p):
                raise TypeError(f"{self._name}: can only optimize objects with .data and .grad, "
                                f"got {type(p).__name__}")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self._name}: a parameter group contains the same parameter twice")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if taken.intersection(ids):
            raise ValueError(f"{self._name}: some parameters appear in more than one parameter group")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group["params"] = params
        self._validate_group(group)
        self.param_groups.append(group)

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for invalid options in ``group`` (hook for subclasses)."""

    # ---------------------------------------------------------------- stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: set them to ``None`` (default) or fill them with zeros in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.fill(0)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update of every parameter that has a gradient.

        ``closure``, if given, is called first (to recompute the loss) and its result returned.
        """
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                data = p.data
                if grad.shape != data.shape:
                    raise ValueError(f"{self._name}: gradient shape {grad.shape} does not match "
                                     f"parameter shape {data.shape}")
                if grad.dtype != data.dtype:  # compute in the parameter's dtype
                    grad = grad.astype(data.dtype)
                state = self.state[p]
                for name, value in state.items():  # state made before the parameter moved (Module.to)
                    if is_array(value) and is_cupy(value) != is_cupy(data):
                        state[name] = to_device(value, device_of(data))
                self._update(data, grad, state, group)
        return loss

    def _update(self, data: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Update ``data`` in place from ``grad``; ``grad`` must not be modified."""
        raise NotImplementedError(f"{self._name} does not implement _update")

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The optimizer state as ``{"state": {index: {...}}, "param_groups": [...]}``.

        Parameters are replaced by their index (counted across groups in order), as in torch.
        State arrays are references, not copies; see :func:`optimizer_state_to_arrays` to save.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.copy(v) for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index and s}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (possibly read back from arrays) into this optimizer.

        Groups must match in number and size; options are taken from ``state_dict``; state
        arrays are copied onto each parameter's device and cast to its dtype.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{self._name}: loaded state dict has {len(saved_groups)} parameter "
                             f"groups, the optimizer has {len(self.param_groups)}")
        by_index: dict[int, Any] = {}
        new_groups = []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{self._name}: loaded parameter group {i} has {len(saved['params'])} "
                                 f"parameters, the optimizer's has {len(group['params'])}")
            by_index.update(zip((int(k) for k in saved["params"]), group["params"]))
            new = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            new["params"] = group["params"]
            self._validate_group(new)
            new_groups.append(new)
        new_state = ParamState()
        for key, values in state_dict["state"].items():
            if int(key) not in by_index:
                raise ValueError(f"{self._name}: loaded state refers to parameter {key}, "
                                 f"but there are only {len(by_index)}")
            p = by_index[int(key)]
            new_state[p] = {name: self._load_value(p, name, v) for name, v in values.items()}
        # update group dicts in place so outside references (e.g. schedulers) stay valid
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state

    def _load_value(self, p: Any, name: str, value: Any) -> Any:
        if not is_array(value):
            return copy.deepcopy(value)
        data = p.data
        if value.shape != data.shape:
            raise ValueError(f"{self._name}: loaded state {name!r} has shape {value.shape}, "
                             f"parameter has shape {data.shape}")
        value = to_device(value, device_of(data))
        dtype = data.dtype if value.dtype.kind in "fc" else value.dtype
        return get_xp(data).array(value, dtype=dtype, copy=True)
