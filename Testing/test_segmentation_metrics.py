"""Agreement metrics: exact overlap counts, analytic sphere distances, independent peers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from primage.errors import PrimageInputError
from primage.segmentation.metrics import (
    METRIC_NAMES,
    compare_label_images,
    compare_masks,
    surface_distances,
)
from primage.segmentation.truth import sphere_pair
from primage.synthetic import oblique_direction

# An oblique grid (rotations of 10, 20 and 30 degrees about x, y and z).
OBLIQUE = oblique_direction((10.0, 20.0, 30.0))


def _label_image(array: np.ndarray, spacing=(0.8, 0.8, 3.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((4.0, -3.0, 12.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.fixture(scope="module")
def spheres():
    return sphere_pair()


def test_overlap_metrics_equal_plain_numpy_counts():
    rng = np.random.default_rng(3)
    shape = (12, 30, 26)
    ref = np.zeros(shape, np.uint8)
    test = np.zeros(shape, np.uint8)
    ref[2:9, 5:20, 4:18] = 1
    ref[4:7, 8:14, 8:12] = 2
    test[3:10, 7:22, 3:17] = 1
    test[4:8, 9:15, 7:13] = 2
    test[rng.random(shape) < 0.05] = 3  # label 3 only in the test mask
    spacing = (0.7, 1.1, 2.5)
    rows = compare_label_images(
        _label_image(ref, spacing, OBLIQUE), _label_image(test, spacing, OBLIQUE)
    )
    assert [row["label"] for row in rows] == [1, 2, 3]
    voxel_ml = 0.7 * 1.1 * 2.5 / 1000
    for row in rows:
        r, t = ref == row["label"], test == row["label"]
        tp = int(np.sum(r & t))
        fn = int(np.sum(r & ~t))
        fp = int(np.sum(~r & t))
        assert row["dice"] == 2 * tp / (2 * tp + fn + fp)
        assert row["jaccard"] == tp / (tp + fn + fp)
        assert row["volume_reference_ml"] == pytest.approx(r.sum() * voxel_ml, rel=1e-12)
        assert row["volume_test_ml"] == pytest.approx(t.sum() * voxel_ml, rel=1e-12)
        if r.any():
            assert row["fnr"] == fn / (tp + fn)
            assert row["fpr_modified"] == fp / (tp + fn)
            assert row["volume_difference_percent"] == 100 * (t.sum() - r.sum()) / r.sum()
        assert set(METRIC_NAMES) <= set(row)
    absent = rows[2]
    assert absent["dice"] == 0.0 and math.isnan(absent["hausdorff"]) and math.isnan(absent["fnr"])
    assert any("absent from the reference" in note for note in absent["notes"])


#: Largest allowed |error| (mm) against the analytic spheres, per surface definition.
ANALYTIC_TOLERANCE = {
    "subvoxel": {"hausdorff": 0.6, "hausdorff95": 0.25, "assd": 0.1},
    # The corner band is about a voxel thick: low by up to half a voxel on the 3 mm axis.
    "corner": {"hausdorff": 0.6, "hausdorff95": 0.8, "assd": 0.8},
}


@pytest.mark.parametrize("surface", sorted(ANALYTIC_TOLERANCE))
@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axis-aligned", "oblique"])
def test_surface_metrics_match_analytic_spheres(direction, surface):
    """Spheres of 20 and 17 mm radius, 5.9 mm apart, at 0.8 x 0.8 x 3 mm voxels."""
    a, b, truth = sphere_pair(direction=direction)
    row = compare_label_images(a, b, surface=surface)[0]
    for name, tolerance in ANALYTIC_TOLERANCE[surface].items():
        assert abs(row[name] - truth[name]) < tolerance, (name, row[name], truth[name])


def test_analytic_truth_of_equal_spheres_is_the_offset():
    from primage.segmentation.truth import analytic_sphere_metrics

    metrics = analytic_sphere_metrics((0, 0, 0), 10.0, (3.0, 4.0, 0.0), 10.0, samples=200_000)
    assert metrics["hausdorff"] == pytest.approx(5.0, abs=1e-4)


def _brute_force(a: np.ndarray, b: np.ndarray, spacing_zyx) -> dict[str, float]:
    """Same surface definition, computed another way: corner points found with min/max
    filters, areas from np.diff crossings summed by a 2x2 box, distances with a k-d tree."""
    spacing_zyx = np.asarray(spacing_zyx, float)

    def surface(mask):
        padded = np.pad(mask, 1).astype(np.int8)
        # A corner between voxels c..c+1 is mixed when its 2x2x2 block has both values.
        low = ndimage.minimum_filter(padded, size=2, origin=-1, mode="constant")[:-1, :-1, :-1]
        high = ndimage.maximum_filter(padded, size=2, origin=-1, mode="constant")[:-1, :-1, :-1]
        mixed = low != high
        components = []
        for axis in range(3):
            crossing = np.abs(np.diff(padded, axis=axis)).astype(float)
            # Sum the crossings over the 2x2 block of the other two axes.
            for other in (i for i in range(3) if i != axis):
                crossing = np.add(
                    np.take(crossing, range(crossing.shape[other] - 1), axis=other),
                    np.take(crossing, range(1, crossing.shape[other]), axis=other),
                )
            face = np.prod([spacing_zyx[i] for i in range(3) if i != axis])
            components.append(crossing * face / 4.0)
        area = np.sqrt(sum(c**2 for c in components))
        points = np.argwhere(mixed) * spacing_zyx
        return points, area[mixed]

    pa, wa = surface(a)
    pb, wb = surface(b)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]

    def percentile(d, w):
        order = np.argsort(d, kind="stable")
        cumulative = np.cumsum(w[order]) / w.sum()
        return d[order][min(np.searchsorted(cumulative, 0.95), d.size - 1)]

    return {
        "hausdorff": max(d_ab.max(), d_ba.max()),
        "hausdorff95": max(percentile(d_ab, wa), percentile(d_ba, wb)),
        "assd": (d_ab @ wa + d_ba @ wb) / (wa.sum() + wb.sum()),
    }


def test_corner_surface_metrics_equal_brute_force_with_the_same_definition():
    a, b, _ = sphere_pair(size=(40, 40, 14), radius_a=9.0, radius_b=7.0, offset=(2.1, -1.3, 3.9))
    spacing_zyx = tuple(reversed(a.GetSpacing()))
    A = sitk.GetArrayFromImage(a).astype(bool)
    B = sitk.GetArrayFromImage(b).astype(bool)
    row = compare_masks(A, B, spacing_zyx, surface="corner")
    expected = _brute_force(A, B, spacing_zyx)
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def _subvoxel_brute_force(a: np.ndarray, b: np.ndarray, spacing_zyx, sigma_mm):
    """The sub-voxel definition written out point by point: a Python loop over boundary
    edges, np.gradient for the normals, and the full distance matrix."""
    spacing = np.asarray(spacing_zyx, float)

    def surface(mask):
        padded = np.pad(mask, 8).astype(float)
        smooth = ndimage.gaussian_filter(padded, sigma_mm / spacing, mode="constant", truncate=3.0)
        gradient = np.gradient(smooth, *spacing)
        points, areas = [], []
        for axis in range(3):
            step = np.eye(3, dtype=int)[axis]
            for lo in np.argwhere(padded != np.roll(padded, -1, axis=axis)):
                hi = lo + step
                if hi[axis] >= padded.shape[axis]:
                    continue
                v0, v1 = smooth[tuple(lo)] - 0.5, smooth[tuple(hi)] - 0.5
                t = 0.5 if v0 == v1 else min(max(v0 / (v0 - v1), 0.0), 1.0)
                g = np.array([(1 - t) * d[tuple(lo)] + t * d[tuple(hi)] for d in gradient])
                normal = abs(g[axis]) / np.linalg.norm(g) if np.linalg.norm(g) > 0 else 1.0
                points.append((lo + t * step) * spacing)
                areas.append(np.prod(np.delete(spacing, axis)) * normal)
        return np.array(points), np.array(areas)

    pa, wa = surface(a)
    pb, wb = surface(b)
    distances = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)
    d_ab, d_ba = distances.min(axis=1), distances.min(axis=0)

    def percentile(d, w):
        order = np.argsort(d, kind="stable")
        cumulative = np.cumsum(w[order]) / w.sum()
        return d[order][min(np.searchsorted(cumulative, 0.95), d.size - 1)]

    return {
        "hausdorff": max(d_ab.max(), d_ba.max()),
        "hausdorff95": max(percentile(d_ab, wa), percentile(d_ba, wb)),
        "assd": (d_ab @ wa + d_ba @ wb) / (wa.sum() + wb.sum()),
    }


def test_subvoxel_surface_metrics_equal_brute_force_with_the_same_definition():
    a, b, _ = sphere_pair(size=(30, 30, 10), radius_a=7.0, radius_b=5.0, offset=(2.1, -1.3, 3.9))
    spacing_zyx = tuple(reversed(a.GetSpacing()))
    A = sitk.GetArrayFromImage(a).astype(bool)
    B = sitk.GetArrayFromImage(b).astype(bool)
    B[1, 2, 2] = True  # a one-voxel island far away still has a surface
    row = compare_masks(A, B, spacing_zyx)
    expected = _subvoxel_brute_force(A, B, spacing_zyx, 1.5)
    for name, value in expected.items():
        # float32 smoothing in the engine, float64 here.
        assert row[name] == pytest.approx(value, rel=1e-5, abs=1e-5), name


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_surface_points_and_hausdorff_equal_deepmind_surface_distance(spheres):
    """surface-distance uses the same corner points (its areas come from marching cubes):
    the Hausdorff distance is identical, the area-weighted statistics agree closely."""
    import surface_distance  # test-only dependency (the `test` extra)

    a, b, _ = spheres
    A = sitk.GetArrayFromImage(a).astype(bool)
    B = sitk.GetArrayFromImage(b).astype(bool)
    spacing_zyx = tuple(reversed(a.GetSpacing()))
    theirs = surface_distance.compute_surface_distances(A, B, spacing_zyx)
    ours = surface_distances(A, B, spacing_zyx, surface="corner")
    assert ours[0].size == theirs["distances_gt_to_pred"].size
    assert ours[2].size == theirs["distances_pred_to_gt"].size
    np.testing.assert_allclose(np.sort(ours[0]), theirs["distances_gt_to_pred"], rtol=1e-12)
    np.testing.assert_allclose(np.sort(ours[2]), theirs["distances_pred_to_gt"], rtol=1e-12)
    row = compare_masks(A, B, spacing_zyx, surface="corner")
    assert row["hausdorff"] == surface_distance.compute_robust_hausdorff(theirs, 100)
    assert row["hausdorff95"] == pytest.approx(
        surface_distance.compute_robust_hausdorff(theirs, 95), rel=0.02
    )
    sa, sb = theirs["surfel_areas_gt"], theirs["surfel_areas_pred"]
    da, db = theirs["distances_gt_to_pred"], theirs["distances_pred_to_gt"]
    assert row["assd"] == pytest.approx((da @ sa + db @ sb) / (sa.sum() + sb.sum()), rel=0.02)


def test_empty_masks_give_defined_values_or_nan_with_reasons():
    spacing = (3.0, 0.8, 0.8)
    full = np.zeros((6, 10, 10), bool)
    full[2:4, 3:7, 3:7] = True
    empty = np.zeros_like(full)
    test_empty = compare_masks(full, empty, spacing)
    assert test_empty["dice"] == 0.0 and test_empty["fnr"] == 1.0
    assert test_empty["fpr_modified"] == 0.0 and test_empty["volume_difference_percent"] == -100.0
    assert math.isnan(test_empty["hausdorff"]) and "test mask is empty" in test_empty["notes"][0]
    ref_empty = compare_masks(empty, full, spacing)
    assert ref_empty["dice"] == 0.0 and math.isnan(ref_empty["fnr"])
    assert math.isnan(ref_empty["assd"]) and len(ref_empty["notes"]) == 2
    both = compare_masks(empty, empty, spacing)
    assert math.isnan(both["dice"]) and math.isnan(both["hausdorff95"])
    assert "both masks are empty" in both["notes"][0]
    identical = compare_masks(full, full, spacing)
    assert identical["dice"] == 1.0 and identical["hausdorff"] == 0.0 and identical["assd"] == 0.0


def test_mask_touching_the_border_has_a_surface_there():
    a = np.ones((4, 5, 6), bool)
    b = a.copy()
    b[:, :, -1] = False
    assert compare_masks(a, b, (1.0, 1.0, 2.0), surface="corner")["hausdorff"] == pytest.approx(2.0)
    assert compare_masks(a, b, (1.0, 1.0, 2.0))["hausdorff"] == pytest.approx(2.0, abs=0.5)


def test_bad_input_is_refused():
    ref = _label_image(np.pad(np.ones((3, 3, 3), np.uint8), 2))
    with pytest.raises(PrimageInputError, match="different voxel grids"):
        compare_label_images(ref, _label_image(np.pad(np.ones((3, 3, 3), np.uint8), 3)))
    shifted = _label_image(np.pad(np.ones((3, 3, 3), np.uint8), 2), spacing=(0.8, 0.8, 2.0))
    with pytest.raises(PrimageInputError, match="different voxel grids"):
        compare_label_images(ref, shifted)
    fractional = _label_image(np.pad(np.full((3, 3, 3), 0.5, np.float32), 2))
    with pytest.raises(PrimageInputError, match="fractional"):
        compare_label_images(ref, fractional)
    whole_floats = _label_image(np.pad(np.ones((3, 3, 3), np.float32), 2))
    assert compare_label_images(ref, whole_floats)[0]["dice"] == 1.0
    empty = _label_image(np.zeros((7, 7, 7), np.uint8))
    with pytest.raises(PrimageInputError, match="test mask is empty"):
        compare_label_images(ref, empty)
    with pytest.raises(PrimageInputError, match="reference mask is empty"):
        compare_label_images(empty, ref)
    assert compare_label_images(ref, empty, allow_empty=True)[0]["fnr"] == 1.0
    with pytest.raises(PrimageInputError, match="label 4 is in neither mask"):
        compare_label_images(ref, ref, [4])
    negative = _label_image(np.pad(-np.ones((3, 3, 3), np.int16), 2))
    with pytest.raises(PrimageInputError, match="negative"):
        compare_label_images(ref, negative)
