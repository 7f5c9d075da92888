"""Arithmetic on steering vectors: ``a + b``, ``a - b``, ``-a``, ``k * a``, ``a * k``, ``a / k``.

As repeng's ``ControlVector`` (``_helper_combine``, ``__mul__``): ``a + b`` holds the union
of the two vectors' layers, each layer's direction the sum of theirs; a layer only one of
them has keeps its direction (negated in ``a - b`` when it is ``b``'s). Scalars multiply
every layer. The arithmetic is float32 tensor arithmetic, layer by layer, so
``(a + b)[l]`` equals ``a[l] + b[l]`` exactly.

Unlike repeng, which only warns about mismatched ``model_type``, vectors that cannot be
meant together are refused: another site kind, another width, or another model (names,
or weight checksums, that differ; a vector read from a foreign GGUF names only its
architecture, ``model_hint``, and goes with any model of its width). The result is
marked ``normalized`` only if its norms are 1, and records the expression in
``extra["arithmetic"]``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import torch

from interlayer.errors import InterlayerError

# The operands are interlayer.steering.SteeringVector; it is not imported here (vector_file
# imports this module), so the annotations name it as text.
SteeringVector = Any


def scalar(value: Any, op: str) -> float:
    """``value`` as a finite float factor for ``op`` (``*`` or ``/``): a real number or a
    one-element tensor; anything else (a bool, a vector, a string) is an error."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InterlayerError(f"a steering vector can be scaled ({op}) by a real number only, got "
                              f"{type(value).__name__} {value!r}; add or subtract another SteeringVector instead")
    factor = float(value)
    if not math.isfinite(factor) or (op == "/" and factor == 0.0):
        raise InterlayerError(f"cannot {'divide' if op == '/' else 'multiply'} a steering vector by {factor!r}; "
                              "give a finite" + (", non-zero" if op == "/" else "") + " number")
    return factor


def _describe(vector: SteeringVector) -> str:
    return vector.extra.get("arithmetic") or vector.dataset or vector.method


def _foreign(vector: SteeringVector) -> bool:
    """Whether ``vector`` names only an architecture (read from a GGUF another tool wrote)."""
    return not vector.model or vector.extra.get("model_hint") == vector.model


def check_compatible(a: SteeringVector, b: Any, op: str) -> None:
    """Refuse to combine ``a`` with ``b`` by ``op`` unless ``b`` is a steering vector of the
    same site kind, width and model (see the module docstring)."""
    if not isinstance(b, type(a)) and not isinstance(a, type(b)):
        raise InterlayerError(f"a steering vector {op} {type(b).__name__}: only another SteeringVector can be added "
                              "or subtracted (scale by a number with * or /)")
    if a.site != b.site:
        raise InterlayerError(f"cannot combine vectors at different site kinds ({a.site!r} {op} {b.site!r}); "
                              "both must steer the same kind of site")
    if a.d_model != b.d_model:
        raise InterlayerError(f"cannot combine vectors of different widths (d_model={a.d_model} {op} "
                              f"d_model={b.d_model}): they were made for different models")
    if not (_foreign(a) or _foreign(b)) and a.model != b.model:
        raise InterlayerError(f"cannot combine vectors of different models ({a.model!r} {op} {b.model!r}); "
                              "train both on the same model")
    if a.weights_sha256 and b.weights_sha256 and a.weights_sha256 != b.weights_sha256:
        raise InterlayerError(f"cannot combine vectors of models with different weights ({a.model!r}: "
                              f"{a.weights_sha256[:12]}... {op} {b.weights_sha256[:12]}...); train both on the same "
                              "weights")


def combine(a: SteeringVector, b: SteeringVector, sign: float) -> SteeringVector:
    """``a + sign * b`` over the union of their layers (``sign`` is 1 or -1), checked by
    :func:`check_compatible` first."""
    op = "+" if sign > 0 else "-"
    check_compatible(a, b, op)
    directions = dict(a.directions)
    for layer, v in b.directions.items():
        signed = v if sign > 0 else -v
        directions[layer] = directions[layer] + signed if layer in directions else signed.clone()
    expression = f"({_describe(a)}) {op} ({_describe(b)})"
    owner = b if _foreign(a) and not _foreign(b) else a
    return dataclasses.replace(
        a, directions=dict(sorted(directions.items())), normalized=None, model=owner.model,
        weights_sha256=a.weights_sha256 or b.weights_sha256,
        method=a.method if a.method == b.method else "combined", read=a.read if a.read == b.read else "mixed",
        dataset=a.dataset if a.dataset == b.dataset else expression, n_pairs=a.n_pairs + b.n_pairs,
        chat=a.chat if a.chat == b.chat else None,
        extra={**b.extra, **a.extra, "arithmetic": expression})


def scale(vector: SteeringVector, factor: float, op: str = "*") -> SteeringVector:
    """Every layer's direction times (``op="*"``) or divided by (``"/"``) ``factor``."""
    directions = {layer: v / factor if op == "/" else v * factor for layer, v in vector.directions.items()}
    expression = f"({_describe(vector)}) / {factor:g}" if op == "/" else f"{factor:g} * ({_describe(vector)})"
    return dataclasses.replace(vector, directions=directions, normalized=None,
                               extra={**vector.extra, "arithmetic": expression})


__all__ = ["check_compatible", "combine", "scalar", "scale"]
