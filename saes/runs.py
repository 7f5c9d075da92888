"""The ``interlayer sae`` commands as functions: a command config in, the library called
with typed arguments (:func:`~interlayer.saes.train_saes`,
:func:`~interlayer.saes.records.finish_sae`, :func:`~interlayer.saes.run.sweep_saes`, ...).
This is the one place in ``saes/`` that reads a command config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlayer.cli.config import check_required
from interlayer.distributed import World, broadcast_object, device_of, join, leave, split_evenly
from interlayer.errors import InterlayerError
from interlayer.io.files import MANIFEST, check_writable, write_json_atomic
from interlayer.model.adapter import ModelAdapter
from interlayer.model.loading import SAMPLE_TEXT
from interlayer.model.sites import check_site_syntax
from interlayer.store.cache import ActivationStore
from interlayer.store.cache_ranks import verify_on_every_rank
from interlayer.store.inputs import check_data_file

from .archs import ArchFields
from .checkpoint import CHECKPOINT
from .config import LATENTS_PER_D_MODEL, SAEEvalConfig, SAESweepConfig, SAETrainConfig
from .evaluation import evaluate_sae
from .formats import is_interlayer_dir, is_saelens_dir
from .layer_parallel import ScatteredSource, expand_cached_sites, owned_sites, train_sites
from .loading import load
from .loop import TrainMember, train_sae
from .options import TrainOptions, train_options
from .pareto import SAESweep
from .pathcheck import check_sae_path
from .records import EvalOptions, TrainedSAE, describe, finish_sae, metrics_record, write_figures
from .run import SweepSpec, plan_sweep, sweep_saes
from .sae import SAEConfig, check_sae_fields
from .sources import CachedSource, Source, StreamedSource


@dataclass
class TrainRun:
    """What ``sae train`` did: the metrics of each SAE this process reports (one, or one
    per site with ``--sites``; none on the ranks other than 0 of a distributed run)."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_site: bool = False
    """``--sites``: ``rows`` are ``<out>/sites.csv``'s."""


def check_sae_options(cfg: SAETrainConfig, options: TrainOptions) -> None:
    """Refuse a bad architecture, k, AFA form, normalisation or JumpReLU threshold, and
    options the mode cannot honour, before the model loads (the width is not known yet)."""
    fields = check_sae_fields(ArchFields(cfg.arch, cfg.latents, cfg.k, cfg.afa_form, cfg.authors_exact,
                                         cfg.jumprelu_threshold), cfg.normalization)
    options.check(fields)


def _sae_config(cfg: SAETrainConfig, d_in: int, model: str | None, site: str) -> SAEConfig:
    """The SAE ``sae train`` trains at ``site``."""
    return SAEConfig(d_in=d_in, d_sae=LATENTS_PER_D_MODEL * d_in if cfg.latents is None else cfg.latents, arch=cfg.arch,
                     k=cfg.k, normalization=cfg.normalization, afa_form=cfg.afa_form, authors_exact=cfg.authors_exact,
                     jumprelu_init_threshold=cfg.jumprelu_threshold, model=model, site=site)


def _train_evaluation(cfg: SAETrainConfig) -> EvalOptions:
    """``sae train``'s final evaluation: on ``--eval-data``, else ``--data``, else the packaged sample."""
    return EvalOptions(cfg.eval_data or cfg.data or str(SAMPLE_TEXT), tokens=cfg.eval_tokens,
                       context_length=cfg.context_length, text_field=cfg.text_field, progress=not cfg.no_progress)


def run_train(cfg: SAETrainConfig) -> TrainRun:
    """``interlayer sae train`` as a function: trains, saves and evaluates.

    Under ``torchrun`` (several processes) it trains data-parallel from cached
    activations: each rank reads its own slice of every global batch, gradients are
    averaged, and rank 0 alone writes checkpoints, the SAE, metrics and figures (the
    other ranks report nothing). With ``--sites`` it trains one SAE per site
    (:mod:`~interlayer.saes.layer_parallel`) and reports the per-site table (on rank 0)."""
    check_required(cfg)
    world = join(cfg, cfg.dist_timeout)
    _check_train_inputs(cfg, world)
    options = train_options(cfg)
    options.progress = not cfg.no_progress
    check_sae_options(cfg, options)
    if cfg.sites is not None:
        return _train_sites(cfg, options, world)
    model, source = _train_source(cfg, options, world)
    model_name = broadcast_object(model.name if model is not None else None, what="sharing the model name")
    sae_cfg = _sae_config(cfg, source.d_in, model_name, source.sites[0])
    out = Path(cfg.out)
    result = train_sae(source, sae_cfg, options, checkpoint_dir=out, device=device_of(world, cfg.device))
    leave()  # the ranks are done together; rank 0 alone saves and evaluates, with no collective left
    if not world.main:
        return TrainRun(out)
    trained = TrainedSAE(result, out, options, f"{cfg.arch} {sae_cfg.site}")
    metrics = finish_sae(trained, model, _train_evaluation(cfg), train_source=str(cfg.activations or cfg.data))
    return TrainRun(out, [metrics])


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
    if cfg.activations is not None and not (Path(cfg.activations) / MANIFEST).is_file():
        raise InterlayerError(f"--activations {cfg.activations!r} is not an activation cache (no {MANIFEST}); "
                              "write one with `interlayer cache`")
    if cfg.sites is not None:
        cfg.parsed("sites")  # the names' syntax
        return  # layer-parallel: every rank trains whole batches of its own sites
    check_site_syntax([cfg.site])
    split_evenly(cfg.batch_size, world, "--tokens-per-step (the global batch)")


def _train_source(cfg: SAETrainConfig, options: TrainOptions, world: World) -> tuple[ModelAdapter | None, Source]:
    """The model (``None`` on the ranks other than 0 of a distributed run: they only read
    the cache) and the training source. Every rank verifies every shard before training,
    and a bad one stops every rank, named."""
    model = dataclasses.replace(cfg, device=device_of(world, cfg.device)).load() if world.main else None
    if cfg.activations is None:
        return model, StreamedSource(model, cfg.data, model.site(cfg.site).name, options.batch_size, seed=options.seed,
                                     context_length=cfg.context_length, forward_batch_size=cfg.forward_batch_size,
                                     memory_mb=cfg.memory_mb, text_field=cfg.text_field, device=model.device)
    store = ActivationStore(cfg.activations, model=model)
    if world.distributed:
        verify_on_every_rank(store)
    site = model.site(cfg.site).name if model is not None else cfg.site
    device = model.device if model is not None else device_of(world, cfg.device)
    return model, CachedSource(store, site, options.batch_size, seed=options.seed, device=device, world=world,
                              shuffle=options.shuffle)


def _train_sites(cfg: SAETrainConfig, options: TrainOptions, world: World) -> TrainRun:
    """``sae train --sites``: this rank's SAEs (one per owned site) on one read per batch
    (:func:`~interlayer.saes.layer_parallel.train_sites`)."""
    model = dataclasses.replace(cfg, device=device_of(world, cfg.device)).load()
    store = ActivationStore(cfg.activations, model=model) if cfg.activations is not None else None
    sites = expand_cached_sites(cfg.parsed("sites"), model, store.sites if store is not None else None)
    own = owned_sites(sites, world)
    source: Source
    if store is not None:
        verify_on_every_rank(store)
        source = CachedSource(store, own, options.batch_size, seed=options.seed, device=model.device,
                              shuffle=options.shuffle)
    else:
        streamed = StreamedSource(model, cfg.data, sites, options.batch_size, seed=options.seed,
                                  context_length=cfg.context_length, forward_batch_size=cfg.forward_batch_size,
                                  memory_mb=cfg.memory_mb, text_field=cfg.text_field, device=model.device)
        source = ScatteredSource(streamed, world) if world.distributed else streamed
    out = Path(cfg.out)
    members = [TrainMember(_sae_config(cfg, model.d_model, model.name, site), options, out / site) for site in own]
    table = train_sites(source, members, model, _train_evaluation(cfg), out=out, sites=sites,
                        train_source=str(cfg.activations or cfg.data), world=world)
    return TrainRun(out, table or [], per_site=True)


def run_eval(cfg: SAEEvalConfig) -> dict[str, Any]:
    """``interlayer sae eval`` as a function; returns the metrics (``--out`` holds them and
    the whole evaluation, which :meth:`SAEEvaluation.load` reads back)."""
    check_required(cfg)
    if cfg.data is not None:
        check_data_file(cfg.data, text_field=cfg.text_field)
    check_writable(cfg.out, suffixes=(".json",))
    if cfg.figures:
        check_writable(cfg.figures, flag="--figures", suffixes=(".html",))
    if cfg.site is not None:
        check_site_syntax([cfg.site])
    check_sae_path(cfg.sae, cfg.site)  # any format, by content (each tried, and why not), before the model loads
    model = cfg.load()
    sae = load(cfg.sae, model, cfg.site, verify=False)  # site, width and model checked; the evaluation follows
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


def check_sae_dir(path: str) -> None:
    """Refuse a ``--sae`` that is neither an interlayer nor a SAELens SAE directory."""
    if not (is_interlayer_dir(path) or is_saelens_dir(path)):
        raise InterlayerError(f"--sae {path!r} is not a saved SAE: it needs cfg.json and sae.safetensors "
                              "(interlayer) or sae_weights.safetensors (SAELens)")


def run_sweep(cfg: SAESweepConfig) -> SAESweep:
    """``interlayer sae sweep`` as a function (:func:`~interlayer.saes.run.plan_sweep`, then,
    with the model loaded, :func:`~interlayer.saes.run.sweep_saes`)."""
    check_required(cfg)
    base = train_options(cfg)
    base.progress = not cfg.no_progress
    spec = SweepSpec(cfg.activations, cfg.out, cfg.parsed("arch"), cfg.grid,
                     cfg.site, cfg.latents, cfg.normalization, cfg.jumprelu_threshold, cfg.members_per_pass,
                     cfg.train_memory_mb)
    plan = plan_sweep(spec, base)
    if cfg.eval_data is not None:
        check_data_file(cfg.eval_data, "--eval-data", text_field=cfg.text_field)
    evaluation = EvalOptions(cfg.eval_data or SAMPLE_TEXT, tokens=cfg.eval_tokens,
                             context_length=cfg.context_length, batch_size=cfg.eval_batch_size,
                             text_field=cfg.text_field, progress=base.progress)
    return sweep_saes(plan, cfg.load(), evaluation)


__all__ = ["TrainRun", "run_train", "run_eval", "run_sweep", "check_sae_options", "check_sae_dir"]
