"""interlayer._moved: the core's module paths before the split still import, for one
release, as the same module objects, with a DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from interlayer._moved import MOVED


def test_every_old_module_path_warns_in_a_fresh_process():
    code = ("import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
            "import interlayer\n"
            f"for old in {sorted(MOVED)!r}:\n"
            "    try:\n        importlib.import_module('interlayer.' + old)\n"
            "    except DeprecationWarning as w:\n        print(w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for old, new in MOVED.items():
        assert f"interlayer.{old} moved to interlayer.{new};" in out, old


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_new_module(old):
    new = importlib.import_module(f"interlayer.{MOVED[old]}")
    sys.modules.pop(f"interlayer.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"interlayer.{old} moved to interlayer.{MOVED[old]}"):
        old_module = importlib.import_module(f"interlayer.{old}")
    assert old_module is new


def test_the_public_names_did_not_move():
    import interlayer
    from interlayer.store.collect import collect
    from interlayer.model.loading import load_model

    assert interlayer.collect is collect and interlayer.load_model is load_model
    assert all(hasattr(interlayer, name) for name in interlayer.__all__)
