"""What models are available, and what a loaded model looks like."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from .adapter import ModelAdapter
from ..errors import UnknownModelError
from .loading import EMBEDDED, converted_dir, is_cached


def _dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def list_models() -> pd.DataFrame:
    """The embedded aliases with their packaged GGUF size, cache state and licence.

    Columns: ``alias, description, package, installed, gguf_mb, cached, cache_mb, licence``.
    """
    rows = []
    for alias, model in EMBEDDED.items():
        try:
            gguf = model.gguf_path()
            installed, gguf_mb = gguf.is_file(), round(gguf.stat().st_size / 2**20, 1) if gguf.is_file() else None
        except UnknownModelError:
            installed, gguf_mb = False, None
        rows.append({
            "alias": alias,
            "description": model.description,
            "package": model.package,
            "installed": installed,
            "gguf_mb": gguf_mb,
            "cached": is_cached(alias),
            "cache_mb": round(_dir_size(converted_dir(alias)) / 2**20, 1) or None,
            "licence": model.licence,
        })
    return pd.DataFrame(rows)


@dataclass
class ModelInfo:
    """Shape and hook sites of a loaded model."""

    name: str
    model_class: str
    model_type: str
    family: str
    n_layers: int
    d_model: int
    vocab_size: int
    n_params: int
    dtype: str
    device: str
    final_logit_softcap: float | None
    parallel_residual: bool
    site_kinds: list[str]

    @classmethod
    def of(cls, model: ModelAdapter) -> "ModelInfo":
        return cls(
            name=model.name,
            model_class=type(model.model).__name__,
            model_type=model.model_type,
            family=model.spec.family,
            n_layers=model.n_layers,
            d_model=model.d_model,
            vocab_size=model.vocab_size,
            n_params=sum(p.numel() for p in model.model.parameters()),
            dtype=str(model.dtype).removeprefix("torch."),
            device=str(model.device),
            final_logit_softcap=model.logit_softcap,
            parallel_residual=model.parallel_residual,
            site_kinds=list(model.site_kinds()),
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "sites": [f"{k}.{{0..{self.n_layers - 1}}}" for k in self.site_kinds]}

    def to_text(self) -> str:
        lines = [
            f"model        {self.name} ({self.model_class}, family {self.family})",
            f"layers       {self.n_layers}",
            f"d_model      {self.d_model}",
            f"vocab_size   {self.vocab_size}",
            f"parameters   {self.n_params:,}",
            f"dtype        {self.dtype} on {self.device}",
            f"logit cap    {self.final_logit_softcap if self.final_logit_softcap is not None else 'none'}",
            "hook sites   " + ", ".join(f"{k}.{{0..{self.n_layers - 1}}}" for k in self.site_kinds),
            "             (TransformerLens names such as blocks.0.hook_resid_post are accepted too)",
        ]
        return "\n".join(lines)
