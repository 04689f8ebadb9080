"""``primage register``: register one 3D image to another; ``primage register motion``:
correct the motion of a 4D series.

Registration: ``--fixed``, ``--moving``, optional masks, ``--preset NAME`` (default
``mr-mr``) and/or ``--stages rigid,affine,bspline``, optional ``--initial-transform``;
writes the transform (ITK ``.h5``/``.tfm``, fixed -> moving: Slicer loads it as the
transform that aligns the moving volume), optionally the moving image resampled onto the
fixed grid, the QC JSON with its snapshots, and a sidecar JSON (inputs with SHA-256,
settings as applied, stage records, timings, versions). Nothing is written until
everything is computed.

Motion: ``--series`` (4D), ``--reference first|mean-baseline|N``, ``--transform
rigid|affine``; writes the corrected 4D series, the motion table (CSV) and a sidecar.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage import __version__
from primage.errors import PrimageInputError
from primage.io import (
    IMAGE_SUFFIXES,
    check_outputs_not_inputs,
    count_nonfinite,
    image_suffix,
    read_image,
    replace_nonfinite,
    series_to_volumes,
    write_image,
    write_json,
    write_text,
)
from primage.progress import ConsoleProgress

INTERPOLATIONS = ("auto", "bspline", "linear", "nearest")


def register(subparsers) -> None:
    """Add the ``register`` command and its ``motion`` action."""
    parser = subparsers.add_parser(
        "register",
        # No abbreviations: argparse would read "motion --output" as ambiguous "--output-*".
        allow_abbrev=False,
        help="register one 3D image to another (or: register motion SERIES)",
        description="Register the moving image to the fixed image: rigid -> affine -> "
        "B-spline, multi-resolution, Mattes mutual information for multi-modal pairs. "
        "The transform maps fixed to moving points (ITK convention; "
        "sitk.Resample(moving, fixed, transform)); Slicer loads it as the transform that "
        "aligns the moving volume. The start is the best by the metric of the headers' "
        "alignment, the preset's initialisation and --initial-transform; the optimised "
        "result is kept only if it is better on fresh samples, otherwise the start is "
        "written and the sidecar (acceptance) and QC (start_returned) say so. "
        "'primage register motion --help' corrects the motion of a 4D series.",
    )
    parser.add_argument("--fixed", help="fixed (reference) 3D image")
    parser.add_argument("--moving", help="moving 3D image")
    parser.add_argument("--fixed-mask", help="mask restricting the metric on the fixed image")
    parser.add_argument("--moving-mask", help="mask restricting the metric on the moving image")
    parser.add_argument(
        "--preset", help="built-in preset name or a preset .json file (default mr-mr)"
    )
    parser.add_argument(
        "--stages", help="comma-separated stages: rigid,affine,bspline (preset parameters kept)"
    )
    parser.add_argument(
        "--initialisation",
        "--initialization",
        choices=("none", "geometry", "moments"),
        help="start candidate besides the headers' alignment: none, image centres or centres "
        "of mass (default: preset's)",
    )
    parser.add_argument("--bspline-spacing", type=float, help="B-spline control-point spacing (mm)")
    parser.add_argument("--seed", type=int, help="random sampling seed (default: preset's)")
    parser.add_argument(
        "--initial-transform", help="ITK transform file (fixed -> moving) to start from"
    )
    parser.add_argument("--output-transform", help="transform file to write (.h5 or .tfm)")
    parser.add_argument("--output-volume", help="moving image resampled onto the fixed grid")
    parser.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        default="auto",
        help="for --output-volume: auto = nearest for label maps (integer, <= 256 values), "
        "cubic B-spline otherwise",
    )
    parser.add_argument("--qc", help="QC JSON (numbers, verdict, snapshot PNGs beside it)")
    parser.add_argument("--no-snapshots", action="store_true", help="QC without the PNGs")
    parser.add_argument("--fixed-landmarks", help="fixed points (CSV x,y,z LPS mm or markups JSON)")
    parser.add_argument("--moving-landmarks", help="paired moving points, same format")
    parser.add_argument(
        "--sidecar", help="JSON record of the run (default: the transform path with .json)"
    )
    parser.add_argument(
        "--nonfinite",
        choices=("refuse", "zero"),
        default="refuse",
        help="NaN/inf voxels: refuse the images (default) or replace them with 0",
    )
    parser.add_argument("--list-presets", action="store_true", help="list presets and exit")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser.set_defaults(handler=run)

    actions = parser.add_subparsers(dest="register_action", metavar="[motion]")
    motion = actions.add_parser(
        "motion",
        help="correct the motion of a 4D series",
        description="Register every frame of a 4D series (DWI b-series, DCE time series) to a "
        "reference frame with rigid or affine transforms and mutual information; write the "
        "corrected series, a per-frame motion table (translations mm, rotations degrees, "
        "framewise displacement mm, mutual information before/after) and a sidecar JSON.",
    )
    motion.add_argument("--series", required=True, help="4D image (frames along the 4th axis)")
    motion.add_argument(
        "--reference",
        default="first",
        help="first (default), mean-baseline, or a frame number (0-based)",
    )
    motion.add_argument(
        "--baseline-frames", type=int, default=3, help="frames averaged by mean-baseline (3)"
    )
    motion.add_argument("--transform", choices=("rigid", "affine"), default="rigid")
    motion.add_argument("--mask", help="mask restricting the metric (series grid)")
    motion.add_argument(
        "--values", help="index values of the frames (b or times: .bval / .times, one line)"
    )
    motion.add_argument("--output", required=True, help="corrected 4D series")
    motion.add_argument("--motion-table", required=True, help="per-frame motion table (.csv)")
    motion.add_argument("--sidecar", help="JSON record (default: the output path with .json)")
    motion.add_argument("--nonfinite", choices=("refuse", "zero"), default="refuse")
    motion.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    motion.set_defaults(handler=run_motion)


def default_sidecar(output: str | Path) -> Path:
    """``out.h5`` / ``out.nii.gz`` -> ``out.json`` (same folder)."""
    output = Path(output)
    suffix = image_suffix(output) if image_suffix(output) in IMAGE_SUFFIXES else output.suffix
    return output.with_name(output.name[: len(output.name) - len(suffix)] + ".json")


def _describe(path: str | None) -> dict | None:
    from primage.cli.preprocess import sha256

    if path is None:
        return None
    return {"path": str(Path(path).resolve()), "sha256": sha256(path)}


def _versions() -> dict:
    return {
        "primage": __version__,
        "simpleitk": sitk.Version_VersionString(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _check_image_output(path: str | None, option: str) -> None:
    if path is not None and image_suffix(path) not in IMAGE_SUFFIXES:
        raise PrimageInputError(
            f"{option} {path} has no image file ending; use one of " + ", ".join(IMAGE_SUFFIXES)
        )


def _distinct(paths: list) -> None:
    resolved = [Path(p).resolve() for p in paths if p is not None]
    if len(set(resolved)) != len(resolved):
        raise PrimageInputError("every output must be a different file")


def _read_volume(path: str, role: str, nonfinite: str) -> sitk.Image:
    image = read_image(path, dimension=3, role=role)
    if nonfinite == "zero" and count_nonfinite(image):
        image = replace_nonfinite(image, 0.0)
    return image


def _list_presets() -> int:
    from primage.registration import list_presets, load_preset

    for name in list_presets():
        preset = load_preset(name)
        stages = ", ".join(stage["stage"] for stage in preset["stages"])
        print(f"{name:10s} initialisation {preset['initialisation']:8s} stages: {stages}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Handler of ``primage register``."""
    if args.list_presets:
        return _list_presets()
    from primage.registration import (
        RegistrationFailed,
        looks_like_label_map,
        register_images,
        resample_to_fixed,
        settings_for,
    )
    from primage.registration.core import TRANSFORM_SUFFIXES, read_transform, write_transform
    from primage.registration.qc import quality_control, read_landmarks, write_snapshots

    missing = [
        option
        for option, value in (
            ("--fixed", args.fixed),
            ("--moving", args.moving),
            ("--output-transform", args.output_transform),
        )
        if not value
    ]
    if missing:
        raise PrimageInputError(
            f"{', '.join(missing)} required (or use --list-presets, or 'register motion')"
        )
    if Path(args.output_transform).suffix.lower() not in TRANSFORM_SUFFIXES:
        raise PrimageInputError(
            f"--output-transform {args.output_transform} must end with "
            + " or ".join(TRANSFORM_SUFFIXES)
        )
    _check_image_output(args.output_volume, "--output-volume")
    if args.qc is not None and Path(args.qc).suffix.lower() != ".json":
        raise PrimageInputError(f"--qc {args.qc} must be a .json file")
    if bool(args.fixed_landmarks) != bool(args.moving_landmarks):
        raise PrimageInputError("give both --fixed-landmarks and --moving-landmarks, or neither")
    if args.fixed_landmarks and not args.qc:
        raise PrimageInputError("landmarks are used by the QC: give --qc too")
    sidecar = Path(args.sidecar) if args.sidecar else default_sidecar(args.output_transform)
    outputs = [args.output_transform, args.output_volume, args.qc, sidecar]
    _distinct(outputs)
    inputs = [
        args.fixed,
        args.moving,
        args.fixed_mask,
        args.moving_mask,
        args.initial_transform,
        args.fixed_landmarks,
        args.moving_landmarks,
    ]
    if args.preset and Path(args.preset).suffix.lower() == ".json":
        inputs.append(args.preset)
    check_outputs_not_inputs(outputs, inputs)

    settings = settings_for(
        args.preset,
        args.stages,
        initialisation=args.initialisation,
        bspline_spacing_mm=args.bspline_spacing,
        seed=args.seed,
    )
    fixed = _read_volume(args.fixed, "fixed image", args.nonfinite)
    moving = _read_volume(args.moving, "moving image", args.nonfinite)
    fixed_mask = read_image(args.fixed_mask, role="fixed mask") if args.fixed_mask else None
    moving_mask = read_image(args.moving_mask, role="moving mask") if args.moving_mask else None
    initial = read_transform(args.initial_transform) if args.initial_transform else None
    landmarks = (
        (
            read_landmarks(args.fixed_landmarks, role="fixed landmarks"),
            read_landmarks(args.moving_landmarks, role="moving landmarks"),
        )
        if args.fixed_landmarks
        else (None, None)
    )

    progress = None if args.quiet else ConsoleProgress()
    try:
        result = register_images(
            fixed,
            moving,
            settings,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            initial_transform=initial,
            progress=progress,
        )
    except RegistrationFailed as error:
        sys.stderr.write(f"primage: error: registration failed: {error}\n")
        return 1

    resampled = None
    interpolation = args.interpolation
    if args.output_volume:
        if interpolation == "auto":
            interpolation = "nearest" if looks_like_label_map(moving) else "bspline"
        resampled = resample_to_fixed(moving, fixed, result.transform, interpolation=interpolation)
    qc = None
    if args.qc:
        qc = quality_control(
            fixed,
            moving,
            result.transform,
            initial=initial,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            fixed_landmarks=landmarks[0],
            moving_landmarks=landmarks[1],
            thresholds=settings["qc"],
            masks_used=fixed_mask is not None or moving_mask is not None,
            acceptance=result.acceptance,
        )

    # Everything is computed: write the outputs (each atomically).
    write_transform(result.transform, args.output_transform)
    if resampled is not None:
        write_image(resampled, args.output_volume)
    if qc is not None:
        qc_path = Path(args.qc)
        snapshots = {}
        if not args.no_snapshots:
            snapshots = write_snapshots(
                fixed,
                moving,
                result.transform,
                qc_path.with_name(qc_path.stem),
                initial=initial,
                fixed_mask=fixed_mask,
            )
        write_json(
            {
                "primage_version": __version__,
                "fixed": str(Path(args.fixed).resolve()),
                "moving": str(Path(args.moving).resolve()),
                "transform": str(Path(args.output_transform).resolve()),
                "preset": settings.get("preset"),
                **qc,
                "snapshots": snapshots,
            },
            qc_path,
        )
    write_json(
        {
            "primage_version": __version__,
            "command": "register",
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fixed": _describe(args.fixed),
            "moving": _describe(args.moving),
            "fixed_mask": _describe(args.fixed_mask),
            "moving_mask": _describe(args.moving_mask),
            "initial_transform": _describe(args.initial_transform),
            "nonfinite": args.nonfinite,
            "preset": settings.get("preset"),
            "settings": {k: v for k, v in settings.items() if k != "stages"},
            "initialisation": result.initialisation,
            "identical_inputs": result.identical_inputs,
            "stages": result.stages,
            "acceptance": result.acceptance,
            "convention": "fixed -> moving (LPS), as sitk.Resample(moving, fixed, transform)",
            "output_transform": str(Path(args.output_transform).resolve()),
            "output_volume": str(Path(args.output_volume).resolve())
            if args.output_volume
            else None,
            "interpolation": interpolation if args.output_volume else None,
            "qc": str(Path(args.qc).resolve()) if args.qc else None,
            "verdict": qc["verdict"] if qc else None,
            "seconds_total": result.seconds,
            "versions": _versions(),
        },
        sidecar,
    )
    if not args.quiet:
        verdict = f", QC verdict {qc['verdict']}: {qc['reason']}" if qc else ""
        kept = f"; {result.acceptance['reason']}" if result.kept_start and not qc else ""
        sys.stderr.write(
            f"primage: wrote {args.output_transform} ({result.seconds:.1f} s){verdict}{kept}\n"
        )
    return 0


def read_values(path: str, count: int) -> list[float]:
    """Index values (b-values, times) from a one-line whitespace or comma separated file."""
    file = Path(path)
    if not file.is_file():
        raise PrimageInputError(f"values file does not exist: {file}")
    try:
        values = [float(v) for v in file.read_text("utf-8").replace(",", " ").split()]
    except (ValueError, UnicodeDecodeError):
        raise PrimageInputError(f"values file {file} must hold numbers only") from None
    if len(values) != count:
        raise PrimageInputError(
            f"values file {file} has {len(values)} numbers; the series has {count} frames"
        )
    return values


def run_motion(args: argparse.Namespace) -> int:
    """Handler of ``primage register motion``."""
    from primage.registration import RegistrationFailed
    from primage.registration.motion import correct_motion, table_csv

    _check_image_output(args.output, "--output")
    if Path(args.motion_table).suffix.lower() != ".csv":
        raise PrimageInputError(f"--motion-table {args.motion_table} must be a .csv file")
    sidecar = Path(args.sidecar) if args.sidecar else default_sidecar(args.output)
    outputs = [args.output, args.motion_table, sidecar]
    _distinct(outputs)
    check_outputs_not_inputs(outputs, [args.series, args.mask, args.values])
    series = read_image(args.series, dimension=4, role="series")
    if args.nonfinite == "zero" and count_nonfinite(series):
        series = replace_nonfinite(series, 0.0)
    volumes = series_to_volumes(series)
    values = read_values(args.values, len(volumes)) if args.values else None
    mask = read_image(args.mask, role="mask") if args.mask else None
    progress = None if args.quiet else ConsoleProgress()
    start = time.perf_counter()
    try:
        result = correct_motion(
            volumes,
            reference=args.reference,
            baseline_frames=args.baseline_frames,
            transform=args.transform,
            values=values,
            mask=mask,
            progress=progress,
        )
    except RegistrationFailed as error:
        sys.stderr.write(f"primage: error: motion correction failed: {error}\n")
        return 1
    corrected = sitk.JoinSeries(result.volumes)
    corrected.CopyInformation(series)  # keep the 4th axis geometry
    write_image(corrected, args.output)
    write_text(table_csv(result.table), args.motion_table)
    write_json(
        {
            "primage_version": __version__,
            "command": "register motion",
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "series": _describe(args.series),
            "mask": _describe(args.mask),
            "values": _describe(args.values),
            "reference": result.reference,
            "transform": args.transform,
            "settings": result.settings,
            "output": str(Path(args.output).resolve()),
            "motion_table": str(Path(args.motion_table).resolve()),
            "max_framewise_displacement_mm": max(
                row["framewise_displacement_mm"] for row in result.table
            ),
            "seconds_total": round(time.perf_counter() - start, 3),
            "versions": _versions(),
        },
        sidecar,
    )
    if not args.quiet:
        sys.stderr.write(f"primage: wrote {args.output} and {args.motion_table}\n")
    return 0
