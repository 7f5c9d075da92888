"""``interlayer report``: run the sections, keep each finished one next to the output
(a rerun with the same options reuses it), and write the HTML, its numbers as JSON and
the tables as CSV.

Next to ``--out NAME.html`` go ``NAME.json`` (every number), ``NAME.tables/*.csv`` and
``NAME.parts/`` (the finished sections, to resume from). Before any computation
:func:`check_outputs` refuses to replace a file there that is not the report's own (an
``iks --out NAME.json``, say): the report's JSON carries a ``schema`` marker, its folders a
marker file, and a resume file its key.

Shared store passes: one over the packaged sample text serves the logit-lens curves
and saturation (decoded once); one over FLORES serves MEXA and the language-identity
probe. A section that fails is shown as failed, with its error; the others render.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interlayer.progress import tqdm

from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LOGIT_LENS, Lens
from interlayer.errors import InterlayerError, choices
from interlayer.host_memory import release_host_memory
from interlayer.io.journal import KeyedParts
from interlayer.io.files import check_writable, write_json_atomic, write_text_atomic
from interlayer.options import str_list

from .static_figures import check_formats
from .user_data import check_user_data, fingerprint
from .base import Profile, ReportContext, Section, SectionResult, check_profile, settings_of
from .render import numbers_json, render
from .sections_causal import tracing_section
from .sections_layers import latent_section, logit_lens_section, model_card, saturation_section
from .sections_methods import check_sae_dir, iks_section, sae_section, steering_section
from .sections_probes import consistency_section, mexa_section, probes_section

SECTIONS: tuple[Section, ...] = (
    Section("model", "Model card", model_card),
    Section("logit_lens", "Logit lens", logit_lens_section),
    Section("latent", "Latent language", latent_section),
    Section("saturation", "Saturation and exit layers", saturation_section),
    Section("mexa", "MEXA cross-lingual alignment", mexa_section),
    Section("probes", "Linear probe: language identity", probes_section),
    Section("iks", "Knowledge layers (IKS)", iks_section),
    Section("tracing", "Causal tracing", tracing_section),
    Section("consistency", "Internal consistency", consistency_section),
    Section("steering", "Steering", steering_section),
    Section("sae", "Sparse autoencoder", sae_section, needs_sae=True),
)
"""The report's sections in the order they run and appear: each a name (for ``--only``/``--skip``), a title
and the function that computes it.
"""
SECTION_NAMES: tuple[str, ...] = tuple(s.name for s in SECTIONS)
"""The names of ``SECTIONS``, in order: what ``--only`` and ``--skip`` accept."""
REPORT_SCHEMA = "interlayer.report"
"""The ``schema`` field of the report's JSON: how a rerun knows the file is its own."""
FOLDER_MARKER = ".interlayer-report"
"""The file that marks ``NAME.tables/`` and ``NAME.parts/`` as the report's."""
_OLD_REPORT_KEYS = {"model", "profile", "lens", "sections"}  # the JSON of reports written before the marker


def _names(value: str | Sequence[str] | None) -> list[str]:
    return [] if value is None else str_list(value, empty=True)


def select_sections(only: str | Sequence[str] | None = None, skip: str | Sequence[str] | None = None,
                    sae: bool = False) -> list[Section]:
    """The sections to run, in report order: all (the SAE panel only with an SAE), or
    ``only`` these, minus ``skip``. Unknown names list the sections."""
    wanted, unwanted = _names(only), _names(skip)
    for name in wanted + unwanted:
        if name not in SECTION_NAMES:
            raise InterlayerError(f"unknown report section {name!r}; valid sections: {choices(SECTION_NAMES)}")
    if "sae" in wanted and not sae:
        raise InterlayerError("the 'sae' section needs an SAE: give --sae DIR")
    chosen = [s for s in SECTIONS if (s.name in wanted if wanted else (sae or not s.needs_sae)) and s.name not in unwanted]
    if not chosen:
        raise InterlayerError(f"no section left to run; valid sections: {choices(SECTION_NAMES)}")
    return chosen


@dataclass
class ReportFiles:
    """Where a report went."""

    html: Path
    json: Path
    tables: Path
    parts: Path
    results: dict[str, SectionResult]


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """The side files of ``out`` (``<name>.html``): the JSON (``<name>.json``), the CSV
    folder (``<name>.tables``) and the resume folder (``<name>.parts``), next to it."""
    out = Path(out)
    return out.with_suffix(".json"), out.with_name(out.stem + ".tables"), out.with_name(out.stem + ".parts")


def _json_of(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_report_json(path: Path) -> bool:
    data = _json_of(path)
    return isinstance(data, dict) and (data.get("schema") == REPORT_SCHEMA or set(data) == _OLD_REPORT_KEYS)


def _parts(folder: Path) -> KeyedParts:
    """The resume files of the report's sections (``<section>.json``: its key and result)."""
    return KeyedParts(folder, record_field="result")


def check_outputs(out: str | Path) -> None:
    """Refuse, before any computation, to overwrite a file next to ``out`` that an earlier
    run of the report did not write: ``<name>.json`` without the report's ``schema``
    marker, or a file in ``<name>.tables/`` or ``<name>.parts/`` that the report would
    replace while the folder is not marked as the report's (a part must also be a resume
    file). The report's own earlier output passes, so a rerun resumes."""
    json_path, tables_dir, parts_dir = output_paths(out)
    stem = Path(out).stem

    def refuse(path: Path, what: str) -> None:
        raise InterlayerError(f"--out {str(out)!r} would overwrite {str(path)!r}, which {what}; give another --out "
                              f"(the report writes {stem}.json, {stem}.tables/ and {stem}.parts/ next to it) or "
                              "move that file away")

    if json_path.is_dir():
        refuse(json_path, "is a directory")
    if json_path.exists() and not _is_report_json(json_path):
        refuse(json_path, "is not an interlayer report's JSON")
    sections = tuple(f"{name}." for name in SECTION_NAMES)
    for folder, suffix in ((tables_dir, ".csv"), (parts_dir, ".json")):
        if folder.exists() and not folder.is_dir():
            refuse(folder, "is a file, not the report's folder")
        if not folder.is_dir() or (folder / FOLDER_MARKER).is_file() or (folder == tables_dir and _is_report_json(json_path)):
            continue
        for file in sorted(folder.iterdir()):
            ours = file.name.startswith(sections) and file.name.endswith(suffix)
            if ours and not (folder == parts_dir and _parts(parts_dir).is_part(file)):
                refuse(file, f"is not in a folder the report wrote ({FOLDER_MARKER} is missing)")


USER_DATA = ("prompts", "word_pairs", "facts", "steering_dataset", "qa_data", "text")
"""The report's user-data options (:mod:`interlayer.report.user_data`), by keyword."""


def build_report(model: ModelAdapter, out: str | Path = "report.html", *, only: str | Sequence[str] | None = None,
                 skip: str | Sequence[str] | None = None, sae: str | None = None, lens: Lens = LOGIT_LENS,
                 lens_source: str | None = None, profile: str | Profile = "quick", progress: bool = True,
                 static_figures: str | Sequence[str] | None = None, **data: Any) -> ReportFiles:
    """Run the report's sections on ``model`` and write ``out`` (HTML), ``report.json``
    (next to it, named after it), the tables as CSV and the per-section resume files.
    ``data`` holds the user's own data by :data:`USER_DATA` keyword (``prompts``,
    ``word_pairs``, ``facts``: files; ``steering_dataset``, ``qa_data``: names or files;
    ``text``: a file), each checked before any computation. ``static_figures`` (``png``,
    ``svg`` or both) also writes every figure as an image into ``NAME.figures/``.
    A side file that is not the report's own is refused first (:func:`check_outputs`)."""
    out = check_writable(out, suffixes=(".html",))
    check_outputs(out)
    unknown = sorted(set(data) - set(USER_DATA))
    if unknown:
        raise InterlayerError(f"unknown report data {unknown[0]!r}; valid choices: {choices(USER_DATA)}")
    formats = check_formats(static_figures)
    check_user_data(**data)
    prof = check_profile(profile) if isinstance(profile, str) else profile
    sections = select_sections(only, skip, sae is not None)
    if sae is not None:
        check_sae_dir(sae, model.name, model.d_model, model.n_layers)
    json_path, tables_dir, parts_dir = output_paths(out)
    for folder in (parts_dir, tables_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FOLDER_MARKER).touch()
    ctx = ReportContext(model, prof, lens=lens, sae_dir=sae, progress=progress, **data)
    base_key = {"model": model.name, "weights": model.weights_sha256(), "profile": settings_of(prof),
                "lens": lens.name, "lens_source": lens_source, "sae": str(Path(sae).resolve()) if sae else None,
                "version": _version(), **{k: fingerprint(data.get(k)) for k in USER_DATA}}
    results: dict[str, SectionResult] = {}
    parts = _parts(parts_dir)
    bar = tqdm(sections, desc="report", unit="section", disable=not progress)
    for number, section in enumerate(bar):
        ctx.release([s.name for s in sections[number:]])
        release_host_memory(model.device)  # the last section's freed memory back to the OS before the next one
        bar.set_postfix_str(section.name)
        key = hashlib.sha256(json.dumps({**base_key, "section": section.name}, sort_keys=True).encode()).hexdigest()
        cached = _load_part(parts, section.name, key)
        results[section.name] = cached if cached is not None else _run(section, ctx)
        if cached is None:
            parts.save(section.name, key, results[section.name].to_json())
    bar.close()
    _write(out, model, prof, lens.name, sections, results, {k: None if v is None else str(v) for k, v in data.items()})
    if formats:
        from .static_figures import write_static_figures

        write_static_figures(results, out.with_name(out.stem + ".figures"), formats)
    return ReportFiles(out, json_path, tables_dir, parts_dir, results)


def _write(out: Path, model: ModelAdapter, prof: Profile, lens: str, sections: Sequence[Section],
           results: dict[str, SectionResult], data: dict[str, str | None]) -> None:
    """The HTML, the JSON (with the "where things happen" rows and the data used) and the CSVs."""
    from plotly.offline import get_plotlyjs

    from .render import all_panels
    from .summary import where_table

    json_path, tables_dir, _ = output_paths(out)
    title = f"interlayer report: {model.name}"
    header = {"profile": prof.name, "lens": lens, "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
              "sections": len(results), "failed": sum(r.status != "ok" for r in results.values())}
    write_text_atomic(out, render(title, [(s.name, s.title) for s in sections], results, get_plotlyjs(), header,
                                  n_layers=model.n_layers, tables_href=tables_dir.name))
    where = where_table(all_panels(results))
    write_json_atomic(json_path, {"schema": REPORT_SCHEMA, "model": model.name, "n_layers": model.n_layers,
                                  "profile": settings_of(prof), "lens": lens, "data": data,
                                  "where": json.loads(where.to_json(orient="records")),
                                  "sections": numbers_json(results)})
    for name, result in results.items():
        for table, frame in result.tables.items():
            write_text_atomic(tables_dir / f"{name}.{table}.csv", frame.to_csv(index=False))


def _run(section: Section, ctx: ReportContext) -> SectionResult:
    calls = [0]
    handle = ctx.model.model.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    t0 = time.perf_counter()
    try:
        result = section.run(ctx)
    except Exception as err:  # one failed section must not lose the others
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        result = SectionResult(status="failed", error=detail)
    finally:
        handle.remove()
    result.seconds = round(time.perf_counter() - t0, 2)
    result.forward_calls = calls[0]
    return result


def _load_part(parts: KeyedParts, name: str, key: str) -> SectionResult | None:
    """A finished section of an earlier run with the same options (failed ones run again)."""
    payload = parts.load(name, key)
    try:
        if payload is None or payload["status"] != "ok":
            return None
        return SectionResult.from_json(payload)
    except (KeyError, TypeError, ValueError):
        return None  # a damaged part is recomputed


def _version() -> str:
    import interlayer

    return interlayer.__version__


__all__ = ["REPORT_SCHEMA", "ReportFiles", "USER_DATA", "SECTIONS", "SECTION_NAMES", "build_report", "check_outputs", "output_paths",
           "select_sections"]
