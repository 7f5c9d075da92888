"""The Jacobian lens (Gurnee et al. 2026, "Verbalizable Representations Form a Global
Workspace in Language Models"; TransformerLens 4's ``tools.analysis.jacobian_lens``).

One ``d_model x d_model`` matrix per source layer, the average Jacobian of the last
block's output (before the final norm) with respect to layer ``l``'s output
(``resid_post.l``), ``J_l = E[dh_final / dh_l]``, read out with the model's own head:
``logits = softcap(W_U · norm_final(J_l h_l))``. The logit lens is ``J_l = I``. How the
average is taken (positions, cross-position terms) is :mod:`interlayer.lens.jacobian_fit`'s
docstring; fitting lives there.

A fitted lens is saved as one ``lens.pt`` (``torch.save`` of plain tensors, lists, numbers
and strings; read back with ``torch.load(weights_only=True)`` only). Its keys are those of
the reference artifact that TransformerLens reads (``J``, ``n_prompts``, ``source_layers``,
``d_model``, ``metadata``), with interlayer's provenance under ``metadata``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from interlayer.errors import InterlayerError
from interlayer.io.files import write_atomic
from interlayer.model.adapter import ModelAdapter

__all__ = ["JacobianLens", "LENS_FILE"]

LENS_FILE = "lens.pt"
"""The file of a saved Jacobian lens (:meth:`JacobianLens.save`)."""

FORMAT = "interlayer.jacobian_lens/1"


class JacobianLens:
    """A fitted Jacobian lens: ``transform(h, l) = J_l h`` (``h @ J_l.T``), so the decoder
    reads ``W_U · norm(J_l h_l)``. The last layer (the model's own output) is the identity;
    a layer with no fitted matrix is an error naming the fitted ones.

    Args:
        jacobians: ``{layer: [d_model, d_model]}``; ``J[i, j] = d h_final[i] / d h_l[j]``.
        d_model: the residual width.
        n_layers: the model's decoder layers (``n_layers - 1`` is the identity layer).
        n_contexts: contexts averaged into the fit.
        provenance: model name, weights sha256, tokens, date, interlayer version, options.
    """

    name = "jacobian"

    def __init__(self, jacobians: dict[int, torch.Tensor], d_model: int, n_layers: int, n_contexts: int = 0,
                 provenance: dict[str, Any] | None = None) -> None:
        if not jacobians:
            raise InterlayerError("a Jacobian lens needs at least one layer's matrix")
        bad = sorted(l for l in jacobians if not 0 <= int(l) < n_layers - 1)
        if bad:
            raise InterlayerError(f"Jacobian-lens layers {bad} are out of range; valid source layers are "
                                  f"0..{n_layers - 2} (the last layer is the model's own output)")
        for layer, matrix in jacobians.items():
            if tuple(matrix.shape) != (d_model, d_model):
                raise InterlayerError(f"J[{layer}] has shape {tuple(matrix.shape)}, expected ({d_model}, {d_model})")
        self.jacobians = {int(l): m.detach().float().cpu() for l, m in sorted(jacobians.items())}
        self.d_model, self.n_layers, self.n_contexts = int(d_model), int(n_layers), int(n_contexts)
        self.provenance: dict[str, Any] = dict(provenance or {})
        self.convergence: list[dict[str, Any]] = []  # the fit's rows (see jacobian_fit); not saved
        self._on_device: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def source_layers(self) -> list[int]:
        """The layers with a fitted matrix, sorted."""
        return list(self.jacobians)

    def __repr__(self) -> str:
        return (f"JacobianLens(layers={self.source_layers}, d_model={self.d_model}, "
                f"n_contexts={self.n_contexts})")

    def transform(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor:
        """``J_layer h`` for every row of ``hidden`` (``[..., d_model]``, in its dtype); the last
        layer passes through unchanged.

        Raises:
            InterlayerError: ``layer`` is ``None``, has no fitted matrix, or ``hidden`` has
                another width.
        """
        if layer is None:
            raise InterlayerError("a Jacobian lens needs the layer of each hidden state: pass layers= to the decoder")
        if hidden.shape[-1] != self.d_model:
            raise InterlayerError(f"hidden has width {hidden.shape[-1]}, but this Jacobian lens was fitted for "
                                  f"d_model={self.d_model}")
        if layer == self.n_layers - 1:
            return hidden
        if layer not in self.jacobians:
            raise InterlayerError(f"the Jacobian lens has no matrix for layer {layer}; fitted layers are "
                                  f"{self.source_layers} (and {self.n_layers - 1}, the identity)")
        key = (layer, hidden.device, hidden.dtype)
        if key not in self._on_device:
            self._on_device[key] = self.jacobians[layer].to(hidden.device, hidden.dtype)
        return hidden @ self._on_device[key].T

    def check_model(self, model: ModelAdapter) -> "JacobianLens":
        """Refuse ``model`` when its width, depth or weights differ from the fitted model's;
        returns the lens."""
        if (model.d_model, model.n_layers) != (self.d_model, self.n_layers):
            raise InterlayerError(f"this Jacobian lens is for d_model={self.d_model}, n_layers={self.n_layers}; "
                                  f"{model.name} has d_model={model.d_model}, n_layers={model.n_layers}")
        sha = self.provenance.get("weights_sha256")
        if sha and sha != model.weights_sha256():
            raise InterlayerError(f"this Jacobian lens was fitted on {self.provenance.get('model')!r} with other "
                                  f"weights than {model.name!r} (weights sha256 {sha[:12]}...)")
        return self

    # ------------------------------------------------------------ save / load
    def to_payload(self) -> dict[str, Any]:
        """The saved dict: plain tensors, lists, numbers and strings only."""
        return {"J": {l: m.contiguous() for l, m in self.jacobians.items()}, "n_prompts": self.n_contexts,
                "source_layers": self.source_layers, "d_model": self.d_model,
                "metadata": {"format": FORMAT, "n_layers": self.n_layers, **self.provenance}}

    def save(self, path: str | Path) -> Path:
        """Write the lens to ``path`` (a ``.pt`` file, or a directory that gets ``lens.pt``),
        atomically; returns the file."""
        path = Path(path)
        if path.suffix != ".pt":
            path.mkdir(parents=True, exist_ok=True)
            path = path / LENS_FILE
        buffer = io.BytesIO()
        torch.save(self.to_payload(), buffer)
        write_atomic(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path, model: ModelAdapter | None = None) -> "JacobianLens":
        """Load a saved lens (``torch.load(weights_only=True)``; a directory means its
        ``lens.pt``). With ``model``, refuse a lens of another width, depth or weights."""
        path = Path(path)
        if path.is_dir():
            path = path / LENS_FILE
        if not path.is_file():
            raise InterlayerError(f"{path} is not a saved Jacobian lens (no such file; `interlayer lens jacobian` "
                                  f"writes {LENS_FILE})")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
            raise InterlayerError(f"{path} is not a readable Jacobian lens ({type(err).__name__}: {err})") from None
        return cls.from_payload(payload, str(path), model)

    @classmethod
    def from_payload(cls, payload: Any, where: str = "the payload",
                     model: ModelAdapter | None = None) -> "JacobianLens":
        """The lens a :meth:`to_payload` dict (or a reference artifact with ``n_layers`` in its
        metadata, or a ``model`` to take it from) describes."""
        if not isinstance(payload, dict) or "J" not in payload or "d_model" not in payload:
            raise InterlayerError(f"{where} is not a Jacobian lens (needs the keys 'J' and 'd_model')")
        meta = dict(payload.get("metadata") or {})
        n_layers = meta.pop("n_layers", None) or (model.n_layers if model is not None else None)
        if n_layers is None:
            raise InterlayerError(f"{where} does not say the model's depth; load it with model=")
        meta.pop("format", None)
        lens = cls({int(l): m for l, m in payload["J"].items()}, int(payload["d_model"]), int(n_layers),
                   int(payload.get("n_prompts", 0)), meta)
        return lens if model is None else lens.check_model(model)
