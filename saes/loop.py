"""The SAE trainer's loop: one loop for every architecture, reading a :class:`~interlayer.saes.sources.Source`.

:func:`train_saes` trains several SAEs on one pass over a source (each batch is read
once and every member takes a step on it); :func:`train_sae` is the one-member case.
The loss is :func:`~interlayer.saes.losses.batch_losses`; Adam, linear warmup, constant,
then linear decay to zero over the last ``decay_fraction`` of the steps
(:func:`~interlayer.saes.options.lr_factor`). Decoder rows stay at unit norm: the
gradient's component along each row is removed before the step and rows are
renormalised after.

**Authors-exact mode** (top-AFA with ``authors_exact=True``), transcribing Lee et al.'s
``training.py`` and ``sae.py``: a constant learning rate (no warmup, no decay), the
dead-latent counters updated by the batch before its AuxK loss is formed, the AuxK
residual *not* detached, the gradient clipped at norm 100,000, and the decoder rows
renormalised *before* the Adam step (so they are off unit norm after it).

A checkpoint (:mod:`~interlayer.saes.checkpoint`) is written every ``checkpoint_every``
steps; a run started again with the same options resumes from it and ends with exactly
the weights of an uninterrupted run. How the ranks of a distributed run share the
batches (data-parallel or layer-parallel) is the source's declared
:class:`~interlayer.saes.sources.Placement`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import plotly.graph_objects as go
import torch
from interlayer.progress import tqdm

from interlayer.distributed import World, all_reduce, current
from interlayer.errors import InterlayerError, choices

from .checkpoint import CHECKPOINT, NonFiniteError, config_identity, kept_message, save_checkpoint, start
from .losses import authors_step, batch_losses, optimizer_step
from .options import TrainOptions, lr_factor, matmul_precision
from .sae import SAE, SAEConfig
from .sources import Source, SourceBatch


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
        """The training history as a DataFrame: one row per recorded step (``step``, ``tokens``,
        ``tokens_per_s``, ``lr``, ``dead_frac`` and the loss terms such as ``loss``, ``nmse``, ``l0``).
        """
        return pd.DataFrame(self.history)

    def plot(self) -> go.Figure:
        """A plotly figure of the history against training tokens: NMSE shown; L0, dead fraction and
        loss in the legend.
        """
        frame = self.to_frame()
        fig = go.Figure()
        for col in ("nmse", "l0", "dead_frac", "loss"):
            if col in frame:
                fig.add_trace(go.Scatter(x=frame.tokens, y=frame[col], name=col, visible=True if col == "nmse" else "legendonly"))
        fig.update_layout(title=f"SAE training ({self.sae.cfg.arch}, h={self.sae.d_sae})", xaxis_title="tokens")
        return fig


class _Member:
    """One SAE being trained: its weights, optimizer, counters and checkpoint."""

    def __init__(self, source: Source, cfg: SAEConfig, options: TrainOptions, checkpoint_dir: str | Path | None,
                 device: str | torch.device | None, sample: Callable[[int], torch.Tensor]) -> None:
        options.check(cfg)
        self.options = options
        self.ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
        identity = {"sae": config_identity(cfg), "options": options.identity(cfg), "source": source.identity()}
        self.identity = json.loads(json.dumps(identity))
        self.steps = options.steps
        self.world: World = source.placement.trainers  # the ranks this SAE's training spans
        self.sae, self.optimizer, self.state = start(self.ckpt, self.identity, cfg, options, device, sample, self.world)
        self.sae.activation.distributed = self.world.distributed
        self.sae.train()
        self.start = self.state["step"]
        self.window_steps = min(self.steps, math.ceil(options.dead_window_tokens / options.batch_size))
        self.earlier = float(self.state.get("seconds", 0.0))
        self.spent = 0.0
        self.window = [time.perf_counter(), self.start]
        self.warmup, self.decay = options.warmup(cfg), options.decay(cfg)
        self.pending: list[tuple[int, Callable[[int], str], torch.Tensor, torch.Tensor]] = []

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def done(self) -> bool:
        return self.state["step"] >= self.steps

    def train_step(self, batch: SourceBatch, x: torch.Tensor, extra_seconds: float,
                   bad_rows: torch.Tensor) -> dict[str, float] | None:
        """One optimizer step on ``x``; the history row when one is recorded. ``bad_rows``
        (``[count, first]`` of the batch's non-finite rows, on the device) and the loss are
        checked at the next :meth:`check_finite`, not here: no host sync in the step."""
        began = time.perf_counter()
        sae, options, state, step = self.sae, self.options, self.state, self.state["step"]
        exact, many = sae.cfg.authors_exact, self.world.distributed
        sync = _fired_on_any_rank if many else None
        with matmul_precision(options.tf32):
            if exact:
                def dead(fired: torch.Tensor) -> torch.Tensor:  # the authors update the counters in the forward pass
                    state["dead"] = torch.where(fired, torch.zeros_like(state["dead"]), state["dead"] + 1)
                    return state["dead"] >= options.dead_after
                terms = batch_losses(sae, x, options, dead, sync)
            else:
                terms = batch_losses(sae, x, options, state["dead"] >= options.dead_after, sync)
            shown = _mean_over_ranks(terms) if many else terms  # NaN on any rank stops every rank
            self.pending.append((step, batch.where, bad_rows, shown["loss"].detach()))
            lr = options.lr * lr_factor(step, self.steps, self.warmup, self.decay)
            (authors_step if exact else optimizer_step)(sae, self.optimizer, terms["loss"], lr, many)
        with torch.no_grad():
            if not exact:
                state["dead"] = torch.where(terms["fired"], torch.zeros_like(state["dead"]), state["dead"] + 1)
            if step >= self.steps - self.window_steps:
                state["window"] |= terms["fired"]
        step += 1
        state["step"], state["source"] = step, batch.state
        due = step == self.steps or bool(options.checkpoint_every and step % options.checkpoint_every == 0)
        saving = due and self.ckpt is not None and self.world.main
        row = None
        if step % options.log_every == 0 or due:  # the same steps on every rank
            self.check_finite()  # before any record or checkpoint of these weights
        if step % options.log_every == 0 or step == self.steps:
            row = _history_row(step, self.window, options, self.optimizer, state["dead"], shown)
            state["history"].append(row)
        self.spent += time.perf_counter() - began + extra_seconds
        if saving:
            state["seconds"] = self.earlier + self.spent
            save_checkpoint(self.ckpt, sae, self.optimizer, state, self.identity)
        return row

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` for the first step since the last check whose
        activations or loss were not finite (one host sync for all of them). Checked at
        every history row (``log_every``), before every checkpoint and at the last step,
        so a non-finite run stops within ``log_every`` steps and never writes a checkpoint
        from the weights it left."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        values = torch.stack([torch.cat([bad.float(), loss.float().reshape(1)]) for *_, bad, loss in pending]).tolist()
        now = self.state["step"]
        for (step, where, _, _), (count, first, loss) in zip(pending, values):
            if count:
                more = f" and {int(count) - 1} more row(s) of the batch" if count > 1 else ""
                raise NonFiniteError(f"NaN or inf in the activations at step {step}: {where(int(first))}{more}; "
                                     f"training stopped at step {now}. {kept_message(self.ckpt)}")
            if not math.isfinite(loss):
                raise NonFiniteError(f"the loss became {loss} at step {step} (first row from {where(0)}); training "
                                     f"stopped at step {now}, no checkpoint written since. {kept_message(self.ckpt)}")

    def result(self) -> TrainResult:
        seconds = self.earlier + self.spent
        return TrainResult(self.sae.eval(), self.state["history"], self.steps, self.steps * self.options.batch_size,
                           seconds, self.start, float((~self.state["window"]).float().mean()),
                           self.window_steps * self.options.batch_size)


def train_sae(source: Source, cfg: SAEConfig, options: TrainOptions | None = None, *,
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


def train_saes(source: Source, members: list[TrainMember], *, device: str | torch.device | None = None,
               on_step: Callable[[int], None] | None = None, stop_on_error: bool = True,
               progress: bool | None = None) -> list[TrainResult | Exception]:
    """Train several SAEs on one pass over ``source``: each batch is read once and every
    member takes its step on it (as :func:`train_sae` would, member by member, with the
    same results). Members may differ in architecture, config and options, but share
    the source's batch size and order; each keeps its own checkpoint and resumes from
    it, so members interrupted at different steps catch up on the batches they missed.
    How the ranks of a distributed run share the batches is ``source.placement``.

    With ``stop_on_error=False`` a member whose loss becomes non-finite stops alone and
    its :class:`NonFiniteError` takes its place in the result list; otherwise it is raised.
    """
    _check_members(source, members)
    placement = source.placement
    runs = _start_members(source, members, device)
    results: list[TrainResult | Exception | None] = [None] * len(runs)
    active = [i for i, r in enumerate(runs) if not r.done]
    show = (runs[0].options.progress if progress is None else progress) and placement.trainers.main
    total = max(r.steps for r in runs)
    lead = min(active, key=lambda i: runs[i].step) if active else 0
    position, state = (runs[lead].step, runs[lead].state["source"]) if active else (total, None)
    position, state = placement.align(position, state)  # collective: the ranks start together, at the earliest
    label = f"sae {runs[0].sae.cfg.arch}" if len(runs) == 1 else f"{len(runs)} SAEs"
    bar = tqdm(total=total, initial=min(position, total), unit="step", disable=not show, desc=label)
    try:
        batches = source.batches(state) if (active or placement.collective) else iter(())
        while placement.any_active(bool(active)):
            fetched = time.perf_counter()
            batch = next(batches)
            rows = _step(source, runs, active, results, batch, position, fetched, stop_on_error)
            if rows:
                bar.set_postfix(_postfix(rows), refresh=False)
            position += 1
            bar.update(1)
            if on_step is not None:
                on_step(position)
    finally:
        bar.close()
    return [res if res is not None else run.result() for res, run in zip(results, runs)]


def _start_members(source: Source, members: list[TrainMember], device: str | torch.device | None) -> list[_Member]:
    """Each member resumed from its checkpoint or started fresh from the source's first
    batches (the global ones, read once for every member and the same on every rank)."""
    first: list[torch.Tensor] = []
    whole = source.placement.data_parallel

    def sample(n: int) -> torch.Tensor:
        if len(first) < n:
            batches = source.batches(None, whole=True) if whole else source.batches()
            first[:] = [next(batches).x for _ in range(n)]
        return torch.cat(first[:n], dim=-2)

    if source.placement.collective:  # every rank reads them, whether or not its members start fresh
        sample(max(m.options.init_batches for m in members))
    runs = [_Member(source, m.cfg, m.options, m.checkpoint_dir, device,
                    lambda n, cfg=m.cfg: _site_rows(source, sample(n), cfg)) for m in members]
    first.clear()
    return runs


def _step(source: Source, runs: list[_Member], active: list[int], results: list[Any], batch: SourceBatch,
          position: int, fetched: float, stop_on_error: bool) -> list[dict[str, float]]:
    """The members at ``position`` take their step on ``batch``; those that finish or fail
    leave ``active``. Returns the history rows they recorded."""
    x = batch.x
    stepping = [i for i in active if runs[i].step == position]
    bad_rows = None
    if stepping:
        x = x.to(runs[stepping[0]].sae.device)
        bad_rows = _bad_rows(x)
    load_seconds = (time.perf_counter() - fetched) / max(1, len(stepping))
    rows = []
    for i in stepping:
        try:
            row = runs[i].train_step(batch, _site_rows(source, x, runs[i].sae.cfg), load_seconds, bad_rows)
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
    return rows


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


def _check_members(source: Source, members: list[TrainMember]) -> None:
    """Every member fits the source (width, site, batch size) and its options suit its mode."""
    if not members:
        raise InterlayerError("train_saes needs at least one member")
    for m in members:
        if len(source.sites) > 1 and m.cfg.site not in source.sites:
            raise InterlayerError(f"the SAE reads site {m.cfg.site!r}, which the source does not serve; it serves "
                                  f"{choices(source.sites)}")
        if source.d_in != m.cfg.d_in:
            raise InterlayerError(f"the SAE has d_in={m.cfg.d_in} but the source's site {','.join(source.sites)} has width {source.d_in}")
        if source.batch_size != m.options.batch_size:
            raise InterlayerError(f"the source serves batches of {source.batch_size}, the options ask for "
                                  f"{m.options.batch_size}")
        m.options.check(m.cfg)


def _site_rows(source: Source, x: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    """A member's rows of a batch: ``x`` itself, or its site's slice when the source
    serves several sites (``[n_sites, batch, d]``, the same rows at each)."""
    if x.dim() == 2:
        return x
    return x[source.sites.index(cfg.site)]


def _bad_rows(x: torch.Tensor) -> torch.Tensor:
    """``[count, first]`` of the rows of ``x`` holding NaN or inf (a row is bad when any
    site's copy is), on the device: no host sync."""
    bad = ~torch.isfinite(x).all(dim=-1)
    if bad.dim() == 2:
        bad = bad.any(0)
    return torch.stack([bad.sum(), bad.to(torch.uint8).argmax()])


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


__all__ = ["TrainResult", "TrainMember", "train_sae", "train_saes"]
