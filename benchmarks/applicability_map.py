"""Generate docs/applicability.md: what is verified on which architecture family.

    python benchmarks/applicability_map.py            # writes docs/applicability.md
    python benchmarks/applicability_map.py --check    # exit status 1 where the page is out of date
    python benchmarks/applicability_map.py --out FILE

The sites table is measured, not typed: for the tiny random config of every family in
``tests/tiny_models.py`` each hook site is read through interlayer and compared with a
plain Hugging Face forward hook on the module ``tests/unit/model/test_families.py`` names
for it (the test's own oracle), and :func:`interlayer.model.site_identity.check_site_identity`
runs as :func:`interlayer.load_model` runs it. The methods table is data (:data:`VERIFIED`):
each entry names the test file that verifies it, and generation fails where the file is
missing or does not mention the families and peer the entry claims.
``tests/unit/test_applicability_map.py`` regenerates the page and compares it with the
committed one. The page holds no timings or machine details, so it is the same everywhere.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: interlayer and tests/ from this checkout
    sys.path.insert(0, str(ROOT))

PAGE = ROOT / "docs" / "applicability.md"
KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post", "ln_final")
ALL = "every tiny family"
"""The families of a test that takes the ``tiny_hf`` fixture (every config of tests/tiny_models.py)."""
EMBEDDED_FAMILY = {"gemma-3-270m": "gemma3_text", "smollm2-135m-instruct": "llama"}
"""The ``model_type`` of each embedded model a test loads."""
EMBEDDED_FIXTURE = {"gemma-3-270m": "gemma"}
"""The conftest fixture that loads an embedded model, where a test takes it that way."""


@dataclass(frozen=True)
class Verified:
    """One verified method: what is compared, against whom, on which families, where."""

    method: str
    check: str
    peer: str
    families: tuple[str, ...]
    """Tiny config names, embedded aliases, :data:`ALL`; empty for a model-free check."""
    test: str
    """The test file, from the repository root."""
    markers: tuple[str, ...] = ()
    """Strings the test file contains where it uses the peer (its import)."""


VERIFIED: tuple[Verified, ...] = (
    Verified("Hook sites", "every site read and written", "plain HF forward hooks", (ALL,),
             "tests/unit/model/test_families.py"),
    Verified("Hook sites", "resid_pre/resid_post, the sublayer sum", "HF `hidden_states`", (ALL,),
             "tests/unit/model/test_adapter.py", ("output_hidden_states=True",)),
    Verified("Site identity at load", "resid_post.l = hidden_states[l+1]", "HF `hidden_states`", (ALL,),
             "tests/unit/model/test_site_identity.py"),
    Verified("Site names", "values at TransformerBridge hook names", "TransformerLens Bridge", ("llama", "gemma3"),
             "tests/unit/test_naming.py", ("TransformerBridge",)),
    Verified("Site names", "sparsify hookpoints", "sparsify's module naming", ("llama", "gemma3", "gpt2"),
             "tests/unit/test_naming.py", ("hookpoint",)),
    Verified("Loading objects", "shared modules, same sites", "nnsight, TransformerLens Bridge",
             ("llama", "gemma3", "gpt2", "qwen2"), "tests/unit/model/test_loading.py",
             ("nnsight", "TransformerBridge")),
    Verified("Activation store", "token rows of every site", "per-sequence passes, HF hidden states", (ALL,),
             "tests/unit/store/test_collect.py"),
    Verified("Activation store", "edits and variants", "plain HF forward hooks", (ALL,),
             "tests/unit/store/test_capture.py"),
    Verified("Early stop", "truncated pass bit for bit", "a full pass", (ALL,), "tests/unit/model/test_body.py"),
    Verified("Decoding", "log-probs in any chunking", "direct unembedding", ("gemma2", "llama", "gpt2"),
             "tests/unit/test_decoding.py"),
    Verified("Logit lens", "decoded layers, model logits", "direct decoding", ("gemma2",),
             "tests/unit/lens/test_lens_methods.py"),
    Verified("Logit and tuned lens", "lenses on the real model", "direct computation", ("gemma-3-270m",),
             "tests/integration/test_lens_gemma.py"),
    Verified("Tuned lens", "import/export decode as `TunedLens.forward`", "tuned-lens", ("llama",
             "smollm2-135m-instruct"), "tests/unit/lens/test_tuned_lens_io.py", ("from tuned_lens",)),
    Verified("Tuned lens", "identity at init, training, resume", "by hand", ("llama", "gemma2"),
             "tests/unit/lens/test_tuned_lens.py"),
    Verified("Jacobian lens", "the fitted Jacobian", "TransformerLens 4 `JacobianLens`, autograd", ("llama",),
             "tests/unit/lens/test_jacobian_lens.py", ("transformer_lens.tools.analysis",)),
    Verified("Knowledge layers", "JSD, IKS, LFD, DoLa", "plain forward hooks, no KV cache", ("llama",),
             "tests/unit/lens/test_knowledge.py"),
    Verified("MEXA", "embeddings and scores", "per-sentence reference (cisnlp/Mexa)", ("gemma3", "llama"),
             "tests/unit/probes/test_mexa.py"),
    Verified("MEXA", "weighted MEXA on FLORES", "per-sentence reference (cisnlp/Mexa)", ("gemma-3-270m",),
             "tests/integration/test_mexa_gemma.py"),
    Verified("Internal consistency", "calibration and vote", "by hand", ("llama",),
             "tests/unit/probes/test_consistency.py"),
    Verified("Linear probes", "separable data learnt, control at chance", "shuffled control", ("llama",),
             "tests/unit/probes/test_linear.py"),
    Verified("SAE interchange", "export/import, encode/decode", "SAELens 6", (), "tests/unit/saes/test_saelens.py",
             ("sae_lens",)),
    Verified("SAE formats", "Gemma Scope 1/2, Llama Scope", "NumPy, SAELens's loaders", (),
             "tests/unit/saes/test_hub_formats.py", ("sae_lens.loading.pretrained_sae_loaders",)),
    Verified("SAE formats", "SAEs and transcoders read/written, a trained run", "sparsify", ("llama",),
             "tests/unit/saes/test_sparsify_format.py", ("from sparsify import",)),
    Verified("SAE formats", "every `dict_class`", "NumPy, dictionary_learning", (),
             "tests/unit/saes/test_dictionary_learning_format.py", ("dictionary_learning.utils",)),
    Verified("SAE training step", "encoder values and gradients", "sparsify `FusedEncoder`", (),
             "tests/unit/saes/test_fused_vs_sparsify.py", ("fused_encoder",)),
    Verified("Transcoder evaluation", "spliced CE/KL, reconstruction", "plain HF hooks", ("llama",),
             "tests/unit/saes/test_transcoder.py"),
    Verified("Steering injection", "forward, generation, padding", "plain HF hooks, nnsight, TL Bridge", ("llama",),
             "tests/unit/steering/test_inject.py", ("nnsight", "TransformerBridge")),
    Verified("Steering sweeps", "sweeps; GGUF control vectors", "per-prompt loops; `gguf`", ("llama",),
             "tests/unit/steering/test_evaluation.py", ("gguf",)),
    Verified("Steering vectors", "mean-diff, PCA, logistic", "hidden states by hand, scikit-learn", ("qwen2",),
             "tests/unit/steering/test_vectors.py", ("sklearn",)),
    Verified("Control vectors", "applied where interlayer steers", "llama.cpp", ("smollm2-135m-instruct",),
             "tests/peers/test_llamacpp_control_vector.py", ("llamacpp_apply",)),
    Verified("Control vectors", "read and written, one layer numbering", "repeng 0.4", (),
             "tests/peers/test_repeng_control_vector.py", ("repeng",)),
)
"""Every verified method, with the test file that verifies it."""


def _family_of(name: str) -> str:
    """The ``model_type`` of a tiny config name or an embedded alias."""
    if name in EMBEDDED_FAMILY:
        return EMBEDDED_FAMILY[name]
    from tests.tiny_models import make_tiny

    return str(make_tiny(name).config.model_type)


def check_entries(entries: tuple[Verified, ...] = VERIFIED) -> None:
    """Check that each entry's test file exists and names its families and peer markers.

    Raises:
        FileNotFoundError: an entry's test file is missing (named, with the entry).
        ValueError: the file does not mention a family or marker the entry claims.
    """
    from tests.tiny_models import TINY_ARCHITECTURES

    for entry in entries:
        path = ROOT / entry.test
        if not path.is_file():
            raise FileNotFoundError(f"{entry.method}: test file {entry.test} does not exist")
        text = path.read_text()
        for name in entry.families:
            if name == ALL:
                found = "tiny_hf" in text or "TINY_ARCHITECTURES" in text
            elif name in TINY_ARCHITECTURES:
                found = f'"{name}"' in text or f"'{name}'" in text
            elif name in EMBEDDED_FAMILY:
                fixture = EMBEDDED_FIXTURE.get(name)
                found = name in text or (fixture is not None
                                         and re.search(rf"def test_\w+\([^)]*\b{fixture}\b", text) is not None)
            else:
                raise ValueError(f"{entry.method}: unknown family {name!r} (a tiny config, an embedded alias or ALL)")
            if not found:
                raise ValueError(f"{entry.method}: {entry.test} does not use the family {name!r}")
        for marker in entry.markers:
            if marker not in text:
                raise ValueError(f"{entry.method}: {entry.test} does not contain {marker!r} (its peer)")


def measure_sites(name: str) -> dict[str, object]:
    """The site checks on tiny config ``name``: per site kind ``"yes"``/``"FAILS"``/``"n/a"``,
    the load-time identity's final hidden state, and what the family's blocks hold."""
    import torch

    import interlayer
    from interlayer.model.site_identity import SiteIdentityError, check_site_identity
    from tests.tiny_models import make_tiny
    from tests.unit.model.test_families import HF_MODULES, _hf_sites

    hf = make_tiny(name)
    model = interlayer.ModelAdapter(hf)
    try:
        last = check_site_identity(model).last_hidden_state
    except SiteIdentityError as err:
        last = f"FAILS ({err})"
    ids = torch.tensor([[1, 7, 12, 30, 44, 59]])
    want = _hf_sites(hf, HF_MODULES[name], ids)
    _, got = model.run(ids, read=[*model.sites(), "ln_final"])
    status = {}
    for kind in KINDS:
        names = [site for site in got if site.split(".")[0] == kind]
        if not names:
            status[kind] = "n/a"
            continue
        same = all(site in want and torch.allclose(got[site], want[site], atol=1e-6, rtol=0) for site in names)
        status[kind] = "yes" if same else "FAILS"
    mlps = sorted({type(block.mlp).__name__ for block in model.blocks})
    notes = []
    if any("Moe" in mlp for mlp in mlps):
        notes.append("mixture of experts: mlp_out is the output of " + " or ".join(f"`{m}`" for m in mlps))
    if model.parallel_residual:
        notes.append("parallel residual (no resid_mid)")
    if model.spec.attn_out != "self_attn" and "norm" in model.spec.attn_out:
        notes.append("sublayer outputs after their post-norms")
    if model.logit_softcap is not None:
        notes.append("final-logit soft-cap")
    return {"name": name, "model_type": model.model_type, "cls": type(hf).__name__, "sites": status,
            "last": last, "notes": "; ".join(notes)}


def _families_line(entry: Verified) -> str:
    if not entry.families:
        return "model-free (weights and files)"
    out = []
    for name in entry.families:
        if name == ALL:
            out.append(ALL)
        elif name in EMBEDDED_FAMILY:
            out.append(f"{name} (`{EMBEDDED_FAMILY[name]}`)")
        else:
            out.append(f"`{_family_of(name)}`")
    return ", ".join(out)


def _methods_on(model_type: str, tiny_of_type: set[str]) -> list[str]:
    """The methods verified on a ``model_type``: tiny tests of its configs, embedded tests of it."""
    methods = []
    for entry in VERIFIED:
        if any(name == ALL or name in tiny_of_type or EMBEDDED_FAMILY.get(name) == model_type
               for name in entry.families):
            if entry.method not in methods:
                methods.append(entry.method)
    return methods


def render() -> str:
    """The page: supported families with measured sites, then the verified methods.

    Raises:
        FileNotFoundError: a test file named in :data:`VERIFIED` is missing.
        ValueError: a test file does not use what its entry claims.
    """
    from interlayer.model.architectures import ARCHITECTURES
    from tests.tiny_models import TINY_ARCHITECTURES

    check_entries()
    rows = [measure_sites(name) for name in sorted(TINY_ARCHITECTURES)]
    by_type: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_type.setdefault(str(row["model_type"]), []).append(row)
    lines = [
        "# Applicability", "",
        "What interlayer has verified on which architecture family, and against what. Generated by "
        "`python benchmarks/applicability_map.py` (do not edit by hand); "
        "`tests/unit/test_applicability_map.py` fails when this page is out of date.", "",
        "## Supported families", "",
        f"Every supported `config.model_type` ({len(ARCHITECTURES)}; their module paths are in "
        "[Supported architectures](reference/architectures.md)). The site columns are measured on each "
        "family's tiny random config (`tests/tiny_models.py`): **yes** means the site, read through interlayer at "
        "every layer, equals a plain Hugging Face forward hook on the module that "
        "`tests/unit/model/test_families.py` names for it (to 1e-6), and the final hidden state column is what "
        "the load-time site check (`check_site_identity`, run by `load_model`) found.", "",
        "| model_type | class | tiny config | " + " | ".join(KINDS) + " | final hidden state | notes |",
        "| --- | --- | --- | " + " | ".join("---" for _ in KINDS) + " | --- | --- |",
    ]
    for model_type in sorted(ARCHITECTURES):
        for row in by_type.get(model_type, []):
            cells = " | ".join(str(row["sites"][kind]) for kind in KINDS)  # type: ignore[index]
            lines.append(f"| `{model_type}` | `{row['cls']}` | `{row['name']}` | {cells} | {row['last']} | "
                         f"{row['notes']} |")
        if model_type not in by_type:
            lines.append(f"| `{model_type}` | | none | " + " | ".join("unverified" for _ in KINDS) + " | | |")
    lines += ["", "## Methods verified", "",
              "Each method against its peer or oracle, on the families its test uses, and the test file that "
              "verifies it (the generator checks that each file exists and uses those families and that peer).", "",
              "| method | what is compared | against | on | test |", "| --- | --- | --- | --- | --- |"]
    for entry in VERIFIED:
        lines.append(f"| {entry.method} | {entry.check} | {entry.peer} | {_families_line(entry)} | `{entry.test}` |")
    lines += ["", "## Methods by family", "",
              f"Methods whose tests run on each family (\"{ALL}\" tests included; model-free checks hold for any "
              "family and are not repeated here).", "", "| model_type | methods verified on it |", "| --- | --- |"]
    for model_type in sorted(ARCHITECTURES):
        tiny = {str(row["name"]) for row in by_type.get(model_type, [])}
        lines.append(f"| `{model_type}` | {', '.join(_methods_on(model_type, tiny))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the page, or with ``--check`` compare it with the file; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to write or check (docs/applicability.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 where the page is out of date")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != page:
            print(f"{args.out} is out of date; run python benchmarks/applicability_map.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
