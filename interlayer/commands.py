"""The core CLI commands: ``models`` and ``info``."""

from __future__ import annotations

from .cli import command, emit_json
from .config import InfoConfig, ModelsConfig
from .info import ModelInfo, list_models
from .loading import load_model


@command("models", ModelsConfig)
def run_models(cfg: ModelsConfig) -> int:
    frame = list_models()
    if cfg.json:
        emit_json(frame.to_dict(orient="records"))
    else:
        print(frame.to_string(index=False))
    return 0


@command("info", InfoConfig)
def run_info(cfg: InfoConfig) -> int:
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    info = ModelInfo.of(model)
    if cfg.json:
        emit_json(info.to_dict())
    else:
        print(info.to_text())
    return 0
