"""``interlayer report``."""

from __future__ import annotations

from interlayer.cli.registry import command, say, show
from interlayer.io.files import check_writable

from .config import CompareConfig, ReportConfig


@command("report", ReportConfig)
def run_report(cfg: ReportConfig) -> int:
    from .build import build_report, check_outputs, select_sections
    from .sections_methods import check_sae_dir

    check_writable(cfg.out, suffixes=(".html",))  # before any computation
    check_outputs(cfg.out)  # NAME.json, NAME.tables/, NAME.parts/: never a file the report did not write
    select_sections(cfg.only, cfg.skip, cfg.sae is not None)
    if cfg.sae is not None:
        check_sae_dir(cfg.sae)
    from .static_figures import check_formats
    from .user_data import check_user_data

    check_formats(cfg.static_figures)
    check_user_data(**cfg.user_data())  # a bad line is one error naming the file and the line, before the model loads
    cfg.check_lens()
    model = cfg.load()
    kwargs = {"lens": cfg.build(model), "lens_source": cfg.tuned_lens} if cfg.tuned_lens else {}
    files = build_report(model, cfg.out, only=cfg.only, skip=cfg.skip, sae=cfg.sae, profile=cfg.profile,
                         progress=not cfg.no_progress, static_figures=cfg.static_figures, **cfg.user_data(), **kwargs)
    failed = [n for n, r in files.results.items() if r.status != "ok"]
    rows = [{"section": name, "status": r.status, "seconds": r.seconds, "forward_calls": r.forward_calls}
            for name, r in files.results.items()]
    show("\n".join(f"{r['section']:<12} {r['status']:<7} {r['seconds']:7.1f} s  {r['forward_calls']:6d} forward calls"
                   for r in rows), {"html": str(files.html), "json": str(files.json), "sections": rows})
    say(f"wrote {files.html} ({files.json.name}, tables in {files.tables.name}/)")
    if failed:
        say(f"failed sections: {', '.join(failed)} (see the report)")
        return 3  # finished, with failed parts
    return 0


@command("report-compare", CompareConfig)
def run_compare(cfg: CompareConfig) -> int:
    from .compare import write_comparison

    out = write_comparison(cfg.reports or [], cfg.out)
    say(f"wrote {out} (and {out.with_suffix('.json').name})")
    return 0
