"""Module and Parameter with PyTorch conventions.

The same module code runs on plain arrays (inference), DualTensor inputs (forward mode) and the
reverse-mode tape: parameters are read through ``__dt_value__``, and :meth:`Module.substitute`
temporarily replaces them by DualTensor/Traced values (how forward gradients and backprop see them).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from ..tensor import primal_of
from ..backend import array_module, device_of, generator_for, rng_module, to_device
from ..tensor import TensorOps


class Parameter(TensorOps):
    """A trainable array: ``data`` (updated in place by optimizers) and ``grad``."""

    __slots__ = ("data", "grad", "_sub")

    def __init__(self, data: Any):
        if not hasattr(data, "dtype") or data.dtype.kind != "f":
            raise TypeError(f"Parameter: data must be a floating array, got {getattr(data, 'dtype', type(data))}")
        self.data, self.grad, self._sub = data, None, None

    def __dt_value__(self) -> Any:
        return self.data if self._sub is None else self._sub

    def _value(self) -> Any:
        return primal_of(self.__dt_value__())

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameters, buffers and submodules are registered by attribute assignment."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            self._buffers[name] = value  # re-assigning a buffer keeps it a buffer (as torch)
            object.__setattr__(self, name, value)
            return
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: Any) -> None:
        """A non-trainable array saved in the state dict (e.g. batch-norm running statistics)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward is not defined")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # -- traversal -------------------------------------------------------------------------
    def named_modules(self, prefix: str = "", _memo: set | None = None) -> Iterator[tuple[str, "Module"]]:
        """This module and all submodules (each once, by first dotted name), depth first."""
        memo = set() if _memo is None else _memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(name, module) of the direct submodules, in registration order (torch's named_children)."""
        yield from self._modules.items()

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen = set()
        for mname, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{name}" if mname else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for mname, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mname}.{name}" if mname else name), b

    def num_parameters(self) -> int:
        """Total number of trainable scalars."""
        return int(sum(p.data.size for p in self.parameters()))

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, Any]":
        """Parameters and buffers by dotted name (the arrays themselves, not copies)."""
        sd: OrderedDict[str, Any] = OrderedDict()
        for name, p in self.named_parameters():
            sd[name] = p.data
        for name, b in self.named_buffers():
            sd[name] = b
        return sd

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into parameters and buffers, onto their device and dtype (shapes must match;
        strict checks the names)."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        params = dict(self.named_parameters())
        for name, value in state.items():  # check every shape before changing anything
            if name in own and tuple(np.shape(value)) != tuple(own[name].shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(np.shape(value))}, "
                                 f"expected {tuple(own[name].shape)}")
        for name, value in state.items():
            if name not in own:
                continue
            arr = to_device(value, device_of(own[name])).astype(own[name].dtype, copy=False)
            if name in params:
                params[name].data[...] = arr
            else:
                own[name][...] = arr

    def to(self, device: str) -> "Module":
        """Move parameters and buffers to ``"cpu"`` or ``"gpu"``; a module's own random generator
        (dropout's ``rng``) is replaced by one of that device, seeded from it."""
        for m in self.modules():
            rng = getattr(m, "rng", None)
            if rng_module(rng) is not None:
                m.rng = generator_for(rng, array_module(device))
            for p in m._parameters.values():
                p.data = to_device(p.data, device)
                if p.grad is not None:
                    p.grad = to_device(p.grad, device)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m.register_buffer(name, to_device(b, device))
            m._relayout()
        return self

    def astype(self, dtype: Any) -> "Module":
        """Cast parameters and floating buffers to ``dtype``."""
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dtype)
                if p.grad is not None:
                    p.grad = p.grad.astype(dtype)
            for name, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f":
                    m.register_buffer(name, b.astype(dtype))
            m._relayout()
        return self

    def _relayout(self) -> None:
        """Put parameters into the memory layout this module's operations read fastest (after a move or a
        cast); a module with such a preference overrides it."""

    @contextlib.contextmanager
    def substitute(self, values: dict[str, Any]):
        """Temporarily read the named parameters as the given values (DualTensor, Traced or arrays)."""
        params = dict(self.named_parameters())
        unknown = [n for n in values if n not in params]
        if unknown:
            raise KeyError(f"substitute: unknown parameter names {unknown}")
        previous = {n: params[n]._sub for n in values}
        try:
            for n, v in values.items():
                params[n]._sub = v
            yield self
        finally:  # restore what was there (substitutions nest)
            for n, v in previous.items():
                params[n]._sub = v

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")


def functional_call(module: Module, params: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``module(*args)`` with its parameters read from ``params`` (by dotted name)."""
    with module.substitute(params):
        return module(*args, **kwargs)


class Sequential(Module):
    """Modules applied in order; indexable and iterable."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i: Any) -> Any:
        mods = list(self._modules.values())
        return Sequential(*mods[i]) if isinstance(i, slice) else mods[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, m: Module) -> "Sequential":
        setattr(self, str(len(self)), m)
        return self


class ModuleList(Module):
    """A list of registered submodules."""

    def __init__(self, modules: Any = ()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> "ModuleList":
        setattr(self, str(len(self._modules)), m)
        return self

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())
