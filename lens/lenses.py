"""Lenses: per-layer transforms applied before the model's own head.

Both follow the :class:`interlayer.decoding.Lens` contract, ``transform(hidden, layer)``.
``LogitLens`` is the identity (nostalgebraist 2020; it lives in the core, as the default of
every decoder). ``TunedLens`` (Belrose et al.
2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens") adds one
affine translator per layer, ``h -> h + A_l h + b_l``, initialised to the identity
(``A_l = 0, b_l = 0``), so an untrained tuned lens decodes exactly as the logit
lens. Either plugs into :class:`interlayer.decoding.LayerDecoder` and every method as ``lens=``.

A tuned lens may also hold a translator for the embedding output (``resid_pre.0``, hidden
index 0), which tuned-lens checkpoints carry (:meth:`TunedLens.from_tuned_lens`,
:meth:`TunedLens.to_tuned_lens`; the format is :mod:`interlayer.lens.tuned_lens_io`). The
decoder passes that state with ``layer=None``, the toolkit's layer of the embeddings
(:mod:`interlayer.layers`), so ``transform(h, None)`` applies it.
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

from .tuned_lens_io import Translators, is_tuned_lens_dir, read_tuned_lens, write_tuned_lens
from .jacobian import LENS_FILE as JACOBIAN_FILE, JacobianLens

__all__ = ["LogitLens", "TunedLens", "check_lens_dir", "load_lens"]

LENS_FILES = ("config.json", "lens.safetensors")
"""The files of a saved tuned lens (:meth:`TunedLens.save`)."""

EMBEDDINGS = "embeddings"
"""The key of the embedding-output translator (``resid_pre.0``, ``layer=None``) among
:attr:`TunedLens.translators`; block translators are keyed by their block index."""


class TunedLens(nn.Module):
    """One affine translator per decoder layer but the last (whose output the model
    decodes itself), and optionally one for the embedding output. Layers without a
    translator decode as the logit lens.

    Args:
        d_model: the width of the residual stream.
        n_layers: the model's number of decoder blocks.
        layers: the blocks ``l`` (``resid_post.l``, 0..n_layers-2) with a translator; all by default.
        model_name: the model the lens is for (informative).
        weights_sha256: the model's :meth:`~interlayer.model.adapter.ModelAdapter.weights_sha256`;
            :meth:`load` refuses other weights when it is set.
        embedding: also a translator for the embedding output (``resid_pre.0``, ``layer=None``).
    """

    name = "tuned"

    def __init__(self, d_model: int, n_layers: int, layers: list[int] | None = None,
                 model_name: str = "", weights_sha256: str = "", embedding: bool = False) -> None:
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        self.layers = sorted(set(layers if layers is not None else range(n_layers - 1)))
        bad = [l for l in self.layers if not 0 <= l < n_layers - 1]
        if bad:
            raise InterlayerError(f"tuned-lens layers {bad} are out of range; valid layers are 0..{n_layers - 2} "
                                  "(the last layer is the model's own output)")
        self.model_name, self.weights_sha256, self.embedding = model_name, weights_sha256, bool(embedding)
        keys = ([EMBEDDINGS] if self.embedding else []) + [str(l) for l in self.layers]
        self.translators = nn.ModuleDict({key: nn.Linear(d_model, d_model) for key in keys})
        for translator in self.translators.values():
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
        self.training_log: dict[str, Any] = {}

    @classmethod
    def for_model(cls, model: ModelAdapter, layers: list[int] | None = None, embedding: bool = False) -> "TunedLens":
        """An identity-initialised tuned lens shaped for ``model`` (``embedding``: with a
        translator for the embedding output too)."""
        lens = cls(model.d_model, model.n_layers, layers, model.name, model.weights_sha256(), embedding)
        return lens.to(model.device)

    @classmethod
    def from_tuned_lens(cls, path: str | Path, model: ModelAdapter | None = None) -> "TunedLens":
        """The tuned-lens checkpoint (``config.json`` + ``params.pt``) in ``path`` as a lens whose
        ``transform(h, layer)`` then the model's head is tuned-lens's ``forward(h, i)``: translator
        ``i`` decodes ``hidden_states[i]``, here the embedding output (``layer=None``) for ``i = 0``
        and block ``i - 1`` (``resid_post.(i-1)``) after. Float32; on ``model``'s device, checked
        against its width and layer count (:func:`~interlayer.lens.tuned_lens_io.read_tuned_lens`
        says what is refused)."""
        checkpoint = read_tuned_lens(path, model)
        n = checkpoint.n_layers
        lens = cls(checkpoint.d_model, n, list(range(n - 1)),
                   str(checkpoint.config.get("base_model_name_or_path") or ""), embedding=True)
        lens.load_state_dict({f"translators.{EMBEDDINGS if layer is None else layer}.{part}": tensor
                              for layer, pair in checkpoint.translators.items()
                              for part, tensor in zip(("weight", "bias"), pair)})
        lens.training_log = {"imported_from": "tuned-lens", "path": str(checkpoint.directory),
                             "config": checkpoint.config}
        return lens if model is None else lens.to(model.device)

    def to_tuned_lens(self, path: str | Path, model: ModelAdapter | None = None, *,
                      base_model_name_or_path: str | None = None) -> Path:
        """Write this lens as a tuned-lens checkpoint in ``path``, which tuned-lens's
        ``TunedLens.from_model_and_pretrained(hf_model, path)`` reads; blocks without a
        translator (and the embeddings, without one) get tuned-lens's identity. With ``model``,
        checked against it and its ``unembed_hash`` recorded; ``base_model_name_or_path``
        defaults to :attr:`model_name` (:func:`~interlayer.lens.tuned_lens_io.write_tuned_lens`)."""
        translators: Translators = {None if key == EMBEDDINGS else int(key): (t.weight, t.bias)
                                    for key, t in self.translators.items()}
        return write_tuned_lens(path, translators, self.d_model, self.n_layers, model,
                                base_model_name_or_path or self.model_name)

    def transform(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor:
        """Add layer ``layer``'s affine translator to ``hidden`` (``h + A h + b``, ``[..., d_model]``, in the
        translator's dtype); a layer without a translator passes through unchanged. ``layer=None``
        is the embedding output (``resid_pre.0``), for a lens with an embedding translator.

        Raises:
            InterlayerError: ``layer`` is ``None`` and the lens has no embedding translator
                (a tuned lens needs each state's layer).
        """
        if layer is None and not self.embedding:
            raise InterlayerError("a tuned lens needs the layer of each hidden state: pass layers= to the decoder "
                                  "(layer=None is the embedding output, and this lens has no translator for it)")
        key = EMBEDDINGS if layer is None else str(layer)
        translator = self.translators[key] if key in self.translators else None
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
            "embedding": self.embedding, "model": self.model_name, "weights_sha256": self.weights_sha256,
            "training": self.training_log,
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
                   config.get("weights_sha256", ""), bool(config.get("embedding", False)))
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


def _is_jacobian(path: str | Path) -> bool:
    """A Jacobian lens's ``lens.pt``, or a folder holding one (and no tuned lens)."""
    path = Path(path)
    return (path.is_file() and path.name.endswith(".pt")) or \
        (path.is_dir() and (path / JACOBIAN_FILE).is_file() and not (path / LENS_FILES[1]).is_file())


def check_lens_dir(path: str | Path | None, what: str = "--tuned-lens") -> None:
    """Refuse a directory that is neither a saved tuned lens (:data:`LENS_FILES`) nor a
    tuned-lens checkpoint (``config.json`` + ``params.pt``, recognised by its config's content:
    :func:`interlayer.lens.tuned_lens_io.is_tuned_lens_dir`). Cheap: a CLI calls it before the
    model loads. ``None`` (the logit lens) passes. ``what`` names the option in the message."""
    if path is None:
        return
    if is_tuned_lens_dir(path) or _is_jacobian(path):
        return
    missing = [name for name in LENS_FILES if not (Path(path) / name).is_file()]
    if missing:
        raise InterlayerError(f"{what} {str(path)!r} is not a saved tuned lens (needs config.json and "
                              f"lens.safetensors, or a tuned-lens checkpoint's config.json and params.pt; "
                              f"{', '.join(missing)} missing)")


def load_lens(path: str | Path | None, model: ModelAdapter) -> Lens:
    """The tuned lens saved in ``path`` (checked for ``model``'s weights), or the logit
    lens when there is no path: what every ``--tuned-lens`` option means. ``path`` may also
    be a tuned-lens checkpoint (:meth:`TunedLens.from_tuned_lens`), recognised by content,
    or a Jacobian lens's ``lens.pt`` (:class:`~interlayer.lens.JacobianLens`)."""
    if not path:
        return LOGIT_LENS
    check_lens_dir(path)
    if is_tuned_lens_dir(path):
        return TunedLens.from_tuned_lens(path, model)
    if _is_jacobian(path):
        return JacobianLens.load(path, model)
    return TunedLens.load(path, model)
