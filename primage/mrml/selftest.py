"""Scenarios shared by the pytest suite (slicer-core) and the Slicer modules' self-tests.

Each scenario takes the MRML scene to work in (``slicer.vtkMRMLScene()`` in pytest,
``slicer.mrmlScene`` inside Slicer), builds its own small deterministic data, runs the
MRML-level logic and raises :class:`AssertionError` with a message when something is
wrong. Only numpy, SimpleITK and MRML are used, so they run the same in both places.
"""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from primage.mrml.preprocessing import RECORDS_ATTRIBUTE, preprocess_volume_node
from primage.mrml.segmentations import segmentation_from_label_image
from primage.mrml.volumes import volume_node_from_sitk

#: Fast steps for the preprocessing scenario (the real presets run N4, which takes longer).
SCENARIO_STEPS = [
    {"step": "anisotropic_diffusion", "iterations": 2},
    {"step": "zscore"},
]


def _check(condition: bool, message: str) -> None:
    # Not ``assert``: the checks must also run under ``python -O``.
    if not condition:
        raise AssertionError(message)


def synthetic_t2w(size=(32, 32, 16), seed: int = 7) -> tuple[sitk.Image, sitk.Image]:
    """Small oblique, anisotropic T2w-like volume and a tumour mask (both deterministic).

    Returns ``(image, mask)``: Float32 intensities (a bright ellipsoidal "tumour" in a
    darker body, a smooth bias and Gaussian noise) and a UInt8 tumour mask, both on a grid
    with spacing 0.8 x 0.9 x 3.0 mm, a non-zero origin and rotated axes.
    """
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in reversed(size)), indexing="ij")
    centre = (np.array(size, dtype=float) - 1.0) / 2.0
    body = ((i - centre[0]) / (0.45 * size[0])) ** 2 + ((j - centre[1]) / (0.4 * size[1])) ** 2
    tumour = (
        ((i - centre[0] - 3) / 6.0) ** 2
        + ((j - centre[1] + 2) / 5.0) ** 2
        + ((k - centre[2]) / 3.0) ** 2
    )
    values = np.where(body <= 1.0, 300.0, 20.0) + np.where(tumour <= 1.0, 400.0, 0.0)
    values *= 1.0 + 0.2 * i / size[0]  # smooth bias along i
    values += rng.normal(0.0, 25.0, size=values.shape)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    mask = sitk.GetImageFromArray((tumour <= 1.0).astype(np.uint8))
    angle = np.radians(20.0)
    direction = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    for item in (image, mask):
        item.SetSpacing((0.8, 0.9, 3.0))
        item.SetOrigin((-12.0, 8.5, 30.0))
        item.SetDirection(direction.ravel().tolist())
    return image, mask


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def preprocessing_scenario(scene) -> object:
    """Preprocess a synthetic volume node in ``scene`` and check the result; returns the output node.

    Checks: a new scalar volume "<input> preprocessed" exists in the scene, on exactly the
    input's grid; the input's voxels and geometry are untouched; the applied steps are
    recorded in the node attribute; the z-score inside the tumour mask (a segmentation
    node) has mean 0 and SD 1; progress ran to 1.
    """
    image, mask = synthetic_t2w()
    input_node = volume_node_from_sitk(image, scene, name="PRIMAGE selftest T2w")
    mask_node = segmentation_from_label_image(
        mask, scene, {1: "tumour"}, {1: (0.9, 0.2, 0.2)}, reference_volume_node=input_node
    )
    input_before = np.array(slicer.util.arrayFromVolume(input_node), copy=True)
    geometry_before = _ijk_to_ras(input_node)
    reports: list[float] = []

    output_node = preprocess_volume_node(
        input_node,
        steps=SCENARIO_STEPS,
        mask_node=mask_node,
        progress=lambda fraction, message: reports.append(float(fraction)),
    )

    _check(output_node is not None, "no output node was returned")
    _check(output_node is not input_node, "the input node was overwritten")
    _check(output_node.GetScene() is scene, "the output node is not in the scene")
    _check(output_node.IsA("vtkMRMLScalarVolumeNode"), "the output is not a scalar volume")
    _check(
        output_node.GetName() == "PRIMAGE selftest T2w preprocessed",
        f"unexpected output name {output_node.GetName()!r}",
    )
    _check(
        np.array_equal(slicer.util.arrayFromVolume(input_node), input_before),
        "the input voxels changed",
    )
    _check(np.allclose(_ijk_to_ras(input_node), geometry_before), "the input geometry changed")
    _check(
        np.allclose(_ijk_to_ras(output_node), geometry_before, atol=1e-9),
        "the output is not on the input grid (IJK-to-RAS differs)",
    )
    output = slicer.util.arrayFromVolume(output_node)
    _check(
        output.shape == input_before.shape, f"output shape {output.shape} != {input_before.shape}"
    )
    _check(bool(np.all(np.isfinite(output))), "the output has NaN or infinite voxels")
    inside = sitk.GetArrayFromImage(mask).astype(bool)
    mean, sd = float(output[inside].mean()), float(output[inside].std())
    _check(abs(mean) < 1e-3 and abs(sd - 1.0) < 1e-2, f"z-score in the mask: mean {mean}, SD {sd}")
    plain = (input_before - input_before[inside].mean()) / input_before[inside].std()
    _check(
        not np.allclose(output, plain, atol=1e-3), "the output equals a plain z-score: no smoothing"
    )
    text = output_node.GetAttribute(RECORDS_ATTRIBUTE)
    _check(bool(text), f"the output has no {RECORDS_ATTRIBUTE} attribute")
    records = json.loads(text)
    _check(
        [record.get("step") for record in records] == [step["step"] for step in SCENARIO_STEPS],
        f"recorded steps {records} do not match the steps run",
    )
    _check(
        records[0].get("parameters", {}).get("iterations") == 2,
        f"the recorded parameters are incomplete: {records[0]}",
    )
    _check(bool(reports) and reports[-1] == 1.0, f"progress did not reach 1: {reports[-3:]}")
    _check(bool(np.all(np.diff(reports) >= 0)), "progress went backwards")
    return output_node
