"""``primage kinetics``: DWI (ADC, IVIM), DCE (semi-quantitative, Tofts) and Fit-Cluster-Fit.

Every action reads a 4D series (last axis: b-value or time), fits every voxel (inside
``--mask`` when given) and writes Float32 maps on the series grid plus a JSON record into
``--output-dir``. Voxels outside the mask or without a possible fit are 0 in the maps (the
JSON counts them). b-values and times come from a text file (whitespace- or
comma-separated; an FSL .bval file works as is) or a comma-separated list. All input is
checked before any output is written; nothing is written on an error.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage import __version__
from primage.errors import PrimageInputError
from primage.io import check_outputs_not_inputs, read_image, write_image, write_json
from primage.progress import ConsoleProgress

#: Files written by each action (FCF: with "fcf.json"; Tofts adds vp files with --extended).
OUTPUTS = {
    "adc": ["adc.nii.gz", "adc_se.nii.gz", "s0.nii.gz", "adc_r2.nii.gz", "summary.json"],
    "ivim": [
        "ivim_d.nii.gz",
        "ivim_f.nii.gz",
        "ivim_dstar.nii.gz",
        "ivim_s0.nii.gz",
        "summary.json",
    ],
    "dce": [
        "iauc60.nii.gz",
        "iauc60_se.nii.gz",
        "ttp.nii.gz",
        "peak_enhancement.nii.gz",
        "bolus_arrival.nii.gz",
        "wash_in.nii.gz",
        "wash_out.nii.gz",
        "ser.nii.gz",
        "summary.json",
    ],
    "tofts": [
        "ktrans.nii.gz",
        "ve.nii.gz",
        "kep.nii.gz",
        "ktrans_se.nii.gz",
        "ve_se.nii.gz",
        "kep_se.nii.gz",
        "tofts_rmse.nii.gz",
        "summary.json",
    ],
    "fcf": ["habitats.nii.gz", "confidence.nii.gz", "fcf.json"],
}


def register(subparsers) -> None:
    """Add the ``kinetics`` area and its actions."""
    parser = subparsers.add_parser(
        "kinetics",
        help="ADC/IVIM, DCE semi-quantitative and Tofts maps, Fit-Cluster-Fit habitats",
        description=__doc__.split("\n\n")[0],
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    actions.required = True

    def common(action: argparse.ArgumentParser, mask_required: bool = False) -> None:
        action.add_argument(
            "--mask", required=mask_required, help="mask image (non-zero voxels are fitted)"
        )
        action.add_argument("--output-dir", "-o", required=True, help="folder for the outputs")
        action.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    adc = actions.add_parser(
        "adc",
        help="mono-exponential ADC with standard error",
        description="ADC (mm^2/s), its standard error, S0 and R^2 per voxel; with --mask "
        "also ROI statistics and the fit of the ROI-mean signal (summary.json).",
    )
    adc.add_argument("--dwi", required=True, help="4D DWI series (one volume per b-value)")
    adc.add_argument("--bvalues", required=True, help="b-values (s/mm^2): file or list")
    adc.add_argument("--bmin", type=float, help="use only b >= BMIN s/mm^2 (e.g. 200)")
    adc.add_argument("--bmax", type=float, help="use only b <= BMAX s/mm^2")
    adc.add_argument(
        "--average",
        choices=("none", "arithmetic", "geometric"),
        default="none",
        help="combine repeated b-values: arithmetic mean, or geometric mean over "
        "directions (trace); default: fit every volume",
    )
    adc.add_argument(
        "--method",
        choices=("nlls", "wls", "rician"),
        default="nlls",
        help="non-linear least squares (default), log-linear weighted least squares, or the "
        "Rician-expectation fit (not biased low near the noise floor; needs --noise-sigma)",
    )
    adc.add_argument(
        "--noise-sigma",
        type=float,
        help="magnitude noise SD in signal units (for --method rician), e.g. from the air",
    )
    common(adc)
    adc.set_defaults(handler=run_adc)

    ivim = actions.add_parser(
        "ivim",
        help="segmented IVIM fit (D, f, D*)",
        description="IVIM by the segmented method: D from b >= --b-threshold, then f and D*.",
    )
    ivim.add_argument("--dwi", required=True, help="4D DWI series")
    ivim.add_argument("--bvalues", required=True, help="b-values (s/mm^2): file or list")
    ivim.add_argument("--b-threshold", type=float, default=200.0, help="b for D (s/mm^2)")
    common(ivim)
    ivim.set_defaults(handler=run_ivim)

    dce = actions.add_parser(
        "dce",
        help="semi-quantitative DCE maps (iAUC60, TTP, ...)",
        description="Bolus arrival, iAUC60, time to peak, peak enhancement, wash-in and "
        "wash-out slopes and signal enhancement ratio of a DCE signal series.",
    )
    dce.add_argument("--dce", required=True, help="4D DCE series (one volume per frame)")
    dce.add_argument("--times", required=True, help="frame times (s): file or list")
    dce.add_argument(
        "--baseline-frames", type=int, help="baseline frames (default: up to bolus arrival)"
    )
    dce.add_argument(
        "--arrival",
        choices=("voxel", "global"),
        default="voxel",
        help="bolus arrival per voxel (default) or of the mean curve for all voxels",
    )
    common(dce)
    dce.set_defaults(handler=run_dce)

    tofts = actions.add_parser(
        "tofts",
        help="standard / extended Tofts fit of a concentration series",
        description="Ktrans and kep (1/min), ve and vp (fractions) per voxel.",
    )
    tofts.add_argument("--concentration", required=True, help="4D concentration series (mM)")
    tofts.add_argument("--times", required=True, help="frame times (s): file or list")
    source = tofts.add_mutually_exclusive_group(required=True)
    source.add_argument("--aif", help="AIF CSV: header, then time (s), plasma conc. (mM)")
    source.add_argument("--population-aif", choices=("parker",), help="population AIF")
    source.add_argument("--aif-mask", help="mask of a vessel: its mean curve is the blood AIF")
    tofts.add_argument("--extended", action="store_true", help="extended Tofts (with vp)")
    tofts.add_argument("--aif-delay", type=float, help="population AIF delay (s); default: fitted")
    tofts.add_argument(
        "--haematocrit", type=float, default=0.42, help="blood -> plasma (default 0.42)"
    )
    common(tofts)
    tofts.set_defaults(handler=run_tofts)

    conc = actions.add_parser(
        "concentration",
        help="convert a DCE signal series to concentration (SPGR)",
        description="Contrast-agent concentration (mM) from a spoiled gradient-echo series.",
    )
    conc.add_argument("--dce", required=True, help="4D DCE signal series")
    conc.add_argument("--times", required=True, help="frame times (s): file or list")
    conc.add_argument("--t10", type=float, required=True, help="pre-contrast T1 (s)")
    conc.add_argument("--flip-angle", type=float, required=True, help="flip angle (deg)")
    conc.add_argument("--tr", type=float, required=True, help="repetition time (s)")
    conc.add_argument("--relaxivity", type=float, default=4.5, help="r1 (1/(mM s)), default 4.5")
    conc.add_argument("--baseline-frames", type=int, help="default: up to bolus arrival")
    conc.add_argument("--output", required=True, help="4D output image (.nii.gz, ...)")
    conc.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    conc.set_defaults(handler=run_concentration)

    fcf = actions.add_parser(
        "fcf",
        help="Fit-Cluster-Fit habitats of ADC or iAUC60",
        description="Voxel-wise fit with uncertainty, 1D k-means habitats (1 = lowest), "
        "confidence per voxel, refit of the mean signal of each habitat.",
    )
    fcf.add_argument("--dwi", help="4D DWI series (ADC habitats)")
    fcf.add_argument("--bvalues", help="b-values (s/mm^2): file or list")
    fcf.add_argument("--dce", help="4D DCE series (iAUC60 habitats)")
    fcf.add_argument("--times", help="frame times (s): file or list")
    fcf.add_argument("--clusters", type=int, default=2, help="number of habitats (default 2)")
    fcf.add_argument(
        "--confidence", type=float, default=0.70, help="confidence threshold (default 0.70)"
    )
    fcf.add_argument("--baseline-frames", type=int, help="DCE baseline frames")
    fcf.add_argument(
        "--noise-sigma",
        type=float,
        help="ADC: magnitude noise SD in signal units if known (default: estimated per voxel "
        "from the fit residuals)",
    )
    common(fcf, mask_required=True)
    fcf.set_defaults(handler=run_fcf)


# --- helpers ------------------------------------------------------------------------------


def _output_dir(args: argparse.Namespace, names: list[str], inputs: list) -> dict[str, Path]:
    folder = Path(args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise PrimageInputError(f"--output-dir {folder} exists and is not a folder")
    paths = {name: folder / name for name in names}
    check_outputs_not_inputs(paths.values(), inputs)
    return paths


def _progress(args: argparse.Namespace):
    return None if args.quiet else ConsoleProgress()


def _values(source: str, role: str) -> np.ndarray:
    from primage.kinetics.values import parse_values

    return parse_values(source, role=role)


def _series(path: str, role: str) -> sitk.Image:
    return read_image(path, dimension=4, role=role)


def _mask(path: str | None) -> sitk.Image | None:
    return read_image(path, role="mask") if path else None


def _record(command: str, args: argparse.Namespace, result: dict) -> dict:
    inputs = {
        key: str(Path(value).resolve())
        for key in ("dwi", "dce", "concentration", "mask", "aif", "aif_mask")
        if (value := getattr(args, key, None))
    }
    return {
        "primage_version": __version__,
        "command": f"kinetics {command}",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        **result,
        "versions": {
            "primage": __version__,
            "simpleitk": sitk.Version_VersionString(),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def _write_maps(maps: dict[str, sitk.Image], paths: dict[str, Path], rename=None) -> None:
    for name, image in maps.items():
        file_name = f"{(rename or {}).get(name, name)}.nii.gz"
        if file_name in paths:
            write_image(image, paths[file_name])


def _done(args: argparse.Namespace, folder: Path) -> int:
    if not args.quiet:
        sys.stderr.write(f"primage: wrote {folder}\n")
    return 0


# --- actions --------------------------------------------------------------------------------


def run_adc(args: argparse.Namespace) -> int:
    """Handler of ``primage kinetics adc``."""
    from primage.kinetics.dwi import adc_maps

    paths = _output_dir(args, OUTPUTS["adc"], [args.dwi, args.mask, args.bvalues])
    b_values = _values(args.bvalues, "b-values")
    series, mask = _series(args.dwi, "DWI"), _mask(args.mask)
    result = adc_maps(
        series,
        b_values,
        mask,
        bmin=args.bmin,
        bmax=args.bmax,
        average=args.average,
        method=args.method,
        noise_sigma=args.noise_sigma,
        progress=_progress(args),
    )
    _write_maps(result.maps, paths, {"r2": "adc_r2"})
    write_json(_record("adc", args, result.summary), paths["summary.json"])
    return _done(args, Path(args.output_dir))


def run_ivim(args: argparse.Namespace) -> int:
    """Handler of ``primage kinetics ivim``."""
    from primage.kinetics.dwi import ivim_maps

    paths = _output_dir(args, OUTPUTS["ivim"], [args.dwi, args.mask, args.bvalues])
    b_values = _values(args.bvalues, "b-values")
    series, mask = _series(args.dwi, "DWI"), _mask(args.mask)
    result = ivim_maps(
        series, b_values, mask, b_threshold=args.b_threshold, progress=_progress(args)
    )
    _write_maps(result.maps, paths)
    write_json(_record("ivim", args, result.summary), paths["summary.json"])
    return _done(args, Path(args.output_dir))


def run_dce(args: argparse.Namespace) -> int:
    """Handler of ``primage kinetics dce``."""
    from primage.kinetics.dce import dce_maps

    paths = _output_dir(args, OUTPUTS["dce"], [args.dce, args.mask, args.times])
    times = _values(args.times, "frame times")
    series, mask = _series(args.dce, "DCE"), _mask(args.mask)
    result = dce_maps(
        series,
        times,
        mask,
        baseline_frames=args.baseline_frames,
        arrival=args.arrival,
        progress=_progress(args),
    )
    _write_maps(result.maps, paths)
    write_json(_record("dce", args, result.summary), paths["summary.json"])
    return _done(args, Path(args.output_dir))


def run_tofts(args: argparse.Namespace) -> int:
    """Handler of ``primage kinetics tofts``."""
    from primage.kinetics.aif import aif_from_blood_curve, read_aif_csv
    from primage.kinetics.series import load_series
    from primage.kinetics.tofts import tofts_maps
    from primage.kinetics.values import check_frame_times

    names = OUTPUTS["tofts"] + (["vp.nii.gz", "vp_se.nii.gz"] if args.extended else [])
    inputs = [args.concentration, args.mask, args.times, args.aif, args.aif_mask]
    paths = _output_dir(args, names, inputs)
    times = _values(args.times, "frame times")
    series, mask = _series(args.concentration, "concentration"), _mask(args.mask)
    if series.GetDimension() == 4:
        times = check_frame_times(times, series.GetSize()[3], role="concentration")
    if args.aif:
        aif = read_aif_csv(args.aif)
        aif.check_covers(times)
    elif args.aif_mask:
        vessel = load_series(
            series, read_image(args.aif_mask, role="AIF mask"), role="AIF", allow_zero_frames=True
        )
        aif = aif_from_blood_curve(
            times, vessel.mean_signal(), args.haematocrit, source="mask " + Path(args.aif_mask).name
        )
    else:
        aif = args.population_aif
    result = tofts_maps(
        series,
        times,
        aif,
        mask,
        extended=args.extended,
        aif_delay_s=args.aif_delay,
        haematocrit=args.haematocrit,
        progress=_progress(args),
    )
    _write_maps(result.maps, paths, {"rmse": "tofts_rmse"})
    write_json(_record("tofts", args, result.summary), paths["summary.json"])
    return _done(args, Path(args.output_dir))


def run_concentration(args: argparse.Namespace) -> int:
    """Handler of ``primage kinetics concentration``."""
    from primage.io import IMAGE_SUFFIXES, image_suffix
    from primage.kinetics.dce import concentration_image

    output = Path(args.output)
    if image_suffix(output) not in IMAGE_SUFFIXES:
        raise PrimageInputError(f"output {output} has no image file ending (e.g. .nii.gz)")
    check_outputs_not_inputs([output], [args.dce, args.times])
    times = _values(args.times, "frame times")
    image, _ = concentration_image(
        _series(args.dce, "DCE"),
        times,
        t10_s=args.t10,
        flip_angle_deg=args.flip_angle,
        repetition_time_s=args.tr,
        relaxivity=args.relaxivity,
        baseline_frames=args.baseline_frames,
    )
    write_image(image, output)
    return _done(args, output)


def run_fcf(args: argparse.Namespace) -> int:
    """Handler of ``primage kinetics fcf``."""
    from primage.kinetics.fcf import fcf_maps

    if bool(args.dwi) == bool(args.dce):
        raise PrimageInputError("give either --dwi with --bvalues or --dce with --times")
    if args.dwi and not args.bvalues:
        raise PrimageInputError("--dwi needs --bvalues")
    if args.dce and not args.times:
        raise PrimageInputError("--dce needs --times")
    inputs = [args.dwi, args.dce, args.mask, args.bvalues, args.times]
    paths = _output_dir(args, OUTPUTS["fcf"], inputs)
    if args.dwi:
        parameter, values = "adc", _values(args.bvalues, "b-values")
        series = _series(args.dwi, "DWI")
    else:
        parameter, values = "iauc60", _values(args.times, "frame times")
        series = _series(args.dce, "DCE")
    mask = _mask(args.mask)
    result = fcf_maps(
        series,
        values,
        mask,
        parameter=parameter,
        clusters=args.clusters,
        confidence=args.confidence,
        baseline_frames=args.baseline_frames,
        noise_sigma=args.noise_sigma,
        progress=_progress(args),
    )
    write_image(result.habitats, paths["habitats.nii.gz"])
    write_image(result.confidence, paths["confidence.nii.gz"])
    write_json(_record("fcf", args, result.result.record()), paths["fcf.json"])
    return _done(args, Path(args.output_dir))
