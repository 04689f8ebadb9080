"""Preprocessing engine: filters against ground truth or independent numpy computations,
step validation, run_steps and presets."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from _primage_images import blob_labels, image_from_array, step_phantom

from primage.errors import PrimageInputError
from primage.io import GeometryWarning, same_geometry, volumes_to_series
from primage.preprocessing import (
    STEPS,
    PreprocessingResult,
    iter_steps_volumes,
    list_presets,
    load_preset,
    run_steps,
    run_steps_series,
    run_steps_volumes,
    series_records,
    validate_steps,
)
from primage.preprocessing import filters as F
from primage.synthetic import make_digital_patient


@pytest.fixture(scope="module")
def patient():
    return make_digital_patient(0)


def _a(image):
    return sitk.GetArrayFromImage(image).astype(np.float64)


def _flat_regions(shape):
    """Voxels at least 3 voxels away from the step and the borders, per side."""
    region = np.zeros(shape, bool)
    region[3:-3, 3:-3, 3 : shape[2] // 2 - 3] = True
    right = np.zeros(shape, bool)
    right[3:-3, 3:-3, shape[2] // 2 + 3 : -3] = True
    return region, right


# --- denoising ------------------------------------------------------------------------


def test_stable_time_step_is_the_itk_bound():
    image = image_from_array(np.zeros((4, 4, 4), np.float32), spacing=(0.8, 1.5, 3.0))
    assert F.stable_time_step(image) == pytest.approx(0.8 / 16)


def test_anisotropic_diffusion_reduces_noise_and_keeps_the_edge():
    noisy, clean = step_phantom(sigma=10.0)
    out = F.anisotropic_diffusion(noisy, conductance=1.0, iterations=2)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert same_geometry(out, noisy)
    left, right = _flat_regions(clean.shape)
    before, after = _a(noisy), _a(out)
    assert after[left].std() < 0.8 * before[left].std()
    assert after[right].std() < 0.8 * before[right].std()
    # Edge contrast: the columns right next to the step keep >= 90 % of the true step
    # (100), whereas a Gaussian blur with the same noise reduction loses much more.
    half = clean.shape[2] // 2
    step = after[3:-3, 3:-3, half].mean() - after[3:-3, 3:-3, half - 1].mean()
    assert step > 90.0
    blurred = _a(sitk.SmoothingRecursiveGaussian(noisy, 1.5))
    assert blurred[left].std() < after[left].std()  # at least as smooth in flat areas
    blurred_step = blurred[3:-3, 3:-3, half].mean() - blurred[3:-3, 3:-3, half - 1].mean()
    assert blurred_step < step - 10.0


@pytest.mark.parametrize(
    "shape, spacing, iterations, slab",
    [
        ((30, 40, 36), (0.9, 0.8, 5.0), 2, None),  # (x, y, z) spacing, anisotropic
        ((30, 40, 36), (0.9, 0.8, 5.0), 3, 700),  # slabs of one slice: the overlap matters
        ((9, 5, 7), (1.0, 2.0, 3.0), 1, None),
        ((6, 6, 1), (1.0, 1.0, 1.0), 2, None),  # a single slice
        ((2, 3, 2), (0.5, 0.5, 0.5), 2, None),  # two voxels along two axes
    ],
)
def test_anisotropic_diffusion_equals_itks_filter(shape, spacing, iterations, slab, monkeypatch):
    """The numpy scheme against ITK's GradientAnisotropicDiffusionImageFilter itself."""
    if slab is not None:
        monkeypatch.setattr(F, "_SLAB_VOXELS", slab)
    rng = np.random.default_rng(sum(shape))
    array = rng.normal(100.0, 20.0, shape[::-1]).astype(np.float32)
    array[:, : shape[1] // 2] += 300.0  # an edge that the conductance term must keep
    image = image_from_array(array, spacing=spacing)
    step = F.stable_time_step(image)
    ours = _a(F.anisotropic_diffusion(image, conductance=1.0, iterations=iterations))
    itk = _a(sitk.GradientAnisotropicDiffusion(image, step, 1.0, 1, iterations))
    assert np.abs(ours - array).max() > 1.0  # the filter did change the image
    np.testing.assert_allclose(ours, itk, rtol=0, atol=1e-6 * np.abs(itk).max())


def test_anisotropic_diffusion_leaves_a_constant_image_unchanged():
    image = image_from_array(np.full((5, 6, 7), 3.5, np.float32))
    assert np.array_equal(_a(F.anisotropic_diffusion(image)), np.full((5, 6, 7), 3.5))


def test_anisotropic_diffusion_refuses_an_unstable_time_step():
    noisy, _ = step_phantom()
    bound = F.stable_time_step(noisy)
    F.anisotropic_diffusion(noisy, time_step=bound)
    with pytest.raises(PrimageInputError, match="unstable"):
        F.anisotropic_diffusion(noisy, time_step=bound * 1.5)


@pytest.mark.parametrize(
    "denoise",
    [
        lambda image: F.curvature_flow(image),
        lambda image: F.bilateral(image, domain_sigma_mm=2.0),
        lambda image: F.non_local_means(image, iterations=1, sample_patches=10),
    ],
    ids=["curvature_flow", "bilateral", "non_local_means"],
)
def test_other_denoisers_reduce_noise_and_keep_geometry(denoise):
    noisy, clean = step_phantom(shape=(16, 24, 24), sigma=10.0)
    out = denoise(noisy)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert same_geometry(out, noisy)
    left, _ = _flat_regions(clean.shape)
    assert _a(out)[left].std() < 0.9 * _a(noisy)[left].std()
    # Mean levels stay where they were (no intensity drift).
    assert abs(_a(out)[left].mean() - 100.0) < 2.0


def test_noise_estimate_matches_the_true_sd():
    noisy, _ = step_phantom(sigma=12.0)
    assert F.estimate_noise_sd(noisy) == pytest.approx(12.0, rel=0.1)


def test_noise_estimate_ignores_an_air_background():
    rng = np.random.default_rng(3)
    array = np.zeros((20, 32, 32))
    array[:, 8:24, 8:24] = 300.0
    # Rician magnitude: the air gets Rayleigh noise (smaller SD than the tissue's 15).
    noisy = np.hypot(array + rng.normal(0, 15, array.shape), rng.normal(0, 15, array.shape))
    estimate = F.estimate_noise_sd(image_from_array(noisy.astype(np.float32)))
    assert estimate == pytest.approx(15.0, rel=0.12)


# --- N4 -------------------------------------------------------------------------------


def test_n4_control_points_from_the_physical_extent():
    grid = image_from_array(np.zeros((40, 96, 96), np.float32), spacing=(1.5, 1.5, 4.0))
    # Extents 144, 144, 160 mm -> ceil(extent / 50) = 3, 3, 4 spans, + spline order 3.
    assert F.n4_control_points(grid, 50.0) == [6, 6, 7]
    assert F.n4_control_points(grid, 500.0) == [4, 4, 4]


def test_n4_recovers_the_synthetic_bias_field(patient):
    corrected, bias = F.n4_bias_correction(patient.t2w)
    assert same_geometry(bias, patient.t2w) and same_geometry(corrected, patient.t2w)
    labels = _a(patient.tissues)
    body = labels > 0
    estimated, truth = _a(bias), _a(patient.truth_images["bias_field"])
    correlation = np.corrcoef(np.log(estimated[body]), np.log(truth[body]))[0, 1]
    assert correlation > 0.9
    # corrected = image / bias, checked independently.
    np.testing.assert_allclose(_a(corrected) * estimated, _a(patient.t2w), rtol=1e-4, atol=1e-2)
    # A homogeneous tissue (eroded liver) becomes more homogeneous.
    liver = sitk.GetArrayFromImage(sitk.BinaryErode(patient.tissues == 5, [2, 2, 1])) > 0
    raw = _a(patient.t2w)
    cv_raw = raw[liver].std() / raw[liver].mean()
    cv_corrected = _a(corrected)[liver].std() / _a(corrected)[liver].mean()
    assert cv_corrected < 0.85 * cv_raw


def test_n4_refuses_a_mask_without_positive_intensities():
    image = image_from_array(np.full((12, 16, 16), -5.0, np.float32))
    with pytest.raises(PrimageInputError, match="positive"):
        F.n4_bias_correction(image, mask=image_from_array(np.ones((12, 16, 16), np.uint8)))


# --- normalisation --------------------------------------------------------------------


def _random_image_and_mask(seed=1):
    rng = np.random.default_rng(seed)
    array = rng.gamma(2.0, 50.0, (12, 16, 20)).astype(np.float32)
    mask = np.zeros(array.shape, np.uint8)
    mask[2:10, 3:12, 4:15] = 1
    return image_from_array(array), image_from_array(mask), array.astype(np.float64), mask > 0


def test_zscore_inside_the_mask():
    image, mask, array, inside = _random_image_and_mask()
    out = _a(F.zscore(image, mask))
    assert out[inside].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[inside].std() == pytest.approx(1.0, rel=1e-5)
    # The whole image is transformed with the mask's statistics.
    expected = (array - array[inside].mean()) / array[inside].std()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_zscore_without_mask_uses_the_whole_image():
    image, _, array, _ = _random_image_and_mask()
    out = _a(F.zscore(image))
    assert out.mean() == pytest.approx(0.0, abs=1e-5)
    assert out.std() == pytest.approx(1.0, rel=1e-5)


def test_zscore_of_a_constant_region_is_refused():
    image = image_from_array(np.full((4, 5, 6), 7.0, np.float32))
    with pytest.raises(PrimageInputError, match="constant"):
        F.zscore(image)


def test_percentile_scale_maps_percentiles_to_0_and_1():
    image, mask, array, inside = _random_image_and_mask()
    out = _a(F.percentile_scale(image, 2.0, 98.0, mask=mask))
    low, high = np.percentile(out[inside], [2.0, 98.0])
    assert low == pytest.approx(0.0, abs=1e-5)
    assert high == pytest.approx(1.0, abs=1e-5)
    assert out.max() > 1.0  # not clipped by default
    clipped = _a(F.percentile_scale(image, 2.0, 98.0, mask=mask, clip=True, out_min=-1))
    assert clipped.min() == pytest.approx(-1.0) and clipped.max() == pytest.approx(1.0)


def test_percentile_scale_refuses_bad_percentiles():
    image, *_ = _random_image_and_mask()
    with pytest.raises(PrimageInputError, match="low < high"):
        F.percentile_scale(image, 60.0, 40.0)


def test_histogram_matching_moves_quantiles_towards_the_reference():
    rng = np.random.default_rng(5)
    source = rng.gamma(3.0, 40.0, (16, 20, 20)).astype(np.float32)
    target = (rng.gamma(6.0, 30.0, (10, 22, 18)) + 50.0).astype(np.float32)
    image = image_from_array(source)
    reference = image_from_array(target, spacing=(2.0, 2.0, 2.0))  # any grid
    matched = _a(F.histogram_match(image, reference, threshold_at_mean=False))
    assert same_geometry(sitk.GetImageFromArray(matched), sitk.GetImageFromArray(source))
    quantiles = [10, 25, 50, 75, 90]
    q_source, q_matched, q_target = (np.percentile(a, quantiles) for a in (source, matched, target))
    assert np.all(np.abs(q_matched - q_target) < 0.3 * np.abs(q_source - q_target))
    assert np.all(np.abs(q_matched - q_target) / q_target < 0.08)


# --- resampling -----------------------------------------------------------------------


def test_resample_keeps_extent_origin_direction_and_interpolates_physically():
    shape = (10, 14, 18)
    image = image_from_array(np.zeros(shape, np.float32))
    # A linear ramp in physical coordinates: linear interpolation must reproduce it.
    points = np.array(
        [
            image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
            for k, j, i in np.ndindex(shape)
        ]
    )
    ramp = (2.0 * points[:, 0] - 0.5 * points[:, 1] + 0.3 * points[:, 2]).reshape(shape)
    image = image_from_array(ramp.astype(np.float32))
    out = F.resample_to_spacing(image, (0.9, 1.7, 1.9), "linear")
    old_extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    new_extent = np.array(out.GetSize()) * np.array(out.GetSpacing())
    assert np.all(np.abs(new_extent - old_extent) <= np.array(out.GetSpacing()) / 2 + 1e-9)
    assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()
    assert out.GetSpacing() == (0.9, 1.7, 1.9)
    array = _a(out)
    for index in [(0, 0, 0), (5, 4, 3), (19, 7, 11)]:
        x, y, z = out.TransformIndexToPhysicalPoint(index)
        inside_input = np.all(
            np.array(image.TransformPhysicalPointToContinuousIndex((x, y, z)))
            <= np.array(image.GetSize()) - 1
        )
        if inside_input:
            expected = 2.0 * x - 0.5 * y + 0.3 * z
            assert array[index[::-1]] == pytest.approx(expected, abs=1e-3)


def test_nearest_resampling_keeps_the_label_set_and_pixel_type():
    labels = image_from_array(blob_labels())
    out = F.resample_to_spacing(labels, (0.6, 0.5, 1.25), "nearest")
    assert out.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(out))) == {0, 1, 2, 5}


def test_label_aware_resampling_keeps_labels_and_volumes():
    array = blob_labels()
    labels = image_from_array(array)
    out = F.resample_to_spacing(labels, (1.8, 1.5, 3.0), "label")
    assert out.GetPixelID() == sitk.sitkUInt8
    values = sitk.GetArrayViewFromImage(out)
    assert set(np.unique(values)) <= {0, 1, 2, 5}  # never an in-between value
    assert {1, 2} <= set(np.unique(values))
    voxel_in, voxel_out = np.prod(labels.GetSpacing()), np.prod(out.GetSpacing())
    for label in (1, 2):
        volume_in = (array == label).sum() * voxel_in
        volume_out = (values == label).sum() * voxel_out
        assert volume_out == pytest.approx(volume_in, rel=0.15)
    linear = sitk.GetArrayFromImage(F.resample_to_spacing(labels, (1.8, 1.5, 3.0), "linear"))
    assert not set(np.unique(linear)) <= {0, 1, 2, 5}  # what label-aware avoids


def test_resample_refuses_bad_spacing_and_interpolator():
    image = image_from_array(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(PrimageInputError, match="positive"):
        F.resample_to_spacing(image, (1.0, 0.0, 1.0))
    with pytest.raises(PrimageInputError, match="interpolator"):
        F.resample_to_spacing(image, (1.0, 1.0, 1.0), "cubic")


# --- validation and run_steps ---------------------------------------------------------


def test_unknown_step_is_named_with_the_available_ones():
    with pytest.raises(PrimageInputError, match=r"unknown step 'n5'; available: .*\bn4\b"):
        validate_steps([{"step": "n5"}])


def test_unknown_parameter_is_named_with_the_allowed_ones():
    with pytest.raises(PrimageInputError) as error:
        validate_steps([{"step": "zscore"}, {"step": "n4", "iteration": [5]}])
    message = str(error.value)
    assert "step 2 (n4)" in message and "'iteration'" in message
    assert "allowed: control_point_spacing_mm, iterations" in message


@pytest.mark.parametrize(
    "step, fragment",
    [
        ({"step": "anisotropic_diffusion", "iterations": "2"}, "'iterations' must be an integer"),
        ({"step": "anisotropic_diffusion", "iterations": True}, "'iterations' must be an integer"),
        ({"step": "anisotropic_diffusion", "iterations": 2.5}, "'iterations' must be an integer"),
        ({"step": "anisotropic_diffusion", "conductance": 0}, "'conductance' must be > 0"),
        ({"step": "n4", "iterations": []}, "non-empty list"),
        ({"step": "percentile", "clip": "yes"}, "true or false"),
        ({"step": "resample"}, "'spacing_mm' is required"),
        ({"step": "resample", "spacing_mm": [1, 2]}, r"\[x, y, z\]"),
        ({"step": "resample", "spacing_mm": 1, "interpolator": "cubic"}, "one of 'linear'"),
        ({"step": "percentile", "low": 90, "high": 10}, "'low'"),
        ({"step": "bilateral", "range_sigma": float("nan")}, "finite"),
        ("n4", "must be an object"),
        ({"iterations": 3}, 'missing "step"'),
    ],
)
def test_wrong_parameter_values_are_refused(step, fragment):
    with pytest.raises(PrimageInputError, match=fragment):
        validate_steps([step])


def test_steps_must_be_a_list():
    with pytest.raises(PrimageInputError, match="list"):
        validate_steps({"step": "n4"})


def test_all_steps_are_validated_before_any_runs():
    noisy, _ = step_phantom(shape=(8, 8, 8))
    calls = []
    with pytest.raises(PrimageInputError, match="unknown step"):
        run_steps(
            noisy, [{"step": "zscore"}, {"step": "nope"}], progress=lambda *a: calls.append(a)
        )
    assert calls == []


def test_run_steps_records_every_parameter_and_keeps_geometry():
    noisy, _ = step_phantom(shape=(12, 16, 16))
    integer = sitk.Cast(noisy, sitk.sitkInt16)
    reports = []
    result = run_steps(
        integer,
        [{"step": "anisotropic_diffusion", "iterations": 1, "note": "why"}, {"step": "zscore"}],
        progress=lambda fraction, message: reports.append((fraction, message)),
    )
    assert isinstance(result, PreprocessingResult)
    assert result.image.GetPixelID() == sitk.sitkFloat32
    assert same_geometry(result.image, noisy)
    assert result.bias_field is None
    first, second = result.records
    assert first["step"] == "anisotropic_diffusion" and first["note"] == "why"
    assert set(first["parameters"]) == set(STEPS["anisotropic_diffusion"].params)
    assert first["parameters"]["conductance"] == 1.0 and first["parameters"]["iterations"] == 1
    assert first["time_step_used"] == pytest.approx(F.stable_time_step(noisy))
    assert second["mask"] == "none" and second["seconds"] >= 0
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("step 2/2: zscore" in message for _, message in reports)
    json.dumps(result.records)  # records are plain JSON data


def test_run_steps_uses_the_mask_and_resamples_it_with_a_warning():
    image, mask, array, inside = _random_image_and_mask()
    coarse = sitk.Resample(mask, F.resample_to_spacing(mask, (2.4, 2.0, 5.0), "nearest"))
    with pytest.warns(GeometryWarning):
        result = run_steps(image, [{"step": "zscore"}], mask=coarse)
    assert result.records[0]["mask"] == "given"
    # Statistics come from the mask as resampled to the image grid (nearest neighbour).
    on_grid = sitk.GetArrayFromImage(
        sitk.Resample(coarse, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    ).astype(bool)
    out = _a(result.image)
    assert out[on_grid].mean() == pytest.approx(0.0, abs=1e-5)
    no_mask = run_steps(image, [{"step": "zscore", "use_mask": False}], mask=mask)
    assert no_mask.records[0]["mask"] == "none"
    assert _a(no_mask.image).mean() == pytest.approx(0.0, abs=1e-5)


def test_run_steps_refuses_an_empty_mask():
    image, *_ = _random_image_and_mask()
    empty = image_from_array(np.zeros((12, 16, 20), np.uint8))
    with pytest.raises(PrimageInputError, match="empty"):
        run_steps(image, [{"step": "zscore"}], mask=empty)


def test_run_steps_refuses_nonfinite_voxels_with_their_count():
    array = np.ones((6, 6, 6), np.float32)
    array[0, 0, :3] = np.nan
    array[1, 1, 1] = np.inf
    with pytest.raises(PrimageInputError, match="4 NaN/infinite"):
        run_steps(image_from_array(array), [{"step": "zscore"}])


def test_histogram_match_needs_a_reference():
    image, *_ = _random_image_and_mask()
    with pytest.raises(PrimageInputError, match="needs a reference"):
        run_steps(image, [{"step": "histogram_match"}])
    result = run_steps(image, [{"step": "histogram_match"}], reference=image)
    assert same_geometry(result.image, image)


def test_resample_step_moves_mask_and_bias_field_to_the_new_grid(patient):
    steps = [
        {"step": "n4", "iterations": [10], "shrink_factor": 4},
        {"step": "resample", "spacing_mm": [3.0, 3.0, 4.0]},
        {"step": "zscore"},
    ]
    result = run_steps(patient.t2w, steps, mask=patient.tissues > 0)
    assert result.image.GetSize() == (48, 48, 40)
    assert same_geometry(result.bias_field, result.image)
    body = sitk.GetArrayFromImage(
        F.resample_to_spacing(patient.tissues > 0, [3.0, 3.0, 4.0], "nearest")
    ).astype(bool)
    out = _a(result.image)
    assert out[body].mean() == pytest.approx(0.0, abs=1e-4)
    assert out[body].std() == pytest.approx(1.0, rel=1e-4)
    assert result.records[1]["output_size"] == [48, 48, 40]


def test_run_steps_takes_3d_and_the_series_version_takes_4d():
    noisy, _ = step_phantom(shape=(8, 10, 10))
    series = volumes_to_series([noisy, noisy * 2.0], time_spacing=5.0)
    with pytest.raises(PrimageInputError, match="3D volume"):
        run_steps(series, [{"step": "zscore"}])
    result = run_steps_series(series, [{"step": "anisotropic_diffusion", "iterations": 1}])
    assert result.image.GetSize() == series.GetSize()
    assert result.image.GetSpacing() == series.GetSpacing()
    assert result.records[0]["volumes"] == 2
    single = run_steps(noisy * 2.0, [{"step": "anisotropic_diffusion", "iterations": 1}])
    second = sitk.GetArrayViewFromImage(result.image)[1]
    np.testing.assert_allclose(second, sitk.GetArrayViewFromImage(single.image), rtol=1e-6)
    with pytest.raises(PrimageInputError, match="4D"):
        run_steps_series(noisy, [{"step": "zscore"}])


def test_series_volumes_written_apart_equal_the_joined_series(tmp_path):
    """The pipeline writes the volumes one by one (no joined copy); the file must be the
    one the joined series gives, byte for byte, with the 4th axis kept."""
    from primage.io import read_image, volumes_to_series, write_image, write_series

    rng = np.random.default_rng(5)
    frames = [
        sitk.GetImageFromArray(rng.normal(100, 10, (6, 7, 8)).astype(np.float32)) for _ in range(4)
    ]
    for frame in frames:
        frame.SetSpacing((0.7, 0.8, 2.5))
        frame.SetOrigin((3.0, -4.0, 5.0))
    series = volumes_to_series(frames, time_spacing=3.5)
    steps = [{"step": "anisotropic_diffusion", "iterations": 1}]
    apart = run_steps_volumes(series, steps)
    assert len(apart.volumes) == 4 and apart.time_spacing == 3.5 and apart.bias_fields is None
    written = write_series(apart.volumes, tmp_path / "apart.nii", time_spacing=apart.time_spacing)
    joined = write_image(run_steps_series(series, steps).image, tmp_path / "joined.nii")
    assert written.read_bytes() == joined.read_bytes()
    assert read_image(written, dimension=4).GetSpacing()[3] == 3.5
    # One volume at a time (what the pipeline does): the same file and the same records.
    records = []

    def one_by_one():
        for result in iter_steps_volumes(series, steps):
            records.append(result.records)
            yield result.image

    streamed = write_series(one_by_one(), tmp_path / "streamed.nii", time_spacing=3.5)
    assert streamed.read_bytes() == joined.read_bytes()
    summed = series_records(records)
    assert [r["step"] for r in summed] == [r["step"] for r in apart.records]
    assert summed[0]["volumes"] == 4


# --- presets --------------------------------------------------------------------------


def test_all_presets_load_and_validate():
    names = list_presets()
    assert names == ["ct", "dce", "dwi", "t1w", "t2w"]
    for name in names:
        preset = load_preset(name)
        assert preset["name"] == name
        for key in ("modality", "description", "reference"):
            assert preset[key].strip()
        validate_steps(preset["steps"])


def test_t2w_preset_has_the_primage_settings():
    steps = validate_steps(load_preset("t2w")["steps"])
    n4, diffusion = steps
    assert n4["step"] == "n4" and n4["control_point_spacing_mm"] == 50.0
    assert n4["iterations"] == [50, 30] and n4["shrink_factor"] == 2
    assert diffusion["step"] == "anisotropic_diffusion"
    assert diffusion["conductance"] == 1.0 and diffusion["iterations"] == 2


def test_presets_that_must_not_normalise():
    for name in ("dce", "ct", "dwi"):
        kinds = {STEPS[step["step"]].kind for step in load_preset(name)["steps"]}
        assert "normalise" not in kinds and "bias" not in kinds


def test_user_preset_files(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"steps": [{"step": "zscore"}], "description": "x"}))
    preset = load_preset(path)
    assert preset["name"] == "mine" and preset["steps"] == [{"step": "zscore"}]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"step": "percentile", "low": 5}]))
    assert load_preset(str(bare))["steps"][0]["low"] == 5


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"steps": [{"step": "zscore"}], "extra": 1}), "unknown key 'extra'"),
        (json.dumps({"name": "x"}), "missing 'steps'"),
        (json.dumps({"steps": [{"step": "n4", "bogus": 1}]}), "unknown parameter 'bogus'"),
    ],
)
def test_bad_user_presets_are_refused(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PrimageInputError, match=fragment):
        load_preset(path)


def test_unknown_preset_name_lists_the_built_in_ones():
    with pytest.raises(PrimageInputError, match="built-in presets: ct, dce, dwi, t1w, t2w"):
        load_preset("t3w")
