"""``interlayer lens ...`` commands."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from interlayer.command_registry import command, emit_json, write_json_output
from interlayer.config import LogitLensConfig
from interlayer.decoding import LOGIT_LENS, Lens
from interlayer.errors import InterlayerError
from interlayer.files import check_writable, write_atomic
from interlayer.inputs import check_data_file

from .config import GenerateConfig, IKSConfig, LatentConfig, QAConfig, SaturationConfig, TuneConfig

TABLE_SUFFIXES = (".csv", ".json")


def write_table(frame: pd.DataFrame, out: str) -> None:
    """Write a DataFrame as .csv or .json (by the extension of ``out``), atomically."""
    path = Path(out)
    if path.suffix == ".csv":
        write_atomic(path, frame.to_csv(index=False).encode())
    elif path.suffix == ".json":
        write_atomic(path, frame.to_json(orient="records", indent=2).encode())
    else:
        raise InterlayerError(f"--out {out!r}: unknown extension; valid choices: '.csv', '.json'")


def _lens_for(model, path: str | None) -> Lens:
    from .lenses import TunedLens

    return TunedLens.load(path, model) if path else LOGIT_LENS


def _check_lens_dir(path: str | None) -> None:
    if path is not None and not (Path(path) / "lens.safetensors").is_file():
        raise InterlayerError(f"--tuned-lens {path!r} is not a saved tuned lens (needs config.json and lens.safetensors)")


@command("lens logit", LogitLensConfig)
def run_logit_lens(cfg: LogitLensConfig) -> int:
    from .logit_lens import logit_lens

    if cfg.out:
        check_writable(cfg.out, suffixes=TABLE_SUFFIXES)
    if not cfg.prompt:
        raise InterlayerError("--prompt must not be empty")
    model = cfg.load()
    result = logit_lens(model, cfg.prompt, top_k=cfg.top_k, memory_mb=cfg.memory_mb, progress=not cfg.no_progress)
    print(result.table().to_string())
    if cfg.out:
        write_table(result.to_frame(), cfg.out)
    return 0


@command("lens tune", TuneConfig)
def run_tune(cfg: TuneConfig) -> int:
    from .tuning import tune_lens

    check_writable(cfg.out, directory=True)
    if cfg.data is not None:
        check_data_file(cfg.data)
    lens, comparison = tune_lens(cfg.load(), cfg)
    frame = comparison.to_frame()
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    worse = frame[(frame.layer.isin(lens.layers)) & (frame.kl_tuned >= frame.kl_logit)]
    if len(worse):
        print(f"warning: the tuned lens does not beat the logit lens at layers {worse.layer.tolist()}")
    print(f"saved {cfg.out}")
    return 0


@command("lens latent", LatentConfig)
def run_latent(cfg: LatentConfig) -> int:
    from .latent import check_task, latent_language

    latents = [l.strip() for l in cfg.latent.split(",") if l.strip()]
    check_task(cfg.task, cfg.src, cfg.tgt, latents)  # before loading the model
    _check_lens_dir(cfg.tuned_lens)
    if cfg.out:
        check_writable(cfg.out, suffixes=(".json",))
    model = cfg.load()
    result = latent_language(model, src=cfg.src, tgt=cfg.tgt, task=cfg.task, latents=latents, shots=cfg.shots,
                             seed=cfg.seed, limit=cfg.limit, lens=_lens_for(model, cfg.tuned_lens),
                             batch_size=cfg.batch_size, progress=not cfg.no_progress)
    print(f"{result.n_words} words used; {result.n_missing} skipped (not in the tokenizer), "
          f"{result.n_overlap} dropped (token sets overlap)")
    print(result.to_frame()[["layer", "p_target", *[f"p_latent_{l}" for l in latents], "p_source", "entropy"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    write_json_output(cfg.out, result.to_json())
    return 0


@command("lens saturation", SaturationConfig)
def run_saturation(cfg: SaturationConfig) -> int:
    from interlayer.loading import SAMPLE_TEXT

    from .saturation import saturation

    if cfg.data is not None:
        check_data_file(cfg.data)
    _check_lens_dir(cfg.tuned_lens)
    if cfg.out:
        check_writable(cfg.out, suffixes=TABLE_SUFFIXES)
    model = cfg.load()
    result = saturation(model, cfg.data or str(SAMPLE_TEXT), tokens=cfg.tokens, context_length=cfg.context_length,
                        lens=_lens_for(model, cfg.tuned_lens), progress=not cfg.no_progress)
    frame = result.to_frame()
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if cfg.out:
        write_table(frame, cfg.out)
    return 0


@command("iks", IKSConfig)
def run_iks(cfg: IKSConfig) -> int:
    from .knowledge_runs import iks_on_data
    from .qa_data import load_qa

    for path, suffix in ((cfg.out, ".json"), (cfg.figure, ".html")):
        if path:
            check_writable(path, suffixes=(suffix,))
    loaded = load_qa(cfg.data, cfg.n)  # bad data fails before the model loads
    if cfg.passage and not any(r.passage for r in loaded.records):
        raise InterlayerError(f"--data {cfg.data!r} has no passages; use --no-passage")
    model = cfg.load()
    result = iks_on_data(model, cfg.data, cfg.n, passage=cfg.passage, chat=cfg.chat, candidates=cfg.candidates,
                         metric=cfg.metric, select=cfg.select, max_new_tokens=cfg.max_new_tokens,
                         batch_size=cfg.batch_size, progress=not cfg.no_progress)
    print(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"l* = {result.layer} (candidates {result.candidates}); chosen per {result.select}: {result.histogram}"
          + (f"; {loaded.skipped} records without an answer skipped" if loaded.skipped else ""))
    write_json_output(cfg.out, result.to_json())
    if cfg.figure:
        write_atomic(Path(cfg.figure), result.plot().to_html(include_plotlyjs=True).encode())
        print(f"wrote {cfg.figure}")
    return 0


@command("generate", GenerateConfig)
def run_generate(cfg: GenerateConfig) -> int:
    from .fused_decoding import generate
    from .qa import use_chat

    if not cfg.prompt:
        raise InterlayerError("give a prompt, e.g. interlayer generate --decoding lfd \"The capital of France is\"")
    options = cfg.decoding_options(cfg.decoding)
    model = cfg.load()
    prompt = cfg.prompt
    if use_chat(model, cfg.chat):
        prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                     add_generation_prompt=True)
    gen = generate(model, prompt, options, max_new_tokens=cfg.max_new_tokens, progress=False)
    if cfg.json:
        emit_json({"model": model.name, "prompt": cfg.prompt, **gen.to_json()})
        return 0
    print(gen.text)
    if cfg.decoding != "greedy":
        what = "premature layer" if cfg.decoding == "dola" else "fusion layer"
        pieces = model.token_strings([s.token for s in gen.steps])
        print(f"\nstep  token            {what}")
        for i, (step, piece) in enumerate(zip(gen.steps, pieces)):
            print(f"{i:>4}  {piece!r:<16} {step.layer}")
    return 0


@command("qa", QAConfig)
def run_qa(cfg: QAConfig) -> int:
    from .qa import check_decodings, evaluate_qa, write_result
    from .qa_data import load_qa

    if cfg.out:
        check_writable(cfg.out, suffixes=(".json",))
    decodings = check_decodings(cfg.decoding)
    options = cfg.decoding_options()
    loaded = load_qa(cfg.data, cfg.n)  # bad data fails before the model loads
    model = cfg.load()
    progress_file = f"{cfg.out}.progress.jsonl" if cfg.out else None
    result = evaluate_qa(model, cfg.data, cfg.n, decodings=decodings, options=options, noise_docs=cfg.noise_docs,
                         chat=cfg.chat, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                         progress_file=progress_file, progress=not cfg.no_progress)
    print(result.table())
    if loaded.skipped:
        print(f"{loaded.skipped} records without an answer skipped")
    if cfg.out:
        write_result(result, cfg.out, progress_file)
        print(f"wrote {cfg.out}")
    return 0
