"""docs/applicability.md is what benchmarks/applicability_map.py generates now (its sites
measured on the tiny configs), and the generator refuses an entry whose test file is
missing or does not use the families and peer it claims."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("applicability_map", ROOT / "benchmarks" / "applicability_map.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its annotations through sys.modules
    spec.loader.exec_module(module)
    return module


generator = _generator()


def test_the_committed_page_is_up_to_date(tmp_path, monkeypatch):
    page = generator.render()  # measured again here, into memory
    assert page == (ROOT / "docs" / "applicability.md").read_text(), (
        "docs/applicability.md is out of date: run python benchmarks/applicability_map.py")
    monkeypatch.setattr(generator, "render", lambda: page)
    out = tmp_path / "applicability.md"
    assert generator.main(["--out", str(out)]) == 0 and out.read_text() == page
    assert generator.main(["--out", str(out), "--check"]) == 0
    out.write_text(page.replace("| yes |", "| FAILS |", 1))
    assert generator.main(["--out", str(out), "--check"]) == 1


def test_every_supported_family_has_a_measured_row_with_every_site_verified():
    from interlayer.model.architectures import supported_model_types

    page = (ROOT / "docs" / "applicability.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    for model_type in supported_model_types():
        mine = [row for row in rows if row.startswith(f"| `{model_type}` | `")]
        assert mine, model_type
        assert all("FAILS" not in row and "unverified" not in row and "post_norm" in row for row in mine), mine
    assert "FAILS" not in page


def test_entries_are_checked_against_their_test_files():
    entry = generator.VERIFIED[0]
    generator.check_entries((entry,))
    with pytest.raises(FileNotFoundError, match="tests/unit/no_such_test.py"):
        generator.check_entries((dataclasses.replace(entry, test="tests/unit/no_such_test.py"),))
    with pytest.raises(ValueError, match="does not use the family 'gpt2'"):
        generator.check_entries((dataclasses.replace(entry, test="tests/unit/probes/test_mexa.py",
                                                     families=("gpt2",)),))
    with pytest.raises(ValueError, match="does not contain 'repeng'"):
        generator.check_entries((dataclasses.replace(entry, markers=("repeng",)),))
    with pytest.raises(ValueError, match="unknown family"):
        generator.check_entries((dataclasses.replace(entry, families=("not-a-family",)),))
