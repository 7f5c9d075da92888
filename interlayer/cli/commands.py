"""The core CLI commands: ``models``, ``info`` and ``cache``."""

from __future__ import annotations

import dataclasses

from ..distributed import device_of, join, leave
from ..io.files import check_writable
from ..model.info import ModelInfo, list_models
from ..model.sites import check_site_syntax
from ..store.cache import cache
from ..store.inputs import check_data_file
from .config import CacheConfig, InfoConfig, ModelsConfig
from .registry import command, show


@command("models", ModelsConfig)
def run_models(cfg: ModelsConfig) -> int:
    frame = list_models()
    show(frame.to_string(index=False), frame.to_dict(orient="records"))
    return 0


@command("info", InfoConfig)
def run_info(cfg: InfoConfig) -> int:
    info = ModelInfo.of(cfg.load())
    show(info.to_text(), info.to_dict())
    return 0


@command("cache", CacheConfig)
def run_cache(cfg: CacheConfig) -> int:
    # Everything that can be checked without the model is checked before it loads.
    world = join(cfg, cfg.dist_timeout)  # under torchrun: every rank got the same options
    try:
        sites = check_site_syntax(cfg.sites)
        check_data_file(cfg.data, text_field=cfg.text_field)
        check_writable(cfg.out, directory=True)
        options = cfg.cache_options()
        model = dataclasses.replace(cfg, device=device_of(world, cfg.device)).load()
        store = cache(model, cfg.data, sites, cfg.out, options=options, world=world)
    except BaseException:
        leave(together=False)
        raise
    leave()
    if world.main and store is not None:
        show(str(store), {"out": str(cfg.out), "sites": list(getattr(store, "sites", sites)), "summary": str(store)})
    return 0
