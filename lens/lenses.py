"""Lenses: per-layer transforms applied before the model's own head.

Both follow the :class:`interlayer.decoding.Lens` contract, ``transform(hidden, layer)``.
``LogitLens`` is the identity (nostalgebraist 2020; it lives in the core, as the default of
every decoder). ``TunedLens`` (Belrose et al.
2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens") adds one
affine translator per layer, ``h -> h + A_l h + b_l``, initialised to the identity
(``A_l = 0, b_l = 0``), so an untrained tuned lens decodes exactly as the logit
lens. Either plugs into :class:`interlayer.decoding.LayerDecoder` and every method as ``lens=``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LOGIT_LENS, Lens, LogitLens
from interlayer.errors import InterlayerError
from interlayer.io.files import write_atomic, write_json_atomic

__all__ = ["LogitLens", "TunedLens", "check_lens_dir", "load_lens"]

LENS_FILES = ("config.json", "lens.safetensors")
"""The files of a saved tuned lens (:meth:`TunedLens.save`)."""


class TunedLens(nn.Module):
    """One affine translator per decoder layer but the last (whose output the model
    decodes itself). Layers without a translator decode as the logit lens."""

    name = "tuned"

    def __init__(self, d_model: int, n_layers: int, layers: list[int] | None = None,
                 model_name: str = "", weights_sha256: str = "") -> None:
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        self.layers = sorted(set(layers if layers is not None else range(n_layers - 1)))
        bad = [l for l in self.layers if not 0 <= l < n_layers - 1]
        if bad:
            raise InterlayerError(f"tuned-lens layers {bad} are out of range; valid layers are 0..{n_layers - 2} "
                                  "(the last layer is the model's own output)")
        self.model_name, self.weights_sha256 = model_name, weights_sha256
        self.translators = nn.ModuleDict({str(l): nn.Linear(d_model, d_model) for l in self.layers})
        for translator in self.translators.values():
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
        self.training_log: dict[str, Any] = {}

    @classmethod
    def for_model(cls, model: ModelAdapter, layers: list[int] | None = None) -> "TunedLens":
        """An identity-initialised tuned lens shaped for ``model``."""
        lens = cls(model.d_model, model.n_layers, layers, model.name, model.weights_sha256())
        return lens.to(model.device)

    def transform(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor:
        """Add layer ``layer``'s affine translator to ``hidden`` (``h + A h + b``, ``[..., d_model]``, in the
        translator's dtype); a layer without a translator passes through unchanged.

        Raises:
            InterlayerError: ``layer`` is ``None`` (a tuned lens needs each state's layer).
        """
        if layer is None:
            raise InterlayerError("a tuned lens needs the layer of each hidden state: pass layers= to the decoder")
        translator = self.translators[str(layer)] if str(layer) in self.translators else None
        if translator is None:
            return hidden
        hidden = hidden.to(translator.weight.dtype)
        return hidden + translator(hidden)

    # ------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        """Write ``lens.safetensors`` and ``config.json`` (atomically) to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / "lens.safetensors",
                     save({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}))
        write_json_atomic(directory / "config.json", {
            "kind": "tuned_lens", "d_model": self.d_model, "n_layers": self.n_layers, "layers": self.layers,
            "model": self.model_name, "weights_sha256": self.weights_sha256, "training": self.training_log,
        })
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: ModelAdapter | None = None) -> "TunedLens":
        """Load a saved lens (safetensors only). With ``model``, refuse one trained on other weights."""
        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "lens.safetensors"
        if not config_path.is_file() or not weights_path.is_file():
            raise InterlayerError(f"{directory} is not a saved tuned lens (needs config.json and lens.safetensors)")
        config = json.loads(config_path.read_text())
        lens = cls(config["d_model"], config["n_layers"], config["layers"], config.get("model", ""),
                   config.get("weights_sha256", ""))
        lens.load_state_dict(load_file(str(weights_path)))
        lens.training_log = config.get("training", {})
        if model is not None:
            if (model.d_model, model.n_layers) != (lens.d_model, lens.n_layers):
                raise InterlayerError(f"{directory} is a lens for d_model={lens.d_model}, n_layers={lens.n_layers}; "
                                      f"{model.name} has d_model={model.d_model}, n_layers={model.n_layers}")
            if lens.weights_sha256 and lens.weights_sha256 != model.weights_sha256():
                raise InterlayerError(f"{directory} was trained on {lens.model_name!r} with other weights than {model.name!r}")
            lens = lens.to(model.device)
        return lens


def check_lens_dir(path: str | Path | None, what: str = "--tuned-lens") -> None:
    """Refuse a tuned-lens directory without :data:`LENS_FILES` (cheap: a CLI calls it
    before the model loads). ``None`` (the logit lens) passes. ``what`` names the option
    in the message."""
    if path is None:
        return
    missing = [name for name in LENS_FILES if not (Path(path) / name).is_file()]
    if missing:
        raise InterlayerError(f"{what} {str(path)!r} is not a saved tuned lens (needs config.json and "
                              f"lens.safetensors; {', '.join(missing)} missing)")


def load_lens(path: str | Path | None, model: ModelAdapter) -> Lens:
    """The tuned lens saved in ``path`` (checked for ``model``'s weights), or the logit
    lens when there is no path: what every ``--tuned-lens`` option means."""
    if not path:
        return LOGIT_LENS
    check_lens_dir(path)
    return TunedLens.load(path, model)
