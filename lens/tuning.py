"""Training and evaluating a tuned lens on store activations (Belrose et al. 2023).

Each translator is trained to make its layer's decoded distribution match the
model's final one: loss_l = KL(p_final || q_l), averaged over tokens, summed over
layers. Activations come from the store; the model is never called here.
Training checkpoints every N steps and resumes exactly: the row order is a seeded
function of the step, and the optimizer and schedule state are saved.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors.torch import load_file, save
from interlayer.progress import tqdm

from interlayer.store.collect import Activations
from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import Site
from interlayer.io.checkpointing import check_resume_identity, load_optimizer, optimizer_tensors
from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError
from interlayer.io.files import write_atomic, write_json_atomic
from interlayer.options import CONTEXT_LENGTH, resolve_layers
from interlayer.intervals import mean_interval
from interlayer.results import Result, require
from interlayer.io.seeding import epoch_permutation

from .tuning_options import TuneOptions
from .lenses import TunedLens

log = logging.getLogger(__name__)


def stacked_resid(acts: Activations, n_layers: int) -> torch.Tensor:
    """``[n_layers, rows, d]``: resid_post of every layer from collected activations."""
    names = [Site(l, "resid_post").name for l in range(n_layers)]
    missing = [l for l, name in zip(range(n_layers), names) if name not in acts.tensors]
    if missing:
        raise InterlayerError(f"the activations lack resid_post at layers {missing}; collect 'resid_post.*'")
    return acts.stack(names)


def _row_order(n: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """Rows of one step: epoch-wise seeded permutations, a pure function of the step."""
    per_epoch = max(1, n // batch_size)
    epoch, offset = divmod(step, per_epoch)
    return epoch_permutation(n, seed, epoch)[offset * batch_size : (offset + 1) * batch_size]


def train_tuned_lens(model: ModelAdapter, hidden: torch.Tensor, *, layers: list[int] | None = None, steps: int = 300,
                     batch_size: int = 32, lr: float = 3e-4, warmup: int = 20, seed: int = 0,
                     checkpoint_dir: str | Path | None = None, checkpoint_every: int = 50,
                     progress: bool = True) -> TunedLens:
    """Train a :class:`TunedLens` on ``hidden`` = ``[n_layers, rows, d]`` resid_post states.

    Adam with linear warmup then linear decay to zero. With ``checkpoint_dir`` a
    checkpoint is written every ``checkpoint_every`` steps and an existing one is
    resumed, giving the same final weights as an uninterrupted run.
    """
    n_layers, n_rows, d = hidden.shape
    if n_layers != model.n_layers or d != model.d_model:
        raise InterlayerError(f"hidden must be [{model.n_layers}, rows, {model.d_model}], got {tuple(hidden.shape)}")
    if n_rows < batch_size:
        raise InterlayerError(f"{n_rows} training rows are fewer than one batch of {batch_size}")
    if steps < 1:
        raise InterlayerError(f"steps must be at least 1, got {steps}")
    lens = TunedLens.for_model(model, layers)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_decay(warmup, steps))
    options = dict(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, seed=seed, layers=lens.layers)
    start = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "state.json").is_file():
        start = _load_checkpoint(ckpt, lens, optimizer, schedule, options)
    frozen = [p.requires_grad for p in model.model.parameters()]
    for p in model.model.parameters():
        p.requires_grad_(False)
    reference, translated = LayerDecoder(model), LayerDecoder(model, lens=lens)
    losses: list[float] = []
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc="tuned lens")
    try:
        with torch.enable_grad():
            for step in bar:
                rows = _row_order(n_rows, step, batch_size, seed)
                losses.append(_train_step(reference, translated, hidden, rows, optimizer))
                schedule.step()
                bar.set_postfix(kl=f"{losses[-1]:.3f}")
                if ckpt is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                    _save_checkpoint(ckpt, lens, optimizer, schedule, step + 1, options)
    finally:
        bar.close()
        for p, flag in zip(model.model.parameters(), frozen):
            p.requires_grad_(flag)
    lens.training_log = {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "seed": seed,
                         "rows": n_rows, "mean_kl_last_10": sum(losses[-10:]) / max(1, len(losses[-10:]))}
    return lens.eval()


def _warmup_then_decay(warmup: int, steps: int) -> Callable[[int], float]:
    """The learning-rate factor of a step: linear warmup over ``warmup`` steps, then linear
    decay to zero at ``steps`` (a plain function, so the schedule's state holds no closure state)."""
    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return lr_factor


def _train_step(reference: LayerDecoder, translated: LayerDecoder, hidden: torch.Tensor, rows: torch.Tensor,
                optimizer: torch.optim.Optimizer) -> float:
    """One optimizer step on ``rows``: loss_l = mean KL(p_final || q_l) for every lens layer,
    one backward per layer (one ``[batch, vocab]`` graph alive); returns the mean loss."""
    lens = translated.lens
    target = reference.log_probs(hidden[-1][rows], hidden.shape[0] - 1)
    target_p = target.exp()
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for layer in lens.layers:
        logq = translated.log_probs(hidden[layer, rows], layer, grad=True)
        loss = (target_p * (target - logq)).sum(-1).mean()
        loss.backward()
        total += loss.detach().item()
    optimizer.step()
    return total / len(lens.layers)


def _save_checkpoint(ckpt: Path, lens: TunedLens, optimizer, schedule, step: int, options: dict) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    adam, param_groups = optimizer_tensors(optimizer)
    tensors = {f"lens.{k}": v.detach().cpu().contiguous() for k, v in lens.state_dict().items()}
    write_atomic(ckpt / "state.safetensors", save({**tensors, **adam}))
    write_json_atomic(ckpt / "state.json", {"step": step, "options": options, "param_groups": param_groups,
                                            "schedule": schedule.state_dict()})


def _load_checkpoint(ckpt: Path, lens: TunedLens, optimizer, schedule, options: dict) -> int:
    """Restore the checkpoint in ``ckpt`` into the lens, optimizer and schedule, refusing one
    written with other ``options`` (:func:`~interlayer.io.checkpointing.check_resume_identity`,
    which names each differing option); returns the step to resume at."""
    meta = json.loads((ckpt / "state.json").read_text())
    check_resume_identity(meta["options"], json.loads(json.dumps(options)), what="tuned-lens training run", path=ckpt)
    tensors = load_file(str(ckpt / "state.safetensors"))
    lens.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("lens.")})
    load_optimizer(optimizer, tensors, meta["param_groups"])
    schedule.load_state_dict(meta["schedule"])
    log.info("resuming tuned-lens training at step %d", meta["step"])
    return int(meta["step"])


# --------------------------------------------------------------- evaluation
@dataclass
class LensComparison(Result):
    """Per-layer KL to the final layer and next-token cross-entropy (nats), for the
    logit lens and a tuned lens, on held-out tokens; ``intervals`` holds each series'
    95% bootstrap interval over tokens (``{"kl_logit": [[low, high], ...], ...}``)."""

    model: str
    layers: list[int]
    kl_logit: list[float]
    kl_tuned: list[float]
    ce_logit: list[float]
    ce_tuned: list[float]
    n_tokens: int
    intervals: dict[str, list[list[float]]] = field(default_factory=dict)

    SERIES = ("kl_logit", "kl_tuned", "ce_logit", "ce_tuned")

    def to_frame(self) -> pd.DataFrame:
        """Per layer: each series, its interval (``*_low``, ``*_high``) and the reductions."""
        frame = pd.DataFrame({"layer": self.layers, "kl_logit": self.kl_logit, "kl_tuned": self.kl_tuned,
                              "ce_logit": self.ce_logit, "ce_tuned": self.ce_tuned})
        frame["kl_reduction"] = frame.kl_logit - frame.kl_tuned
        frame["ce_reduction"] = frame.ce_logit - frame.ce_tuned
        for name in (n for n in self.SERIES if n in self.intervals):
            bounds = self.intervals[name]
            frame[f"{name}_low"], frame[f"{name}_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
        return frame

    def to_json(self) -> dict[str, Any]:
        """Every field: what :meth:`save` writes."""
        return {"model": self.model, "layers": self.layers, "kl_logit": self.kl_logit, "kl_tuned": self.kl_tuned,
                "ce_logit": self.ce_logit, "ce_tuned": self.ce_tuned, "n_tokens": self.n_tokens,
                "intervals": self.intervals}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "LensComparison":
        """The result :meth:`to_json` described."""
        require(payload, "model", "layers", *cls.SERIES, "n_tokens", what="LensComparison")
        return cls(payload["model"], [int(x) for x in payload["layers"]], *(list(payload[k]) for k in cls.SERIES),
                   int(payload["n_tokens"]), dict(payload.get("intervals", {})))

    def headline(self) -> dict[str, Any]:
        """Tokens and the mean KL of each lens over the layers."""
        return {"model": self.model, "tokens": self.n_tokens, "layers": len(self.layers),
                "mean KL, logit lens (nats)": sum(self.kl_logit) / len(self.kl_logit),
                "mean KL, tuned lens (nats)": sum(self.kl_tuned) / len(self.kl_tuned)}

    def plot(self) -> go.Figure:
        """KL and CE by layer for both lenses, with 95% bootstrap intervals over tokens."""
        fig = go.Figure()
        for key, name, dash in (("kl_logit", "KL logit lens", "dot"), ("kl_tuned", "KL tuned lens", "solid"),
                                ("ce_logit", "CE logit lens", "dot"), ("ce_tuned", "CE tuned lens", "solid")):
            values = getattr(self, key)
            error = None
            if key in self.intervals:
                error = {"type": "data", "symmetric": False,
                         "array": [b[1] - v for b, v in zip(self.intervals[key], values)],
                         "arrayminus": [v - b[0] for b, v in zip(self.intervals[key], values)]}
            fig.add_trace(go.Scatter(x=self.layers, y=values, name=name, line={"dash": dash}, error_y=error))
        fig.update_layout(title=f"Tuned vs logit lens on held-out text ({self.n_tokens} tokens)",
                          xaxis_title="layer", yaxis_title="nats")
        return fig


def compare_lenses(model: ModelAdapter, lens: TunedLens, acts: Activations, memory_mb: float = 256.0,
                   layers: list[int] | None = None) -> LensComparison:
    """Evaluate ``lens`` against the logit lens on held-out token activations
    (resid_post of every layer): mean KL(final || layer) and mean next-token CE,
    at every layer or at ``layers``."""
    stacked = stacked_resid(acts, model.n_layers)
    targets, has_next = acts.next_tokens()
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    hidden = stacked[layers]
    results = {}
    intervals: dict[str, list[list[float]]] = {}
    for name, decoder in (("logit", LayerDecoder(model, memory_mb)), ("tuned", LayerDecoder(model, memory_mb, lens=lens))):
        # KL and the next-token loss from one decoding (its target log-probabilities are
        # LayerDecoder's own, as next_token_nll's): decoding twice would double the head's work
        out = decoder.decode(hidden, reference=stacked[-1], targets=targets, layers=layers)
        nll = -out.target_logprobs[:, has_next]
        results[name] = (out.kl_to_final.mean(-1).tolist(), nll.mean(-1).tolist())
        for series, per_token in ((f"kl_{name}", out.kl_to_final), (f"ce_{name}", nll)):
            low, high = mean_interval(per_token.double().numpy().T, bounds=(0.0, math.inf), n_resamples=500)
            intervals[series] = [[float(a), float(b)] for a, b in zip(low, high)]
    return LensComparison(model.name, layers, results["logit"][0], results["tuned"][0], results["logit"][1],
                          results["tuned"][1], int(hidden.shape[1]), intervals)


def tune_lens(model: ModelAdapter, data: Any = None, options: TuneOptions | None = None, *, tokens: int = 8192,
              eval_tokens: int = 2048, context_length: int = CONTEXT_LENGTH, text_field: str = "text",
              out: str | Path | None = None, progress: bool = True) -> tuple[TunedLens, LensComparison]:
    """Collect activations with the store, train a tuned lens on the first ``tokens``
    tokens of ``data`` (default: the packaged sample text), save it to ``out`` (if given)
    and compare it with the logit lens on the next ``eval_tokens`` held-out tokens.
    ``options`` (:class:`TuneOptions`) say how it trains."""
    if isinstance(data, TuneOptions) or (options is not None and not isinstance(options, TuneOptions)):
        raise InterlayerError("tune_lens takes (model, data, TuneOptions(...), tokens=..., eval_tokens=..., "
                              "out=...) since 0.2, not a command config; `interlayer lens tune` is the command")
    cfg = options if options is not None else TuneOptions()
    from interlayer.store import contexts_for_tokens
    from interlayer.store.collect import collect
    from interlayer.model.loading import SAMPLE_TEXT

    if tokens < cfg.batch_size:
        raise InterlayerError(f"tokens={tokens} is fewer than one batch of {cfg.batch_size} (--tokens, --tokens-per-step)")
    if eval_tokens < 1:
        raise InterlayerError(f"eval_tokens (--eval-tokens) must be at least 1, got {eval_tokens}")
    n_train = contexts_for_tokens(model, tokens, context_length)
    n_eval = contexts_for_tokens(model, eval_tokens, context_length)
    data = data or str(SAMPLE_TEXT)
    acts = collect(model, data, "resid_post.*", context_length=context_length, limit=n_train + n_eval,
                   text_field=text_field, progress=progress)
    train = acts.rows(acts.meta["sequence"] < n_train)
    held_out = acts.rows(acts.meta["sequence"] >= n_train)
    if len(held_out) == 0:
        raise InterlayerError(f"{data} has too little text for {tokens} training and {eval_tokens} held-out tokens")
    hidden = stacked_resid(train, model.n_layers)[:, : tokens]
    layers = None if cfg.layers == "all" else resolve_layers(cfg.layers, model.n_layers)
    out = Path(out) if out else None
    lens = train_tuned_lens(model, hidden, layers=layers, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                            warmup=cfg.warmup, seed=cfg.seed, checkpoint_dir=out / "checkpoint" if out else None,
                            checkpoint_every=cfg.checkpoint_every, progress=progress)
    comparison = compare_lenses(model, lens, held_out.rows(torch.arange(min(len(held_out), eval_tokens))))
    lens.training_log["data"] = data
    lens.training_log["held_out"] = comparison.to_frame().to_dict(orient="list")
    if out is not None:
        lens.save(out)
        _remove_checkpoint(out / "checkpoint")  # the run finished; its checkpoint is spent
    return lens, comparison


def _remove_checkpoint(ckpt: Path) -> None:
    """Delete the checkpoint files this trainer wrote (and their directory if that leaves it empty)."""
    for name in ("state.safetensors", "state.json"):
        (ckpt / name).unlink(missing_ok=True)
    if ckpt.is_dir() and not any(ckpt.iterdir()):
        ckpt.rmdir()
