"""Small deterministic images and parameter files for the radiomics tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from _primage_images import blob_labels, image_from_array

#: A reduced feature set: fast, and still shape, first order and texture.
FAST_PARAMS = """\
setting:
  binWidth: 10
  label: 1
imageType:
  Original: {}
featureClass:
  shape:
  firstorder:
  glcm: [Contrast, JointEntropy, Idm]
  glszm: [ZonePercentage, SmallAreaEmphasis]
"""


def textured_image(shape=(24, 32, 32), seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Float32 array: smooth structure plus noise (so texture features vary)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape).astype(float)
    values = 100.0 + 40.0 * np.sin(x / 3.0) * np.cos(y / 4.0) + 10.0 * z / shape[0]
    return (scale * (values + rng.normal(0.0, 8.0, shape))).astype(np.float32)


def label_array(shape=(24, 32, 32)) -> np.ndarray:
    """Labels 1 (sphere), 2 (box), 5 (small cube) and 7 (a single voxel)."""
    labels = blob_labels(shape)
    labels[22, 30, 30] = 7
    return labels


def write_case(folder: Path, *, seed: int = 0) -> dict[str, Path]:
    """Writes t2w.nii.gz, ct.nii.gz (same grid), labels.nii.gz and fast.yaml into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    t2w = image_from_array(textured_image(seed=seed))
    ct = image_from_array((textured_image(seed=seed + 1) - 100.0).astype(np.float32))
    labels = image_from_array(label_array())
    paths = {
        "t2w": folder / "t2w.nii.gz",
        "ct": folder / "ct.nii.gz",
        "labels": folder / "labels.nii.gz",
        "params": folder / "fast.yaml",
    }
    sitk.WriteImage(t2w, str(paths["t2w"]))
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(paths["labels"]))
    paths["params"].write_text(FAST_PARAMS)
    return paths
