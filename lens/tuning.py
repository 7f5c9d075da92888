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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from interlayer.progress import tqdm

from interlayer.store.collect import Activations
from interlayer.model.adapter import ModelAdapter
from interlayer.io.checkpointing import check_resume_identity, load_optimizer, optimizer_tensors
from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError
from interlayer.io.files import write_json_atomic, write_safetensors_atomic
from interlayer.options import CONTEXT_LENGTH, resolve_layers
from interlayer.io.seeding import epoch_permutation

from .tuning_options import TuneOptions
from .lenses import TunedLens
from .comparison import LensComparison, compare_lenses, stacked_resid

__all__ = ["LensComparison", "compare_lenses", "stacked_resid", "train_tuned_lens", "tune_lens"]

log = logging.getLogger(__name__)


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
    write_safetensors_atomic(ckpt / "state.safetensors", {**tensors, **adam})
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
# LensComparison and compare_lenses live in .comparison (any set of lenses); imported here
# under their old home's names.


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
