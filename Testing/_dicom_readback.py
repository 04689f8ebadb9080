"""Independent read-back of exported DICOM objects (highdicom / pydicom, no project code)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk


def _physical_to_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return np.linalg.solve(matrix, points - np.asarray(image.GetOrigin())[:, None])


def values_on_grid(read: sitk.Image, nifti: sitk.Image, *, fill=0.0) -> tuple[np.ndarray, float]:
    """The read-back voxels placed on the NIfTI's grid (numpy z, y, x), by physical point;
    asserts every read-back voxel centre is a NIfTI voxel centre. Returns also the largest
    distance (mm) between matched centres."""
    size = np.array(read.GetSize())
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()]).astype(float)
    matrix = np.asarray(read.GetDirection()).reshape(3, 3) @ np.diag(read.GetSpacing())
    points = matrix @ index + np.asarray(read.GetOrigin())[:, None]
    continuous = _physical_to_index(nifti, points)
    nearest = np.round(continuous).astype(int)
    nifti_matrix = np.asarray(nifti.GetDirection()).reshape(3, 3) @ np.diag(nifti.GetSpacing())
    back = nifti_matrix @ nearest + np.asarray(nifti.GetOrigin())[:, None]
    distance = float(np.max(np.linalg.norm(back - points, axis=0)))
    assert distance < 1e-3, f"read-back voxels are {distance} mm off the NIfTI grid"
    nsize = np.array(nifti.GetSize())
    assert np.all(nearest >= 0) and np.all(nearest < nsize[:, None]), "voxels outside the grid"
    values = sitk.GetArrayFromImage(read).ravel()
    out = np.full(tuple(nsize[::-1]), fill, dtype=values.dtype)
    out[nearest[2], nearest[1], nearest[0]] = values
    return out, distance


def seg_labels(path: Path) -> tuple[sitk.Image, list]:
    """A SEG read with highdicom: label image (segment numbers) and segment descriptions."""
    seg = hd.seg.segread(path)
    volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
    # highdicom's own conversion (its axis 0, the frame stack, becomes SimpleITK's x).
    return volume.to_simpleitk(), [seg.get_segment_description(n) for n in seg.segment_numbers]


def pm_values(path: Path) -> sitk.Image:
    """Parametric Map voxels straight from pydicom: FloatPixelData placed by each frame's
    ImagePositionPatient (no highdicom, no project code)."""
    ds = pydicom.dcmread(path)
    rows, columns, frames = ds.Rows, ds.Columns, int(ds.NumberOfFrames)
    data = np.frombuffer(ds.FloatPixelData, dtype="<f4").reshape(frames, rows, columns)
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array(
        [
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
            for item in ds.PerFrameFunctionalGroupsSequence
        ]
    )
    order = np.argsort(positions @ normal)
    steps = np.diff((positions @ normal)[order])
    image = sitk.GetImageFromArray(data[order])
    image.SetOrigin(positions[order[0]].tolist())
    image.SetSpacing((column_spacing, row_spacing, float(np.median(steps)) if steps.size else 1.0))
    image.SetDirection(np.column_stack([orientation[:3], orientation[3:], normal]).ravel().tolist())
    return image


def seg_masks_pydicom(path: Path, grid: sitk.Image) -> dict[int, np.ndarray]:
    """SEG frames decoded by pydicom alone (no highdicom), each pixel placed on ``grid`` by
    its physical point: segment number -> boolean array (numpy z, y, x). Asserts every pixel
    centre is a voxel centre of ``grid``."""
    ds = pydicom.dcmread(path)
    assert ds.BitsAllocated == 1 and ds.SegmentationType == "BINARY"
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    j, i = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    size = np.array(grid.GetSize())
    masks: dict[int, np.ndarray] = {}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        # Per frame, or shared by all frames (one segment).
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        number = int(identification[0].ReferencedSegmentNumber)
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        points = (
            position[:, None]
            + np.outer(orientation[:3], i.ravel() * column_spacing)
            + np.outer(orientation[3:], j.ravel() * row_spacing)
        )
        continuous = _physical_to_index(grid, points)
        nearest = np.round(continuous).astype(int)
        assert np.max(np.abs(continuous - nearest)) < 1e-3, "SEG pixel off the grid"
        assert np.all(nearest >= 0) and np.all(nearest < size[:, None]), "SEG pixel outside"
        mask = masks.setdefault(number, np.zeros(tuple(size[::-1]), bool))
        mask[nearest[2], nearest[1], nearest[0]] |= frame.ravel().astype(bool)
    return masks
