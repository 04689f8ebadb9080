"""The project's shared, read-only data (real cases, the IBSI phantom) for tests.

It sits beside the repository (``../shared/data``, as in CI); ``PRIMAGE_SHARED_DATA`` points
elsewhere. Missing data is a failure with a clear message, never a skip: the checks that use
real data must run.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PRIMAGE_SHARED_DATA", REPO.parent / "shared" / "data"))
IBSI_STS_CASES = ("STS_003", "STS_005", "STS_012")


def shared_data(name: str) -> Path:
    """The folder ``name`` of the shared data (e.g. ``ibsi``, ``ibsi-sts``); fails if missing."""
    folder = SHARED_DATA / name
    assert folder.is_dir(), (
        f"shared test data {name!r} not found in {folder}: the project's shared/ folder must sit "
        "beside the repository (or set PRIMAGE_SHARED_DATA)"
    )
    return folder


def ibsi_sts_nifti(case: str, series: str, kind: str = "image") -> Path:
    """IBSI's reference NIfTI of one real case: series CT, PET or MR_T1; kind image or mask."""
    path = shared_data("ibsi-sts") / "nifti" / case / f"{series}_{kind}.nii.gz"
    assert path.is_file(), f"missing {path}"
    return path


def ibsi_sts_dicom(case: str | None = None) -> Path:
    """The archive DICOM folder of the real cases (or of one case)."""
    folder = shared_data("ibsi-sts") / "dicom"
    return folder / case if case else folder
