"""The core CLI commands: ``models`` and ``info``."""

from __future__ import annotations

from .cli import command, emit_json
from .config import CacheConfig, InfoConfig, ModelsConfig
from .errors import InterlayerError
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


@command("cache", CacheConfig)
def run_cache(cfg: CacheConfig) -> int:
    from .store import cache

    for name in ("data", "out"):
        if not getattr(cfg, name):
            raise InterlayerError(f"--{name} is required")
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    store = cache(model, cfg.data, [s for s in cfg.sites.split(",") if s], cfg.out, cfg.tokens,
                  context_length=cfg.context_length, batch_size=cfg.batch_size, dtype=cfg.storage_dtype,
                  memory_mb=cfg.memory_mb, disk_budget_mb=cfg.disk_budget_mb, text_field=cfg.text_field,
                  progress=not cfg.no_progress)
    print(store)
    return 0
