"""``interlayer mexa`` (and later probes commands)."""

from __future__ import annotations

from interlayer.command_registry import command, write_json_output
from interlayer.files import check_writable

from .config import ConsistencyConfig, MexaConfig
from .mexa import load_parallel, mexa


@command("mexa", MexaConfig)
def run_mexa(cfg: MexaConfig) -> int:
    from .mexa import available_languages

    langs = available_languages(cfg.data) if cfg.langs == "all" else [l.strip() for l in cfg.langs.split(",") if l.strip()]
    load_parallel([cfg.pivot, *langs], cfg.n, cfg.data)  # bad data fails before the model loads
    if cfg.out:
        check_writable(cfg.out, suffixes=(".json",))
    model = cfg.load()
    result = mexa(model, langs, n=cfg.n, pooling=cfg.pooling, data_dir=cfg.data, pivot=cfg.pivot,
                  batch_size=cfg.batch_size, progress=not cfg.no_progress)
    print(result.summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    write_json_output(cfg.out, result.to_json())
    return 0


@command("consistency", ConsistencyConfig)
def run_consistency(cfg: ConsistencyConfig) -> int:
    from interlayer.decoding import LOGIT_LENS
    from interlayer.lens import TunedLens

    from .consistency import LABELS, internal_consistency, load_examples

    examples = load_examples(cfg.dataset, cfg.n)  # bad input fails before the model loads
    if cfg.out:
        check_writable(cfg.out, suffixes=(".json",))
    model = cfg.load()
    lens = TunedLens.load(cfg.tuned_lens, model) if cfg.tuned_lens else LOGIT_LENS
    result = internal_consistency(model, examples, LABELS[cfg.dataset], paths=cfg.paths, dataset=cfg.dataset,
                                  max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, lens=lens,
                                  journal=f"{cfg.out}.paths.jsonl" if cfg.out else None,
                                  progress=not cfg.no_progress)
    payload = result.to_json()
    print(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"AUROC of IC (correct vs incorrect paths): {payload['auroc']}; path accuracy {payload['path_accuracy']:.3f}")
    write_json_output(cfg.out, payload)
    return 0
