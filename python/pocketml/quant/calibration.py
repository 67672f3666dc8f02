"""Calibration: what the activations of example inputs tell the quantizers.

The importance of input channel k of a Linear layer is the mean squared activation
E[x_k^2] over every row (token) the layer sees. It is the diagonal of the layer's
input second moment X^T X / rows, so weighting a weight's squared error by it
approximates the error of the layer's output on those inputs (the cross terms
between channels left out) -- the statistic behind llama.cpp's imatrix and AWQ's
activation-aware search. GPTQ (gptq.py) takes the whole second moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

_EXAMPLE_KINDS = "tensors, tuples of positional arguments or dicts of keyword arguments"


class _NonFiniteActivations(ValueError):
    """Raised by a hook inside the model's forward; passes through the wrapping of model errors."""


def _describe(value) -> str:
    return "a torch.Tensor" if isinstance(value, torch.Tensor) else type(value).__name__


def _bad_calibration(calibration, hint: str = "") -> TypeError:
    return TypeError(f"argument 'calibration': expected an iterable of examples ({_EXAMPLE_KINDS}) or a callable "
                     f"that runs the model, got {_describe(calibration)}{hint}")


def _call(model: nn.Module, example, index: int) -> None:
    if isinstance(example, torch.Tensor):
        args, kwargs = (example,), {}
    elif isinstance(example, (tuple, list)):
        args, kwargs = tuple(example), {}
    elif isinstance(example, Mapping):
        args, kwargs = (), dict(example)
    else:
        raise TypeError(f"argument 'calibration': expected examples that are {_EXAMPLE_KINDS}, "
                        f"got {_describe(example)} at index {index}")
    try:
        model(*args, **kwargs)
    except _NonFiniteActivations:
        raise
    except Exception as exc:
        raise ValueError(f"argument 'calibration': expected examples the model accepts, got example {index} on "
                         f"which it raised {type(exc).__name__}: {exc}") from exc


def _run(model: nn.Module, calibration) -> None:
    """Runs the model on the calibration data: calibration(model), or each example in turn."""
    if isinstance(calibration, (torch.Tensor, Mapping)):
        # Iterating would split one batch into rows or keys: almost certainly not what was meant.
        raise _bad_calibration(calibration, " (wrap one batch in a list)")
    if isinstance(calibration, (str, bytes, nn.Module)):
        raise _bad_calibration(calibration)
    if callable(calibration):
        calibration(model)
        return
    if not isinstance(calibration, Iterable):
        raise _bad_calibration(calibration)
    count = 0
    for index, example in enumerate(calibration):
        _call(model, example, index)
        count += 1
    if count == 0:
        raise ValueError("argument 'calibration': expected at least one example, got an empty iterable")


def _linear_input(args, kwargs, in_features: int) -> torch.Tensor | None:
    """A Linear's input as float64 rows [-, in_features], called as fc(x) or fc(input=x);
    None for an input of another width, which the layer's own forward then refuses
    with its message (the hook's arithmetic would fail first, with a misleading one)."""
    x = (args[0] if args else kwargs["input"]).detach()
    if x.ndim == 0 or x.shape[-1] != in_features:
        return None
    return x.reshape(-1, x.shape[-1]).to(torch.float64)


class _SquaredActivations:
    """Forward pre-hook accumulating sum(x^2) per input channel (float64) and the row count."""

    def __init__(self, name: str, in_features: int):
        self.name = name
        self.sum = torch.zeros(in_features, dtype=torch.float64)
        self.rows = 0

    def __call__(self, module: nn.Module, args, kwargs) -> None:
        rows = _linear_input(args, kwargs, self.sum.shape[0])
        if rows is None:
            return
        squares = rows.square().sum(0)
        if not torch.isfinite(squares).all():
            raise _NonFiniteActivations(f"argument 'calibration': expected inputs giving finite activations, "
                                        f"got non-finite input to layer {self.name!r}")
        self.sum += squares
        self.rows += rows.shape[0]

    def importance(self) -> torch.Tensor:
        if self.rows == 0:
            raise ValueError(f"argument 'calibration': expected data that runs every layer being quantized, got "
                             f"none reaching layer {self.name!r} (skip it or extend the calibration data)")
        mean = self.sum / self.rows
        # Only ratios matter to the weighted search; a mean of 1 keeps float32 far from its limits.
        average = mean.mean()
        return (mean / average if average > 0 else torch.ones_like(mean)).to(torch.float32)


class _SecondMoment:
    """Forward pre-hook accumulating X^T X (float64) over the rows a layer sees."""

    def __init__(self, name: str, in_features: int):
        self.name = name
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.rows = 0

    def __call__(self, module: nn.Module, args, kwargs) -> None:
        rows = _linear_input(args, kwargs, self.sum.shape[0])
        if rows is None:
            return
        if not torch.isfinite(rows).all():
            raise _NonFiniteActivations(f"argument 'calibration': expected inputs giving finite activations, "
                                        f"got non-finite input to layer {self.name!r}")
        self.sum += rows.T @ rows
        self.rows += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.rows == 0:
            raise ValueError(f"argument 'calibration': expected data that runs every layer being quantized, got "
                             f"none reaching layer {self.name!r} (skip it or extend the calibration data)")
        return self.sum / self.rows


def _observe(model: nn.Module, calibration, hooks: Mapping[nn.Module, object]) -> None:
    """Runs `model` on `calibration` in eval mode under torch.no_grad() with forward
    pre-hooks on the given modules; hooks removed and modes restored, whatever happens."""
    handles = [module.register_forward_pre_hook(hook, with_kwargs=True) for module, hook in hooks.items()]
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            _run(model, calibration)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training


def collect_importance(model: nn.Module, calibration, layers: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Per-input-channel importance [in_features] (float32, mean 1) of each of `layers`
    (name -> Linear inside `model`) from running `model` on `calibration`: an iterable
    of examples (a tensor is model(x), a tuple or list model(*args), a dict
    model(**kwargs)) or a callable calibration(model).

    The model runs in eval mode under torch.no_grad(); its modes are restored and the
    hooks removed afterwards, whatever happens.
    """
    stats = {name: _SquaredActivations(name, module.in_features) for name, module in layers.items()}
    _observe(model, calibration, {module: stats[name] for name, module in layers.items()})
    return {name: stat.importance() for name, stat in stats.items()}


def collect_hessian(model: nn.Module, calibration, name: str, layer: nn.Module) -> torch.Tensor:
    """The input second moment X^T X / rows [in_features, in_features] (float64) of
    `layer` (named `name` inside `model`) over `calibration`, run as collect_importance does."""
    stat = _SecondMoment(name, layer.in_features)
    _observe(model, calibration, {layer: stat})
    return stat.hessian()
