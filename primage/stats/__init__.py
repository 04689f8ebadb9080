"""Statistics for imaging biomarkers: two-group comparison of every feature of a table.

:func:`~primage.stats.compare.compare_groups` gives, per value column, the Mann-Whitney U
test (p, rank-biserial effect size), the ROC AUC with a bootstrap 95 % confidence interval,
the Youden-optimal cut-off with its sensitivity and specificity, and Benjamini-Hochberg
adjusted p-values across the columns (``primage stats compare``).
"""

from primage.stats.compare import (
    benjamini_hochberg,
    bootstrap_auc_ci,
    compare_groups,
    compare_table,
    roc_auc,
    youden_cutoff,
)

__all__ = [
    "benjamini_hochberg",
    "bootstrap_auc_ci",
    "compare_groups",
    "compare_table",
    "roc_auc",
    "youden_cutoff",
]
