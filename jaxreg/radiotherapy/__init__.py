"""Adaptive radiotherapy: organ groups, synthetic daily MR cases, an organ-aware pipeline and per-organ reports.

The planning CT is registered to each day's MR (or the MR to the CT) so that the treatment plan follows the
anatomy; bones must stay rigid and the target (prostate) incompressible while bladder and bowel deform freely.
"""

from jaxreg.radiotherapy.groups import GROUP_NAMES, OrganGroups, load_groups
from jaxreg.radiotherapy.pipeline import (
    CT_WINDOW,
    ORGAN_DEFORMABLE_LEVELS,
    ORGAN_LINEAR_LEVELS,
    ct_window,
    organ_aware,
    organ_maps,
)
from jaxreg.radiotherapy.report import ORGAN_COLUMNS, format_organ_table, organ_report, rigid_fit_residual
from jaxreg.radiotherapy.synthesis import T2_TISSUES, DailyCase, save_case, synthesize_daily_case

__all__ = [
    "CT_WINDOW",
    "DailyCase",
    "GROUP_NAMES",
    "ORGAN_COLUMNS",
    "ORGAN_DEFORMABLE_LEVELS",
    "ORGAN_LINEAR_LEVELS",
    "OrganGroups",
    "ct_window",
    "format_organ_table",
    "load_groups",
    "organ_aware",
    "organ_maps",
    "organ_report",
    "rigid_fit_residual",
    "save_case",
    "synthesize_daily_case",
    "T2_TISSUES",
]
