"""``interlayer probes mexa|consistency|linear`` (``mexa`` and ``consistency`` were
top-level; those names still work, deprecated)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from interlayer.cli.registry import (NO_JOURNAL, TABLE_SUFFIXES, check_outputs, command, note, say, show,
                                         write_figure, write_json_output, write_table)
from interlayer.errors import InterlayerError, choices

from .config import ConsistencyConfig, LinearProbeConfig, MexaConfig
from .mexa import load_parallel, mexa

RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@command("probes mexa", MexaConfig, aliases=("mexa",))
def run_mexa(cfg: MexaConfig) -> int:
    from .mexa import available_languages

    langs = cfg.parsed("langs")
    if langs == "all":
        langs = available_languages(cfg.dataset)
    load_parallel([cfg.pivot, *langs], cfg.n, cfg.dataset)  # bad data fails before the model loads
    check_outputs(cfg.out, (".json",), cfg.figures)
    model = cfg.load()
    result = mexa(model, langs, n=cfg.n, pooling=cfg.pooling, data_dir=cfg.dataset, pivot=cfg.pivot,
                  batch_size=cfg.batch_size, progress=not cfg.no_progress)
    show(result.summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"), result.to_json())
    write_json_output(cfg.out, result.to_json())
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0


@command("probes consistency", ConsistencyConfig, aliases=("consistency",))
def run_consistency(cfg: ConsistencyConfig) -> int:
    from interlayer.lens.cli import chat_prompts

    from .consistency import LABELS, internal_consistency, load_examples

    examples = load_examples(cfg.dataset, cfg.n)  # bad input fails before the model loads
    check_outputs(cfg.out, (".json",), cfg.figures)
    cfg.check_lens()
    if not cfg.out:
        note(NO_JOURNAL)
    model = cfg.load()
    prompts = chat_prompts(model, [e.prompt for e in examples], cfg.chat)
    examples = [dataclasses.replace(e, prompt=p) for e, p in zip(examples, prompts)]
    result = internal_consistency(model, examples, LABELS[cfg.dataset], paths=cfg.paths, dataset=cfg.dataset,
                                  max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, lens=cfg.build(model),
                                  journal=f"{cfg.out}.paths.jsonl" if cfg.out else None,
                                  progress=not cfg.no_progress)
    payload = result.to_json()
    show(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.3f}"), payload)
    say(f"AUROC of IC (correct vs incorrect paths): {payload['auroc']}; path accuracy {payload['path_accuracy']:.3f}")
    write_json_output(cfg.out, payload)
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0


def load_records(path: str, text_field: str, label_field: str, n: int | None = None) -> tuple[list[str], list[Any]]:
    """The texts and labels of a records file (.jsonl, .json, .csv, .parquet), the first ``n``."""
    import pandas as pd

    file = Path(path).expanduser()
    if file.suffix.lower() not in RECORD_SUFFIXES:
        raise InterlayerError(f"--dataset {path!r}: unknown extension {file.suffix or '(none)'!r}; "
                              f"valid choices: {choices(RECORD_SUFFIXES)}")
    if not file.is_file():
        raise InterlayerError(f"--dataset {path!r} does not exist")
    try:
        if file.suffix.lower() == ".csv":
            frame = pd.read_csv(file)
        elif file.suffix.lower() == ".parquet":
            frame = pd.read_parquet(file)
        else:
            frame = pd.read_json(file, lines=file.suffix.lower() == ".jsonl")
    except (ValueError, ImportError) as err:
        raise InterlayerError(f"--dataset {path!r} cannot be read: {str(err).splitlines()[0]}") from None
    for flag, name in (("--text-field", text_field), ("--label-field", label_field)):
        if name not in frame.columns:
            raise InterlayerError(f"{flag} {name!r} is not a field of {path}; fields: {choices(map(str, frame.columns))}")
    frame = frame.head(n) if n is not None else frame
    texts = frame[text_field].tolist()
    if not all(isinstance(t, str) and t for t in texts):
        raise InterlayerError(f"--dataset {path!r}: every {text_field!r} must be a non-empty string")
    return texts, frame[label_field].tolist()


@command("probes linear", LinearProbeConfig)
def run_linear(cfg: LinearProbeConfig) -> int:
    from interlayer.model.sites import check_site_syntax

    from .linear import probe_layers

    texts, labels = load_records(cfg.dataset, cfg.text_field, cfg.label_field, cfg.n)  # before the model loads
    check_site_syntax(cfg.sites)
    check_outputs(cfg.out, TABLE_SUFFIXES, cfg.figures)
    model = cfg.load()
    result = probe_layers(model, texts, labels, sites=cfg.sites, select=cfg.select, folds=cfg.folds, seed=cfg.seed,
                          batch_size=cfg.batch_size, progress=not cfg.no_progress)
    frame = result.to_frame()
    show(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"), frame.to_dict(orient="records"))
    say(f"{result.n_examples} examples, {result.n_classes} classes, chance {result.chance:.3f}, {result.folds}-fold CV")
    if cfg.out:  # .json: the whole result, which Result.load reads back; .csv: the table
        result.save(cfg.out) if cfg.out.endswith(".json") else write_table(frame, cfg.out)
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0
