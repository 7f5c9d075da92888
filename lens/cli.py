"""``interlayer lens ...`` commands."""

from __future__ import annotations

from pathlib import Path

from interlayer.cli import command
from interlayer.config import LogitLensConfig
from interlayer.errors import InterlayerError
from interlayer.loading import load_model

from .config import TuneConfig
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
