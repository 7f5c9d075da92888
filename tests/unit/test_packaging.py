"""A regular (non-editable) install maps the method folders into one namespace."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["lens", "saes", "probes", "steering"]


def test_wheel_installs_and_imports_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("interlayer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for sub in SUBPACKAGES:
        assert f"interlayer/{sub}/__init__.py" in names
    assert not any(n.split("/")[0] in SUBPACKAGES for n in names)  # no bare top-level lens/, probes/, ...
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import interlayer, interlayer.lens, interlayer.saes, interlayer.probes, interlayer.steering, sys;"
            "print(interlayer.__file__); print(interlayer.lens.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         check=True, capture_output=True, text=True).stdout.splitlines()
    assert all(line.startswith(str(target)) for line in out), out
