"""``primage segment``: agreement metrics, multi-observer STAPLE and post-processing.

- ``compare --reference REF --test TEST [--label N ...] --output METRICS.json``: per label
  ``dice``, ``jaccard``, ``hausdorff``, ``hausdorff95``, ``assd`` (mm),
  ``volume_reference_ml``, ``volume_test_ml``, ``volume_difference_percent``, ``fnr``,
  ``fpr_modified``; undefined values are ``null`` with the reason in ``notes``.
- ``agreement --mask A --mask B [--mask C ...] --output DIR``: ``pairwise.csv`` and
  ``agreement.json``; with three or more masks also the STAPLE consensus
  (``staple_consensus.nii.gz``, ``staple_probability_label<N>.nii.gz``) and each observer's
  sensitivity/specificity (``staple_observers.csv``).
- ``postprocess --input SEG --output OUT --steps largest,fill,close:2,min-volume:0.5``.
- ``train``, ``predict``, ``deep-features`` (built-in DynUNet; torch and MONAI from the
  ``seg`` extra) and ``export-nnunet``: see :mod:`primage.cli.segment_deep`.

Masks must share one voxel grid (resample first; nothing is resampled silently here).
Everything is computed before the first file is written, so bad input leaves no output.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from primage import __version__
from primage.cli.segment_deep import register_deep
from primage.errors import PrimageInputError
from primage.io import (
    IMAGE_SUFFIXES,
    check_outputs_not_inputs,
    image_stem,
    image_suffix,
    read_image,
    write_image,
    write_json,
    write_text,
)
from primage.progress import ConsoleProgress

#: One-line descriptions recorded in the metrics JSON (details: primage.segmentation.metrics).
SURFACE_DEFINITIONS = {
    "subvoxel": "subvoxel: points on the boundary edges where the mask smoothed with a Gaussian "
    "(sigma = half the largest spacing) crosses 0.5, area-weighted; exact point distances",
    "corner": "corner: voxel-grid corner points between inside and outside voxels (as "
    "surface-distance), area-weighted; distance transform on the corner grid",
}


def register(subparsers) -> None:
    """Add the ``segment`` area and its actions."""
    parser = subparsers.add_parser(
        "segment",
        help="segmentation agreement metrics, STAPLE consensus, post-processing",
        description=__doc__.split("\n\n")[0],
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    actions.required = True

    compare = actions.add_parser(
        "compare",
        help="per-label agreement metrics of a test mask against a reference mask",
        description="Per-label Dice, Jaccard, Hausdorff, HD95, ASSD (mm), volumes (mL), "
        "volume difference (%%), FNR and modified FPR of TEST against REF (same voxel grid). "
        "Surface distances use sub-voxel boundary points by default (--surface).",
    )
    compare.add_argument("--reference", "-r", required=True, help="reference label image")
    compare.add_argument("--test", "-t", required=True, help="test label image (same grid)")
    compare.add_argument(
        "--label",
        type=int,
        action="append",
        help="label value to compare (repeat; default: every label in either mask)",
    )
    compare.add_argument("--output", "-o", required=True, help="metrics JSON file")
    compare.add_argument(
        "--allow-empty",
        action="store_true",
        help="report an empty reference or test mask (NaN with reasons) instead of refusing it",
    )
    compare.add_argument(
        "--surface",
        choices=("subvoxel", "corner"),
        default="subvoxel",
        help="surface definition for the distances: sub-voxel boundary points (default, closest "
        "to the continuous surface) or the voxel-corner points of DeepMind's surface-distance",
    )
    compare.set_defaults(handler=run_compare)

    agreement = actions.add_parser(
        "agreement",
        help="pairwise metrics of two or more observers, STAPLE consensus for three or more",
        description="Pairwise per-label metrics of every pair of masks (pairwise.csv, "
        "agreement.json) and, for three or more masks, the STAPLE consensus with each "
        "observer's sensitivity and specificity.",
    )
    agreement.add_argument(
        "--mask", "-m", action="append", required=True, help="observer mask (repeat, >= 2)"
    )
    agreement.add_argument(
        "--name", action="append", help="observer name per --mask (default: file names)"
    )
    agreement.add_argument("--label", type=int, action="append", help="label value (repeat)")
    agreement.add_argument(
        "--threshold", type=float, default=0.5, help="STAPLE probability threshold (0.5)"
    )
    agreement.add_argument("--output", "-o", required=True, help="output folder")
    agreement.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    agreement.set_defaults(handler=run_agreement)

    post = actions.add_parser(
        "postprocess",
        help="largest component, fill holes, closing (mm), remove small components (mL)",
        description="Post-process every label of a segmentation with the steps in order: "
        "largest (keep the largest connected component), fill (fill holes), close:R "
        "(closing with a ball of R mm), min-volume:V (remove components below V mL). "
        "Added voxels come from the background only.",
    )
    post.add_argument("--input", "-i", required=True, help="label image")
    post.add_argument("--output", "-o", required=True, help="output label image")
    post.add_argument(
        "--steps", required=True, help="comma-separated steps, e.g. largest,fill,close:2"
    )
    post.set_defaults(handler=run_postprocess)
    register_deep(actions)


def _finite(value):
    """NaN -> None so that the JSON stays standard (the reason is in ``notes``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(rows: list[dict]) -> list[dict]:
    return [{k: _finite(v) for k, v in row.items()} for row in rows]


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    columns = [c for c in rows[0] if c != "notes"] + ["notes"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = {c: ("" if row.get(c) is None else row.get(c)) for c in columns}
        out["notes"] = "; ".join(row.get("notes", []))
        writer.writerow(out)
    return buffer.getvalue()


def _describe(path) -> dict:
    from primage.cli.preprocess import sha256

    return {"path": str(Path(path).resolve()), "sha256": sha256(path)}


def _check_json_output(path: str) -> Path:
    output = Path(path)
    if output.suffix.lower() != ".json":
        raise PrimageInputError(f"output {output} must be a .json file")
    if output.is_dir():
        raise PrimageInputError(f"output {output} is a folder")
    return output


def run_compare(args: argparse.Namespace) -> int:
    """Handler of ``primage segment compare``."""
    from primage.segmentation.metrics import METRIC_NAMES, compare_label_images

    output = _check_json_output(args.output)
    check_outputs_not_inputs([output], [args.reference, args.test])
    reference = read_image(args.reference, role="reference mask")
    test = read_image(args.test, role="test mask")
    start = time.perf_counter()
    rows = compare_label_images(
        reference, test, args.label, allow_empty=args.allow_empty, surface=args.surface
    )
    record = {
        "primage_version": __version__,
        "command": "segment compare",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reference": _describe(args.reference),
        "test": _describe(args.test),
        "spacing_mm": list(reference.GetSpacing()),
        "metrics": list(METRIC_NAMES),
        "units": {"distance": "mm", "volume": "mL", "volume_difference_percent": "%"},
        "surface_definition": SURFACE_DEFINITIONS[args.surface],
        "labels": _clean(rows),
        "seconds_total": round(time.perf_counter() - start, 3),
    }
    write_json(record, output)
    return 0


def run_agreement(args: argparse.Namespace) -> int:
    """Handler of ``primage segment agreement``."""
    from primage.segmentation.agreement import pairwise_agreement, staple_consensus
    from primage.segmentation.metrics import compare_masks, label_array

    masks_paths = args.mask
    if len(masks_paths) < 2:
        raise PrimageInputError("give at least two --mask files")
    if args.name is not None and len(args.name) != len(masks_paths):
        raise PrimageInputError("give one --name per --mask, or none")
    names = args.name or [image_stem(p) for p in masks_paths]
    if len(set(names)) != len(names):
        raise PrimageInputError(f"observer names must differ, got {names}; use --name")
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise PrimageInputError(f"output {folder} exists and is not a folder")
    check_outputs_not_inputs([folder], masks_paths)
    masks = [read_image(p, role=f"mask {n}") for p, n in zip(masks_paths, names, strict=True)]
    progress = None if args.quiet else ConsoleProgress()
    start = time.perf_counter()
    pairwise = pairwise_agreement(masks, names, args.label)
    files: dict[str, object] = {"pairwise.csv": _csv(_clean(pairwise))}
    record: dict[str, object] = {
        "primage_version": __version__,
        "command": "segment agreement",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "masks": [dict(_describe(p), name=n) for p, n in zip(masks_paths, names, strict=True)],
        "units": {"distance": "mm", "volume": "mL", "volume_difference_percent": "%"},
        "pairwise": _clean(pairwise),
    }
    if len(masks) >= 3:
        staple = staple_consensus(
            masks, names, args.label, threshold=args.threshold, progress=progress
        )
        consensus = label_array(staple.consensus)
        spacing_zyx = tuple(reversed(masks[0].GetSpacing()))
        versus = []
        for mask, name in zip(masks, names, strict=True):
            array = label_array(mask)
            for label in staple.probabilities:
                row = {"observer": name, "label": label}
                row.update(compare_masks(consensus == label, array == label, spacing_zyx))
                versus.append(row)
        record["staple"] = {
            "threshold": args.threshold,
            "observers": staple.observers,
            "consensus_vs_observers": _clean(versus),
        }
        files["staple_observers.csv"] = _csv(staple.observers)
        files["staple_consensus.nii.gz"] = staple.consensus
        for label, probability in staple.probabilities.items():
            files[f"staple_probability_label{label}.nii.gz"] = probability
    else:
        record["staple"] = None
        record["staple_note"] = "STAPLE needs three or more masks"
    record["seconds_total"] = round(time.perf_counter() - start, 3)
    files["agreement.json"] = record
    for name, content in files.items():
        target = folder / name
        if isinstance(content, str):
            write_text(content, target)
        elif isinstance(content, dict):
            write_json(content, target)
        else:
            write_image(content, target)
    if not args.quiet:
        sys.stderr.write(f"primage: wrote {len(files)} files to {folder}\n")
    return 0


def run_postprocess(args: argparse.Namespace) -> int:
    """Handler of ``primage segment postprocess``."""
    from primage.segmentation.postprocess import parse_steps, postprocess_label_image

    steps = parse_steps(args.steps)
    output = Path(args.output)
    if image_suffix(output) not in IMAGE_SUFFIXES:
        raise PrimageInputError(
            f"output {output} has no image file ending; use one of " + ", ".join(IMAGE_SUFFIXES)
        )
    sidecar = output.with_name(image_stem(output) + ".json")
    check_outputs_not_inputs([output, sidecar], [args.input])
    image = read_image(args.input, role="segmentation")
    start = time.perf_counter()
    result, records = postprocess_label_image(image, steps)
    write_image(result, output)
    write_json(
        {
            "primage_version": __version__,
            "command": "segment postprocess",
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": _describe(args.input),
            "output": str(output.resolve()),
            "steps": records,
            "seconds_total": round(time.perf_counter() - start, 3),
        },
        sidecar,
    )
    return 0
