"""The pipeline's DICOM export (``export.dicom: true``) on the three real ibsi-sts cases.

Run: ``.venv/bin/python benchmarks/bench_pipeline_dicom_export.py``. The DICOM folder is
scanned and assembled (pseudonyms from a throw-away secret), then the pipeline runs with
reference ``ct`` and the steps register + segment + radiomics (CT and PET features of the
RT-structure tumour; no preprocessing: the ct preset resamples to 1 mm, which would put the
results off the CT series' grid) and the export on. Printed per case: the ``dicom`` step's
time, the objects with their sizes, the SR's measurement count, and an independent
read-back of the tumour SEG with highdicom (voxels placed by physical point on the
pipeline's ``segment/tumour.nii.gz``); then a second run, where the step is up to date.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import highdicom as hd  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from primage.cli import main as primage_main  # noqa: E402
from primage.pipeline import discover_cohort, run_cohort, validate_config  # noqa: E402

DICOM = ROOT.parent / "shared" / "data" / "ibsi-sts" / "dicom"


def seg_on_nifti_grid(path: Path, nifti: sitk.Image) -> tuple[np.ndarray, float]:
    """The SEG's voxels on the NIfTI grid (nearest voxel centre) and the largest distance
    (mm) between a SEG voxel centre and the NIfTI voxel centre it landed on."""
    seg = hd.seg.segread(path)
    read = seg.get_volume(combine_segments=True, skip_overlap_checks=True).to_simpleitk()
    size = np.array(read.GetSize())
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()]).astype(float)
    matrix = np.asarray(read.GetDirection()).reshape(3, 3) @ np.diag(read.GetSpacing())
    points = matrix @ index + np.asarray(read.GetOrigin())[:, None]
    target = np.asarray(nifti.GetDirection()).reshape(3, 3) @ np.diag(nifti.GetSpacing())
    continuous = np.linalg.solve(target, points - np.asarray(nifti.GetOrigin())[:, None])
    nearest = np.round(continuous).astype(int)
    back = target @ nearest + np.asarray(nifti.GetOrigin())[:, None]
    out = np.zeros(sitk.GetArrayViewFromImage(nifti).shape, np.uint8)
    out[nearest[2], nearest[1], nearest[0]] = sitk.GetArrayFromImage(read).ravel()
    return out, float(np.max(np.linalg.norm(back - points, axis=0)))


def main() -> int:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        secret = root / "secret.txt"
        secret.write_text("bench-secret-0123456789abcdef")
        inventory = root / "inventory.csv"
        assert primage_main(["dicom", "scan", "-i", str(DICOM), "-o", str(inventory), "-q"]) == 0
        assert (
            primage_main(
                [
                    "dicom",
                    "assemble",
                    "-i",
                    str(DICOM),
                    "--inventory",
                    str(inventory),
                    "-o",
                    str(root / "cohort"),
                    "--secret-file",
                    str(secret),
                    "-q",
                ]
            )  # fmt: skip
            == 0
        )
        config = validate_config(
            {
                "reference": "ct",
                "steps": ["register", "segment", "radiomics"],
                "radiomics": {"images": ["ct", "pet"]},
                "export": {"dicom": True, "dicom_source": str(DICOM), "inventory": str(inventory)},
            }
        )
        for run in ("first run", "second run"):
            started = time.perf_counter()
            result = run_cohort(discover_cohort(root / "cohort"), config, root / "out", workers=0)
            print(
                f"== {run}: {time.perf_counter() - started:.1f} s for {len(result.summaries)} cases"
            )
            for summary in result.summaries:
                case = summary["case_id"]
                rows = {r["step"]: r for r in summary["steps"]}
                dicom = root / "out" / case / "dicom"
                line = (
                    f"{case[:8]}: dicom step {rows['dicom']['state']} {rows['dicom']['seconds']} s"
                )
                if summary["status"] == "failed":
                    print(line, "FAILED:", summary["message"])
                    continue
                manifest = json.loads((dicom / "dicom_export.json").read_text())
                sizes = ", ".join(
                    f"{o['file']} {o['bytes'] / 1024:.1f} KiB" for o in manifest["objects"]
                )
                print(f"{line}; {sizes}; SR {manifest['measurements']} measurements")
                if run == "first run":
                    nifti = sitk.ReadImage(str(root / "out" / case / "segment" / "tumour.nii.gz"))
                    voxels, distance = seg_on_nifti_grid(dicom / "seg_tumour.dcm", nifti)
                    truth = sitk.GetArrayFromImage(nifti) > 0
                    differ = int(np.count_nonzero((voxels > 0) != truth))
                    print(
                        f"  SEG read back with highdicom: {int(truth.sum())} tumour voxels, "
                        f"{differ} differing, voxel centres within {distance:.2g} mm"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
