"""``primage radiomics``: pyradiomics features, their robustness (ICC) and ComBat harmonisation.

``extract`` measures every (image, label) pair of a label map and writes one CSV row per
pair (``image``, ``label``, pyradiomics' feature names, ``error``); pairs run in parallel
worker processes. ``robustness`` computes each feature's ICC(2,1) over cases with several
observers' masks or tool-made perturbations. ``harmonize`` applies ComBat across a batch
column of a cohort feature table.

Exit 0 when something was computed (failed rows carry their ``error`` and a warning is
printed), 2 on bad input or when nothing could be computed (no output is written then).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from primage.errors import PrimageInputError
from primage.io import check_outputs_not_inputs, image_stem
from primage.progress import ConsoleProgress


def register(subparsers) -> None:
    """Add the ``radiomics`` command and its actions."""
    parser = subparsers.add_parser(
        "radiomics",
        help="radiomic features (pyradiomics), feature robustness (ICC), ComBat harmonisation",
        description="pyradiomics features of images x regions, their robustness (ICC) and "
        "ComBat harmonisation across sites.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    actions.required = True

    extract = actions.add_parser(
        "extract",
        help="features of every (image, label) pair into a CSV table",
        description="pyradiomics features of every (image, label) pair, one CSV row each. "
        "Labels default to every non-zero label of the mask; a mask on another grid is "
        "resampled to each image's grid with nearest-neighbour interpolation.",
    )
    extract.add_argument(
        "--image",
        action="append",
        required=True,
        metavar="[NAME=]IMG",
        help="image (3D, any SimpleITK format); repeat for several. The name (default: the "
        "file name without its ending) fills the `image` column and picks per-modality "
        "settings of the primage/full presets (e.g. CT=ct.nii.gz)",
    )
    extract.add_argument("--mask", required=True, help="label map (integer-valued)")
    extract.add_argument(
        "--label", action="append", type=int, metavar="N", help="label to measure (repeatable)"
    )
    _add_parameter_options(extract)
    extract.add_argument(
        "--modality",
        action="append",
        metavar="NAME=MODALITY",
        help="per-modality settings for image NAME (ct, adc, mibg) instead of guessing from "
        "the name",
    )
    extract.add_argument("--output", "-o", required=True, help="features CSV")
    extract.add_argument(
        "--diagnostics",
        choices=("file", "columns", "none"),
        default="file",
        help="pyradiomics and primage diagnostics (versions, settings hash, voxel counts, "
        "spacing): a side table next to the output (default, <output>.diagnostics.csv), "
        "extra columns of the output, or none",
    )
    _add_run_options(extract)
    extract.set_defaults(handler=run_extract)

    robustness = actions.add_parser(
        "robustness",
        help="ICC(2,1) of every feature over cases x repeated segmentations",
        description="ICC(2,1) (two-way random, absolute agreement, single rater) with its "
        "95%% confidence interval for every feature, over cases with two or more observers' "
        "masks, or one mask plus perturbations. class: excellent (ICC >= 0.90), good "
        "(>= 0.75) or poor.",
    )
    robustness.add_argument(
        "--cases",
        required=True,
        help="CSV with a header and columns case,image,mask: one row per (case, observer "
        "mask), or one row per case with --perturb; relative paths are relative to this file",
    )
    robustness.add_argument(
        "--perturb",
        metavar="KINDS",
        help="comma-separated perturbations as repetitions: erode, dilate (one voxel), "
        "translate (one voxel in-plane), noise (SD 10%% of the tumour's)",
    )
    _add_parameter_options(robustness)
    robustness.add_argument("--output", "-o", required=True, help="ICC CSV")
    robustness.add_argument(
        "--features-output", help="also write the features of every (case, repetition) here"
    )
    _add_run_options(robustness)
    robustness.set_defaults(handler=run_robustness)

    harmonize = actions.add_parser(
        "harmonize",
        aliases=["harmonise"],
        help="ComBat harmonisation of a cohort feature table across batches",
        description="ComBat (neuroCombat, empirical Bayes) across the batch column "
        "(site / scanner), keeping the effects of the covariates (numeric: continuous, "
        "otherwise categorical). Every numeric column other than the batch, covariates, "
        "identifiers and diagnostics is harmonised.",
    )
    harmonize.add_argument("--features", required=True, help="cohort features CSV")
    harmonize.add_argument("--batch", required=True, help="batch column (site / scanner)")
    harmonize.add_argument(
        "--covariate", action="append", default=[], help="biological covariate to keep"
    )
    harmonize.add_argument(
        "--no-empirical-bayes",
        action="store_true",
        help="location/scale adjustment per feature without pooling (plain L/S)",
    )
    harmonize.add_argument("--output", "-o", required=True, help="harmonised CSV")
    harmonize.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")
    harmonize.set_defaults(handler=run_harmonize)


def _add_parameter_options(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--preset",
        help="built-in pyradiomics settings: primage (default; the 107 original features), "
        "ibsi or full (original + wavelet + LoG 1, 2, 3 mm)",
    )
    group.add_argument("--params", help="pyradiomics parameter file (YAML or JSON)")


def _add_run_options(parser) -> None:
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: one per CPU; 1: no workers)"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def _parameters(args):
    from primage.radiomics.params import load_params

    return load_params(args.preset if args.params is None else None, args.params)


def _named_images(values: list[str]) -> dict[str, str]:
    images: dict[str, str] = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name or "/" in name or "\\" in name or Path(value).exists():
            name, path = image_stem(value), value
        name = name.strip()
        if name in images:
            raise PrimageInputError(f"two images are called {name!r}; name them (--image NAME=IMG)")
        images[name] = path
    return images


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        name, separator, text = value.partition("=")
        if not separator or not name.strip() or not text.strip():
            raise PrimageInputError(f"{option} expects NAME=VALUE, got {value!r}")
        pairs[name.strip()] = text.strip()
    return pairs


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise PrimageInputError("--workers must be at least 1")


def diagnostics_path(output: str | Path) -> Path:
    """``features.csv`` -> ``features.diagnostics.csv`` (same folder)."""
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.diagnostics.csv")


def _warn(message: str) -> None:
    sys.stderr.write(f"primage: warning: {message}\n")


def run_extract(args: argparse.Namespace) -> int:
    """Handler of ``primage radiomics extract``."""
    from primage.radiomics.extraction import describe_failures, extract, result_rows
    from primage.radiomics.tables import write_csv

    _check_workers(args.workers)
    images = _named_images(args.image)
    modalities = _pairs(args.modality, "--modality")
    side = diagnostics_path(args.output) if args.diagnostics == "file" else None
    outputs = [args.output, side]
    inputs = [*images.values(), args.mask, args.params]
    if args.preset and Path(args.preset).suffix.lower() in (".yaml", ".yml", ".json"):
        inputs.append(args.preset)
    check_outputs_not_inputs(outputs, inputs)
    parameters = _parameters(args)
    progress = None if args.quiet else ConsoleProgress()
    results = extract(
        images,
        args.mask,
        labels=args.label,
        parameters=parameters,
        modalities=modalities,
        workers=args.workers,
        progress=progress,
    )
    failures = describe_failures(results)
    if not any(result.ok for result in results):
        raise PrimageInputError(f"nothing could be computed: {failures}")
    mode = {"file": "separate", "columns": "columns", "none": "none"}[args.diagnostics]
    rows, diagnostics = result_rows(results, region_column="label", diagnostics=mode)
    write_csv(rows, args.output)
    if side is not None:
        write_csv(diagnostics, side)
    if failures:
        _warn(f"{failures} (see the error column of {args.output})")
    if not args.quiet:
        sys.stderr.write(f"primage: wrote {args.output} ({len(rows)} rows)\n")
    return 0


def run_robustness(args: argparse.Namespace) -> int:
    """Handler of ``primage radiomics robustness``."""
    from primage.radiomics.extraction import result_rows
    from primage.radiomics.robustness import (
        ICC_COLUMNS,
        cases_from_rows,
        check_cases,
        parse_perturbations,
        robustness,
    )
    from primage.radiomics.tables import read_csv, write_csv

    _check_workers(args.workers)
    perturbations = parse_perturbations(args.perturb)
    columns, rows = read_csv(args.cases, role="cases table")
    missing = [c for c in ("case", "image", "mask") if c not in columns]
    if missing:
        raise PrimageInputError(
            f"cases table {args.cases} lacks column(s) {', '.join(missing)}; the header must "
            "name case,image,mask"
        )
    cases = cases_from_rows(rows, Path(args.cases).resolve().parent)
    check_cases(cases, perturbations)  # before touching any file: < 3 cases, observers
    inputs = [args.cases, args.params] + [c.image for c in cases]
    inputs += [m for c in cases for m in c.masks]
    check_outputs_not_inputs([args.output, args.features_output], inputs)
    for case in cases:
        for path in [case.image, *case.masks]:
            if not Path(path).is_file():
                raise PrimageInputError(f"case {case.name!r}: file does not exist: {path}")
    parameters = _parameters(args)
    progress = None if args.quiet else ConsoleProgress()
    icc_rows, results, dropped = robustness(
        cases,
        parameters=parameters,
        perturbations=perturbations,
        workers=args.workers,
        progress=progress,
    )
    write_csv(icc_rows, args.output, ICC_COLUMNS)
    if args.features_output:
        feature_rows, _ = result_rows(results, region_column="repetition", diagnostics="none")
        for row in feature_rows:
            row.pop("image", None)
        write_csv(feature_rows, args.features_output)
    if dropped:
        _warn(f"case(s) left out (a repetition failed): {', '.join(dropped)}")
    if not args.quiet:
        counts = {}
        for row in icc_rows:
            counts[row["class"]] = counts.get(row["class"], 0) + 1
        summary = ", ".join(f"{count} {name}" for name, count in counts.items())
        sys.stderr.write(f"primage: wrote {args.output} ({len(icc_rows)} features: {summary})\n")
    return 0


def run_harmonize(args: argparse.Namespace) -> int:
    """Handler of ``primage radiomics harmonize``."""
    from primage.radiomics.harmonize import combat
    from primage.radiomics.tables import read_csv, write_csv

    check_outputs_not_inputs([args.output], [args.features])
    columns, rows = read_csv(args.features, role="feature table")
    result = combat(
        rows,
        args.batch,
        args.covariate,
        columns=columns,
        empirical_bayes=not args.no_empirical_bayes,
    )
    write_csv(result.rows, args.output, columns)
    if result.skipped:
        names = list(result.skipped)
        _warn(
            f"{len(names)} feature(s) left unchanged: {names[0]} ({result.skipped[names[0]]})"
            + (f" and {len(names) - 1} more" if len(names) > 1 else "")
        )
    if not args.quiet:
        sys.stderr.write(
            f"primage: wrote {args.output} ({len(result.features)} features harmonised)\n"
        )
    return 0
