"""The reference pages, generated from the code: the CLI from its parsers, the API from
each public package's ``__all__``, the architectures from ``ARCHITECTURES``."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys

METHOD_PACKAGES = ("lens", "saes", "probes", "steering", "report", "tracing")
"""The folders at the repository root that install as ``interlayer.<name>``."""

API_MODULES = {
    "interlayer": "The core: loading a model, the activation store, decoding, results and errors.",
    "interlayer.lens": "Lenses, latent language, saturation, and knowledge layers (IKS, LFD, DoLa, QA).",
    "interlayer.probes": "MEXA, linear probes and internal consistency.",
    "interlayer.saes": "Sparse autoencoders: architectures, training, sweeps, evaluation, files.",
    "interlayer.steering": "Steering vectors: training, injection, sweeps, evaluation, GGUF files.",
    "interlayer.report": "The layer-wise report.",
    "interlayer.tracing": "Causal tracing of facts (ROME), on the store's activation patching.",
    "interlayer.store.patching": "Activation patching in the store: corruptions, restorations, patch grids, "
                                 "denoising and noising.",
    "interlayer.layers": "Layer numbering and its converters.",
    "interlayer.naming": "Each ecosystem's name for a hook site (Hugging Face, TransformerLens, sparsify, Gemma Scope 2, "
                         "tuned-lens, llama.cpp, repeng), converted both ways.",
}
"""The public packages and modules whose ``__all__`` makes up the API reference."""


def public_names(module: str) -> list[str]:
    """The names of ``module.__all__``, in their order."""
    return list(importlib.import_module(module).__all__)


def _identifier(module: str, name: str) -> str:
    """What mkdocstrings should render for ``module.name``: where a function shares its
    name with a submodule (``interlayer.probes.mexa``), griffe would find the submodule,
    so the function's own path (``interlayer.probes.mexa.mexa``) is given."""
    ident = f"{module}.{name}"
    if ident in sys.modules and not inspect.ismodule(getattr(importlib.import_module(module), name)):
        ident += f".{name}"
    return ident


ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):<code>(~?)([^<]+)</code>")


def plain_roles(html: str) -> str:
    """Sphinx roles in docstrings (``:func:`cache```) as the bare code name, the last part
    after ``~`` (``:class:`~interlayer.Edit``` shows ``Edit``)."""
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def api_pages() -> dict[str, str]:
    """One markdown page per public module: its docstring's first paragraph, then one
    mkdocstrings block per public name."""
    pages = {}
    for module, summary in API_MODULES.items():
        lines = [f"# `{module}`", "", summary, "",
                 f"Every name below is in `{module}.__all__`; this page is generated from the docstrings.", ""]
        for name in public_names(module):
            lines += [f"::: {_identifier(module, name)}", "    options:", "      heading_level: 2", ""]
        pages[module] = "\n".join(lines)
    return pages


def home_page() -> str:
    """The site's home page: the README, with its links turned into site links."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for old, new in (("](docs/", "]("), ("](notebooks/)", "](tutorials/quickstart.md)"),
                     ("](CHANGELOG.md)", "](changelog.md)"), ("`make docs` builds the whole site into `site/`",
                                                               "`make docs` builds this site")):
        text = text.replace(old, new)
    return text


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands(parser: argparse.ArgumentParser, prefix: str = "interlayer"):
    """(full name, parser) of every command and group, depth first, without the hidden
    deprecated aliases (those have no help line)."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return
    listed = {choice.dest for choice in sub._choices_actions}
    for word, child in sub.choices.items():
        if word not in listed:
            continue
        name = f"{prefix} {word}"
        yield name, child
        yield from _commands(child, name)


def cli_page() -> str:
    """Every command's ``--help``, as the parser prints it (80 columns)."""
    from interlayer.cli.dispatch import discover
    from interlayer.cli.registry import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"
    try:
        parser = build_parser(discover())
        blocks = [("interlayer", parser)] + list(_commands(parser))
        lines = ["# Command line", "",
                 "Generated from the parsers (`build_parser(discover())`) when the site was built: this is "
                 "exactly what `--help` prints. Every command also takes `--config FILE` (TOML or YAML, "
                 "flags override it) and `--print-config`; see [Getting started](../getting-started.md).", ""]
        lines += [f"- [`{name}`](#{name.replace(' ', '-')})" for name, _ in blocks[1:]]
        lines.append("")
        for name, sub in blocks:
            lines += [f"## `{name}` {{#{name.replace(' ', '-')}}}", "", "```text", sub.format_help().rstrip(), "```", ""]
        return "\n".join(lines)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def architectures_page() -> str:
    """The table of supported architectures, from ``interlayer.ARCHITECTURES``."""
    from interlayer import ARCHITECTURES

    columns = ("layers", "final_norm", "embed", "unembed", "attn_out", "mlp_out", "attn_input")
    lines = ["# Supported architectures", "",
             "Generated from `interlayer.ARCHITECTURES` (`interlayer/model/architectures.py`), the one place that "
             "knows where each family keeps its blocks and norms. `model_type` is the Hugging Face "
             "`config.model_type`; the other columns are module paths inside the `*ForCausalLM` model "
             "(`a|b`: the first that exists).", "",
             "| model_type | family | " + " | ".join(columns) + " | parallel residual | logit softcap |",
             "| --- | --- | " + " | ".join("---" for _ in columns) + " | --- | --- |"]
    for model_type, spec in sorted(ARCHITECTURES.items()):
        parallel = "from config" if callable(spec.parallel_residual) else ("yes" if spec.parallel_residual else "no")
        softcap = f"`{spec.softcap_attr}`" if spec.softcap_attr else "none"
        cells = " | ".join(f"`{getattr(spec, c)}`" for c in columns)
        lines.append(f"| `{model_type}` | {spec.family} | {cells} | {parallel} | {softcap} |")
    lines += ["", "Any other `model_type` is refused at load with `UnsupportedArchitectureError`, naming these."]
    return "\n".join(lines) + "\n"
