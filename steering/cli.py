"""``interlayer steer train|apply|sweep|export``."""

from __future__ import annotations

import math
from pathlib import Path

from interlayer.cli.registry import check_outputs, command, note, say, show, write_figure, write_json_output
from interlayer.errors import InterlayerError
from interlayer.io.files import check_writable
from interlayer.options import as_list, resolve_layers

from .config import SteerApplyConfig, SteerExportConfig, SteerSweepConfig, SteerTrainConfig
from .datasets import dataset_path, load_pairs
from .vectors import SteeringVector


def chosen_layers(text: str | None, n_layers: int) -> list[int] | None:
    """The block indices a ``--layers`` spec names (``None`` for 'all' or not given)."""
    if text is None or text.strip() == "all":
        return None
    return resolve_layers(text, n_layers)


def parse_positions(text: str) -> str | int:
    if text in ("all", "prompt", "generated"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise InterlayerError(f"--positions {text!r}: valid choices are 'all', 'prompt', 'generated' or an index >= 0") from None
    if value < 0:
        raise InterlayerError(f"--positions {value}: a position index must be >= 0")
    return value


def load_vector(path: str, model=None) -> SteeringVector:
    """A vector from ``.safetensors`` (interlayer) or ``.gguf`` (llama.cpp control vector)."""
    from .gguf_io import from_gguf

    if Path(path).suffix == ".gguf":
        return from_gguf(path, model)
    return SteeringVector.load(path, model)


@command("steer train", SteerTrainConfig)
def run_train(cfg: SteerTrainConfig) -> int:
    from interlayer.prompts import use_chat

    from .vectors import train_vectors

    load_pairs(cfg.dataset, "generate", cfg.n)  # bad data fails before the model loads
    check_writable(cfg.out, suffixes=(".safetensors",))
    model = cfg.load()
    chat = use_chat(model, cfg.chat)
    vector = train_vectors(model, cfg.dataset, chosen_layers(cfg.layers, model.n_layers) or "all", method=cfg.method,
                           site=cfg.site_kind, read=cfg.read, normalize=not cfg.raw, n=cfg.n, chat=cfg.chat,
                           batch_size=cfg.batch_size, progress=not cfg.no_progress)
    vector.chat = chat  # recorded, so `steer apply --chat auto` asks the same way
    vector.extra["model_type"] = model.model_type
    vector.save(cfg.out)
    norms = vector.norms()
    show(norms.to_string(index=False, float_format=lambda v: f"{v:.4f}"), norms.to_dict(orient="records"))
    say(f"wrote {cfg.out}: {cfg.method} vectors at {cfg.site_kind} of layers {vector.layers} from {vector.n_pairs} pairs"
        f"{' (chat template)' if chat else ''}")
    return 0


@command("steer apply", SteerApplyConfig)
def run_apply(cfg: SteerApplyConfig) -> int:
    from interlayer.prompts import use_chat

    from .evaluation import generate_text as generate
    from .inject import steer
    from .vectors import prompt_text

    positions = parse_positions(cfg.positions)
    prompts = as_list(cfg.prompt)
    if not prompts or not all(prompts):
        raise InterlayerError('give a prompt, e.g. interlayer steer apply --vector V.safetensors --prompt "I think"')
    if not math.isfinite(cfg.coef):
        raise InterlayerError(f"--coef {cfg.coef}: give a finite number")
    if not Path(cfg.vector).is_file():
        raise InterlayerError(f"--vector {cfg.vector!r} does not exist")
    model = cfg.load()
    vector = load_vector(cfg.vector, model)
    recorded = getattr(vector, "chat", None)
    chat = recorded if cfg.chat == "auto" and recorded is not None else use_chat(model, cfg.chat)
    layers = chosen_layers(cfg.layers, model.n_layers)
    runs = []
    for prompt in prompts:
        text = prompt_text(model, prompt, "yes" if chat else "no")
        plain = generate(model, text, cfg.max_new_tokens)
        with steer(model, vector, cfg.coef, layers=layers, positions=positions, operator=cfg.operator,
                   preserve_norm=cfg.preserve_norm):
            steered = generate(model, text, cfg.max_new_tokens)
        runs.append({"prompt": prompt, "chat": chat, "plain": plain, "steered": steered})
    where = f"{cfg.operator} x {cfg.coef:g} at {vector.site} layers {layers or vector.layers}"
    show("\n".join(f"--- without steering\n{r['prompt']}{r['plain']}\n--- {where}\n{r['prompt']}{r['steered']}"
                   for r in runs), runs[0] if len(runs) == 1 else runs)
    return 0


@command("steer sweep", SteerSweepConfig)
def run_sweep(cfg: SteerSweepConfig) -> int:
    from .evaluation import sweep
    from .vectors import train_vectors

    coefs = cfg.parsed("coefs")
    load_pairs(cfg.dataset, "test", cfg.n)
    dataset_path(cfg.dataset)
    check_outputs(cfg.out, (".json",), cfg.figures)
    if cfg.vector is not None and not Path(cfg.vector).is_file():
        raise InterlayerError(f"--vector {cfg.vector!r} does not exist")
    model = cfg.load()
    layers = chosen_layers(cfg.layers, model.n_layers)
    if cfg.vector is not None:
        vector = load_vector(cfg.vector, model)
    else:
        vector = train_vectors(model, cfg.dataset, layers or "all", n=cfg.train_n, normalize=False, chat=cfg.chat,
                               progress=not cfg.no_progress)
    result = sweep(model, vector, cfg.dataset, layers or vector.layers, coefs, n=cfg.n, seed=cfg.seed,
                   perplexity_tokens=cfg.perplexity_tokens, batch_size=cfg.batch_size, chat=cfg.chat,
                   progress=not cfg.no_progress)
    show(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"), result.to_json())
    best = result.best
    say(f"base P(matching) {result.base:.3f}; best cell: layer {best['layer']}, coef {best['coef']:g} "
        f"(shift {best['shift']:+.3f}, random {best['random_shift']:+.3f}, Δ perplexity {best['delta_perplexity']:+.2f})")
    write_json_output(cfg.out, result.to_json())
    write_figure(cfg.figures, result.plot() if cfg.figures else None)
    return 0


def _export_layers(vector, spec: str | None):
    """The vector restricted to ``--layers``; by default without layer 0, which llama.cpp
    never steers (a note says so). Layer 0 asked for explicitly is refused by ``to_gguf``."""
    import dataclasses

    if spec is None or spec.strip() == "all":
        layers = [l for l in vector.layers if l != 0]
        if not layers:
            raise InterlayerError("the vector has only layer 0, which llama.cpp never steers; nothing to export")
        if len(layers) < len(vector.layers):
            note("layer 0 is left out of the .gguf: llama.cpp adds direction.N to block N's output and never steers "
                 "block 0 (--layers names the layers to write)")
    else:
        try:
            layers = resolve_layers(spec, max(vector.layers) + 1)
        except InterlayerError:
            raise InterlayerError(f"--layers {spec!r}: the vector's layers are {vector.layers}") from None
        missing = [l for l in layers if l not in vector.directions]
        if missing:
            raise InterlayerError(f"--layers {spec!r}: the vector has no layer {missing[0]}; its layers are {vector.layers}")
    return dataclasses.replace(vector, directions={l: vector.directions[l] for l in layers})


@command("steer export", SteerExportConfig)
def run_export(cfg: SteerExportConfig) -> int:
    from .gguf_io import to_gguf

    check_writable(cfg.out, suffixes=(".gguf", ".safetensors"))
    if not Path(cfg.vector).is_file():
        raise InterlayerError(f"--vector {cfg.vector!r} does not exist")
    vector = load_vector(cfg.vector)
    if Path(cfg.out).suffix.lower() == ".gguf":
        vector = _export_layers(vector, cfg.layers)
        to_gguf(vector, cfg.out, hint=cfg.model_hint)
        show(f"wrote {cfg.out}: llama.cpp control vector, tensors "
             f"{', '.join(f'direction.{l}' for l in vector.layers)} (direction.N is added to block N's output, "
             "resid_post.N)",
             {"out": str(cfg.out), "layers": vector.layers, "format": "gguf"})
    else:
        vector.save(cfg.out)
        show(f"wrote {cfg.out}: layers {vector.layers}", {"out": str(cfg.out), "layers": vector.layers,
                                                           "format": "safetensors"})
    return 0
