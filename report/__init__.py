"""interlayer.report: one self-contained, layer-wise plotly report of a model, composed
from every method (``interlayer report``), and two or more reports side by side
(``interlayer report compare``).

:func:`build_report` runs the sections (:data:`SECTIONS`), sharing store passes where
they read the same inputs, and writes the HTML, ``report.json`` and CSV tables. Each
section contributes :class:`Panel` s to the cross-layer summary; :func:`write_comparison`
draws several reports' panels together.
"""

from .base import PROFILES, Profile, ReportContext, SectionResult
from .build import SECTION_NAMES, SECTIONS, USER_DATA, ReportFiles, build_report, select_sections
from .compare import compare, read_report, write_comparison
from .config import CompareConfig, ReportConfig
from .summary import Comparison, Panel, panels_figure, where_table

__all__ = ["Comparison", "CompareConfig", "PROFILES", "Panel", "Profile", "ReportConfig", "ReportContext", "ReportFiles",
           "SECTIONS", "SECTION_NAMES", "SectionResult", "USER_DATA", "build_report", "compare", "panels_figure",
           "read_report", "select_sections", "where_table", "write_comparison"]
