"""DICOM out on the real IBSI soft-tissue-sarcoma cases: sizes, times and agreement.

Run: ``.venv/bin/python benchmarks/bench_dicom_export.py``. For each case (STS_003, STS_005,
STS_012) and series (CT, PET, MR_T1) IBSI's reference mask is written as a DICOM SEG on the
real series, and on the PET the SUV image as a Parametric Map, with the tumour SR. Each
object is read back independently (highdicom's ``get_volume`` + ``to_simpleitk``, placed on
the NIfTI grid by physical point) and compared with the NIfTI: voxels differing, largest
value difference, largest distance between matched voxel centres. Peer: the NIfTI files
themselves (size ratio DICOM / NIfTI.gz); "deflated" is the same object written with
``--deflate``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

from _dicom_readback import values_on_grid  # noqa: E402
from _shared_data import IBSI_STS_CASES, ibsi_sts_dicom, ibsi_sts_nifti  # noqa: E402

from primage.dicom.export import encode, export_results  # noqa: E402


def main() -> int:
    print(
        "| case | series | object | KiB | deflated KiB | NIfTI.gz KiB | write s | read back s "
        "| voxels differing | max value diff | max centre distance mm |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as temporary:
        for case in IBSI_STS_CASES:
            for series in ("CT", "PET", "MR_T1"):
                mask_path = ibsi_sts_nifti(case, series, "mask")
                image_path = ibsi_sts_nifti(case, series)
                maps = {"suv": image_path} if series == "PET" else {}
                out = Path(temporary) / case / series
                result = export_results(
                    ibsi_sts_dicom(case) / series / "image",
                    out,
                    pseudonym=f"P{case[-3:]}X",
                    tumour=mask_path,
                    maps=maps,
                )
                for obj in result.objects:
                    deflated = len(encode(pydicom.dcmread(obj.path), deflate=True)) / 1024
                    if obj.kind == "sr":
                        print(
                            f"| {case} | {series} | SR | {obj.bytes / 1024:.1f} | {deflated:.1f} | | "
                            f"{obj.build_s + obj.write_s:.3f} | {obj.read_back_s:.3f} | | | |"
                        )
                        continue
                    truth_path = mask_path if obj.kind == "seg" else image_path
                    truth = sitk.ReadImage(str(truth_path))
                    start = time.perf_counter()
                    if obj.kind == "seg":
                        volume = hd.seg.segread(obj.path).get_volume(combine_segments=True)
                        fill = 0.0
                    else:
                        volume = hd.pm.ParametricMap.from_dataset(
                            pydicom.dcmread(obj.path)
                        ).get_volume()
                        fill = np.nan
                    values, distance = values_on_grid(volume.to_simpleitk(), truth, fill=fill)
                    read_s = time.perf_counter() - start
                    expected = sitk.GetArrayFromImage(truth).astype(values.dtype)
                    if obj.kind == "seg":
                        expected = (expected > 0).astype(values.dtype)
                    differing = int(np.count_nonzero(values != expected))
                    diff = float(np.nanmax(np.abs(values.astype(float) - expected)))
                    print(
                        f"| {case} | {series} | {obj.kind.upper()} | {obj.bytes / 1024:.1f} | "
                        f"{deflated:.1f} | "
                        f"{truth_path.stat().st_size / 1024:.1f} | "
                        f"{obj.build_s + obj.write_s:.3f} | {read_s:.3f} | {differing} | "
                        f"{diff:.3g} | {distance:.2g} |"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
