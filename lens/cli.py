"""``interlayer lens ...`` commands."""

from __future__ import annotations

from pathlib import Path

from interlayer.cli import command
from interlayer.config import LogitLensConfig
from interlayer.errors import InterlayerError
from interlayer.loading import load_model

from .config import LatentConfig, SaturationConfig, TuneConfig
from .logit_lens import logit_lens
from .tuning import tune_lens


def write_table(frame, out: str) -> None:
    """Write a DataFrame as .csv or .json, by the extension of ``out``."""
    path = Path(out)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records", indent=2)
    else:
        raise InterlayerError(f"--out {out!r}: unknown extension; valid choices: '.csv', '.json'")


@command("lens logit", LogitLensConfig)
def run_logit_lens(cfg: LogitLensConfig) -> int:
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    result = logit_lens(model, cfg.prompt, top_k=cfg.top_k, memory_mb=cfg.memory_mb)
    print(result.table().to_string())
    if cfg.out:
        write_table(result.to_frame(), cfg.out)
    return 0


@command("lens tune", TuneConfig)
def run_tune(cfg: TuneConfig) -> int:
    if not cfg.out:
        raise InterlayerError("--out is required: the directory the tuned lens is saved to")
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    lens, comparison = tune_lens(model, cfg)
    frame = comparison.to_frame()
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    worse = frame[(frame.layer.isin(lens.layers)) & (frame.kl_tuned >= frame.kl_logit)]
    if len(worse):
        print(f"warning: the tuned lens does not beat the logit lens at layers {worse.layer.tolist()}")
    print(f"saved {cfg.out}")
    return 0


def _lens_for(model, path):
    from .lenses import TunedLens

    return TunedLens.load(path, model) if path else None


@command("lens latent", LatentConfig)
def run_latent(cfg: LatentConfig) -> int:
    from interlayer.shards import write_json_atomic

    from .latent import check_task, latent_language

    latents = [l.strip() for l in cfg.latent.split(",") if l.strip()]
    check_task(cfg.task, cfg.src, cfg.tgt, latents)  # before loading the model
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    result = latent_language(model, src=cfg.src, tgt=cfg.tgt, task=cfg.task, latents=latents, shots=cfg.shots,
                             seed=cfg.seed, limit=cfg.limit, lens=_lens_for(model, cfg.tuned_lens),
                             batch_size=cfg.batch_size, progress=not cfg.no_progress)
    print(f"{result.n_words} words used; {result.n_missing} skipped (not in the tokenizer), "
          f"{result.n_overlap} dropped (token sets overlap)")
    print(result.to_frame()[["layer", "p_target", *[f"p_latent_{l}" for l in latents], "p_source", "entropy"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if cfg.out:
        write_json_atomic(Path(cfg.out), result.to_json())
        print(f"wrote {cfg.out}")
    return 0


@command("lens saturation", SaturationConfig)
def run_saturation(cfg: SaturationConfig) -> int:
    from interlayer.loading import SAMPLE_TEXT

    from .saturation import saturation

    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    result = saturation(model, cfg.data or str(SAMPLE_TEXT), tokens=cfg.tokens, context_length=cfg.context_length,
                        lens=_lens_for(model, cfg.tuned_lens), progress=not cfg.no_progress)
    frame = result.to_frame()
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if cfg.out:
        write_table(frame, cfg.out)
    return 0
