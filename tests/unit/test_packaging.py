"""A regular (non-editable) install maps the method folders into one namespace."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["lens", "saes", "probes", "steering"]


def test_wheel_installs_and_imports_every_subpackage(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "wheel"), str(ROOT)], check=True, capture_output=True, text=True)
    # No setuptools deprecation warnings (license as a table, data folders missing from `packages`).
    assert "BuildBackendWarning" not in built.stdout + built.stderr, built.stderr[-2000:]
    assert "Warning" not in built.stderr, built.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("interlayer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    # the data the defaults need ships in the wheel, with its licences
    for data in ("interlayer/data/sample_text.txt", "interlayer/data/SAMPLE_TEXT_SOURCE.txt",
                 "interlayer/lens/data/words.json", "interlayer/lens/data/cloze.json",
                 "interlayer/probes/data/flores200/fra_Latn.devtest", "interlayer/probes/data/flores200/LICENSE-CC-BY-SA.txt",
                 "interlayer/probes/data/reasoning/coinflip.jsonl", "interlayer/probes/data/reasoning/SOURCE.txt",
                 "interlayer/steering/data/caa-refusal.test.json", "interlayer/steering/data/persona-openness.jsonl",
                 "interlayer/steering/data/power_seeking.jsonl", "interlayer/steering/data/SOURCE.txt"):
        assert data in names, data
    for sub in SUBPACKAGES:
        assert f"interlayer/{sub}/__init__.py" in names
    assert not any(n.split("/")[0] in SUBPACKAGES for n in names)  # no bare top-level lens/, probes/, ...
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import interlayer, interlayer.lens, interlayer.saes, interlayer.probes, interlayer.steering, sys;"
            "from interlayer.probes.consistency import load_examples; assert len(load_examples('coinflip', 3)) == 3;"
            "from interlayer.steering import load_pairs; assert len(load_pairs('caa:refusal', 'test')) == 50;"
            "print(interlayer.__file__); print(interlayer.lens.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         check=True, capture_output=True, text=True).stdout.splitlines()
    assert all(line.startswith(str(target)) for line in out), out
