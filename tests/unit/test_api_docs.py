"""The API reference leaves nothing undocumented: every name of every public module's
``__all__`` (``docs/hooks/reference.py``'s ``API_MODULES``) has a docstring, so has every
public method and property of every public class, their docstrings parse in the site's
style (google) without a warning, every name has its ``:::`` block in the generated API
pages, and every command has a help line.

How the docstrings are read: through griffe, the static reader mkdocstrings renders the
pages with, not through ``inspect``. The runtime check would pass where the page shows
nothing: a dataclass without a docstring gets a generated ``__doc__`` (its signature), a
method inherits its base's docstring through ``inspect.getdoc``, and a data constant (a
dict, a tuple, a string) has no ``__doc__`` of its own at all. What the page shows for a
constant is its attribute docstring, the string literal right after the assignment, which
only a reader of the source sees; griffe reads it the way the site does. The package is
laid out for griffe as the docs build lays it out (``docs/hooks/build.py``'s ``on_config``:
the method folders ``lens/``, ``saes/``, ... copied under ``interlayer/``, as they
install), but in a temporary folder, so the test needs no earlier docs build and never
races with one.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import shutil
from pathlib import Path

import pytest

import griffe  # the docs extra (mkdocstrings-python), part of the test extra

ROOT = Path(__file__).resolve().parents[2]
STYLE = "google"
"""The docstring style of ``mkdocs.yml``'s mkdocstrings options."""


def _reference():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _reference()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """``interlayer`` as griffe reads it for the site."""
    tree = tmp_path_factory.mktemp("api-source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data")
    shutil.copytree(ROOT / "interlayer", tree / "interlayer", ignore=ignore)
    for folder in reference.METHOD_PACKAGES:
        shutil.copytree(ROOT / folder, tree / "interlayer" / folder, ignore=ignore)
    # try_relative_path=False: from the repository root, "interlayer" would be read as the
    # relative path interlayer/, without the method folders.
    return griffe.load("interlayer", search_paths=[str(tree)], docstring_parser=STYLE, try_relative_path=False)


def _target(obj):
    return obj.final_target if obj.is_alias else obj


def _where(obj) -> str:
    """The object's name and its place in the repository (``saes/sae.py:150``)."""
    parts = obj.relative_package_filepath.parts  # interlayer/saes/sae.py as laid out
    if len(parts) > 2 and parts[1] in reference.METHOD_PACKAGES:
        parts = parts[1:]
    return f"{obj.path} ({Path(*parts)}:{obj.lineno})"


def _griffe_object(package, path: str):
    """The griffe object of the dotted ``path`` (``interlayer.probes.mexa``), aliases followed."""
    return _target(package if path == "interlayer" else package[path.removeprefix("interlayer.")])


def _public(package):
    """``(shown name, griffe object)`` of every name of every API module's ``__all__``: the
    object the name is at run time. (A function named like its own module, such as
    ``interlayer.probes.mexa``, is the function at run time, while griffe's
    ``interlayer.probes.mexa`` is the submodule: then the function inside it.)"""
    out = []
    for module in reference.API_MODULES:
        for name in importlib.import_module(module).__all__:
            try:
                obj = _griffe_object(package, f"{module}.{name}")
                if obj.is_module and not inspect.ismodule(getattr(importlib.import_module(module), name)):
                    obj = _target(obj[name])
            except (KeyError, griffe.AliasResolutionError) as err:
                pytest.fail(f"{module}.{name} is in __all__ but the docs cannot find it: {err!r}")
            out.append((f"{module}.{name}", obj))
    return out


def _documented(obj) -> bool:
    return obj.docstring is not None and bool(obj.docstring.value.strip())


def _public_members(obj):
    """What the page shows under ``obj``, as griffe objects: for a class its public methods,
    properties and nested classes (its own and those it inherits from interlayer's
    classes); for a module (``interlayer.saes.topafa``) the public functions, classes and
    constants it defines, and theirs in turn."""
    if obj.is_module:
        for name, member in obj.members.items():
            if not name.startswith("_") and not member.is_alias and (member.is_function or member.is_class
                                                                     or member.is_attribute):
                yield name, member
                for sub, inner in _public_members(member) if member.is_class else ():
                    yield f"{name}.{sub}", inner
        return
    for name, member in obj.all_members.items():
        if name.startswith("_"):
            continue
        try:
            member = _target(member)
        except griffe.AliasResolutionError:
            continue  # inherited from outside the package (torch, ...)
        if not member.path.startswith("interlayer."):
            continue
        if member.is_function or member.is_class or (member.is_attribute and "property" in member.labels):
            yield name, member


def test_every_public_name_has_a_docstring(package):
    missing = [f"{shown} -> {_where(obj)}" for shown, obj in _public(package) if not _documented(obj)]
    assert not missing, "public names without a docstring (a constant's is the string right after it):\n" + \
        "\n".join(missing)


def test_every_public_method_and_property_has_a_docstring(package):
    """Of every public class, and of every public module (``interlayer.saes.topafa``)."""
    missing = set()
    for shown, obj in _public(package):
        if obj.is_class or obj.is_module:
            missing |= {f"{shown}.{name} -> {_where(member)}" for name, member in _public_members(obj)
                        if not _documented(member)}
    assert not missing, "public methods and properties without a docstring:\n" + "\n".join(sorted(missing))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_docstrings_parse_in_the_site_style_without_warnings(package):
    """What ``mkdocs build --strict`` would fail on: an ``Args:`` entry that names no
    parameter, a section the style cannot read."""
    objects = {}
    for _, obj in _public(package):
        objects[obj.path] = obj
        if obj.is_class or obj.is_module:
            objects.update({m.path: m for _, m in _public_members(obj)})
            if "__init__" in obj.members:
                objects[obj.members["__init__"].path] = obj.members["__init__"]
    handler = _Collect()
    logger = logging.getLogger("griffe")
    logger.addHandler(handler)
    try:
        for obj in objects.values():
            if obj.docstring is not None:
                obj.docstring.parse(STYLE)
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, "\n".join(handler.messages)


def _blocks(page: str) -> list[str]:
    """The identifiers of a page's ``:::`` blocks."""
    return [line.removeprefix("::: ").strip() for line in page.splitlines() if line.startswith("::: ")]


def _documented_names(module: str, page: str) -> set[str]:
    """The names of ``module`` a page's blocks document: ``::: interlayer.lens.Lens`` documents
    ``Lens``, as would ``::: interlayer.probes.mexa.mexa`` (the function inside its module) ``mexa``."""
    return {ident.removeprefix(module + ".").split(".")[0] for ident in _blocks(page) if ident.startswith(module + ".")}


def test_every_public_name_has_its_block_in_the_api_pages():
    pages = reference.api_pages()
    assert set(pages) == set(reference.API_MODULES)
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [f"{module}.{name}" for module, page in pages.items()
               for name in sorted(set(importlib.import_module(module).__all__) - _documented_names(module, page))]
    assert not missing, f"no ::: block for {missing}"
    unlisted = [module for module in pages if f"reference/api/{module}.md" not in nav]
    assert not unlisted, f"API pages missing from mkdocs.yml's nav: {unlisted}"


def test_every_block_shows_the_object_the_name_is(package):
    """A ``:::`` block renders what griffe finds under its identifier; a module there must
    be a module at run time, not the function that shares its name (an old name assigned to
    a class, ``SAESweepResult = SAESweep``, is shown as the documented constant it is)."""
    wrong = []
    for module, page in reference.api_pages().items():
        for ident in _blocks(page):
            value = getattr(importlib.import_module(module), ident.removeprefix(module + ".").split(".")[0])
            if _griffe_object(package, ident).is_module and not inspect.ismodule(value):
                wrong.append(f"::: {ident} shows the module, but {ident} is a {type(value).__name__}")
    assert not wrong, "\n".join(wrong)


def test_every_command_has_a_help_line():
    """A command's help line (in ``interlayer --help`` and the CLI reference) is the first
    line of its config class's docstring; a dataclass without one would show its generated
    signature ``Config(field: type = ...)`` instead."""
    from interlayer.cli.dispatch import discover

    bad = []
    for name, cmd in sorted(discover().items()):
        doc = (cmd.config.__dict__.get("__doc__") or "").strip()
        first = doc.splitlines()[0] if doc else ""
        if not first or first.startswith(f"{cmd.config.__name__}("):
            bad.append(f"{name} ({cmd.config.__module__}.{cmd.config.__qualname__})")
    assert not bad, f"commands without a help line (give their config class a docstring): {bad}"
