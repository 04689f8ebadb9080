"""The cohort pipeline on the three real ibsi-sts cases, assembled from their DICOM: how far
the register step moves the co-registered PET and T1w MR away from the scanner's alignment
(all three series share one FrameOfReferenceUID, so the right answer is "not at all").

Run: ``.venv/bin/python benchmarks/bench_pipeline_frame_of_reference.py [--old-commit C]
[--no-preprocess]``. Every configuration uses reference ``ct`` and the default steps
preprocess + register (``--no-preprocess``: register only):

* ``old``: the pipeline of commit C (default f0683ac, before the frame of reference was
  used: every series registered with its preset), unpacked with ``git archive`` into a
  temporary folder and run there;
* ``resample`` (the new default), ``refine`` and ``register`` (``register.same_frame_of_
  reference``) with this checkout.

Printed per case and series: the mean (and maximum) displacement ``|T(x) - x|`` over the
voxels of the CT's tumour mask (mm; 0 = left where the scanner put it), the QC verdict and
the register unit's time. The old run reads the same assembled case folders.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import SimpleITK as sitk  # noqa: E402

from primage.cli import main as primage_main  # noqa: E402
from primage.pipeline import discover_cohort, run_cohort  # noqa: E402
from primage.pipeline.steps import displacement_mm  # noqa: E402
from primage.registration.core import read_transform  # noqa: E402

DICOM = ROOT.parent / "shared" / "data" / "ibsi-sts" / "dicom"
CONFIG = {"reference": "ct", "steps": ["preprocess", "register"], "register": {"snapshots": False}}
MOVING = ("pet", "t1w")
OLD_RUN = """
import json, sys
from primage.pipeline import run_cohort
run_cohort(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], workers=0)
"""


def assemble(folder: Path) -> Path:
    secret = folder / "secret.txt"
    secret.write_text("benchmark-secret-0123456789abcdef")
    inventory = folder / "inventory.csv"
    assert primage_main(["dicom", "scan", "-i", str(DICOM), "-o", str(inventory), "-q"]) == 0
    cohort = folder / "cohort"
    code = primage_main(["dicom", "assemble", "-i", str(DICOM), "--inventory", str(inventory),
                         "-o", str(cohort), "--secret-file", str(secret), "-q"])  # fmt: skip
    assert code == 0
    return cohort


def run_old(commit: str, cohort: Path, out: Path, work: Path) -> float:
    source = work / f"primage-{commit}"
    source.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", OLD_RUN, str(cohort), json.dumps(CONFIG), str(out)],
        cwd=source,  # the old package, not this checkout's
        check=True,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"},
    )
    return time.perf_counter() - started


def measure(cases, out: Path) -> dict:
    rows = {}
    for case in cases:
        ct = sitk.ReadImage(str(case.series["ct"]))
        tumour = sitk.ReadImage(str(case.masks["ct"]))
        manifest = json.loads((out / case.case_id / "register" / "step.json").read_text())
        for role in MOVING:
            folder = out / case.case_id / "register"
            transform = read_transform(folder / f"{role}_to_ct.tfm")
            qc = json.loads((folder / f"{role}_qc.json").read_text())
            moved = displacement_mm(transform, ct, tumour)
            rows[case.case_id, role] = (
                moved["mean"],
                moved["max"],
                qc["verdict"],
                qc.get("alignment", "registered"),
                manifest["units"][role]["seconds"],
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-commit", default="f0683ac")
    parser.add_argument(
        "--no-preprocess", action="store_true", help="register step only (as the real-data test)"
    )
    args = parser.parse_args()
    if args.no_preprocess:
        CONFIG["steps"] = ["register"]
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        cohort = assemble(work)
        cases = discover_cohort(cohort)
        results = {}
        seconds = run_old(args.old_commit, cohort, work / "old", work)
        results[f"old ({args.old_commit})"] = (measure(cases, work / "old"), seconds)
        for mode in ("resample", "refine", "register"):
            config = {**CONFIG, "register": {**CONFIG["register"], "same_frame_of_reference": mode}}
            started = time.perf_counter()
            run_cohort(cases, config, work / mode, workers=0)
            seconds = time.perf_counter() - started
            results[mode] = (measure(cases, work / mode), seconds)

    names = list(results)
    print(f"steps: {', '.join(CONFIG['steps'])}")
    print("Displacement from the scanner's alignment over the CT tumour, mean / max mm "
          "(QC verdict; what was done; register unit s)")  # fmt: skip
    print(f"{'case':<16}{'series':<7}" + "".join(f"{n:<40}" for n in names))
    for index, case in enumerate(cases):
        for role in MOVING:
            cells = []
            for name in names:
                mean, high, verdict, alignment, unit_s = results[name][0][case.case_id, role]
                cells.append(f"{mean:6.2f} / {high:6.2f} ({verdict}; {alignment}; {unit_s:.1f})")
            label = f"case {index + 1}"
            print(f"{label:<16}{role:<7}" + "".join(f"{c:<40}" for c in cells))
    for name in names:
        means = [row[0] for row in results[name][0].values()]
        print(
            f"{name}: mean displacement {min(means):.2f}-{max(means):.2f} mm over "
            f"{len(means)} series; whole run {results[name][1]:.1f} s"
        )


if __name__ == "__main__":
    main()
