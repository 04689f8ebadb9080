"""Small generated cohorts for the pipeline tests (the synthetic digital patient, small grids)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import SimpleITK as sitk

from primage.synthetic import make_digital_patient, write_case

#: The patient's field of view (144 x 144 x 160 mm) on a coarse grid: fast and complete.
SMALL = {"size": (48, 48, 16), "spacing": (3.0, 3.0, 10.0)}
#: A name planted in a file header and in case.json: it must never reach an output.
PLANTED_NAME = "Doe^Johnathan"


def write_small_case(folder: Path, seed: int, *, roles=None, metadata=None) -> Path:
    """A digital-patient case folder; ``roles`` keeps only those series (and their values)."""
    write_case(make_digital_patient(seed, **SMALL), folder)
    shutil.rmtree(folder / "ground_truth")
    (folder / "ground_truth.json").unlink()
    (folder / "tissues.nii.gz").unlink()
    if roles is not None:
        for role, extra in (("t1w", None), ("ct", None), ("dwi", "dwi.bval"), ("dce", "dce.times")):
            if role not in roles:
                (folder / f"{role}.nii.gz").unlink()
                if extra:
                    (folder / extra).unlink()
    if metadata is not None:
        (folder / "case.json").write_text(json.dumps(metadata), encoding="utf-8")
    return folder


def plant_name_in_header(path: Path) -> None:
    """Rewrite an image with a person's name in its header (NIfTI descrip)."""
    image = sitk.ReadImage(str(path))
    image.SetMetaData("ITK_FileNotes", PLANTED_NAME)
    sitk.WriteImage(image, str(path), useCompression=True)


def files_containing(folder: Path, text: str) -> list[Path]:
    """Every file under ``folder`` whose bytes (decompressed for .gz) contain ``text``."""
    needle = text.encode("utf-8")
    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        if needle in data:
            found.append(path)
    return found
