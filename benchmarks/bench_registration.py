"""Benchmark: primage registration against itk-elastix on pairs with a known transform.

Pairs (the true fixed -> moving transform is known exactly):

* ``mni-*``: the MNI152 2009a T1 template shipped inside nilearn (read from the package
  folder; nothing is downloaded) as the fixed image, 2 mm isotropic, sampled through the
  true transform; the moving image is the same anatomy with its intensities remapped
  non-monotonically to mimic a T2-weighted contrast (CSF bright, white matter dark, scalp
  fat mid-grey), a smooth bias field and noise, on an anisotropic 1.5 x 1.5 x 3 mm grid.
  Cases: rigid, affine (scaling along oblique axes, so with shear), and affine + smooth
  B-spline deformation (4 mm). Error mask: brain (grey + white matter > 0.5); Dice: white
  matter.
* ``phantom-*``: the synthetic digital patient, T2w (fixed: oblique, 1.5 x 1.5 x 4 mm)
  against CT (moving: 1.2 x 1.2 x 2.5 mm), misaligned by changing the CT header only (no
  interpolation). Cases: rigid, affine. Error mask: body; Dice: tumour.

Both tools run in the same process on the same images. primage uses its presets
(``mr-mr`` for MNI, ``mr-ct`` for the phantom); elastix its default parameter maps
(``rigid``, ``affine``, and ``affine`` then ``bspline``). Timed: registration plus the
moving image resampled onto the fixed grid (elastix's default writes that result image
too); not timed: image conversion, elastix's import and its deformation-field export.
Printed per case: wall time of each, time ratio (primage / elastix), mean and maximum
target registration error over the mask (mm), Dice of the propagated mask.

Real cases (``sts-*``, ``sts-pet``): the IBSI soft-tissue-sarcoma patients in
``../shared/data/ibsi-sts`` (IBSI's reference NIfTI, gzip, as shipped). ``sts-003`` etc.:
CT fixed, T1w MR moving, misaligned by two known rigid transforms (``a``, ``b``; header
only, exact) on top of the data authors' alignment, which is the truth; TRE over the CT
tumour mask. Timed as whole commands from reading the gzip NIfTI to writing the results,
both in this process with their modules imported: primage through ``primage.cli.main``
(the code path of ``primage register``: reading, registering, writing the transform, the
resampled MR and the sidecar), elastix from ``itk.imread`` to writing its result image and
parameter file. ``primage register`` is also run as a new process (interpreter start and
imports, about 0.3 s, included; elastix's ``import itk`` takes seconds and is not counted).
``sts-pet``: the already aligned PET -> CT pairs (one DICOM frame of reference):
how far each tool moves the tumour from the start (mm; 0 = the start kept).
Every real pair runs in two setups: the whole image, and the tumour region (the CT
tumour mask dilated by ``--region-mm``, 30 mm by default, written once and given to both
tools: ``--fixed-mask`` for primage, ``fixed_mask`` for elastix). MI is then the QC's
mutual information over that region, where each tool's result is compared with the truth.

Run: ``pip install -e .[bench]`` then ``make benchmark`` or
``python benchmarks/bench_registration.py [--repeats N] [--cases mni-rigid,...,sts-003,sts-pet]
[--region-mm 30]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from primage.registration import register_images, resample_to_fixed, settings_for  # noqa: E402
from primage.registration.qc import dice, similarity  # noqa: E402
from primage.registration.truth import (  # noqa: E402
    known_affine,
    move_geometry,
    rotation_matrix,
    sample_through,
    smooth_deformation,
    transform_error,
)
from primage.synthetic import make_digital_patient  # noqa: E402

# --- pairs --------------------------------------------------------------------------------


def _grid(size, spacing, centre, angles=(0.0, 0.0, 0.0)) -> sitk.Image:
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    direction = rotation_matrix(angles)
    grid.SetDirection(direction.ravel().tolist())
    half = direction @ ((np.array(size) - 1) * np.array(spacing) / 2)
    grid.SetOrigin((np.asarray(centre) - half).tolist())
    return grid


def _smooth_for(source: sitk.Image, spacing) -> sitk.Image:
    # Partial volume of a coarser acquisition: Gaussian of half the target spacing.
    return sitk.SmoothingRecursiveGaussian(source, [0.5 * s for s in spacing])


def mni_sources() -> dict[str, sitk.Image]:
    """The 1 mm MNI152 2009a T1, grey- and white-matter maps shipped with nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("nilearn is not installed: pip install -e .[bench]")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    images = {}
    for key in ("t1", "gm", "wm"):
        path = folder / f"mni_icbm152_{key}_tal_nlin_sym_09a_converted.nii.gz"
        if not path.is_file():
            sys.exit(f"nilearn does not ship {path.name}; install nilearn >= 0.10")
        images[key] = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32) / 255.0
    return images


def t2_like(t1: sitk.Image, seed: int = 3) -> sitk.Image:
    """Non-monotonic remap of T1 intensities (0..1) to a T2-like contrast, with a smooth
    multiplicative bias and Gaussian noise."""
    t = sitk.GetArrayFromImage(t1).astype(np.float64)
    # air 0; CSF (dark in T1) bright; grey mid; white (bright in T1) dark; fat/scalp
    # (brightest in T1) back to mid-grey: not monotonic, so only MI can relate them.
    knots_t1 = [0.0, 0.06, 0.2, 0.45, 0.7, 0.85, 1.0]
    knots_t2 = [0.0, 0.05, 0.95, 0.65, 0.3, 0.25, 0.6]
    remapped = np.interp(t, knots_t1, knots_t2)
    z, y, x = np.indices(t.shape, dtype=np.float64)
    bias = np.exp(0.25 * (x / t.shape[2] - 0.5) - 0.2 * (z / t.shape[0] - 0.5))
    noise = np.random.default_rng(seed).normal(0.0, 0.02, t.shape)
    image = sitk.GetImageFromArray((remapped * bias + noise).astype(np.float32))
    image.CopyInformation(t1)
    return image


def mni_case(kind: str, sources: dict[str, sitk.Image]) -> dict:
    t1 = sources["t1"]
    centre = np.array(
        t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()])
    )
    fixed_grid = _grid((90, 108, 90), (2.0, 2.0, 2.0), centre)
    moving_grid = _grid((120, 144, 60), (1.5, 1.5, 3.0), centre, angles=(5.0, 0.0, 0.0))
    if kind == "rigid":
        truth = known_affine(centre, (6.0, -4.0, 8.0), (7.0, -5.0, 4.0))
    elif kind == "affine":
        truth = known_affine(
            centre,
            (5.0, 3.0, -6.0),
            (-6.0, 4.0, 5.0),
            (1.07, 0.94, 1.04),
            rotation_matrix((20, 0, 30)),
        )
    else:
        affine = known_affine(centre, (3.0, -2.0, 4.0), (4.0, -3.0, 2.0), (1.03, 0.97, 1.02))
        truth = sitk.CompositeTransform([affine, smooth_deformation(fixed_grid, 4.0, 40.0, seed=5)])
    fixed = sample_through(_smooth_for(t1, (2, 2, 2)), fixed_grid, truth)
    moving = sample_through(_smooth_for(t2_like(t1), (1.5, 1.5, 3)), moving_grid, sitk.Transform())
    brain = sample_through(sources["gm"] + sources["wm"], fixed_grid, truth) > 0.5
    fixed_wm = sample_through(sources["wm"], fixed_grid, truth) > 0.5
    moving_wm = sample_through(sources["wm"], moving_grid, sitk.Transform()) > 0.5
    return {
        "fixed": fixed,
        "moving": moving,
        "truth": truth,
        "error_mask": brain,
        "fixed_label": fixed_wm,
        "moving_label": moving_wm,
        "preset": "mr-mr",
        "stages": kind,
    }


def phantom_case(kind: str) -> dict:
    fixed_patient = make_digital_patient(0)
    moving_patient = make_digital_patient(
        0, size=(110, 110, 60), spacing=(1.2, 1.2, 2.5), angles_deg=(0.0, 0.0, 0.0)
    )
    fixed = fixed_patient.t2w
    centre = np.array(
        fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    )
    if kind == "rigid":
        truth = known_affine(centre, (5.0, -4.0, 8.0), (6.0, -5.0, 4.0))
    else:
        # Scaling along the CT's own axes keeps the moved header a valid grid.
        truth = known_affine(centre, (4.0, 3.0, -5.0), (-5.0, 4.0, 3.0), (1.05, 0.96, 1.03))
    return {
        "fixed": fixed,
        "moving": move_geometry(moving_patient.ct, truth),
        "truth": truth,
        "error_mask": fixed_patient.tissues > 0,
        "fixed_label": fixed_patient.tumour,
        "moving_label": move_geometry(moving_patient.tumour, truth),
        "preset": "mr-ct",
        "stages": kind,
    }


# --- the two tools ------------------------------------------------------------------------


def run_primage(case: dict) -> tuple[float, sitk.Transform]:
    stages = {"rigid": "rigid", "affine": "rigid,affine", "bspline": "rigid,affine,bspline"}
    settings = settings_for(case["preset"], stages[case["stages"]])
    start = time.perf_counter()
    result = register_images(case["fixed"], case["moving"], settings)
    resample_to_fixed(case["moving"], case["fixed"], result.transform)
    return time.perf_counter() - start, result.transform


def to_itk(image: sitk.Image):
    import itk

    converted = itk.GetImageFromArray(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)))
    converted.SetOrigin(image.GetOrigin())
    converted.SetSpacing(image.GetSpacing())
    converted.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    return converted


def run_elastix(case: dict) -> tuple[float, np.ndarray]:
    import itk

    fixed, moving = to_itk(case["fixed"]), to_itk(case["moving"])
    parameters = itk.ParameterObject.New()
    maps = {"rigid": ["rigid"], "affine": ["affine"], "bspline": ["affine", "bspline"]}
    for name in maps[case["stages"]]:
        parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
    # transformix writes deformationField.nii into the working directory: use a scratch one.
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            start = time.perf_counter()
            _, result = itk.elastix_registration_method(
                fixed, moving, parameter_object=parameters, log_to_console=False
            )
            seconds = time.perf_counter() - start
            field = itk.transformix_deformation_field(moving, result)
            array = np.asarray(itk.GetArrayFromImage(field), dtype=np.float64)
        finally:
            os.chdir(here)
    return seconds, array


def evaluate(case: dict, estimate) -> dict:
    error = transform_error(estimate, case["truth"], case["fixed"], case["error_mask"])
    if isinstance(estimate, np.ndarray):
        field = sitk.GetImageFromArray(estimate, isVector=True)
        field.CopyInformation(case["fixed"])
        estimate = sitk.DisplacementFieldTransform(field)
    propagated = resample_to_fixed(
        sitk.Cast(case["moving_label"], sitk.sitkUInt8),
        case["fixed"],
        estimate,
        interpolation="nearest",
    )
    return {**error, "dice": dice(case["fixed_label"], propagated)}


# --- real cases (IBSI soft-tissue sarcoma) ---------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
STS = Path(os.environ.get("PRIMAGE_SHARED_DATA", REPO.parent / "shared" / "data")) / "ibsi-sts"
#: Known fixed -> moving misalignments of each real MR -> CT case (``a`` and ``b``, in
#: roughly opposite directions): rotation about x, y, z (degrees, about the CT centre)
#: and translation (mm, LPS).
STS_MISALIGNMENT = {
    "STS_003": {
        "a": ((3.0, -4.0, 5.0), (5.0, -4.0, 3.0)),
        "b": ((-3.0, 4.0, -4.0), (-5.0, 4.0, -3.0)),
    },
    "STS_005": {
        "a": ((-4.0, 3.0, -3.0), (-4.0, 5.0, -4.0)),
        "b": ((4.0, -3.0, 4.0), (4.0, -5.0, 3.0)),
    },
    "STS_012": {
        "a": ((2.0, 4.0, -5.0), (4.0, 3.0, -5.0)),
        "b": ((-2.0, -4.0, 4.0), (-4.0, -3.0, 5.0)),
    },
}


def _sts(case: str, name: str) -> Path:
    path = STS / "nifti" / case / f"{name}.nii.gz"
    if not path.is_file():
        sys.exit(f"real data missing: {path} (the shared/ folder must sit beside the repository)")
    return path


_CLI = "import sys; from primage.cli import run; sys.exit(run())"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _register_args(
    fixed: Path, moving: Path, folder: Path, preset: str, mask: Path | None = None
) -> list[str]:
    masks = [] if mask is None else ["--fixed-mask", str(mask)]
    return [
        "register",
        *masks,
        "--fixed",
        str(fixed),
        "--moving",
        str(moving),
        "--preset",
        preset,
        "--output-transform",
        str(folder / "primage.tfm"),
        "--output-volume",
        str(folder / "primage_moved.nii.gz"),
        "--quiet",
    ]


def primage_command(fixed: Path, moving: Path, folder: Path, preset: str, mask=None):
    """Run ``primage register`` as a user would (a new process); returns (wall s, CPU s)."""
    script = Path(sys.executable).with_name("primage")  # the installed console command
    launcher = [str(script)] if script.is_file() else [sys.executable, "-c", _CLI]
    start, cpu = time.perf_counter(), _children_cpu()
    subprocess.run([*launcher, *_register_args(fixed, moving, folder, preset, mask)], check=True)
    return time.perf_counter() - start, _children_cpu() - cpu


def primage_in_process(fixed: Path, moving: Path, folder: Path, preset: str, mask=None):
    """The same command through ``primage.cli.main`` in this process (modules already
    imported, as elastix's are): reading, registering, writing. Returns (wall s, CPU s,
    transform, sidecar)."""
    from primage.cli import main as cli_main

    start, cpu = time.perf_counter(), time.process_time()
    if cli_main(_register_args(fixed, moving, folder, preset, mask)) != 0:
        sys.exit("primage register failed")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    sidecar = json.loads((folder / "primage.json").read_text())
    return seconds, cpu, sitk.ReadTransform(str(folder / "primage.tfm")), sidecar


def elastix_command(
    fixed: Path, moving: Path, folder: Path, mask: Path | None = None
) -> tuple[float, float, np.ndarray]:
    """itk-elastix, default rigid map (with ``mask`` as its fixed mask when given): read,
    register, write result image and parameters (timed); the deformation field for the
    TRE is exported afterwards (not timed)."""
    import itk

    here = os.getcwd()
    os.chdir(folder)  # transformix writes into the working directory
    try:
        start, cpu = time.perf_counter(), time.process_time()
        fixed_image = itk.imread(str(fixed), itk.F)
        moving_image = itk.imread(str(moving), itk.F)
        parameters = itk.ParameterObject.New()
        parameters.AddParameterMap(parameters.GetDefaultParameterMap("rigid"))
        masks = {} if mask is None else {"fixed_mask": itk.imread(str(mask), itk.UC)}
        result_image, result = itk.elastix_registration_method(
            fixed_image, moving_image, parameter_object=parameters, log_to_console=False, **masks
        )
        itk.imwrite(result_image, str(folder / "elastix_moved.nii.gz"))
        result.WriteParameterFile(str(folder / "elastix.txt"))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        field = itk.transformix_deformation_field(moving_image, result)
        array = np.asarray(itk.GetArrayFromImage(field), dtype=np.float64)
    finally:
        os.chdir(here)
    return seconds, cpu, array


def _real_pairs(name: str, folder: Path):
    """(label, CT path, moving path, truth, preset, stages) of one ``sts-*`` name."""
    from primage.registration.core import image_centre

    if name == "sts-pet":
        for case in STS_MISALIGNMENT:
            yield f"{case}-pet", case, _sts(case, "PET_image"), sitk.Transform(), "pet-ct"
        return
    case = f"STS_{name.split('-')[1]}"
    if case not in STS_MISALIGNMENT:
        sys.exit(f"unknown real case {name}; use sts-003, sts-005, sts-012 or sts-pet")
    ct = sitk.ReadImage(str(_sts(case, "CT_image")))
    mr = sitk.ReadImage(str(_sts(case, "MR_T1_image")))
    for key, (rotation, translation) in STS_MISALIGNMENT[case].items():
        truth = known_affine(image_centre(ct), rotation, translation)
        moving = folder / f"{case}_mr_{key}.nii.gz"
        sitk.WriteImage(move_geometry(mr, truth), str(moving), True)  # gzip, like the data
        yield f"{case}-mr-{key}", case, moving, truth, "mr-ct-rigid"


def tumour_region(tumour_path: Path, margin_mm: float, folder: Path) -> tuple[Path, sitk.Image]:
    """The CT tumour mask dilated by ``margin_mm`` (written as a mask file both tools read)."""
    from primage.registration.core import dilate_mask

    region = dilate_mask(sitk.Cast(sitk.ReadImage(str(tumour_path)) > 0, sitk.sitkUInt8), margin_mm)
    path = folder / "tumour_region.nii.gz"
    sitk.WriteImage(region, str(path), True)
    return path, region


def real_cases(names: list[str], repeats: int, region_mm: float = 30.0) -> None:
    """MR -> CT with known misalignments, and the aligned PET -> CT, side by side, over the
    whole image and over the tumour region (the same mask for both tools)."""
    header = (
        f"{'pair':14s} {'setup':6s} {'tool':8s} {'wall s':>7s} {'CPU s':>6s} {'ratio':>6s} "
        f"{'TRE mean':>8s} {'TRE max':>8s} {'MI':>6s} {'MI@truth':>8s}  notes"
    )
    print("\nReal cases (IBSI STS; whole commands incl. reading and writing)")
    print(header)
    print("-" * len(header))
    for name in names:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            for label, case, moving_path, truth, preset in _real_pairs(name, folder):
                ct_path = _sts(case, "CT_image")
                tumour = sitk.ReadImage(str(_sts(case, "CT_mask")))
                grid = sitk.ReadImage(str(ct_path))
                moving = sitk.ReadImage(str(moving_path))
                region_path, region = tumour_region(_sts(case, "CT_mask"), region_mm, folder)
                for setup, mask in (("whole", None), ("region", region_path)):
                    _real_pair_rows(
                        label, setup, ct_path, moving_path, grid, moving, tumour, truth,
                        preset, mask, region if mask else None, folder, repeats,
                    )  # fmt: skip
    print(
        "\nmr: TRE over the CT tumour (mm) against the data authors' alignment plus the known "
        "misalignment a or b; pet: distance the tumour moved from the (already aligned) "
        f"start. setup: whole image, or region (CT tumour mask dilated by {region_mm:g} mm, the "
        "same fixed mask for both tools). MI: the QC's mutual information (nats) at the "
        "result and at the truth (over the region in the region setup). "
        "Wall and CPU: both in this process with their modules imported (primage through "
        "primage.cli.main, the same code path as the command), from reading the files to "
        "writing the transform, the moved image and the sidecar (elastix: its result image "
        "and parameter file); best of the repeats, wall range in brackets; ratio: primage "
        "wall / elastix wall. 'new process': primage register as a subprocess (interpreter "
        "start and imports included, about 0.3 s; elastix's import itk takes several "
        "seconds and is never counted)."
    )


def _real_pair_rows(
    label, setup, ct_path, moving_path, grid, moving, tumour, truth, preset, mask, region,
    folder, repeats,
) -> None:  # fmt: skip
    """Both tools on one real pair in one setup; prints one row per tool."""
    wall = {"primage": [], "elastix": []}
    cpu = {"primage": [], "elastix": []}
    command = []
    for _ in range(repeats):
        seconds, used, field = elastix_command(ct_path, moving_path, folder, mask)
        wall["elastix"].append(seconds)
        cpu["elastix"].append(used)
        seconds, used, transform, sidecar = primage_in_process(
            ct_path, moving_path, folder, preset, mask
        )
        wall["primage"].append(seconds)
        cpu["primage"].append(used)
        command.append(primage_command(ct_path, moving_path, folder, preset, mask)[0])
    errors = {
        "primage": transform_error(transform, truth, grid, tumour),
        "elastix": transform_error(field, truth, grid, tumour),
    }
    # The QC's mutual information (numpy, 32 bins) at the truth and at each result: shows
    # whether the truth is where the metric peaks.
    field_image = sitk.GetImageFromArray(field, isVector=True)
    field_image.CopyInformation(grid)
    estimates = {
        "truth": truth,
        "primage": transform,
        "elastix": sitk.DisplacementFieldTransform(field_image),
    }
    mi = {
        key: similarity(grid, moving, estimate, region)["mutual_information"]
        for key, estimate in estimates.items()
    }
    notes = {
        "primage": f"{preset}; start {sidecar['initialisation']['method']}, "
        f"kept {sidecar['acceptance'].get('kept')}",
        "elastix": "default rigid map" + ("" if mask is None else " + fixed mask"),
    }
    best = {tool: min(values) for tool, values in wall.items()}
    for tool in ("primage", "elastix"):
        ratio = f"{best['primage'] / best['elastix']:6.2f}" if tool == "primage" else ""
        spread = f" (wall {min(wall[tool]):.2f}-{max(wall[tool]):.2f})" if repeats > 1 else ""
        if tool == "primage":
            spread += f"; new process {min(command):.2f} s"
        print(
            f"{label:14s} {setup:6s} {tool:8s} {best[tool]:7.2f} {min(cpu[tool]):6.2f} "
            f"{ratio:>6s} {errors[tool]['mean_mm']:8.3f} "
            f"{errors[tool]['max_mm']:8.3f} {mi[tool]:6.3f} {mi['truth']:8.3f}  "
            f"{notes[tool]}{spread}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="best-of-N wall times")
    parser.add_argument(
        "--region-mm",
        type=float,
        default=30.0,
        help="real cases: margin (mm) of the tumour-region mask around the CT tumour",
    )
    parser.add_argument(
        "--cases",
        default="mni-rigid,mni-affine,mni-bspline,phantom-rigid,phantom-affine,"
        "sts-003,sts-005,sts-012,sts-pet",
        help="comma-separated cases",
    )
    args = parser.parse_args()
    try:
        import itk  # noqa: F401

        itk.ElastixRegistrationMethod  # noqa: B018 - loads the lazy module before timing
    except ImportError:
        sys.exit("itk-elastix is not installed: pip install -e .[bench]")
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    real = [n for n in names if n.startswith("sts")]
    names = [n for n in names if not n.startswith("sts")]
    sources = mni_sources() if any(n.startswith("mni") for n in names) else None
    header = (
        f"{'case':15s} {'voxel mm':>8s} {'tool':8s} {'time s':>7s} {'ratio':>6s} "
        f"{'TRE mean':>8s} {'TRE max':>8s} {'Dice':>6s}"
    )
    if names:
        print(header)
        print("-" * len(header))
    for name in names:
        family, kind = name.split("-", 1)
        case = mni_case(kind, sources) if family == "mni" else phantom_case(kind)
        voxel = min(case["fixed"].GetSpacing())
        timings = {"primage": [], "elastix": []}
        estimates = {}
        for _ in range(args.repeats):
            seconds, estimates["elastix"] = run_elastix(case)
            timings["elastix"].append(seconds)
            seconds, estimates["primage"] = run_primage(case)
            timings["primage"].append(seconds)
        best = {tool: min(values) for tool, values in timings.items()}
        for tool in ("primage", "elastix"):
            figures = evaluate(case, estimates[tool])
            ratio = f"{best['primage'] / best['elastix']:6.2f}" if tool == "primage" else " " * 6
            print(
                f"{name:15s} {voxel:8.2f} {tool:8s} {best[tool]:7.2f} {ratio} "
                f"{figures['mean_mm']:8.3f} {figures['max_mm']:8.3f} {figures['dice']:6.3f}",
                flush=True,
            )
    if names:
        print(
            "\nTRE: distance (mm) between where the estimated and the true transform send each "
            "fixed voxel inside the mask; ratio: primage time / elastix time (<= 1: no slower)."
        )
    if real:
        real_cases(real, args.repeats, args.region_mm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
