"""Shared pytest fixtures."""

# --- primage.mrml test helpers (fixtures prefixed "mrml_") -------------------------------
# slicer is imported inside the fixtures so engine-only tests never load it.

import numpy as _mrml_np
import pytest as _mrml_pytest


def _mrml_rotation(angles_deg) -> _mrml_np.ndarray:
    """Rotation matrix from x, y, z Euler angles (degrees), built without any PRIMAGE code."""
    ax, ay, az = _mrml_np.radians(angles_deg)
    rx = _mrml_np.array(
        [
            [1, 0, 0],
            [0, _mrml_np.cos(ax), -_mrml_np.sin(ax)],
            [0, _mrml_np.sin(ax), _mrml_np.cos(ax)],
        ]
    )
    ry = _mrml_np.array(
        [
            [_mrml_np.cos(ay), 0, _mrml_np.sin(ay)],
            [0, 1, 0],
            [-_mrml_np.sin(ay), 0, _mrml_np.cos(ay)],
        ]
    )
    rz = _mrml_np.array(
        [
            [_mrml_np.cos(az), -_mrml_np.sin(az), 0],
            [_mrml_np.sin(az), _mrml_np.cos(az), 0],
            [0, 0, 1],
        ]
    )
    return rz @ ry @ rx


@_mrml_pytest.fixture
def mrml_scene():
    """A fresh, empty MRML scene (real slicer-core, no application)."""
    import slicer

    return slicer.vtkMRMLScene()


@_mrml_pytest.fixture
def mrml_oblique_image():
    """Factory for small deterministic 3D images: oblique axes, anisotropic spacing (mm),
    non-zero origin and, with ``left_handed=True``, one mirrored (flipped) axis."""
    import SimpleITK as sitk

    def make(size=(7, 6, 5), *, left_handed=True, dtype=_mrml_np.float32, seed=0):
        rng = _mrml_np.random.default_rng(seed)
        array = rng.normal(100.0, 30.0, size=tuple(reversed(size)))
        if _mrml_np.issubdtype(dtype, _mrml_np.integer):
            info = _mrml_np.iinfo(dtype)
            array = _mrml_np.clip(_mrml_np.round(array), max(info.min, -1000), min(info.max, 1000))
        image = sitk.GetImageFromArray(array.astype(dtype))
        image.SetSpacing((0.7, 1.1, 2.5))
        image.SetOrigin((12.5, -20.25, 31.0))
        direction = _mrml_rotation((10.0, 20.0, 30.0))
        if left_handed:
            direction = direction @ _mrml_np.diag([1.0, -1.0, 1.0])
        image.SetDirection(direction.ravel().tolist())
        return image

    return make
