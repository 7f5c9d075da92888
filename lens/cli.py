"""``interlayer lens ...`` commands."""

from __future__ import annotations

from pathlib import Path

from interlayer.cli import command
from interlayer.config import LogitLensConfig
from interlayer.loading import load_model

from .logit_lens import logit_lens


@command("lens logit", LogitLensConfig)
def run_logit_lens(cfg: LogitLensConfig) -> int:
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    result = logit_lens(model, cfg.prompt, top_k=cfg.top_k, memory_mb=cfg.memory_mb)
    table = result.table()
    print(table.to_string())
    if cfg.out:
        out = Path(cfg.out)
        if out.suffix == ".csv":
            result.to_frame().to_csv(out, index=False)
        elif out.suffix == ".json":
            result.to_frame().to_json(out, orient="records", indent=2)
        else:
            raise ValueError(f"--out {cfg.out!r}: unknown extension; valid choices: '.csv', '.json'")
    return 0
