"""Write (image, mask) pairs as an nnU-Net v2 raw data set.

Layout (what ``nnUNetv2_plan_and_preprocess`` reads from ``nnUNet_raw``)::

    DIR/Dataset<ID:03d>_<NAME>/
        dataset.json      channel_names, labels, numTraining, file_ending
        imagesTr/<NAME>_<NNN>_0000.nii.gz
        labelsTr/<NAME>_<NNN>.nii.gz

Every pair is read and checked first (mask on the image grid, integer labels 0..N with
no gap, every label 0..N present somewhere); the data set is written in a hidden
temporary folder and renamed into place, so bad input leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import read_image, same_geometry, write_image, write_json


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise PrimageInputError(f"dataset id must be 1..999 (nnU-Net), got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name or ""):
        raise PrimageInputError(
            f"dataset name {name!r} must be letters, digits, '_' or '-' (no spaces)"
        )
    return f"Dataset{int(dataset_id):03d}_{name}"


def export_nnunet(
    pairs: list[tuple[Path, Path]],
    dataset_id: int,
    name: str,
    output: str | os.PathLike,
    channel_name: str = "MR",
    label_names: dict[int, str] | None = None,
) -> Path:
    """Write the raw data set; returns its folder (``output/Dataset<ID>_<NAME>``).

    ``pairs``: (image, mask) as file paths or SimpleITK images (the MRML layer passes images).
    """
    folder_name = dataset_folder_name(dataset_id, name)
    target = Path(output) / folder_name
    if Path(output).exists() and not Path(output).is_dir():
        raise PrimageInputError(f"output {output} exists and is not a folder")
    if target.exists():
        raise PrimageInputError(f"{target} already exists; choose another dataset id or output")
    cases = []
    found: set[int] = set()
    for index, (image_item, mask_item) in enumerate(pairs):
        in_memory = isinstance(image_item, sitk.Image)
        image_path = f"image {index + 1}" if in_memory else image_item
        mask_path = f"mask {index + 1}" if isinstance(mask_item, sitk.Image) else mask_item
        image = image_item if in_memory else read_image(image_item, role="image")
        mask = (
            mask_item if isinstance(mask_item, sitk.Image) else read_image(mask_item, role="mask")
        )
        if not same_geometry(image, mask):
            raise PrimageInputError(f"mask {mask_path} is not on the voxel grid of {image_path}")
        array = sitk.GetArrayFromImage(mask)
        if not np.issubdtype(array.dtype, np.integer) and np.any(array != np.round(array)):
            raise PrimageInputError(f"mask {mask_path} is not an integer label image")
        if np.any(array < 0) or np.max(array) > 255:
            raise PrimageInputError(f"mask {mask_path} has labels outside 0..255")
        found |= {int(v) for v in np.unique(array)}
        labels = sitk.GetImageFromArray(array.astype(np.uint8))
        labels.CopyInformation(mask)
        cases.append((image, labels))
    found |= {0}
    if sorted(found) != list(range(max(found) + 1)) or max(found) == 0:
        raise PrimageInputError(
            f"mask labels must be consecutive 0..N with N >= 1 (nnU-Net), found {sorted(found)}"
        )
    names = {0: "background", 1: "tumour", **(label_names or {})}
    labels_json = {names.get(v, f"label_{v}"): v for v in sorted(found)}
    Path(output).mkdir(parents=True, exist_ok=True)
    temporary = Path(output) / f".{folder_name}.part"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        for index, (image, labels) in enumerate(cases):
            case = f"{name}_{index:03d}"
            write_image(image, temporary / "imagesTr" / f"{case}_0000.nii.gz")
            write_image(labels, temporary / "labelsTr" / f"{case}.nii.gz")
        write_json(
            {
                "channel_names": {"0": channel_name},
                "labels": labels_json,
                "numTraining": len(cases),
                "file_ending": ".nii.gz",
                "name": name,
                "description": "written by primage segment export-nnunet",
            },
            temporary / "dataset.json",
        )
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target
