"""Running a Pareto sweep: a grid of SAEs (:mod:`~interlayer.saes.grid`) trained on the
same cached activations and compared (:mod:`~interlayer.saes.pareto`).

:func:`plan_sweep` checks everything that can be checked before the model loads (the
cache, the site, the grid and each member's directory) and says which members are
``new``, ``training`` (a checkpoint to resume) or ``finished`` (reused, never retrained
or overwritten; a directory written for another config is an error). :func:`sweep_saes`
then trains the members not yet finished in one pass over the cached activations per
group (every member of a group takes its step on each batch as it is read,
:func:`~interlayer.saes.loop.train_saes`), finishes them together
(:func:`~interlayer.saes.records.finish_saes`: one clean pass, one zero-ablated pass and
one spliced pass per member), and writes ``<out>/pareto.csv``, ``<out>/pareto.html`` and
``<out>/sweep.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlayer.errors import InterlayerError, choices
from interlayer.io.checkpointing import identity_differences
from interlayer.io.files import MANIFEST, check_writable, write_atomic, write_json_atomic
from interlayer.model.adapter import ModelAdapter
from interlayer.store.cache import ActivationStore

from .archs import SAE_ARCHITECTURES, architecture
from .archs.jumprelu import INITIAL_THRESHOLD
from .checkpoint import CHECKPOINT, config_identity
from .config import LATENTS_PER_D_MODEL
from .grid import DEFAULT_GRID, GridMember, parse_grid
from .loop import TrainMember, TrainResult, train_saes
from .options import TrainOptions
from .pareto import TABLE_COLUMNS, SAESweep, pareto_figure, pareto_table
from .records import EvalOptions, TrainedSAE, finish_saes, write_figures
from .sae import SAEConfig
from .sources import CachedSource

@dataclass
class SweepSpec:
    """What a sweep trains, and where."""

    activations: str | Path
    """A directory written by :func:`interlayer.cache` (read once per step for every member)."""
    out: str | Path
    """The sweep's directory: one subdirectory per member, ``pareto.csv``, ``pareto.html``, ``sweep.json``."""
    archs: Sequence[str] = SAE_ARCHITECTURES
    grid: str | None = None
    """Values per architecture (:func:`~interlayer.saes.grid.parse_grid`; default: :data:`DEFAULT_GRID`)."""
    site: str | None = None
    """The cached site (default: the cache's only site)."""
    latents: int | None = None
    """Latents per SAE (default: 8 x d_model)."""
    normalization: str = "standardize"
    jumprelu_threshold: float = INITIAL_THRESHOLD
    members_per_pass: int = 0
    """Members trained together on each batch (0: as many as ``train_memory_mb`` allows)."""
    train_memory_mb: float = 8192.0


@dataclass
class PlannedMember:
    """One member of a planned sweep: its SAE, options, identity and state on disk."""

    member: GridMember
    cfg: SAEConfig
    options: TrainOptions
    identity: dict[str, Any]
    state: str
    """``new``, ``training`` or ``finished``."""

    @property
    def name(self) -> str:
        return self.member.name


@dataclass
class SweepPlan:
    """A checked sweep (:func:`plan_sweep`), ready to run (:func:`sweep_saes`)."""

    spec: SweepSpec
    store: ActivationStore
    site: str
    latents: int
    base: TrainOptions
    members: list[PlannedMember] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.spec.out)


def member_identity(cfg: SAEConfig, options: TrainOptions, source: dict[str, Any]) -> dict[str, Any]:
    """What a finished member must share with the grid to be reused (as its checkpoint's)."""
    return json.loads(json.dumps({"sae": config_identity(cfg), "options": options.identity(cfg), "source": source}))


def member_state(path: Path, identity: dict[str, Any]) -> str:
    """``new``, ``training`` (a checkpoint to resume; its identity is checked when it
    loads) or ``finished``; an error for a directory written for another config."""
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise InterlayerError(f"{path} is a file where the sweep member's directory goes; move it or use another --out")
    metrics = path / "metrics.json"
    if metrics.is_file():
        try:
            saved = json.loads(metrics.read_text()).get("identity")
        except (json.JSONDecodeError, AttributeError) as err:
            raise InterlayerError(f"{metrics} is not a sweep member's metrics file ({err})") from err
        if saved != identity:
            diffs = identity_differences(saved or {}, identity)
            raise InterlayerError(f"{path} holds a finished SAE of another config ({'; '.join(diffs[:4])}"
                                  f"{' ...' if len(diffs) > 4 else ''}); it is kept as it is. Use another --out, "
                                  "or the grid and options it was trained with")
        return "finished"
    if (path / CHECKPOINT).is_file():
        return "training"
    if any(path.iterdir()):
        raise InterlayerError(f"{path} holds files that are not a sweep member's (no metrics.json or checkpoint); "
                              "move them or use another --out")
    return "new"


def plan_sweep(spec: SweepSpec, base: TrainOptions) -> SweepPlan:
    """The members of ``spec``'s grid with their configs, options and states on disk,
    every check that needs no model done (see the module docstring)."""
    archs = list(spec.archs)
    if not archs:
        raise InterlayerError(f"--arch names no architecture; valid choices: {choices(SAE_ARCHITECTURES)}")
    if not (Path(spec.activations) / MANIFEST).is_file():
        raise InterlayerError(f"--activations {str(spec.activations)!r} is not an activation cache (no {MANIFEST}); "
                              "write one with `interlayer cache`")
    store = ActivationStore(spec.activations)
    if spec.site is None and len(store.sites) != 1:
        raise InterlayerError(f"{spec.activations} holds several sites {store.sites}; choose one with --site")
    site = store.check_site(spec.site or store.sites[0])
    d_in = int(store.manifest["d_model"])
    latents = spec.latents or LATENTS_PER_D_MODEL * d_in
    members = parse_grid(spec.grid, archs, latents)
    check_writable(spec.out, directory=True)
    plan = SweepPlan(spec, store, site, latents, base)
    source_identity = CachedSource(store, site, base.batch_size, seed=base.seed, shuffle=base.shuffle).identity()
    for member in members:
        cfg = member.sae_config(d_in, latents, spec.normalization, store.manifest["model"], site,
                                spec.jumprelu_threshold)
        options = member.train_options(base)
        options.check(cfg)
        identity = member_identity(cfg, options, source_identity)
        plan.members.append(PlannedMember(member, cfg, options, identity, member_state(plan.out / member.name, identity)))
    if (plan.out / "pareto.csv").exists() and not (plan.out / "sweep.json").is_file():
        raise InterlayerError(f"{plan.out} holds a pareto.csv that no sweep wrote (no sweep.json); use another --out")
    return plan


def table_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """A member's row of the Pareto table, from its ``metrics.json``."""
    row = {c: metrics.get(c) for c in TABLE_COLUMNS}
    row["train_tokens"] = metrics.get("tokens")
    row["train_seconds"] = metrics.get("seconds")
    return row


def _member_bytes(cfg: SAEConfig) -> int:
    """Weights, gradients and Adam's two moments of one SAE, in bytes."""
    params = 2 * cfg.d_in * cfg.d_sae + cfg.d_sae * (1 + architecture(cfg.arch).latent_parameters) + cfg.d_in
    return params * 4 * 4


def _train(plan: SweepPlan, source: CachedSource, device: Any) -> tuple[dict[str, TrainResult], dict[str, str]]:
    """Train the unfinished members, as many together as memory allows."""
    todo = [p for p in plan.members if p.state != "finished"]
    per_pass = plan.spec.members_per_pass or max(
        1, int(plan.spec.train_memory_mb * 2**20 // max(_member_bytes(p.cfg) for p in plan.members)))
    trained: dict[str, TrainResult] = {}
    failed: dict[str, str] = {}
    for start in range(0, len(todo), per_pass):
        group = todo[start:start + per_pass]
        results = train_saes(source, [TrainMember(p.cfg, p.options, plan.out / p.name) for p in group], device=device,
                             stop_on_error=False, progress=plan.base.progress)
        for planned, result in zip(group, results):
            if isinstance(result, Exception):
                failed[planned.name] = str(result)
            else:
                trained[planned.name] = result
    return trained, failed


def _trained(planned: PlannedMember, result: TrainResult, plan: SweepPlan) -> TrainedSAE:
    """A trained member on its way to disk, with what its ``metrics.json`` records of it."""
    history = result.history
    record = {"member": planned.name, "coefficient": planned.member.coefficient, "grid_value": planned.member.text,
              "train_mse_last": history[-1]["mse"] if history else None, "identity": planned.identity,
              "site": plan.site}
    return TrainedSAE(result, plan.out / planned.name, planned.options, planned.name, record)


def sweep_saes(plan: SweepPlan, model: ModelAdapter, evaluation: EvalOptions) -> SAESweep:
    """Train, finish and compare the members of ``plan`` (see the module docstring)."""
    out, base = plan.out, plan.base
    source = CachedSource(ActivationStore(plan.spec.activations, model=model), plan.site, base.batch_size,
                          seed=base.seed, device=model.device, shuffle=base.shuffle)
    trained, failed = _train(plan, source, model.device)
    if trained:
        finish_saes([_trained(p, trained[p.name], plan) for p in plan.members if p.name in trained], model,
                    evaluation, train_source=str(plan.spec.activations), site=plan.site)
    rows = [table_row(json.loads((out / p.name / "metrics.json").read_text())) for p in plan.members
            if (out / p.name / "metrics.json").is_file()]
    table = pareto_table(rows)
    write_atomic(out / "pareto.csv", table.to_csv(index=False).encode())
    model_name = plan.store.manifest["model"]
    write_figures(out / "pareto.html", [pareto_figure(table, f"SAE sweep: {model_name} {plan.site}, {plan.latents} latents")])
    names = [p.name for p in plan.members]
    write_json_atomic(out / "sweep.json", {
        "format": 1, "model": model_name, "site": plan.site, "latents": plan.latents,
        "activations": str(plan.spec.activations), "grid": plan.spec.grid or DEFAULT_GRID, "arch": list(plan.spec.archs),
        "members": names, "finished": [n for n in names if (out / n / "metrics.json").is_file()], "failed": failed,
        "eval_data": str(evaluation.data), "eval_tokens": evaluation.tokens,
        "train_options": {**base.identity(), "jumprelu_threshold": plan.spec.jumprelu_threshold},
        "columns": list(TABLE_COLUMNS)})
    reused = [p.name for p in plan.members if p.state == "finished"]
    return SAESweep(table, out, list(trained), reused, failed)


__all__ = ["SweepSpec", "PlannedMember", "SweepPlan", "member_identity", "member_state",
           "plan_sweep", "table_row", "sweep_saes"]
