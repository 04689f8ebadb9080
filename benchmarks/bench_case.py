"""One clinical-size case through the cohort pipeline: wall, CPU, peak memory and I/O per step.

The digital patient (primage.synthetic: its anatomy, tissue table, Rician MR noise, Parker
AIF and Tofts kinetics) is rendered on each modality's own clinical grid, all over one
patient: CT 512 x 512 x 200 at 0.8 x 0.8 x 2.5 mm, T2w 320 x 320 x 40, DWI 192 x 192 x 30
x 8 b-values, DCE 256 x 256 x 30 x 60 frames (every 5 s), PET 192 x 192 x 200 (SUV per
tissue, 6 mm PSF; PET and CT share a frame of reference as on a PET/CT). The case is made
once into a cache folder outside the repository.

The pipeline's default configuration runs, with Tofts enabled (ADC, DCE semi-quantitative,
Tofts and FCF in the kinetics step), segmentation "given" (the generated tumour mask) and
one ITK thread (one case per core, as a cohort runs). Each step runs in its own process,
``run_cohort(..., workers=0)`` with the steps so far (earlier steps are up to date and
skipped), so every step gets its own CPU seconds (user + system, all threads) and peak
RSS; the time spent in ``primage.io.read_image`` / ``write_image`` / ``write_series`` gives the I/O share. A
final run with nothing to do measures what a process pays around a step (start-up,
up-to-date checks, the report). Then the whole chain runs once more, into a fresh folder
and in one process, as a cohort worker runs a case: that is the per-case figure the goal
is checked on (a step's separate process also pays for fresh memory that one process
reuses from step to step). Usage:

    python benchmarks/bench_case.py [--scale 1.0] [--cache DIR]

``--scale 0.5`` halves every grid axis (1/8 of the voxels) for a quick run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = ("preprocess", "register", "segment", "kinetics", "radiomics")
#: size (x, y, z), spacing (mm), rotation (deg) per role; MR oblique, CT and PET axial.
GRIDS = {
    "ct": ((512, 512, 200), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0)),
    "t2w": ((320, 320, 40), (0.6, 0.6, 4.0), (4.0, 0.0, 6.0)),
    "dwi": ((192, 192, 30), (1.2, 1.2, 5.0), (4.0, 0.0, 6.0)),
    "dce": ((256, 256, 30), (0.9, 0.9, 5.0), (4.0, 0.0, 6.0)),
    "pet": ((192, 192, 200), (2.1, 2.1, 2.5), (0.0, 0.0, 0.0)),
}
FRAME_TIMES = np.arange(60) * 5.0
#: Invented SUVs per tissue label (air, fat, soft tissue, muscle, bone, liver, kidney,
#: vessel, tumour, necrosis): only for the cost of handling a PET series.
PET_SUV = np.array([0.0, 0.4, 1.0, 0.8, 1.3, 2.2, 3.0, 1.8, 6.0, 1.0])
GOALS = {"cpu_s": 60.0, "rss_mib": 4096.0}


# --- the case -------------------------------------------------------------------------------


def _grid(role: str, scale: float):
    from primage.synthetic import make_grid

    size, spacing, angles = GRIDS[role]
    size = tuple(max(4, int(round(s * scale))) for s in size)
    spacing = tuple(float(sp) * GRIDS[role][0][i] / size[i] for i, sp in enumerate(spacing))
    return make_grid(size, spacing, angles_deg=angles)


def _labels(grid, seed: int = 0, slab: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Tissue labels (z, y, x) and points (only for grids small enough), slab by slab so a
    52-million-voxel CT needs a few hundred MB; the tumour outline is the same everywhere
    (same random stream for every slab)."""
    import SimpleITK as sitk

    from primage.synthetic import physical_points, tissue_labels

    size = grid.GetSize()
    labels = np.empty((size[2], size[1], size[0]), np.uint8)
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    for first in range(0, size[2], slab):
        count = min(slab, size[2] - first)
        part = sitk.Image([size[0], size[1], count], sitk.sitkUInt8)
        part.SetSpacing(grid.GetSpacing())
        part.SetDirection(grid.GetDirection())
        offset = direction @ np.array([0.0, 0.0, first * grid.GetSpacing()[2]])
        part.SetOrigin((np.asarray(grid.GetOrigin()) + offset).tolist())
        points = physical_points(part)
        labels[first : first + count] = tissue_labels(points, np.random.default_rng((seed, 0)))
    return labels


def _image(array: np.ndarray, grid, pixel):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return sitk.Cast(image, pixel)


def make_case(folder: Path, scale: float) -> None:
    """Render the clinical-size case into ``folder`` (skipped when it is complete)."""
    import SimpleITK as sitk

    from primage.io import volumes_to_series, write_image, write_json, write_text
    from primage.synthetic import (
        DCE_SEQUENCE,
        DEFAULT_B_VALUES,
        TISSUES,
        bias_field_model,
        extended_tofts,
        parker_aif,
        physical_points,
        rician,
        spgr_signal,
    )

    if (folder / "done.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)

    def table(attribute: str) -> np.ndarray:
        lookup = np.zeros(max(TISSUES) + 1)
        for label, tissue in TISSUES.items():
            lookup[label] = getattr(tissue, attribute)
        return lookup

    def mr(array):
        return np.clip(np.round(array), 0, 32767)

    # CT: HU per tissue + Gaussian noise, slab-rendered labels.
    grid = _grid("ct", scale)
    labels = _labels(grid)
    rng = np.random.default_rng((0, 5))
    ct = table("ct_hu")[labels] + rng.normal(0, 12.0, labels.shape).astype(np.float32)
    write_image(
        _image(np.clip(np.round(ct), -1024, 3071), grid, sitk.sitkInt16), folder / "ct.nii.gz"
    )
    del ct, labels

    # PET: SUV per tissue through a 6 mm FWHM PSF, noise ~ sqrt(SUV).
    grid = _grid("pet", scale)
    labels = _labels(grid)
    pet = _image(PET_SUV[labels].astype(np.float32), grid, sitk.sitkFloat32)
    pet = sitk.SmoothingRecursiveGaussian(pet, 6.0 / 2.355)
    values = sitk.GetArrayFromImage(pet)
    rng = np.random.default_rng((0, 6))
    values = np.maximum(values, 0)
    values = np.maximum(values + rng.normal(0, 1, values.shape) * 0.15 * np.sqrt(values), 0)
    write_image(_image(values.astype(np.float32), grid, sitk.sitkFloat32), folder / "pet.nii.gz")
    del pet, values, labels

    # T2w: the reference; the tumour mask is drawn on it.
    grid = _grid("t2w", scale)
    points = physical_points(grid)
    labels = _labels(grid)
    bias = bias_field_model(points, labels > 0)
    del points
    t2w = rician(table("t2w")[labels] * bias, 15.0, np.random.default_rng((0, 1)))
    write_image(_image(mr(t2w), grid, sitk.sitkInt16), folder / "t2w.nii.gz")
    tumour = np.isin(labels, (8, 9)).astype(np.uint8)
    write_image(_image(tumour, grid, sitk.sitkUInt8), folder / "tumour.nii.gz")
    del t2w, labels, bias

    # DWI: mono-exponential, 8 b-values, same coil bias for every b.
    grid = _grid("dwi", scale)
    points = physical_points(grid)
    labels = _labels(grid)
    bias = bias_field_model(points, labels > 0)
    s0, adc = table("dwi_s0")[labels] * bias, table("adc")[labels]
    rng = np.random.default_rng((0, 3))
    volumes = [
        _image(mr(rician(s0 * np.exp(-b * adc), 12.0, rng)), grid, sitk.sitkInt16)
        for b in DEFAULT_B_VALUES
    ]
    write_image(volumes_to_series(volumes), folder / "dwi.nii.gz")
    write_text(" ".join(f"{b:g}" for b in DEFAULT_B_VALUES) + "\n", folder / "dwi.bval")
    del volumes, points

    # DCE: extended Tofts with the Parker AIF, SPGR signal, Rician noise, 60 frames.
    grid = _grid("dce", scale)
    points = physical_points(grid)
    labels = _labels(grid)
    bias = bias_field_model(points, labels > 0)
    del points
    seq = DCE_SEQUENCE
    fine = np.arange(0.0, FRAME_TIMES[-1] + 0.25, 0.25)
    blood = parker_aif(fine)
    plasma = blood / (1.0 - seq["haematocrit"])
    curves = np.zeros((max(TISSUES) + 1, FRAME_TIMES.size))
    for label, tissue in TISSUES.items():
        if label:
            curve = (
                blood
                if tissue.name == "vessel"
                else extended_tofts(fine, plasma, tissue.ktrans, tissue.ve, tissue.vp)
            )
            curves[label] = np.interp(FRAME_TIMES, fine, curve)
    m0 = table("m0")[labels] * bias
    r10 = np.where(labels > 0, 1.0 / np.maximum(table("t10")[labels], 1e-3), 1.0)
    rng = np.random.default_rng((0, 4))
    volumes = []
    for frame in range(FRAME_TIMES.size):
        r1 = r10 + seq["relaxivity_per_mM_per_s"] * curves[labels, frame]
        signal = spgr_signal(m0, r1, seq["repetition_time_s"], seq["flip_angle_deg"])
        volumes.append(_image(mr(rician(signal, 20.0, rng)), grid, sitk.sitkInt16))
    write_image(volumes_to_series(volumes, time_spacing=5.0), folder / "dce.nii.gz")
    write_text(" ".join(f"{t:g}" for t in FRAME_TIMES) + "\n", folder / "dce.times")
    del volumes

    write_json(
        {
            "files": {
                "ct.nii.gz": {"frame_of_reference": "pet-ct-1"},
                "pet.nii.gz": {"frame_of_reference": "pet-ct-1"},
            },
            "dce": {
                "t10_s": 1.3,
                "flip_angle_deg": seq["flip_angle_deg"],
                "repetition_time_s": seq["repetition_time_s"],
            },
        },
        folder / "case.json",
    )
    sizes = {role: list(_grid(role, scale).GetSize()) for role in GRIDS}
    write_json({"scale": scale, "sizes": sizes}, folder / "done.json")


# --- one step in its own process --------------------------------------------------------------


def driver(cohort: str, steps: str, out: str, report: str) -> None:
    """Child process: the pipeline with ``steps`` (comma-separated) and timed I/O."""
    import primage.io as pio
    import primage.registration as registration

    spent = {"read_s": 0.0, "write_s": 0.0}
    nested: list[float] = []  # per open timed call: seconds spent in timed calls inside it

    def timed(function, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            nested.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                inner = nested.pop()
                seconds = time.perf_counter() - start
                if key is not None:
                    spent[key] += seconds - inner
                if nested:
                    nested[-1] += seconds

        return wrapper

    # Patched before the pipeline imports them by name.
    pio.read_image = timed(pio.read_image, "read_s")
    pio.write_image = timed(pio.write_image, "write_s")
    pio.write_series = timed(pio.write_series, "write_s")  # 4D .nii: frame by frame
    # The register step resamples a 4D series frame by frame while write_series writes
    # it: that resampling is compute, not writing.
    registration.resample_to_fixed = timed(registration.resample_to_fixed, None)
    from primage.pipeline import run_cohort
    from primage.pipeline.config import DEFAULT_CONFIG

    config = json.loads(json.dumps(DEFAULT_CONFIG))
    config["steps"] = [s for s in steps.split(",") if s]
    config["kinetics"]["tofts"]["enabled"] = True
    config["radiomics"]["images"] = ["t2w", "ct", "pet", "adc", "iauc60", "ktrans"]
    result = run_cohort(cohort, config, out, workers=0, threads_per_worker=1)
    summary = result.summaries[0] if result.summaries else {}
    seconds = {
        row["step"]: float(row["seconds"])
        for row in summary.get("steps", [])
        if row.get("seconds") and row.get("state") == "done"
    }
    Path(report).write_text(
        json.dumps({**spent, "step_seconds": seconds, "failed": result.failed}), encoding="utf-8"
    )


def run_step(cohort: Path, steps: list[str], out: Path, report: Path) -> dict:
    from _process import run_measured

    command = [sys.executable, __file__, "--driver", str(cohort), ",".join(steps), str(out)]
    result = run_measured([*command, str(report)], cwd=REPO)
    if result["returncode"] != 0:
        raise SystemExit(f"the pipeline run with steps {steps} failed")
    data = json.loads(report.read_text(encoding="utf-8"))
    if data["failed"]:
        raise SystemExit(f"case failed in the run with steps {steps}: {data['failed']}")
    return {**result, **data}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="grid axes x SCALE")
    parser.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "primage-bench-cache"),
        help="folder for the generated case (made once; default: %(default)s)",
    )
    parser.add_argument("--driver", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        driver(*args.driver)
        return 0
    root = Path(args.cache) / f"case-x{args.scale:g}"
    cohort = root / "cohort"
    started = time.perf_counter()
    make_case(cohort / "case01", args.scale)
    sizes = json.loads((cohort / "case01" / "done.json").read_text())["sizes"]
    print(
        f"primage per-case benchmark; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at start (other work shares the machine: CPU seconds are "
        "the steadier figure); case ready in "
        f"{time.perf_counter() - started:.0f} s"
    )
    print("grids: " + ", ".join(f"{r} {'x'.join(map(str, s))}" for r, s in sizes.items()))
    out = root / "out"
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for count in range(1, len(STEPS) + 1):
        result = run_step(cohort, list(STEPS[:count]), out, root / "step.json")
        rows.append((STEPS[count - 1], result))
    idle = run_step(cohort, list(STEPS), out, root / "step.json")
    # The case as a cohort run does it: every step in one process (a worker's), where the
    # memory a step frees serves the next one.
    whole = root / "out-one-process"
    shutil.rmtree(whole, ignore_errors=True)
    chain = run_step(cohort, list(STEPS), whole, root / "step.json")
    shutil.rmtree(whole, ignore_errors=True)
    print(
        "\n| step | step wall s | process wall s | process CPU s | peak RSS | read s | write s "
        "| I/O share of the step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    total_cpu = total_wall = 0.0
    peak = 0.0
    for step, r in rows:
        step_wall = r["step_seconds"].get(step, math.nan)
        io = r["read_s"] + r["write_s"]
        total_cpu += r["cpu"] - idle["cpu"]
        total_wall += step_wall
        peak = max(peak, r["rss"])
        print(
            f"| {step} | {step_wall:.1f} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss']:,.0f} MiB | "
            f"{r['read_s']:.1f} | {r['write_s']:.1f} | {io / max(step_wall, 1e-9) * 100:.0f} % |"
        )
    print(
        f"| (a run with nothing to do) | — | {idle['wall']:.1f} | {idle['cpu']:.1f} | "
        f"{idle['rss']:,.0f} MiB | {idle['read_s']:.1f} | {idle['write_s']:.1f} | — |"
    )
    units = []
    for step in STEPS:
        manifest = out / "case01" / step / "step.json"
        if manifest.is_file():
            seconds = json.loads(manifest.read_text(encoding="utf-8"))["units"]
            parts = ", ".join(f"{n} {u['seconds']:.1f}" for n, u in seconds.items())
            units.append(f"{step}: {parts}")
    # The first unit of a kinetics role includes reading and cutting its series.
    print("\nUnit wall s (step.json): " + "; ".join(units))
    steps_cpu = total_cpu + idle["cpu"]
    print(
        f"\nSteps apart: {total_wall:.0f} s wall; {steps_cpu:.0f} CPU-s (each step's process "
        f"less the {idle['cpu']:.1f} CPU-s of a run with nothing to do, plus one such run); "
        f"peak RSS {peak:,.0f} MiB."
    )
    print(
        f"Per case (the whole chain in one process, as a cohort worker runs it): "
        f"{chain['wall']:.0f} s wall, {chain['cpu']:.0f} CPU-s, peak RSS {chain['rss']:,.0f} MiB."
    )
    print(
        f"Goals: <= {GOALS['cpu_s']:.0f} CPU-s per case: "
        f"{'met' if chain['cpu'] <= GOALS['cpu_s'] else 'MISSED'}; peak <= 4 GB: "
        f"{'met' if max(peak, chain['rss']) <= GOALS['rss_mib'] else 'MISSED'}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
