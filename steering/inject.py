"""Injecting steering vectors through the adapter's hooks, in forward passes and in
``generate`` with the KV cache.

At every steered position of site ``{kind}.{l}``, for each vector with coefficient ``c``:

* ``add`` (the seed paper, CAA): ``x <- x + c · v_l``;
* ``ablate``: ``x <- x - c · (x · v̂_l) v̂_l``, the direction projected out (``c = 1``
  removes it entirely);
* with ``preserve_norm``, each steered position is rescaled to its original norm
  afterwards: ``x' <- x' · ||x|| / ||x'||``.

Positions: ``"all"`` (every position and every generation step, as the paper),
``"prompt"`` (the prompt's tokens only), ``"generated"`` (only tokens generated after
the prompt), or an integer ``k`` (every token from real-token position ``k`` on).
Positions count real tokens (padding excluded), so batched inputs padded on either
side are steered exactly as one at a time.

Guards: an edit that makes the activations NaN or infinite stops the pass
(:class:`NonFiniteSteeringError`, blaming the vector when its own values are not finite);
and on the first pass through each residual-stream site, an edit whose norm is more than
:data:`MAX_EDIT_RATIO` times the activations' mean norm there (``|c| · ||v_l||``; for
``ablate`` ``|c|`` itself, the edit being at most ``|c| · ||x||``) is refused
(:class:`SteeringStrengthError`): it would replace the residual stream rather than steer
it (an RMSNorm then turns it into one fixed direction, and generation into one token).

:func:`steer` returns a :class:`Steering`: a context manager, and a persistent handle
whose ``remove()`` detaches it. :meth:`Steering.edits` gives the same writes as
activation-store edits (``interlayer.collect(..., edits=...)``) for evaluation passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from interlayer.model.adapter import ModelAdapter, PositionTracker
from interlayer.errors import InterlayerError, choices

from .vectors import SteeringVector

OPERATORS: tuple[str, ...] = ("add", "ablate")
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")


MAX_EDIT_RATIO = 1e3
"""The largest ``|c| · ||v||`` allowed, as a multiple of the residual stream's mean norm at
the steered site (checked once, on the first forward pass)."""


class NonFiniteSteeringError(InterlayerError):
    """A steering coefficient (or a damaged vector) made the activations NaN or infinite."""


class SteeringStrengthError(InterlayerError):
    """A steering edit whose norm dwarfs the residual stream it is added to."""


@dataclass(frozen=True)
class Injection:
    """One vector applied with one coefficient and operator, at some of its layers."""

    vector: SteeringVector
    coef: float = 1.0
    layers: tuple[int, ...] | None = None
    """Layers to steer (default: every layer of the vector)."""
    operator: str = "add"

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise InterlayerError(f"unknown operator {self.operator!r}; valid choices: {choices(OPERATORS)}")
        if not math.isfinite(self.coef):
            raise InterlayerError(f"the coefficient must be finite, got {self.coef}")
        for layer in self.layers or ():
            self.vector[layer]  # names the vector's layers

    @property
    def steered_layers(self) -> list[int]:
        """The layers this injection writes: ``layers``, or every layer of the vector."""
        return list(self.layers) if self.layers is not None else self.vector.layers


def _non_finite(site: str, directions: list[tuple[Injection, int, torch.Tensor]], x: torch.Tensor) -> InterlayerError:
    """The error for a non-finite steered activation, blaming what caused it: the vector's
    own values, activations that were not finite before the edit, or the coefficient."""
    for inj, layer, v in directions:
        bad = int((~torch.isfinite(v)).sum())
        if bad:
            return NonFiniteSteeringError(f"the steering vector's direction at layer {layer} holds {bad} NaN or "
                                          f"infinite value(s); the vector is damaged (not the coefficient): "
                                          "retrain or reload it")
    if not bool(torch.isfinite(x).all()):
        return NonFiniteSteeringError(f"the activations at {site} were NaN or infinite before steering; the model's "
                                      "own forward pass is not finite here")
    coefs = ", ".join(f"{inj.coef:g}" for inj, _, _ in directions)
    return NonFiniteSteeringError(f"steering at {site} with coefficient {coefs} made the activations "
                                  "NaN or infinite; stopped (use a smaller coefficient)")


def _check_strength(site: str, directions: list[tuple[Injection, int, torch.Tensor]], x: torch.Tensor) -> None:
    """Refuse an edit more than :data:`MAX_EDIT_RATIO` times the mean norm of ``x`` (one
    host sync, on the first pass)."""
    resid = float(x.detach().float().norm(dim=-1).mean())
    for inj, layer, v in directions:
        if inj.operator == "add":
            edit = abs(inj.coef) * float(v.norm())
            ratio = edit / resid if resid > 0 else (math.inf if edit > 0 else 0.0)
            detail = (f"|coef| · ||v|| = {abs(inj.coef):g} × {float(v.norm()):.4g} = {edit:.4g}, {ratio:.3g} times "
                      f"the activations' mean norm there ({resid:.4g})")
        else:
            ratio = abs(inj.coef)
            detail = f"ablating with |coef| = {ratio:g} moves each activation by up to {ratio:g} times its own norm"
        if ratio > MAX_EDIT_RATIO:
            raise SteeringStrengthError(
                f"steering at {site} with coefficient {inj.coef:g} is too strong: {detail}; the limit is "
                f"{MAX_EDIT_RATIO:g}x, beyond which the edit replaces the residual stream instead of steering it; "
                "use a smaller coefficient")


def _check_positions(positions: str | int) -> None:
    if isinstance(positions, bool) or not (positions in POSITIONS or (isinstance(positions, int) and positions >= 0)):
        raise InterlayerError(f"unknown positions {positions!r}; valid choices: {choices(POSITIONS)} or a position index >= 0")


class Steering:
    """Steering hooks on a model: ``with steer(...):`` or ``handle = steer(...).attach()``
    then ``handle.remove()``."""

    def __init__(self, model: ModelAdapter, injections: Sequence[Injection], positions: str | int = "all",
                 preserve_norm: bool = False) -> None:
        if not injections:
            raise InterlayerError("nothing to steer with: give at least one vector")
        _check_positions(positions)
        for injection in injections:
            injection.vector.check_model(model)
            if injection.vector.site != injections[0].vector.site:
                raise InterlayerError("vectors of one Steering must share a site kind "
                                      f"({injections[0].vector.site!r} and {injection.vector.site!r})")
        self.model = model
        self.injections = list(injections)
        self.positions = positions
        self.preserve_norm = preserve_norm
        self._handles: list[Any] = []
        self._tracker: PositionTracker | None = None

    # ------------------------------------------------------------ the writes
    def sites(self) -> dict[str, list[tuple[Injection, int]]]:
        """``{site: [(injection, layer), ...]}`` in forward order."""
        out: dict[str, list[tuple[Injection, int]]] = {}
        for injection in self.injections:
            for layer in injection.steered_layers:
                out.setdefault(injection.vector.site_name(layer), []).append((injection, layer))
        return dict(sorted(out.items(), key=lambda kv: self.model.site(kv[0]).order))

    def _write(self, site: str, parts: list[tuple[Injection, int]]) -> Callable[[torch.Tensor], torch.Tensor]:
        directions = [(inj, layer, inj.vector[layer]) for inj, layer in parts]
        unchecked = [site.startswith("resid_")]  # the strength check runs on the first pass only

        def fn(x: torch.Tensor) -> torch.Tensor:
            where = self._where(x)
            out = x
            for inj, layer, v in directions:
                v = v.to(device=x.device, dtype=x.dtype)
                if inj.operator == "add":
                    change = inj.coef * v
                else:
                    unit = v / v.norm()
                    change = -inj.coef * (out @ unit)[..., None] * unit
                out = out + (change if where is None else change * where[..., None].to(x.dtype))
            if self.preserve_norm:
                scale = x.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                out = out * (scale if where is None else torch.where(where[..., None], scale, torch.ones_like(scale)))
            if not bool(torch.isfinite(out).all()):
                raise _non_finite(site, directions, x)
            if unchecked[0]:
                unchecked[0] = False
                _check_strength(site, directions, x)
            return out

        return fn

    def _where(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[batch, seq]`` bool of the positions to steer, or ``None`` for all of them."""
        if self.positions == "all":
            return None
        tracker = self._tracker
        if tracker is None or tracker.positions is None or tracker.positions.shape != x.shape[:2]:
            raise InterlayerError(f"positions={self.positions!r} needs the hooks attached through steer(); "
                                  "as store edits only positions='all' is available")
        pos = tracker.positions.to(x.device)
        if self.positions == "prompt":
            return pos < tracker.prompt_lengths.to(x.device)[:, None]
        if self.positions == "generated":
            return pos >= tracker.prompt_lengths.to(x.device)[:, None]
        return pos >= int(self.positions)

    def edits(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """The same writes as activation-store edits (``positions="all"`` only)."""
        if self.positions != "all":
            raise InterlayerError("store edits steer every position; use positions='all', or attach with steer()")
        return {site: self._write(site, parts) for site, parts in self.sites().items()}

    # ------------------------------------------------------------ attaching
    def attach(self) -> "Steering":
        """Register the hooks on the model (idempotent: an attached object is returned as is); on
        an error the hooks already registered are removed. Returns ``self``.
        """
        if self._handles:
            return self
        if self.positions != "all":
            self._tracker = self.model.track_positions()
        try:
            for site, parts in self.sites().items():
                self._handles.append(self.model.hook(site, self._write(site, parts)))
        except Exception:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook (and the position tracker); the model runs unsteered again. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._tracker is not None:
            self._tracker.remove()
            self._tracker = None

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered on the model now."""
        return bool(self._handles)

    def __enter__(self) -> "Steering":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def steer(model: ModelAdapter, vectors: SteeringVector | Sequence[SteeringVector], coef: float | Sequence[float] = 1.0,
          *, layers: Sequence[int] | None = None, positions: str | int = "all", operator: str = "add",
          preserve_norm: bool = False) -> Steering:
    """Steer ``model`` with one or several vectors (``coef`` one per vector, or shared).

    ``with steer(model, v, 8.0, layers=[6]): model.model.generate(...)`` steers inside the
    block; ``h = steer(...).attach()`` keeps steering until ``h.remove()``.
    """
    many = not isinstance(vectors, SteeringVector)
    vector_list = list(vectors) if many else [vectors]
    coefs = list(coef) if isinstance(coef, (list, tuple)) else [coef] * len(vector_list)
    if len(coefs) != len(vector_list):
        raise InterlayerError(f"{len(coefs)} coefficients for {len(vector_list)} vectors")
    injections = [Injection(v, float(c), tuple(layers) if layers is not None else None, operator)
                  for v, c in zip(vector_list, coefs)]
    return Steering(model, injections, positions, preserve_norm)
