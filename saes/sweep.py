"""Pareto sweeps: a grid of SAEs trained on the same cached activations, compared the
way the field compares them (L0 against explained variance, NMSE and CE loss recovered,
one line per architecture, plus the top-AFA authors' standardised per-element MSE).

The parts: the grid (:mod:`~interlayer.saes.grid`: :class:`GridMember`,
:func:`parse_grid`, :data:`DEFAULT_GRID`), the run (:mod:`~interlayer.saes.run`:
:func:`plan_sweep` and :func:`sweep_saes`, which write ``<out>/<member>/`` (the SAE,
``history.csv`` and ``metrics.json``), ``<out>/pareto.csv`` and ``<out>/pareto.html``)
and the comparison (:mod:`~interlayer.saes.pareto`: :func:`pareto_table`,
:func:`matched_l0`, :func:`pareto_figure`, :class:`SAESweep`). This module gathers them,
with :func:`run_sweep`, ``interlayer sae sweep`` as a function. A finished member is
reused, never retrained or overwritten; a member interrupted mid-training resumes from
its checkpoint; a member directory written for another config is an error, before any
training.
"""

from __future__ import annotations

from .grid import DEFAULT_GRID, FORMS, GridMember, family, parse_grid
from .pareto import (LOWER_IS_BETTER, PANELS, TABLE_COLUMNS, SAESweep, SAESweepResult, SweepResult, matched_l0,
                     pareto_figure, pareto_table)
from .run import PlannedMember, SweepPlan, SweepSpec, member_identity, member_state, plan_sweep, sweep_saes, table_row
from .runs import run_sweep

__all__ = ["GridMember", "DEFAULT_GRID", "TABLE_COLUMNS", "parse_grid", "pareto_table", "pareto_figure", "matched_l0",
           "member_identity", "member_state", "SAESweep", "SAESweepResult", "run_sweep", "SweepSpec", "SweepPlan",
           "PlannedMember", "plan_sweep", "sweep_saes", "family", "FORMS", "LOWER_IS_BETTER", "PANELS", "table_row",
           "SweepResult"]
