"""``interlayer lens ...`` commands: ``logit``, ``tune``, ``jacobian``, ``latent``, ``saturation``, ``iks``,
``generate`` and ``qa`` (the last three were top-level; those names still work, deprecated)."""

from __future__ import annotations

import dataclasses

from typing import Any

from interlayer.cli.registry import (NO_JOURNAL, TABLE_SUFFIXES, check_outputs, command, note, say, show,
                                         write_figure, write_json_output, write_table)
from interlayer.errors import InterlayerError
from interlayer.io.files import check_writable
from interlayer.store.inputs import check_data_file
from interlayer.options import as_list

from .tuning_options import JacobianConfig
from .config import (GenerateConfig, IKSConfig, LatentConfig, LogitLensConfig, QAConfig, SaturationConfig, TuneConfig,
                     decoding_options)

DEFAULT_PROMPT = "The Eiffel Tower is in the city of"


def chat_wanted(model: Any, setting: str | bool) -> bool:
    """Whether ``--chat`` (auto, yes, no) puts prompts through the chat template; ``yes``
    on a tokenizer without one is an error."""
    from interlayer.prompts import has_chat_template, use_chat

    wanted = use_chat(model, setting)
    if wanted and not has_chat_template(model):
        raise InterlayerError(f"--chat {setting}: {model.name}'s tokenizer has no chat template; use --chat no")
    return wanted


def chat_prompts(model: Any, prompts: list[str], setting: str | bool) -> list[str]:
    """``prompts`` through the model's chat template when ``--chat`` (auto, yes, no) says so."""
    from interlayer.prompts import format_prompts

    return format_prompts(model, prompts, "yes" if chat_wanted(model, setting) else "no")


@command("lens logit", LogitLensConfig)
def run_logit_lens(cfg: LogitLensConfig) -> int:
    from .logit_lens import logit_lens

    check_outputs(cfg.out, TABLE_SUFFIXES, cfg.figures)
    prompts = as_list(cfg.prompt) or [DEFAULT_PROMPT]
    if not all(p for p in prompts):
        raise InterlayerError("--prompt must not be empty")
    cfg.check_lens()
    model = cfg.load()
    result = logit_lens(model, chat_prompts(model, prompts, cfg.chat), targets=as_list(cfg.targets),
                        positions=cfg.positions, top_k=cfg.top_k, lens=cfg.build(model),
                        memory_mb=cfg.memory_mb, progress=not cfg.no_progress)
    frame = result.to_frame()
    show("\n\n".join(result.table(i).to_string() for i in range(len(prompts))), frame.to_dict(orient="records"))
    if cfg.out:  # .json: the whole result, which Result.load reads back; .csv: the table
        result.save(cfg.out) if cfg.out.endswith(".json") else write_table(frame, cfg.out)
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0


@command("lens tune", TuneConfig)
def run_tune(cfg: TuneConfig) -> int:
    from .tuning import tune_lens
    from .tuning_options import TuneOptions

    check_writable(cfg.out, directory=True)
    if cfg.data is not None:
        check_data_file(cfg.data, text_field=cfg.text_field)
    options = TuneOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TuneOptions)})
    lens, comparison = tune_lens(cfg.load(), cfg.data, options, tokens=cfg.tokens, eval_tokens=cfg.eval_tokens,
                                 context_length=cfg.context_length, text_field=cfg.text_field, out=cfg.out,
                                 progress=not cfg.no_progress)
    frame = comparison.to_frame()
    show(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"), frame.to_dict(orient="records"))
    worse = frame[(frame.layer.isin(lens.layers)) & (frame.kl_tuned >= frame.kl_logit)]
    if len(worse):
        say(f"warning: the tuned lens does not beat the logit lens at layers {worse.layer.tolist()}")
    say(f"saved {cfg.out}")
    return 0


@command("lens jacobian", JacobianConfig)
def run_jacobian(cfg: JacobianConfig) -> int:
    from .jacobian_fit import fit_jacobian_lens
    from .tuning_options import JacobianOptions

    check_writable(cfg.out, directory=True)
    if cfg.data is not None:
        check_data_file(cfg.data, text_field=cfg.text_field)
    options = JacobianOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(JacobianOptions)})
    lens = fit_jacobian_lens(cfg.load(), cfg.data, options, tokens=cfg.tokens, context_length=cfg.context_length,
                             text_field=cfg.text_field, out=cfg.out, progress=not cfg.no_progress)
    rows = [r for r in lens.convergence if r["batch"] == lens.convergence[-1]["batch"]]
    show("\n".join(f"layer {r['layer']:>3}  last relative change of J: {r['rel_change'] or '-'}" for r in rows),
         {"source_layers": lens.source_layers, "contexts": lens.n_contexts, "convergence": rows})
    say(f"saved {cfg.out}/lens.pt ({lens.n_contexts} contexts, {lens.provenance['source_positions']} source positions)")
    return 0


@command("lens latent", LatentConfig)
def run_latent(cfg: LatentConfig) -> int:
    from .latent import check_task, latent_language

    latents = cfg.parsed("latent")
    check_task(cfg.task, cfg.src, cfg.tgt, latents)  # before loading the model
    cfg.check_lens()
    check_outputs(cfg.out, (".json",), cfg.figures)
    model = cfg.load()
    result = latent_language(model, src=cfg.src, tgt=cfg.tgt, task=cfg.task, latents=latents, shots=cfg.shots,
                             seed=cfg.seed, limit=cfg.n, lens=cfg.build(model),
                             batch_size=cfg.batch_size, chat=chat_wanted(model, cfg.chat), progress=not cfg.no_progress)
    say(f"{result.n_words} words used; {result.n_missing} skipped (not in the tokenizer), "
        f"{result.n_overlap} dropped (token sets overlap)")
    show(result.to_frame()[["layer", "p_target", *[f"p_latent_{l}" for l in latents], "p_source", "entropy"]]
         .to_string(index=False, float_format=lambda v: f"{v:.4f}"), result.to_json())
    write_json_output(cfg.out, result.to_json())
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0


@command("lens saturation", SaturationConfig)
def run_saturation(cfg: SaturationConfig) -> int:
    from interlayer.model.loading import SAMPLE_TEXT

    from .saturation import saturation

    if cfg.data is not None:
        check_data_file(cfg.data, text_field=cfg.text_field)
    cfg.check_lens()
    check_outputs(cfg.out, TABLE_SUFFIXES, cfg.figures)
    model = cfg.load()
    result = saturation(model, cfg.data or str(SAMPLE_TEXT), tokens=cfg.tokens, context_length=cfg.context_length,
                        batch_size=cfg.batch_size, text_field=cfg.text_field, lens=cfg.build(model),
                        progress=not cfg.no_progress)
    frame = result.to_frame()
    show(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"), frame.to_dict(orient="records"))
    if cfg.out:  # .json: the whole result, which Result.load reads back; .csv: the table
        result.save(cfg.out) if cfg.out.endswith(".json") else write_table(frame, cfg.out)
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0


@command("lens iks", IKSConfig, aliases=("iks",))
def run_iks(cfg: IKSConfig) -> int:
    from .knowledge_runs import iks_on_data
    from .qa_data import load_qa

    check_outputs(cfg.out, (".json",), cfg.figures)
    loaded = load_qa(cfg.dataset, cfg.n)  # bad data fails before the model loads
    if cfg.passage and not any(r.passage for r in loaded.records):
        raise InterlayerError(f"--dataset {cfg.dataset!r} has no passages; use --no-passage")
    cfg.check_lens()
    model = cfg.load()
    chat_wanted(model, cfg.chat)  # --chat yes without a template: bad input, before any generation
    result = iks_on_data(model, cfg.dataset, cfg.n, passage=cfg.passage, chat=cfg.chat, candidates=cfg.candidates,
                         metric=cfg.metric, select=cfg.select, max_new_tokens=cfg.max_new_tokens,
                         batch_size=cfg.batch_size, lens=cfg.build(model), progress=not cfg.no_progress)
    show(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"), result.to_json())
    say(f"l* = {result.layer} (candidates {result.candidates}); chosen per {result.select}: {result.histogram}"
        + (f"; {loaded.skipped} records without an answer skipped" if loaded.skipped else ""))
    write_json_output(cfg.out, result.to_json())
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0


@command("lens generate", GenerateConfig, aliases=("generate",))
def run_generate(cfg: GenerateConfig) -> int:
    from .fused_decoding import generate

    prompts = as_list(cfg.prompt)
    if not prompts or not all(prompts):
        raise InterlayerError('give a prompt, e.g. interlayer lens generate --decoding lfd --prompt "The capital of '
                              'France is"')
    options = decoding_options(cfg, cfg.decoding)
    cfg.check_lens()
    check_outputs(cfg.out, (".json",))
    model = cfg.load()
    gens = generate(model, chat_prompts(model, prompts, cfg.chat), options, max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, lens=cfg.build(model), progress=False)
    lines = []
    for prompt, gen in zip(prompts, gens):
        lines.append(gen.text)
        if cfg.decoding != "greedy":
            what = "premature layer" if cfg.decoding == "dola" else "fusion layer"
            pieces = model.token_strings([s.token for s in gen.steps])
            lines.append(f"\nstep  token            {what}")
            lines.extend(f"{i:>4}  {piece!r:<16} {step.layer}" for i, (step, piece) in enumerate(zip(gen.steps, pieces)))
    payload = [{"model": model.name, "prompt": p, **g.to_json()} for p, g in zip(prompts, gens)]
    show("\n".join(lines), payload[0] if len(payload) == 1 else payload)
    # --out: what --json prints; one prompt loads with Generation.load, any number with Generation.load_all
    write_json_output(cfg.out, payload[0] if len(payload) == 1 else payload)
    return 0


@command("lens qa", QAConfig, aliases=("qa",))
def run_qa(cfg: QAConfig) -> int:
    from .qa import check_decodings, evaluate_qa, write_result
    from .qa_data import load_qa

    check_outputs(cfg.out, (".json",), cfg.figures)
    decodings = check_decodings(cfg.decoding)
    options = decoding_options(cfg)
    load_qa(cfg.dataset, cfg.n)  # bad data fails before the model loads
    cfg.check_lens()
    if not cfg.out:
        note(NO_JOURNAL)
    model = cfg.load()
    chat_wanted(model, cfg.chat)
    progress_file = f"{cfg.out}.progress.jsonl" if cfg.out else None
    result = evaluate_qa(model, cfg.dataset, cfg.n, decodings=decodings, options=options, noise_docs=cfg.noise_docs,
                         chat=cfg.chat, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                         progress_file=progress_file, lens=cfg.build(model),
                         progress=not cfg.no_progress)
    show(result.table(), result.to_json())  # records without an answer: evaluate_qa's warning on stderr says so
    if cfg.out:
        write_result(result, cfg.out, progress_file)
        say(f"wrote {cfg.out}")
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0

