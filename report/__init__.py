"""interlayer.report: one self-contained, layer-wise plotly report of a model, composed
from every method (``interlayer report``).

:func:`build_report` runs the sections (:data:`SECTIONS`), sharing store passes where
they read the same inputs, and writes the HTML, ``report.json`` and CSV tables.
"""

from .base import PROFILES, Profile, ReportContext, SectionResult
from .build import SECTION_NAMES, SECTIONS, ReportFiles, build_report, select_sections
from .config import ReportConfig

__all__ = ["PROFILES", "Profile", "ReportConfig", "ReportContext", "ReportFiles", "SECTIONS", "SECTION_NAMES",
           "SectionResult", "build_report", "select_sections"]
