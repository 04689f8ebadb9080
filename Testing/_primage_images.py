"""Small deterministic test images for the engine tests (built without PRIMAGE code)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (1.2, 1.0, 2.5)
ORIGIN = (-14.0, 22.5, 7.0)


def oblique_direction(angle_deg: float = 12.0) -> tuple[float, ...]:
    """Rotation about an oblique axis (x+y+z), row-major 3x3."""
    axis = np.ones(3) / math.sqrt(3.0)
    angle = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    return tuple(rotation.ravel().tolist())


def image_from_array(
    array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=None
) -> sitk.Image:
    """A 3D image (array in z, y, x order) on an oblique, anisotropic grid."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction if direction is not None else oblique_direction())
    return image


def step_phantom(shape=(24, 32, 32), sigma=10.0, seed=0, low=100.0, high=200.0):
    """Two flat halves (x < half: ``low``, else ``high``) plus Gaussian noise.

    Returns (noisy image, noise-free array)."""
    clean = np.full(shape, low)
    clean[..., shape[2] // 2 :] = high
    noisy = clean + np.random.default_rng(seed).normal(0.0, sigma, shape)
    return image_from_array(noisy.astype(np.float32)), clean


def blob_labels(shape=(24, 32, 32)) -> np.ndarray:
    """UInt8 label array: background 0, a sphere 1, a box 2 and a small cube 5."""
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    labels[(z - 12) ** 2 + (y - 16) ** 2 + (x - 10) ** 2 <= 36] = 1
    labels[4:20, 6:26, 20:28] = 2
    labels[2:6, 2:6, 2:6] = 5
    return labels


def write_zero_spacing_mha(path: Path, size=(8, 8, 8), z_spacing: str = "0") -> Path:
    """Write a valid uncompressed .mha, then set its z spacing (default 0) in the header text."""
    image = sitk.Image(list(size), sitk.sitkFloat32) + 1.0
    sitk.WriteImage(image, str(path), useCompression=False)
    data = path.read_bytes()
    header_end = data.index(b"ElementDataFile")
    header = data[:header_end].decode("ascii")
    lines = [
        f"ElementSpacing = 1 1 {z_spacing}" if line.startswith("ElementSpacing") else line
        for line in header.splitlines()
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode("ascii") + data[header_end:])
    return path
