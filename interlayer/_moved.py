"""The core's module paths before 0.2 (``interlayer.activations``, ``interlayer.loading``,
...), kept importable for one release: importing one gives the module at its new path
(the same object) with a :class:`DeprecationWarning` naming that path. The public names
(``interlayer.collect``, ``interlayer.load_model``, ...) never moved."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "adapter": "model.adapter", "architectures": "model.architectures", "loading": "model.loading",
    "conversion_cache": "model.conversion_cache", "sites": "model.sites", "info": "model.info",
    "activations": "store.collect", "capture": "store.capture", "inputs": "store.inputs",
    "selection": "store.selection", "shards": "store.shards", "activation_cache": "store.cache",
    "cache_files": "store.cache_files", "distributed_cache": "store.cache_ranks",
    "command_registry": "cli.registry", "config": "cli.config", "commands": "cli.commands",
    "files": "io.files", "json_records": "io.json_records", "dtypes": "io.dtypes",
    "seeding": "io.seeding", "checkpointing": "io.checkpointing",
}
"""Old module (under ``interlayer.``) -> its module now."""


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.rpartition(".")
        if prefix != "interlayer" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = f"interlayer.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module at the new path has run already."""


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
