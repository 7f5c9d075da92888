"""``interlayer steer train|apply|sweep|export``."""

from __future__ import annotations

from pathlib import Path

from interlayer.command_registry import command, write_json_output
from interlayer.errors import InterlayerError
from interlayer.files import check_writable

from .config import SteerApplyConfig, SteerExportConfig, SteerSweepConfig, SteerTrainConfig
from .datasets import dataset_path, load_pairs
from .vectors import SteeringVector


def parse_layers(text: str | None) -> list[int] | str | None:
    """``"all"``, ``None`` or a list of layer indices from ``"3,6,9"``."""
    if text is None or text.strip() == "all":
        return text.strip() if text else None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InterlayerError(f"layers {text!r} must be comma-separated integers or 'all'") from None


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InterlayerError(f"{flag} {text!r} must be comma-separated numbers") from None
    if not values:
        raise InterlayerError(f"{flag} needs at least one value")
    return values


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
    from .vectors import train_vectors

    layers = parse_layers(cfg.layers)
    load_pairs(cfg.dataset, "generate", cfg.n)  # bad data fails before the model loads
    check_writable(cfg.out, suffixes=(".safetensors",))
    model = cfg.load()
    vector = train_vectors(model, cfg.dataset, layers, method=cfg.method, site=cfg.site, read=cfg.read,
                           normalize=not cfg.raw, n=cfg.n, chat=cfg.chat, batch_size=cfg.batch_size,
                           progress=not cfg.no_progress)
    vector.extra["model_type"] = model.model_type
    vector.save(cfg.out)
    print(vector.norms().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {cfg.out}: {cfg.method} vectors at {cfg.site} of layers {vector.layers} from {vector.n_pairs} pairs")
    return 0


@command("steer apply", SteerApplyConfig)
def run_apply(cfg: SteerApplyConfig) -> int:
    from .evaluation import generate
    from .inject import steer

    positions = parse_positions(cfg.positions)
    layers = parse_layers(cfg.layer)
    if not Path(cfg.vector).is_file():
        raise InterlayerError(f"--vector {cfg.vector!r} does not exist")
    model = cfg.load()
    vector = load_vector(cfg.vector, model)
    plain = generate(model, cfg.prompt, cfg.max_new_tokens)
    with steer(model, vector, cfg.coef, layers=None if layers in (None, "all") else layers, positions=positions,
               operator=cfg.operator, preserve_norm=cfg.preserve_norm):
        steered = generate(model, cfg.prompt, cfg.max_new_tokens)
    print(f"--- without steering\n{cfg.prompt}{plain}")
    print(f"--- {cfg.operator} x {cfg.coef:g} at {vector.site} layers {layers or vector.layers}\n{cfg.prompt}{steered}")
    return 0


@command("steer sweep", SteerSweepConfig)
def run_sweep(cfg: SteerSweepConfig) -> int:
    from interlayer.files import write_text_atomic

    from .evaluation import sweep
    from .vectors import train_vectors

    coefs = parse_floats(cfg.coefs, "--coefs")
    layers = parse_layers(cfg.layers)
    load_pairs(cfg.dataset, "test", cfg.n)
    dataset_path(cfg.dataset)
    check_writable(cfg.out, suffixes=(".json",))
    if cfg.figures:
        check_writable(cfg.figures, flag="--figures", suffixes=(".html",))
    if cfg.vector is not None and not Path(cfg.vector).is_file():
        raise InterlayerError(f"--vector {cfg.vector!r} does not exist")
    model = cfg.load()
    if cfg.vector is not None:
        vector = load_vector(cfg.vector, model)
    else:
        vector = train_vectors(model, cfg.dataset, "all" if layers in (None, "all") else layers, n=cfg.train_n,
                               normalize=False, chat=cfg.chat, progress=not cfg.no_progress)
    chosen = vector.layers if layers in (None, "all") else layers
    result = sweep(model, vector, cfg.dataset, chosen, coefs, n=cfg.n, seed=cfg.seed,
                   perplexity_tokens=cfg.perplexity_tokens, batch_size=cfg.batch_size, chat=cfg.chat,
                   progress=not cfg.no_progress)
    print(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    best = result.best
    print(f"base P(matching) {result.base:.3f}; best cell: layer {best['layer']}, coef {best['coef']:g} "
          f"(shift {best['shift']:+.3f}, random {best['random_shift']:+.3f}, Δ perplexity {best['delta_perplexity']:+.2f})")
    write_json_output(cfg.out, result.to_json())
    if cfg.figures:
        write_text_atomic(cfg.figures, result.plot().to_html(include_plotlyjs=True, full_html=True))
        print(f"wrote {cfg.figures}")
    return 0


@command("steer export", SteerExportConfig)
def run_export(cfg: SteerExportConfig) -> int:
    from .gguf_io import to_gguf

    if (cfg.gguf is None) == (cfg.out is None):
        raise InterlayerError("give exactly one of --gguf OUT.gguf (export) and --out OUT.safetensors (import a .gguf)")
    if not Path(cfg.vector).is_file():
        raise InterlayerError(f"--vector {cfg.vector!r} does not exist")
    vector = load_vector(cfg.vector)
    if cfg.gguf is not None:
        check_writable(cfg.gguf, flag="--gguf", suffixes=(".gguf",))
        to_gguf(vector, cfg.gguf, hint=cfg.model_hint)
        print(f"wrote {cfg.gguf}: llama.cpp control vector, layers {[l + 1 for l in vector.layers]} (1-based)")
    else:
        check_writable(cfg.out, suffixes=(".safetensors",))
        vector.save(cfg.out)
        print(f"wrote {cfg.out}: layers {vector.layers}")
    return 0
