"""``primage stats compare``: two-group statistics of every value column of a table.

For each value: Mann-Whitney U (two-sided p, rank-biserial effect size), ROC AUC with a
stratified bootstrap 95 % CI, the Youden-optimal cut-off with sensitivity and specificity,
and Benjamini-Hochberg adjusted p-values across the values. Writes one CSV row per value.
"""

from __future__ import annotations

import argparse
import sys

from primage.errors import PrimageInputError


def register(subparsers) -> None:
    """Add the ``stats`` command and its ``compare`` action."""
    parser = subparsers.add_parser(
        "stats",
        help="statistics of biomarker tables (compare two groups)",
        description="Statistics for imaging biomarkers, e.g. on the pipeline's features.csv.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    actions.required = True
    compare = actions.add_parser(
        "compare",
        allow_abbrev=False,
        help="compare two groups for each value column",
        description="Mann-Whitney U test, ROC AUC with a bootstrap 95 %% CI, Youden cut-off "
        "(sensitivity, specificity) and Benjamini-Hochberg adjusted p-values for each value "
        "column between the two groups of --group. Rows with an empty group or value are "
        "left out of that comparison.",
    )
    compare.add_argument("--table", required=True, help="CSV table (e.g. OUT/features.csv)")
    compare.add_argument("--group", required=True, help="column holding the group labels")
    compare.add_argument(
        "--value",
        nargs="+",
        action="extend",
        help="value column(s) to compare (default: every numeric column)",
    )
    compare.add_argument("--output", required=True, help="CSV file for the results")
    compare.add_argument(
        "--positive", help="label of the positive group (default: the second label in sorted order)"
    )
    compare.add_argument(
        "--groups", nargs=2, metavar=("A", "B"), help="the two labels to compare (when more exist)"
    )
    compare.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap resamples of the AUC (default 2000)"
    )
    compare.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    compare.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    """Handler of ``primage stats compare``."""
    from primage.io import check_outputs_not_inputs
    from primage.radiomics.tables import read_csv, write_csv
    from primage.stats.compare import RESULT_COLUMNS, compare_table

    check_outputs_not_inputs([args.output], [args.table])
    if args.bootstrap < 100:
        raise PrimageInputError(f"--bootstrap must be at least 100, got {args.bootstrap}")
    columns, rows = read_csv(args.table, role="table")
    results = compare_table(
        columns,
        rows,
        args.group,
        values=args.value,
        positive=args.positive,
        groups=args.groups,
        resamples=args.bootstrap,
        seed=args.seed,
    )
    write_csv(results, args.output, RESULT_COLUMNS)
    best = sorted(
        (r for r in results if r.get("p_adjusted") is not None), key=lambda r: r["p_adjusted"]
    )
    if best:
        top = best[0]
        sys.stderr.write(
            f"primage: {len(results)} value(s) compared ({top['group_positive']} vs "
            f"{top['group_negative']}); smallest adjusted p {top['p_adjusted']:.3g} for "
            f"{top['value']} (AUC {top['auc']:.3f}); written to {args.output}\n"
        )
    return 0
