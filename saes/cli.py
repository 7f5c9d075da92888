"""``interlayer sae train``, ``interlayer sae eval`` and ``interlayer sae convert``."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from interlayer.cli.registry import command, say, show
from interlayer.cli.config import check_required
from interlayer.distributed import World, broadcast_object, device_of, join, leave, split_evenly
from interlayer.errors import InterlayerError
from interlayer.io.files import check_writable, write_json_atomic
from interlayer.store.inputs import check_data_file
from interlayer.model.loading import SAMPLE_TEXT
from interlayer.model.sites import check_site_syntax

from .config import LATENTS_PER_D_MODEL, SAEEvalConfig, SAEExportConfig, SAESweepConfig, SAETrainConfig
from .evaluation import evaluate_sae
from .records import describe, metrics_record, save_trained, train_options, write_figures
from .sae import SAE, SAEConfig
from .training import CHECKPOINT, train_sae

log = logging.getLogger(__name__)

REQUIRED_METRICS = ("nmse", "explained_variance", "l0", "dead_frac", "ce_loss_recovered", "eps_lbo_median",
                    "tokens", "seconds")


def _check_sae_dir(path: str) -> None:
    from .formats import is_interlayer_dir, is_saelens_dir

    if not (is_interlayer_dir(path) or is_saelens_dir(path)):
        raise InterlayerError(f"--sae {path!r} is not a saved SAE: it needs cfg.json and sae.safetensors "
                              "(interlayer) or sae_weights.safetensors (SAELens)")


def run_train(cfg: SAETrainConfig) -> Any:
    """``interlayer sae train`` as a function: trains, saves and evaluates; returns the metrics.

    Under ``torchrun`` (several processes) it trains data-parallel from cached
    activations: each rank reads its own slice of every global batch, gradients are
    averaged, and rank 0 alone writes checkpoints, the SAE, metrics and figures (the
    other ranks return ``None``). With ``--sites`` it trains one SAE per site
    (:mod:`~interlayer.saes.layer_parallel`) and returns the per-site table (on rank 0)."""
    check_required(cfg)
    world = join(cfg, cfg.dist_timeout)
    _check_train_inputs(cfg, world)
    options = train_options(cfg)
    options.progress = not cfg.no_progress
    # a bad architecture, k, AFA form or normalisation, or options the mode cannot honour, fail before the model loads
    options.check(SAEConfig(d_in=1, d_sae=cfg.latents or 1 << 30, arch=cfg.arch, k=cfg.k, normalization=cfg.normalization,
                            afa_form=cfg.afa_form, authors_exact=cfg.authors_exact))
    if cfg.sites is not None:
        from .layer_parallel import train_sites

        return train_sites(cfg, options, world)
    model, source = _train_source(cfg, options, world)
    model_name = broadcast_object(model.name if model is not None else None, what="sharing the model name")
    sae_cfg = SAEConfig(d_in=source.d_in, d_sae=LATENTS_PER_D_MODEL * source.d_in if cfg.latents is None else cfg.latents, arch=cfg.arch,
                        k=cfg.k, normalization=cfg.normalization, afa_form=cfg.afa_form,
                        authors_exact=cfg.authors_exact, jumprelu_init_threshold=cfg.jumprelu_threshold,
                        model=model_name, site=source.sites[0])
    out = Path(cfg.out)
    result = train_sae(source, sae_cfg, options, checkpoint_dir=out, device=device_of(world, cfg.device))
    leave()  # the ranks are done together; rank 0 alone saves and evaluates, with no collective left
    if not world.main:
        return None
    return save_trained(cfg, model, result, options, Path(cfg.out))


def _check_train_inputs(cfg: SAETrainConfig, world: World) -> None:
    if (cfg.data is None) == (cfg.activations is None):
        raise InterlayerError("give exactly one of --data (text streamed through the model) and --activations "
                              "(a directory from `interlayer cache`)")
    if world.distributed and cfg.activations is None and cfg.sites is None:
        raise InterlayerError(f"training on {world.size} processes reads cached activations: write them with "
                              "`interlayer cache` (or `torchrun ... -m interlayer cache`) and pass --activations")
    check_writable(cfg.out, directory=True)
    if (Path(cfg.out) / "metrics.json").exists() and not (Path(cfg.out) / CHECKPOINT).exists():
        raise InterlayerError(f"{cfg.out} already holds a finished SAE (metrics.json); use another --out or remove it")
    for flag, path in (("--data", cfg.data), ("--eval-data", cfg.eval_data)):
        if path is not None:
            check_data_file(path, flag, text_field=cfg.text_field)
    if cfg.activations is not None and not (Path(cfg.activations) / "manifest.json").is_file():
        raise InterlayerError(f"--activations {cfg.activations!r} is not an activation cache (no manifest.json); "
                              "write one with `interlayer cache`")
    if cfg.sites is not None:
        check_site_syntax([s.strip() for s in cfg.sites.split(",") if s.strip()])
        return  # layer-parallel: every rank trains whole batches of its own sites
    check_site_syntax([cfg.site])
    split_evenly(cfg.batch_size, world, "--tokens-per-step (the global batch)")


def _train_source(cfg: SAETrainConfig, options: Any, world: World) -> tuple[Any, Any]:
    """The model (``None`` on the ranks other than 0 of a distributed run: they only read
    the cache) and the training source. Every rank verifies every shard before training,
    and a bad one stops every rank, named."""
    from .sources import CachedSource, StreamedSource

    model = dataclasses.replace(cfg, device=device_of(world, cfg.device)).load() if world.main else None
    if cfg.activations is None:
        return model, StreamedSource(model, cfg.data, model.site(cfg.site).name, options.batch_size, seed=options.seed,
                                     context_length=cfg.context_length, forward_batch_size=cfg.forward_batch_size,
                                     memory_mb=cfg.memory_mb, text_field=cfg.text_field, device=model.device)
    from interlayer.store.cache import ActivationStore
    from interlayer.store.cache_ranks import verify_on_every_rank

    store = ActivationStore(cfg.activations, model=model)
    if world.distributed:
        verify_on_every_rank(store)
    site = model.site(cfg.site).name if model is not None else cfg.site
    device = model.device if model is not None else device_of(world, cfg.device)
    return model, CachedSource(store, site, options.batch_size, seed=options.seed, device=device, world=world)


@command("sae train", SAETrainConfig)
def _train(cfg: SAETrainConfig) -> int:
    try:
        metrics = run_train(cfg)
    except BaseException:
        leave(together=False)
        raise
    leave()  # a no-op when run_train already left (data-parallel training leaves before the evaluation)
    if metrics is None:  # a rank other than 0 of a distributed run: rank 0 reports
        return 0
    if isinstance(metrics, list):  # --sites: one row per site
        import pandas as pd

        show(pd.DataFrame(metrics).to_string(index=False, float_format=lambda v: f"{v:.4g}"), metrics)
        say(f"wrote {cfg.out}/<site>/ for {len(metrics)} site(s) and {cfg.out}/sites.csv")
        return 0
    show("\n".join(f"{key:>20}: {metrics[key]:.4g}" if isinstance(metrics[key], float) else f"{key:>20}: {metrics[key]}"
                   for key in REQUIRED_METRICS), metrics)
    say(f"wrote {cfg.out}/sae.safetensors, cfg.json, metrics.json, history.csv, figures.html")
    return 0


def load_any(path: str | Path) -> SAE:
    """An SAE saved by interlayer, or one in the SAELens on-disk format."""
    from . import saelens
    from .formats import is_interlayer_dir, is_saelens_dir

    if is_saelens_dir(path) and not is_interlayer_dir(path):
        return saelens.from_saelens(path)
    return SAE.load(path)


def run_eval(cfg: SAEEvalConfig) -> dict[str, Any]:
    """``interlayer sae eval`` as a function; returns the metrics (``--out`` holds them and
    the whole evaluation, which :meth:`SAEEvaluation.load` reads back)."""
    check_required(cfg)
    _check_sae_dir(cfg.sae)
    if cfg.data is not None:
        check_data_file(cfg.data, text_field=cfg.text_field)
    check_writable(cfg.out, suffixes=(".json",))
    if cfg.figures:
        check_writable(cfg.figures, flag="--figures", suffixes=(".html",))
    sae = load_any(cfg.sae)
    if cfg.site is not None:
        check_site_syntax([cfg.site])
    model = cfg.load()
    data = cfg.data or str(SAMPLE_TEXT)
    evaluation = evaluate_sae(sae, model, data, cfg.site, tokens=cfg.tokens, context_length=cfg.context_length,
                              batch_size=cfg.batch_size, text_field=cfg.text_field, label=Path(cfg.sae).name,
                              progress=not cfg.no_progress)
    metrics = metrics_record(evaluation, sae=str(cfg.sae), site=cfg.site or sae.cfg.site, data=str(data), **describe(sae.cfg))
    # the metrics and the whole evaluation (per-token data): SAEEvaluation.load reads it back
    write_json_atomic(Path(cfg.out), {**metrics, **evaluation.to_json()})
    if cfg.figures:
        write_figures(Path(cfg.figures), [evaluation.zf_plot(), evaluation.eps_histogram(), evaluation.firing_histogram()])
    return metrics


@command("sae eval", SAEEvalConfig)
def _eval(cfg: SAEEvalConfig) -> int:
    metrics = run_eval(cfg)
    keys = ("nmse", "explained_variance", "l0", "dead_frac", "dense_frac", "ce_loss_recovered", "kl_sae", "eps_lbo_median")
    show("\n".join(f"{key:>20}: {metrics[key]:.4g}" for key in keys), metrics)
    say(f"wrote {cfg.out}")
    return 0


@command("sae sweep", SAESweepConfig)
def _sweep(cfg: SAESweepConfig) -> int:
    from .sweep import run_sweep

    result = run_sweep(cfg)
    shown = result.table[["member", "l0", "explained_variance", "nmse", "ce_loss_recovered", "mse_standardized",
                          "pareto_ev"]]
    show(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"),
         {"members": result.table.to_dict(orient="records"), "failed": dict(result.failed)})
    say(f"trained {len(result.trained)}, reused {len(result.reused)}, failed {len(result.failed)}")
    for name, error in result.failed.items():
        say(f"failed: {name}: {error}")
    say(f"wrote {result.out}/pareto.csv, pareto.html, sweep.json and one directory per member")
    return 3 if result.failed else 0  # finished, with failed members


@command("sae convert", SAEExportConfig)
def _convert(cfg: SAEExportConfig) -> int:
    from . import saelens

    _check_sae_dir(cfg.sae)
    check_writable(cfg.out, directory=True)
    if cfg.to == "saelens":
        saelens.to_saelens(SAE.load(cfg.sae), cfg.out)
    else:
        saelens.from_saelens(cfg.sae).save(cfg.out)
    show(f"wrote {cfg.out}", {"out": str(cfg.out), "to": cfg.to})
    return 0


__all__ = ["run_train", "run_eval", "train_options", "load_any", "write_figures"]
