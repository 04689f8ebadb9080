"""``primage preprocess``: denoise, bias-correct, normalise or resample one 3D image.

The pipeline comes from exactly one of: ``--preset NAME`` (built-in or a JSON file),
``--steps FILE.json`` (a list of steps or a preset object), or the step flags
(``--n4``, ``--denoise``, ``--resample-spacing``, ``--normalise``, applied in that order).
Outputs: the image (Float32), optionally the N4 bias field, and a JSON sidecar recording
inputs (with SHA-256), every step with all its parameters, timings and versions.

NaN/inf voxels are refused by default (``--nonfinite refuse``): every filter would spread
them. ``--nonfinite zero`` replaces them with 0 first and records how many; zero is the
value of air/background in MR and "no signal" in maps, the least surprising filler for
the filters here (for CT, -1000 HU would be air; fix such images upstream).
"""

from __future__ import annotations

import argparse
import hashlib
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
    image_stem,
    image_suffix,
    read_image,
    replace_nonfinite,
    write_image,
    write_json,
)
from primage.progress import ConsoleProgress

DENOISE_STEPS = {
    "anisotropic": "anisotropic_diffusion",
    "curvature": "curvature_flow",
    "bilateral": "bilateral",
    "nlm": "non_local_means",
}


def register(subparsers) -> None:
    """Add the ``preprocess`` command."""
    parser = subparsers.add_parser(
        "preprocess",
        help="denoise, bias-correct, normalise or resample one 3D image",
        description="Denoise, bias-correct, normalise or resample one 3D image. Give the "
        "pipeline with --preset, --steps or the step flags (n4, denoise, resample, normalise "
        "in that order). Writes the image (Float32), optionally the N4 bias field, and a JSON "
        "sidecar with inputs (SHA-256), every step with all parameters, timings and versions.",
    )
    parser.add_argument("--input", "-i", help="input image (any SimpleITK format)")
    parser.add_argument("--output", "-o", help="output image (.nii.gz, .nrrd, .mha, ...)")
    source = parser.add_argument_group("pipeline (choose one way)")
    source.add_argument("--preset", help="built-in preset name or a preset .json file")
    source.add_argument("--steps", help="JSON file with a list of steps (or a preset object)")
    source.add_argument("--n4", action="store_true", help="N4 bias-field correction")
    source.add_argument("--denoise", choices=sorted(DENOISE_STEPS), help="denoising filter")
    source.add_argument(
        "--resample-spacing",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="resample to this voxel spacing (mm), linear interpolation",
    )
    source.add_argument(
        "--normalise",
        "--normalize",
        choices=("zscore", "percentile"),
        help="intensity normalisation (inside --mask when given)",
    )
    parser.add_argument("--mask", help="mask image (N4 fit region, normalisation region)")
    parser.add_argument("--reference", help="reference image for histogram_match")
    parser.add_argument("--bias-field", help="also write the N4 bias field here")
    parser.add_argument(
        "--sidecar",
        help="JSON record of the run (default: the output path with .json instead of its "
        "image ending)",
    )
    parser.add_argument(
        "--nonfinite",
        choices=("refuse", "zero"),
        default="refuse",
        help="NaN/inf voxels: refuse the image (default) or replace them with 0",
    )
    parser.add_argument("--list-presets", action="store_true", help="list presets and exit")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser.set_defaults(handler=run)


def default_sidecar(output: str | Path) -> Path:
    """``out.nii.gz`` -> ``out.json`` (same folder)."""
    output = Path(output)
    return output.with_name(image_stem(output) + ".json")


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def steps_from_flags(args: argparse.Namespace) -> list[dict]:
    """Steps built from --n4, --denoise, --resample-spacing and --normalise (that order)."""
    steps: list[dict] = []
    if args.n4:
        steps.append({"step": "n4"})
    if args.denoise:
        steps.append({"step": DENOISE_STEPS[args.denoise]})
    if args.resample_spacing:
        steps.append({"step": "resample", "spacing_mm": list(args.resample_spacing)})
    if args.normalise:
        steps.append({"step": args.normalise})
    return steps


def _pipeline(args: argparse.Namespace) -> tuple[list[dict], str | None]:
    from primage.preprocessing import load_preset

    flag_steps = steps_from_flags(args)
    chosen = [bool(args.preset), bool(args.steps), bool(flag_steps)]
    if sum(chosen) == 0:
        raise PrimageInputError(
            "nothing to do: give --preset NAME, --steps FILE.json or step flags "
            "(--n4, --denoise, --resample-spacing, --normalise)"
        )
    if sum(chosen) > 1:
        raise PrimageInputError(
            "use only one of --preset, --steps or the step flags (write a steps file to "
            "combine them)"
        )
    if args.preset:
        preset = load_preset(args.preset)
        return preset["steps"], preset["name"]
    if args.steps:
        path = Path(args.steps)
        if not path.is_file():
            raise PrimageInputError(f"steps file does not exist: {path}")
        return load_preset(path)["steps"], None
    return flag_steps, None


def _list_presets() -> int:
    from primage.preprocessing import list_presets, load_preset

    for name in list_presets():
        preset = load_preset(name)
        steps = ", ".join(step["step"] for step in preset["steps"])
        print(f"{name:5s} {preset['modality']}: {steps}")
    return 0


def _describe_input(path: str | None) -> dict | None:
    if path is None:
        return None
    return {"path": str(Path(path).resolve()), "sha256": sha256(path)}


def run(args: argparse.Namespace) -> int:
    """Handler of ``primage preprocess``."""
    if args.list_presets:
        return _list_presets()
    if not args.input or not args.output:
        raise PrimageInputError("--input and --output are required (or use --list-presets)")
    from primage.preprocessing import run_steps, validate_steps

    steps, preset_name = _pipeline(args)
    validate_steps(steps)
    output = Path(args.output)
    if image_suffix(output) not in IMAGE_SUFFIXES:
        raise PrimageInputError(
            f"output {output} has no image file ending; use one of " + ", ".join(IMAGE_SUFFIXES)
        )
    if args.bias_field and image_suffix(args.bias_field) not in IMAGE_SUFFIXES:
        raise PrimageInputError(f"--bias-field {args.bias_field} has no image file ending")
    if args.bias_field and not any(step["step"] == "n4" for step in steps):
        raise PrimageInputError("--bias-field needs an n4 step in the pipeline")
    sidecar = Path(args.sidecar) if args.sidecar else default_sidecar(output)
    outputs = [output, args.bias_field, sidecar]
    resolved = [Path(p).resolve() for p in outputs if p is not None]
    if len(set(resolved)) != len(resolved):
        raise PrimageInputError("--output, --bias-field and --sidecar must be different files")
    inputs = [args.input, args.mask, args.reference, args.steps]
    if args.preset and Path(args.preset).suffix.lower() == ".json":
        inputs.append(args.preset)
    check_outputs_not_inputs(outputs, inputs)

    image = read_image(args.input, role="input")
    mask = read_image(args.mask, role="mask") if args.mask else None
    reference = read_image(args.reference, role="reference") if args.reference else None
    replaced = 0
    if args.nonfinite == "zero":
        replaced = count_nonfinite(image)
        if replaced:
            image = replace_nonfinite(image, 0.0)

    progress = None if args.quiet else ConsoleProgress()
    start = time.perf_counter()
    try:
        result = run_steps(image, steps, mask=mask, reference=reference, progress=progress)
    except RuntimeError as error:
        # An ITK failure on valid input: report it in one line (exit 1), not a traceback.
        last = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        sys.stderr.write(f"primage: error: preprocessing failed: {last[:300]}\n")
        return 1
    seconds = time.perf_counter() - start

    write_image(result.image, output)
    if args.bias_field:
        write_image(result.bias_field, args.bias_field)
    record = {
        "primage_version": __version__,
        "command": "preprocess",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": _describe_input(args.input),
        "mask": _describe_input(args.mask),
        "reference": _describe_input(args.reference),
        "preset": preset_name,
        "steps_file": str(Path(args.steps).resolve()) if args.steps else None,
        "output": str(output.resolve()),
        "bias_field": str(Path(args.bias_field).resolve()) if args.bias_field else None,
        "nonfinite": {"policy": args.nonfinite, "replaced_voxels": replaced},
        "input_grid": _grid(image),
        "output_grid": _grid(result.image),
        "steps": result.records,
        "seconds_total": round(seconds, 3),
        "versions": {
            "primage": __version__,
            "simpleitk": sitk.Version_VersionString(),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    write_json(record, sidecar)
    if not args.quiet:
        sys.stderr.write(f"primage: wrote {output} ({seconds:.1f} s)\n")
    return 0


def _grid(image: sitk.Image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing_mm": [round(s, 6) for s in image.GetSpacing()],
        "origin_mm": [round(o, 6) for o in image.GetOrigin()],
        "direction": [round(d, 8) for d in image.GetDirection()],
    }
