"""Adaptive radiotherapy: organ groups, synthetic daily MR cases, an organ-aware pipeline and per-organ reports.

The planning CT is registered to each day's MR (or the MR to the CT) so that the treatment plan follows the
anatomy; bones must stay rigid and the target (prostate) incompressible while bladder and bowel deform freely.
"""

from jaxreg.radiotherapy.groups import GROUP_NAMES, OrganGroups, load_groups

__all__ = ["GROUP_NAMES", "OrganGroups", "load_groups"]
