"""The SAE trainer: one loop for every architecture, reading the activation store.

Loss, in the SAE's normalised space, for a batch of ``B`` tokens::

    L = mean((x_hat - x)^2)                              reconstruction (mean over B and d_in)
      + l1_coeff * mean_b sum_i f_bi                     relu (decoder rows have unit norm)
      + l0_coeff * mean_b sum_i H(pre_bi - theta_i)      jumprelu (straight-through)
      + afa_coeff * mean_b (||f_b|| - A_b)^2             AFA loss (Lee et al. 2025)
      + auxk_coeff * mean((e_hat - e)^2)                 AuxK on dead latents (Gao et al. 2024)

where ``e = x - x_hat`` (detached) and ``e_hat`` decodes the ``aux_k`` largest
pre-activations among the latents that have not fired for ``dead_after`` batches.
The AFA target ``A_b`` is ``||x_b||`` in the authors' form and ``||x_b - b_dec||`` in the
centred form (``b_dec`` detached there: it is learned from the reconstruction alone,
and the AFA term only pulls ``||f||`` towards the norm the selection targets).
Adam, linear warmup, constant, then linear decay to zero over the last
``decay_fraction`` of the steps. Decoder rows stay at unit norm: the gradient's
component along each row is removed before the step and rows are renormalised after.

**Authors-exact mode** (top-AFA with ``authors_exact=True``), transcribing Lee et al.'s
``training.py`` and ``sae.py``: a constant learning rate (no warmup, no decay), the
dead-latent counters updated by the batch before its AuxK loss is formed, the AuxK
residual *not* detached, the gradient clipped at norm 100,000, and the decoder rows
renormalised *before* the Adam step (so they are off unit norm after it).

:func:`train_saes` trains several SAEs on one pass over a source (each batch is read
once and every member takes a step on it); :func:`train_sae` is the one-member case.

A checkpoint (one atomic safetensors file holding weights, Adam state, dead-latent
counters, the source position and the run's identity) is written every
``checkpoint_every`` steps; a run started again with the same options resumes from
it and ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors import safe_open
from safetensors.torch import save
from tqdm.auto import tqdm

from interlayer.io.checkpointing import (CheckpointMismatchError, check_resume_identity, load_optimizer,
                                        optimizer_tensors)
from interlayer.distributed import SINGLE, World, all_reduce, average_gradients, broadcast_object, current, raise_together
from interlayer.errors import InterlayerError, choices
from interlayer.io.files import write_atomic
from interlayer.options import check_options, option

from .sae import SAE, SAEConfig

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
AUXK_ARCHS = ("topk", "batchtopk", "topafa")


class NonFiniteError(InterlayerError):
    """NaN or inf in the training activations or the loss; training stopped."""


@dataclass
class TrainOptions:
    """How to train an SAE (shared by :func:`train_sae` and ``interlayer sae train``)."""

    tokens: int = option(2_000_000, "training tokens; the run takes ceil(tokens / tokens-per-step) steps", min=1)
    batch_size: int = option(4096, "training tokens per optimizer step", min=1, flag="--tokens-per-step",
                             group="training")
    lr: float = option(3e-4, "Adam learning rate after warmup", above=0)
    warmup_steps: int | None = option(None, "linear learning-rate warmup steps (default: 50; 0 in top-AFA's "
                                            "authors-exact mode)", min=0)
    decay_fraction: float | None = option(None, "final fraction of the steps over which the learning rate decays "
                                                "linearly to 0 (default: 0.2; 0 in top-AFA's authors-exact mode)", min=0)
    beta1: float = option(0.9, "Adam beta1")
    beta2: float = option(0.99, "Adam beta2")
    l1_coeff: float = option(1e-3, "L1 coefficient (relu)", min=0)
    l0_coeff: float = option(1e-3, "L0 coefficient (jumprelu)", min=0)
    jumprelu_threshold: float = option(1e-3, "initial JumpReLU threshold theta (Rajamanoharan et al. 2024: 0.001); "
                                             "log(theta) moves about lr per step, so in short runs it sets the L0",
                                       above=0)
    afa_coeff: float | None = option(None, "AFA loss coefficient (default: 1/32 for topafa, 0 for the others)", min=0)
    auxk_coeff: float = option(1 / 32, "AuxK loss coefficient (topk, batchtopk, topafa)", min=0)
    aux_k: int = option(512, "dead latents the AuxK loss may use per token", min=1)
    dead_after: int = option(5, "a latent that has not fired for this many batches is dead", min=1)
    b_dec_init: str | None = option(None, "initial b_dec: 'mean' of the first batches (normalised) or 'zeros' "
                                          "(default: zeros for top-AFA's authors form, as its authors; mean for the "
                                          "others)", choices=("mean", "zeros"))
    init_batches: int = option(4, "batches used to estimate the mean-norm scale and the initial b_dec", min=1)
    seed: int = option(0, "seed of the weights and of the row order")
    checkpoint_every: int = option(200, "write a resumable checkpoint every N steps (0: never)", min=0)
    log_every: int = option(20, "record a row of the training history every N steps", min=1)
    dead_window_tokens: int = option(1_000_000, "report the latents that never fired in the last this many training "
                                                "tokens (at most the whole run)", min=1)
    progress: bool = option(True, "show a progress bar with tokens/s, NMSE, L0 and dead %", cli=False)

    def __post_init__(self) -> None:
        check_options(self)  # bounds and choices of every field, those of subclasses included
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.decay_fraction is not None and not 0 <= self.decay_fraction <= 1:
            raise InterlayerError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / self.batch_size)

    def b_dec_start(self, cfg: SAEConfig) -> str:
        """``b_dec_init``, or its default for ``cfg``: zeros for top-AFA in the authors'
        form (their code), the mean for the others (the centred top-AFA form included).
        On Gemma 3 270M a TopK SAE (k=8) started from zeros had 98% of its latents silent
        over its last 1M tokens; one (k=32) from the mean, 37% (README)."""
        return self.b_dec_init or ("zeros" if cfg.afa_form == "authors" else "mean")

    def afa(self, arch: str) -> float:
        return (1 / 32 if arch == "topafa" else 0.0) if self.afa_coeff is None else self.afa_coeff

    def warmup(self, cfg: SAEConfig) -> int:
        """``warmup_steps``, or its default: 50, and 0 in the authors-exact mode."""
        return (0 if cfg.authors_exact else 50) if self.warmup_steps is None else self.warmup_steps

    def decay(self, cfg: SAEConfig) -> float:
        """``decay_fraction``, or its default: 0.2, and 0 in the authors-exact mode."""
        return (0.0 if cfg.authors_exact else 0.2) if self.decay_fraction is None else self.decay_fraction

    def check(self, cfg: SAEConfig) -> None:
        """Refuse options the SAE's mode cannot honour (before any training)."""
        if cfg.authors_exact and (self.warmup(cfg) or self.decay(cfg)):
            raise InterlayerError("top-AFA's authors-exact mode trains at a constant learning rate: warmup_steps and "
                                  f"decay_fraction must be 0 (got {self.warmup(cfg)} and {self.decay(cfg)})")

    def identity(self, cfg: SAEConfig | None = None) -> dict[str, Any]:
        """The options a resumed run must share (not progress or logging); with ``cfg``,
        the learning-rate schedule's defaults are resolved for it."""
        skip = {"progress", "log_every", "checkpoint_every"}
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        if cfg is not None:
            out["warmup_steps"], out["decay_fraction"] = self.warmup(cfg), self.decay(cfg)
            if cfg.arch != "jumprelu":  # it shapes JumpReLU SAEs only (and older checkpoints lack it)
                out.pop("jumprelu_threshold")
        return out


def lr_factor(step: int, steps: int, warmup: int, decay_fraction: float) -> float:
    """Warmup (linear from 1/warmup), constant, then linear decay to zero."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    decay_start = steps - int(round(decay_fraction * steps))
    if step >= decay_start and steps > decay_start:
        return max(0.0, (steps - step) / (steps - decay_start))
    return 1.0


@dataclass
class TrainResult:
    """A trained SAE and its training history (one row every ``log_every`` steps)."""

    sae: SAE
    history: list[dict[str, float]]
    steps: int
    tokens: int
    seconds: float
    resumed_from: int
    dead_frac_window: float = float("nan")
    """Fraction of latents that did not fire at all in the last ``window_tokens`` of training."""
    window_tokens: int = 0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        fig = go.Figure()
        for col in ("nmse", "l0", "dead_frac", "loss"):
            if col in frame:
                fig.add_trace(go.Scatter(x=frame.tokens, y=frame[col], name=col, visible=True if col == "nmse" else "legendonly"))
        fig.update_layout(title=f"SAE training ({self.sae.cfg.arch}, h={self.sae.d_sae})", xaxis_title="tokens")
        return fig


DeadMask = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]

AUTHORS_MAX_GRAD_NORM = 100_000.0
"""The authors' ``max_grad_norm`` (their gradient clipping; it practically never bites)."""


def afa_target(sae: SAE, x_in: torch.Tensor) -> torch.Tensor:
    """``A_b`` of the AFA loss for normalised inputs ``x_in``: ``||x||`` in the authors'
    form, ``||x - b_dec||`` (``b_dec`` detached) in the centred form."""
    if sae.cfg.afa_form == "centred":
        return (x_in - sae.b_dec.detach()).norm(dim=-1)
    return x_in.norm(dim=-1)


def batch_losses(sae: SAE, x: torch.Tensor, options: TrainOptions, dead: DeadMask,
                 sync: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every loss term and the batch statistics, as the trainer computes them.

    ``dead`` is the ``[h]`` mask of dead latents, or (the authors-exact mode) a function
    that takes this batch's ``[h]`` fired mask, updates the counters and returns the mask.
    ``sync`` (data-parallel training) makes the fired mask the ranks' union, so every
    rank keeps the same dead-latent counters."""
    out = sae(x)
    mse = (out.x_hat_in - out.x_in).square().mean()
    loss = mse
    terms = {"mse": mse}
    arch = sae.cfg.arch
    with torch.no_grad():
        fired = (out.f > 0).any(0)
        if sync is not None:
            fired = sync(fired)
    if callable(dead):
        dead = dead(fired)
    sparsity = sae.activation.sparsity_loss(out.pre, out.f)
    if sparsity is not None:
        coeff = options.l1_coeff if arch == "relu" else options.l0_coeff
        terms["sparsity"] = sparsity
        loss = loss + coeff * sparsity
    afa_coeff = options.afa(arch)
    if afa_coeff:
        terms["afa"] = (out.f.norm(dim=-1) - afa_target(sae, out.x_in)).square().mean()
        loss = loss + afa_coeff * terms["afa"]
    if arch in AUXK_ARCHS and options.auxk_coeff and bool(dead.any()):
        residual = out.x_in - out.x_hat_in
        if not sae.cfg.authors_exact:  # the authors' code lets the AuxK loss move the main reconstruction too
            residual = residual.detach()
        dead_pre = torch.relu(out.pre[:, dead])
        values, indices = dead_pre.topk(min(options.aux_k, dead_pre.shape[-1]), dim=-1, sorted=False)
        aux_hat = torch.zeros_like(dead_pre).scatter(-1, indices, values) @ sae.W_dec[dead]
        terms["auxk"] = (aux_hat - residual).square().mean()
        loss = loss + options.auxk_coeff * terms["auxk"]
    terms["loss"] = loss
    with torch.no_grad():
        err, norm = (out.x_hat_in - out.x_in).square().sum(), out.x_in.square().sum()
        terms["nmse"] = err / norm.clamp_min(1e-12)
        terms["_nmse_parts"] = torch.stack([err, norm])  # summed over ranks in data-parallel training
        terms["l0"] = (out.f > 0).sum(-1).float().mean()
        terms["fired"] = fired
    return terms


def _initialise(sae: SAE, sample: torch.Tensor, options: TrainOptions) -> None:
    from .normalization import normalize

    if options.b_dec_start(sae.cfg) == "mean":
        with torch.no_grad():
            x_in, _ = normalize(sample.to(sae.W_enc.dtype), sae.cfg.normalization, sae.cfg.scale)
            sae.b_dec.copy_(x_in.mean(0))


class _Member:
    """One SAE being trained: its weights, optimizer, counters and checkpoint."""

    def __init__(self, source: Any, cfg: SAEConfig, options: TrainOptions, checkpoint_dir: str | Path | None,
                 device: str | torch.device | None, sample: Callable[[int], torch.Tensor]) -> None:
        options.check(cfg)
        self.options = options
        self.ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
        identity = {"sae": config_identity(cfg), "options": options.identity(cfg), "source": source.identity()}
        self.identity = json.loads(json.dumps(identity))
        self.steps = options.steps
        self.world: World = getattr(source, "world", SINGLE)
        self.sae, self.optimizer, self.state = _start(self.ckpt, self.identity, cfg, options, device, sample, self.world)
        self.sae.activation.distributed = self.world.distributed
        self.sae.train()
        self.start = self.state["step"]
        self.window_steps = min(self.steps, math.ceil(options.dead_window_tokens / options.batch_size))
        self.earlier = float(self.state.get("seconds", 0.0))
        self.spent = 0.0
        self.window = [time.perf_counter(), self.start]
        self.warmup, self.decay = options.warmup(cfg), options.decay(cfg)

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def done(self) -> bool:
        return self.state["step"] >= self.steps

    def train_step(self, batch: Any, x: torch.Tensor, extra_seconds: float) -> dict[str, float] | None:
        """One optimizer step on ``x``; the history row when one is recorded."""
        began = time.perf_counter()
        sae, options, state, step = self.sae, self.options, self.state, self.state["step"]
        exact, many = sae.cfg.authors_exact, self.world.distributed
        sync = _fired_on_any_rank if many else None
        if exact:
            def dead(fired: torch.Tensor) -> torch.Tensor:  # the authors update the counters in the forward pass
                state["dead"] = torch.where(fired, torch.zeros_like(state["dead"]), state["dead"] + 1)
                return state["dead"] >= options.dead_after
            terms = batch_losses(sae, x, options, dead, sync)
        else:
            terms = batch_losses(sae, x, options, state["dead"] >= options.dead_after, sync)
        shown = _mean_over_ranks(terms) if many else terms  # NaN on any rank stops every rank
        if not torch.isfinite(shown["loss"]):
            raise NonFiniteError(f"the loss became {float(shown['loss'])} at step {step} (first row from "
                                 f"{batch.where(0)}); training stopped, the step was not applied. {_kept(self.ckpt)}")
        lr = options.lr * lr_factor(step, self.steps, self.warmup, self.decay)
        (_authors_step if exact else _optimizer_step)(sae, self.optimizer, terms["loss"], lr, many)
        with torch.no_grad():
            if not exact:
                state["dead"] = torch.where(terms["fired"], torch.zeros_like(state["dead"]), state["dead"] + 1)
            if step >= self.steps - self.window_steps:
                state["window"] |= terms["fired"]
        step += 1
        state["step"], state["source"] = step, batch.state
        row = None
        if step % options.log_every == 0 or step == self.steps:
            row = _history_row(step, self.window, options, self.optimizer, state["dead"], shown)
            state["history"].append(row)
        self.spent += time.perf_counter() - began + extra_seconds
        if self.ckpt is not None and self.world.main and (step == self.steps or (options.checkpoint_every and step % options.checkpoint_every == 0)):
            state["seconds"] = self.earlier + self.spent
            _save_checkpoint(self.ckpt, sae, self.optimizer, state, self.identity)
        return row

    def result(self) -> TrainResult:
        seconds = self.earlier + self.spent
        return TrainResult(self.sae.eval(), self.state["history"], self.steps, self.steps * self.options.batch_size,
                           seconds, self.start, float((~self.state["window"]).float().mean()),
                           self.window_steps * self.options.batch_size)


def config_identity(cfg: SAEConfig) -> dict[str, Any]:
    """The config a resumed run must share (its mean-norm scale is estimated by the run);
    top-AFA's fields only where they apply, so older checkpoints of other SAEs still match."""
    out = {**cfg.to_dict(), "scale": None}
    if out.get("afa_form") is None:
        out.pop("afa_form")
    if not out.get("authors_exact"):
        out.pop("authors_exact")
    return out


def train_sae(source: Any, cfg: SAEConfig, options: TrainOptions | None = None, *,
              checkpoint_dir: str | Path | None = None, device: str | torch.device | None = None,
              on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train an SAE of architecture ``cfg`` on batches from ``source``
    (:class:`~interlayer.saes.sources.CachedSource` or :class:`~interlayer.saes.sources.StreamedSource`).

    With ``mean_norm`` normalisation, ``cfg.scale`` is estimated from the first
    ``init_batches`` batches. With ``checkpoint_dir``, checkpoints are written there
    and an existing one is resumed (refused, with the differences named, when it was
    written for another architecture, config, data or options). A final checkpoint
    is written at the last step, so a finished run called again returns at once. Non-finite
    activations or losses stop training with :class:`NonFiniteError`, naming the step
    and the shard and row (or context and position) that hold the bad value; the last
    checkpoint is left as it was.
    ``on_step(step)`` is called after every step (tests use it to interrupt a run).
    """
    result = train_saes(source, [TrainMember(cfg, options or TrainOptions(), checkpoint_dir)], device=device,
                        on_step=on_step)[0]
    if isinstance(result, Exception):
        raise result
    return result


@dataclass
class TrainMember:
    """One SAE of a :func:`train_saes` group."""

    cfg: SAEConfig
    options: TrainOptions
    checkpoint_dir: str | Path | None = None


def train_saes(source: Any, members: list[TrainMember], *, device: str | torch.device | None = None,
               on_step: Callable[[int], None] | None = None, stop_on_error: bool = True,
               progress: bool | None = None) -> list[TrainResult | Exception]:
    """Train several SAEs on one pass over ``source``: each batch is read once and every
    member takes its step on it (as :func:`train_sae` would, member by member, with the
    same results). Members may differ in architecture, config and options, but share
    the source's batch size and order; each keeps its own checkpoint and resumes from
    it, so members interrupted at different steps catch up on the batches they missed.

    With ``stop_on_error=False`` a member whose loss becomes non-finite stops alone and
    its :class:`NonFiniteError` takes its place in the result list; otherwise it is raised.
    """
    _check_members(source, members)
    first: list[torch.Tensor] = []
    world: World = getattr(source, "world", SINGLE)
    collective = bool(getattr(source, "collective", False))  # every rank must read every batch (layer-parallel)

    def sample(n: int) -> torch.Tensor:  # the global first batches, the same on every rank
        if len(first) < n:
            batches = source.batches(None, whole=True) if world.distributed else source.batches()
            first[:] = [next(batches).x for _ in range(n)]
        return torch.cat(first[:n], dim=-2)

    if collective:
        sample(max(m.options.init_batches for m in members))
    runs = [_Member(source, m.cfg, m.options, m.checkpoint_dir, device,
                    lambda n, cfg=m.cfg: _site_rows(source, sample(n), cfg)) for m in members]
    first.clear()
    results: list[TrainResult | Exception | None] = [None] * len(runs)
    active = [i for i, r in enumerate(runs) if not r.done]
    show = (runs[0].options.progress if progress is None else progress) and world.main
    total = max(r.steps for r in runs)
    lead = min(active, key=lambda i: runs[i].step) if active else 0
    position, state = (runs[lead].step, runs[lead].state["source"]) if active else (total, None)
    if collective:  # the ranks start together, at the earliest position of any rank's members
        position, state = source.align(position, state)
    label = f"sae {runs[0].sae.cfg.arch}" if len(runs) == 1 else f"{len(runs)} SAEs"
    bar = tqdm(total=total, initial=min(position, total), unit="step", disable=not show, desc=label)
    try:
        batches = source.batches(state) if (active or collective) else iter(())
        while source.any_active(bool(active)) if collective else active:
            fetched = time.perf_counter()
            batch = next(batches)
            x = batch.x
            stepping = [i for i in active if runs[i].step == position]
            if stepping:
                x = x.to(runs[stepping[0]].sae.device)
                _check_finite(x, batch, position, runs[stepping[0]].ckpt)
            load_seconds = (time.perf_counter() - fetched) / max(1, len(stepping))
            rows = []
            for i in stepping:
                try:
                    row = runs[i].train_step(batch, _site_rows(source, x, runs[i].sae.cfg), load_seconds)
                except NonFiniteError as err:
                    if stop_on_error:
                        raise
                    results[i] = err
                    active.remove(i)
                    continue
                if row is not None:
                    rows.append(row)
                if runs[i].done:
                    active.remove(i)
            if rows:
                bar.set_postfix(_postfix(rows), refresh=False)
            position += 1
            bar.update(1)
            if on_step is not None:
                on_step(position)
    finally:
        bar.close()
    return [res if res is not None else run.result() for res, run in zip(results, runs)]


def _postfix(rows: list[dict[str, float]]) -> dict[str, str]:
    """The progress bar's statistics for the members that logged this step: one member's
    values, or over several the range of NMSE and L0 and the largest dead fraction."""
    def spread(key: str, fmt: str) -> str:
        low, high = min(r[key] for r in rows), max(r[key] for r in rows)
        return format(low, fmt) if len(rows) == 1 else f"{low:{fmt}}-{high:{fmt}}"
    shown = {"tok_s": f"{rows[0]['tokens_per_s']:.0f}", "nmse": spread("nmse", ".3f"), "l0": spread("l0", ".1f"),
             "dead": f"{100 * max(r['dead_frac'] for r in rows):.1f}%"}
    if len(rows) > 1:
        shown = {"members": str(len(rows)), **shown, "dead": "max " + shown["dead"]}
    return shown


def _check_members(source: Any, members: list[TrainMember]) -> None:
    """Every member fits the source (width, site, batch size) and its options suit its mode."""
    if not members:
        raise InterlayerError("train_saes needs at least one member")
    for m in members:
        if len(getattr(source, "sites", [None])) > 1 and m.cfg.site not in source.sites:
            raise InterlayerError(f"the SAE reads site {m.cfg.site!r}, which the source does not serve; it serves "
                                  f"{choices(source.sites)}")
        if source.d_in != m.cfg.d_in:
            raise InterlayerError(f"the SAE has d_in={m.cfg.d_in} but the source's site {source.site} has width {source.d_in}")
        if source.batch_size != m.options.batch_size:
            raise InterlayerError(f"the source serves batches of {source.batch_size}, the options ask for "
                                  f"{m.options.batch_size}")
        m.options.check(m.cfg)


def _site_rows(source: Any, x: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    """A member's rows of a batch: ``x`` itself, or its site's slice when the source
    serves several sites (``[n_sites, batch, d]``, the same rows at each)."""
    if x.dim() == 2:
        return x
    return x[source.sites.index(cfg.site)]


def _fresh_start(sample: torch.Tensor, cfg: SAEConfig, options: TrainOptions,
                 device: str | torch.device | None) -> tuple[SAE, torch.optim.Optimizer, dict[str, Any]]:
    """A new SAE initialised from the source's first batches, its optimizer and an empty state."""
    if not torch.isfinite(sample).all():
        raise NonFiniteError("the first batches of the source hold NaN or inf; cannot initialise the SAE")
    if cfg.normalization == "mean_norm":
        from .normalization import mean_norm_scale

        cfg = dataclasses.replace(cfg, scale=mean_norm_scale(sample))
    sae = SAE(cfg, seed=options.seed).to(device)
    _initialise(sae, sample.to(sae.device), options)
    if cfg.arch == "jumprelu":
        with torch.no_grad():
            sae.activation.log_threshold.fill_(math.log(options.jumprelu_threshold))
    optimizer = torch.optim.Adam(sae.parameters(), lr=options.lr, betas=(options.beta1, options.beta2))
    state = {"step": 0, "source": None, "history": [], "seconds": 0.0,
             "dead": torch.zeros(cfg.d_sae, dtype=torch.long, device=sae.device),
             "window": torch.zeros(cfg.d_sae, dtype=torch.bool, device=sae.device)}
    return sae, optimizer, state


def _check_finite(x: torch.Tensor, batch: Any, step: int, ckpt: Path | None) -> None:
    finite = torch.isfinite(x).all(dim=-1)
    if finite.dim() == 2:  # several sites: a row is bad when any site's copy is
        finite = finite.all(0)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero(as_tuple=True)[0].tolist()
    more = f" and {len(bad) - 1} more row(s) of the batch" if len(bad) > 1 else ""
    raise NonFiniteError(f"NaN or inf in the activations at step {step}: {batch.where(bad[0])}{more}; "
                         f"training stopped. {_kept(ckpt)}")


def _fired_on_any_rank(fired: torch.Tensor) -> torch.Tensor:
    return all_reduce(fired.to(torch.uint8), "max", "sharing the fired latents").bool()


def _mean_over_ranks(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's loss terms over the whole global batch: the mean of the ranks' means
    (equal shares), NMSE from the summed squared error and norm."""
    names = [k for k in terms if k not in ("fired", "_nmse_parts")]
    values = torch.cat([torch.stack([terms[k].detach().float().reshape(()) for k in names]),
                        terms["_nmse_parts"].detach().float()])
    all_reduce(values, "sum", "averaging the loss terms")
    out = dict(zip(names, (values[: len(names)] / current().size).unbind()))
    out["nmse"] = values[-2] / values[-1].clamp_min(1e-12)
    out["fired"] = terms["fired"]
    return out


def _optimizer_step(sae: SAE, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float,
                    average: bool = False) -> None:
    """One Adam step with the decoder rows kept at unit norm (gradient projected, rows
    renormalised); ``average``: the gradient is first averaged over the ranks."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if average:
        average_gradients(list(sae.parameters()))
    sae.constrain_decoder(grad_only=True)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    sae.constrain_decoder()


def _authors_step(sae: SAE, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float,
                  average: bool = False) -> None:
    """The authors' step: clip the gradient norm at 100,000, project the decoder's gradient
    and renormalise its rows, then the Adam step (rows leave unit norm by it)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if average:
        average_gradients(list(sae.parameters()))
    torch.nn.utils.clip_grad_norm_(sae.parameters(), AUTHORS_MAX_GRAD_NORM)
    sae.constrain_decoder(grad_only=True)
    sae.constrain_decoder()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()


def _history_row(step: int, window: list[float], options: TrainOptions, optimizer: torch.optim.Optimizer,
                 dead_count: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """One row of the training history; ``window`` (time, step of the last row) is moved on."""
    now = time.perf_counter()
    row = {"step": step, "tokens": step * options.batch_size,
           "tokens_per_s": (step - window[1]) * options.batch_size / max(now - window[0], 1e-9),
           "lr": optimizer.param_groups[0]["lr"],
           "dead_frac": float((dead_count >= options.dead_after).float().mean())}
    row.update({k: float(v.detach()) for k, v in terms.items() if k != "fired" and not k.startswith("_")})
    window[:] = [now, step]
    return row


def _kept(ckpt: Path | None) -> str:
    if ckpt is None:
        return "No checkpoint directory was given."
    if ckpt.is_file():
        with safe_open(str(ckpt), "pt") as handle:
            step = json.loads(handle.metadata()["state"])["step"]
        return f"The last good checkpoint, {ckpt} (step {step}), is kept."
    return "No checkpoint had been written yet."


def _save_checkpoint(ckpt: Path, sae: SAE, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     identity: dict[str, Any]) -> None:
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"sae.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    adam, param_groups = optimizer_tensors(optimizer)
    tensors.update(adam)
    tensors["trainer.dead"] = state["dead"].cpu()
    tensors["trainer.window"] = state["window"].cpu()
    meta = {"step": state["step"], "source": state["source"], "history": state["history"], "identity": identity,
            "seconds": state["seconds"],
            "sae_cfg": sae.cfg.to_dict(), "param_groups": param_groups}
    write_atomic(ckpt, save(tensors, metadata={"state": json.dumps(meta)}))


def _read_checkpoint(ckpt: Path, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A checkpoint's metadata and tensors, refused when another run wrote it."""
    try:
        with safe_open(str(ckpt), "pt") as handle:
            meta = json.loads(handle.metadata()["state"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as err:  # a truncated or foreign file
        raise CheckpointMismatchError(f"{ckpt} is not a readable SAE checkpoint ({err}); delete it or use another --out") from err
    check_resume_identity(meta.get("identity", {}), identity, what="SAE training run", path=ckpt)
    log.info("resuming SAE training from %s at step %d", ckpt, meta["step"])
    return meta, tensors


def _restore(meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str, options: TrainOptions,
             device: str | torch.device | None) -> tuple[SAE, torch.optim.Optimizer, dict[str, Any]]:
    sae = SAE(SAEConfig.from_dict(meta["sae_cfg"]), seed=options.seed)
    sae.load_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}, where)
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=options.lr, betas=(options.beta1, options.beta2))
    load_optimizer(optimizer, tensors, meta["param_groups"])
    return sae, optimizer, {"step": meta["step"], "source": meta["source"], "history": meta["history"],
                            "seconds": meta.get("seconds", 0.0),
                            "dead": tensors["trainer.dead"].to(sae.device),
                            "window": tensors["trainer.window"].to(sae.device)}


def _start(ckpt: Path | None, identity: dict[str, Any], cfg: SAEConfig, options: TrainOptions,
           device: str | torch.device | None, sample: Callable[[int], torch.Tensor],
           world: World) -> tuple[SAE, torch.optim.Optimizer, dict[str, Any]]:
    """Resume from the checkpoint, or start fresh. With several ranks, rank 0's checkpoint
    decides and its contents are broadcast, so the ranks need not share a filesystem; a
    fresh start is the same on every rank (same seed, same global first batches)."""
    if not world.distributed:
        if ckpt is not None and ckpt.is_file():
            return _restore(*_read_checkpoint(ckpt, identity), str(ckpt), options, device)
        return _fresh_start(sample(options.init_batches), cfg, options, device)
    payload, error = None, None
    if world.main and ckpt is not None and ckpt.is_file():
        try:
            payload = _read_checkpoint(ckpt, identity)
        except InterlayerError as err:
            error = err
    raise_together(error, f"opening the checkpoint {ckpt}")
    payload = broadcast_object(payload, what="sharing rank 0's checkpoint")
    if payload is None:
        return _fresh_start(sample(options.init_batches), cfg, options, device)
    return _restore(*payload, str(ckpt), options, device)


__all__ = ["TrainOptions", "TrainResult", "TrainMember", "train_sae", "train_saes", "batch_losses", "afa_target",
           "lr_factor", "NonFiniteError",
           "CheckpointMismatchError"]
