"""Generated training data for the built-in segmentation trainer: tumour-like blobs.

Each case is a small noisy MR-like volume (smooth bias field, Gaussian noise) holding one
lobulated ellipsoidal "tumour" brighter than the background, with its exact mask. Used by
the tests, the demo and anyone who wants to check a training run end to end. Imports only
numpy and SimpleITK; deterministic for a given seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.io import write_image, write_text


def blob_case(
    seed: int,
    shape: tuple[int, int, int] = (32, 32, 32),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    noise: float = 0.35,
) -> tuple[sitk.Image, sitk.Image]:
    """One (image, mask) pair: Float32 image, UInt8 mask (1 = tumour) on the same grid."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    size = np.array(shape, float)
    centre = size / 2 + rng.uniform(-0.18, 0.18, 3) * size
    axes = rng.uniform(0.12, 0.25, 3) * size
    d = np.sqrt(
        ((z - centre[0]) / axes[0]) ** 2
        + ((y - centre[1]) / axes[1]) ** 2
        + ((x - centre[2]) / axes[2]) ** 2
    )
    # Lobulation: a smooth angular modulation of the radius.
    theta = np.arctan2(y - centre[1], x - centre[2])
    phi = np.arctan2(z - centre[0], np.hypot(y - centre[1], x - centre[2]))
    k1, k2 = rng.integers(2, 5, 2)
    radius = 1.0 + 0.15 * np.sin(k1 * theta + rng.uniform(0, 6.3)) * np.cos(k2 * phi)
    mask = (d <= radius).astype(np.uint8)
    bias = 1.0 + 0.2 * (x / size[2] - 0.5) + 0.15 * (z / size[0] - 0.5)
    tissue = 1.0 + 0.3 * np.sin(y / 5.0 + rng.uniform(0, 6.3))  # textured background
    signal = np.where(mask > 0, 2.0, tissue) * bias
    image = signal + rng.normal(0.0, noise, shape)
    out_image = sitk.GetImageFromArray(image.astype(np.float32))
    out_mask = sitk.GetImageFromArray(mask)
    for item in (out_image, out_mask):
        item.SetSpacing(spacing)
    return out_image, out_mask


def write_blob_pairs(
    folder: str | os.PathLike, count: int, seed: int = 0, **kwargs
) -> tuple[Path, list[tuple[Path, Path]]]:
    """Write ``count`` blob cases and a ``pairs.csv`` (``image,mask``, relative paths)."""
    folder = Path(folder)
    pairs = []
    lines = ["image,mask"]
    for index in range(count):
        image, mask = blob_case(seed + index, **kwargs)
        image_path = write_image(image, folder / f"case{index:03d}_image.nii.gz")
        mask_path = write_image(mask, folder / f"case{index:03d}_mask.nii.gz")
        pairs.append((image_path, mask_path))
        lines.append(f"{image_path.name},{mask_path.name}")
    csv_path = write_text("\n".join(lines) + "\n", folder / "pairs.csv")
    return csv_path, pairs
