"""``interlayer sae train``, ``interlayer sae eval``, ``interlayer sae sweep``,
``interlayer sae check`` and ``interlayer sae convert``: each command calls its run (:mod:`~interlayer.saes.runs`)
and shows what it returns."""

from __future__ import annotations

import logging
import sys

from interlayer.cli.registry import command, note, say, show, write_json_output
from interlayer.distributed import leave
from interlayer.io.files import check_writable

from .config import SAECheckConfig, SAEEvalConfig, SAEExportConfig, SAESweepConfig, SAETrainConfig
from .options import train_options
from .records import write_figures
from .runs import check_sae_dir, run_eval, run_train
from .sae import SAE
from .saelens import load_sae

log = logging.getLogger(__name__)

REQUIRED_METRICS = ("nmse", "explained_variance", "l0", "dead_frac", "ce_loss_recovered", "eps_lbo_median",
                    "tokens", "seconds")


@command("sae train", SAETrainConfig)
def _train(cfg: SAETrainConfig) -> int:
    try:
        run = run_train(cfg)
    except BaseException:
        leave(together=False)
        raise
    leave()  # a no-op when run_train already left (data-parallel training leaves before the evaluation)
    if not run.rows:  # a rank other than 0 of a distributed run: rank 0 reports
        return 0
    if run.per_site:  # --sites: one row per site
        import pandas as pd

        show(pd.DataFrame(run.rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"), run.rows)
        say(f"wrote {cfg.out}/<site>/ for {len(run.rows)} site(s) and {cfg.out}/sites.csv")
        return 0
    metrics = run.rows[0]
    show("\n".join(f"{key:>20}: {metrics[key]:.4g}" if isinstance(metrics[key], float) else f"{key:>20}: {metrics[key]}"
                   for key in REQUIRED_METRICS), metrics)
    say(f"wrote {cfg.out}/sae.safetensors, cfg.json, metrics.json, history.csv, figures.html")
    return 0


load_any = load_sae
"""Deprecated name of :func:`interlayer.saes.load_sae` (one release)."""


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


@command("sae check", SAECheckConfig)
def _check(cfg: SAECheckConfig) -> int:
    """Load ``--sae`` in any format against ``--model`` (identity: site, width, model) and
    check its behaviour (:func:`~interlayer.saes.verify.check_sae`); exit 1 when refused."""
    from interlayer.cli.config import check_required
    from interlayer.model.sites import check_site_syntax
    from interlayer.store.inputs import check_data_file

    from .loading import load
    from .pathcheck import check_sae_path
    from .verify import check_sae

    check_required(cfg)
    if cfg.site is not None:
        check_site_syntax([cfg.site])
    if cfg.data is not None:
        check_data_file(cfg.data, text_field=cfg.text_field)
    if cfg.out is not None:
        from interlayer.io.files import check_writable

        check_writable(cfg.out, suffixes=(".json",))
    check_sae_path(cfg.sae, cfg.site)  # the format (each tried, and why not) before the model loads
    model = cfg.load()
    sae = load(cfg.sae, model, cfg.site, verify=False, allow_model_mismatch=cfg.allow_model_mismatch)
    result = check_sae(sae, model, tokens=cfg.tokens, data=cfg.data, context_length=cfg.context_length,
                       text_field=cfg.text_field)
    show(result.summary(), result.to_json())
    if cfg.out is not None:
        write_json_output(cfg.out, result.to_json())
    for message in result.warnings:
        note(message)
    if result.refusal is not None:
        print(f"interlayer: error: {result.refusal}", file=sys.stderr)
        return 1
    return 0


@command("sae convert", SAEExportConfig)
def _convert(cfg: SAEExportConfig) -> int:
    from . import saelens

    check_sae_dir(cfg.sae)
    check_writable(cfg.out, directory=True)
    if cfg.to == "saelens":
        saelens.to_saelens(SAE.load(cfg.sae), cfg.out)
    else:
        saelens.from_saelens(cfg.sae).save(cfg.out)
    show(f"wrote {cfg.out}", {"out": str(cfg.out), "to": cfg.to})
    return 0


__all__ = ["run_train", "run_eval", "train_options", "load_any", "write_figures", "REQUIRED_METRICS"]
