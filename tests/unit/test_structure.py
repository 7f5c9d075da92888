"""The architecture, checked from the imports alone: no import circles between files
(lazy imports inside functions included), the core imports no method package (the
command dispatcher aside), the core's folders import only downwards, only the command line
reads command configs, methods decode and generate through the core, no library file is
over 400 lines and no function over 60."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"interlayer": "interlayer", "interlayer.lens": "lens", "interlayer.saes": "saes",
            "interlayer.probes": "probes", "interlayer.steering": "steering", "interlayer.report": "report",
            "interlayer.tracing": "tracing"}
METHODS = ("interlayer.lens", "interlayer.saes", "interlayer.probes", "interlayer.steering", "interlayer.report",
           "interlayer.tracing")
DISPATCHER = "interlayer.cli.dispatch"


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every interlayer module ``name`` imports, at the top or inside functions."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_circles_between_files():
    graph = _graph()
    # Importing a package's submodule runs the package's __init__ first; those edges are
    # not written in the files, so only the written ones are followed.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt in PACKAGES and node.startswith(nxt + "."):
                continue  # a module importing its own package's __init__ names is no circle of files
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


def test_the_core_imports_no_method_package():
    graph = _graph()
    offenders = {name: sorted(t for t in targets if t.startswith(METHODS))
                 for name, targets in graph.items()
                 if name.startswith("interlayer") and not name.startswith(METHODS) and name != DISPATCHER}
    assert not {k: v for k, v in offenders.items() if v}


MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400


def test_no_function_longer_than_60_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


def test_no_library_file_longer_than_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, long


# What only the core may do: run the model's head or Hugging Face generation, and count
# the tokens a context holds (the store's BOS rule). Docstrings and comments may name them.
CORE_ONLY = {
    "model.head(": "decode through interlayer.decoding.LayerDecoder (from_normed, next_token_nll)",
    ".model.generate(": "generate through interlayer.generation",
    "context_length - 1": "count with tokens= or interlayer.store.contexts_for_tokens / text_per_context",
}


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of ``path`` that are code: no docstrings, no comments."""
    tree = ast.parse(path.read_text())
    doc = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            doc.update(range(node.lineno, node.end_lineno + 1))
    return [(i, line.split("#", 1)[0]) for i, line in enumerate(path.read_text().splitlines(), 1) if i not in doc]


def test_methods_decode_generate_and_count_tokens_through_the_core():
    found = []
    for name, path in _modules().items():
        if not name.startswith(METHODS):
            continue
        for number, line in _code_lines(path):
            found += [f"{name}:{number}: {what} ({why})" for what, why in CORE_ONLY.items() if what in line]
    assert not found, found


CORE_LEVELS: tuple[tuple[str, ...], ...] = (
    ("interlayer.errors",),
    ("interlayer.io",),
    ("interlayer.options", "interlayer.distributed", "interlayer.results", "interlayer.intervals", "interlayer.progress",
     "interlayer.host_memory",
     "interlayer.plot_text",
     "interlayer.layers", "interlayer._moved", "interlayer.decode_outputs"),
    ("interlayer.model",),
    ("interlayer.store", "interlayer.decoding", "interlayer.prompts", "interlayer.naming"),
    ("interlayer.generation",),
    ("interlayer.cli",),
    ("interlayer", "interlayer.__main__"),
)
"""The core's folders from the bottom up: a module imports only from a lower level or
from its own folder (``interlayer.store.cache`` may import ``interlayer.store.inputs``)."""


def _core_place(name: str) -> tuple[int, str] | None:
    """``(level, folder)`` of a core module, ``None`` for a method package's module."""
    if name.startswith(METHODS):
        return None
    best = None
    for level, prefixes in enumerate(CORE_LEVELS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (level, prefix)
    assert best is not None, f"{name} is in no level of CORE_LEVELS: add it there"
    return best


def test_the_core_folders_import_only_downwards():
    upward = []
    for name, targets in _graph().items():
        place = _core_place(name)
        if place is None or name == DISPATCHER:
            continue
        for target in targets:
            there = _core_place(target)
            if there is None or target == "interlayer":
                continue
            if there[0] > place[0] or (there[0] == place[0] and there[1] != place[1] and place[1] != "interlayer"):
                upward.append(f"{name} (level {place[0]}) imports {target} (level {there[0]})")
    assert not upward, upward


CONFIG_READERS = ("cli", "runs", "config")
"""The files that may import a command config (a ``*.config`` module): a method's
``cli.py`` and ``runs.py`` (the edge, where a command's config becomes typed arguments)
and the ``config.py`` files themselves (configs compose other configs' option groups);
besides them the core's ``interlayer/cli/`` and a package's ``__init__`` (re-exports)."""

STILL_READING_CONFIGS: dict[str, str] = {
    # Library modules that import a config today, each another helper's step of issue 23
    # (the saes/ package is being rebuilt around declared contracts); delete a line when
    # its module stops.
    "interlayer.saes.run": "LATENTS_PER_D_MODEL from saes.config",
}


def test_only_the_command_line_imports_configs():
    modules = _modules()
    reading = {}
    for name, targets in _graph().items():
        stem = name.rsplit(".", 1)[-1]
        if modules[name].stem == "__init__" or stem in CONFIG_READERS or name.startswith("interlayer.cli"):
            continue
        configs = sorted(t for t in targets if t.rsplit(".", 1)[-1] == "config")
        if configs:
            reading[name] = configs
    new = {n: reading[n] for n in set(reading) - set(STILL_READING_CONFIGS)}
    assert not new, f"library modules import a command config (take typed arguments; the cli.py copies): {new}"
    stale = set(STILL_READING_CONFIGS) - set(reading)
    assert not stale, f"no longer import a config: delete them from STILL_READING_CONFIGS: {sorted(stale)}"
