"""Registration engine: presets, accuracy against known transforms, bad input.

Accuracy is measured as target registration error (TRE): the distance between where the
estimated and the true fixed -> moving transform send each fixed voxel of a region.
Pairs are misaligned by changing the moving image's header only (exact, no
interpolation) or, for the B-spline, by sampling the fixed image through the truth.
"""

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import GeometryWarning
from primage.registration import (
    core,
    list_presets,
    load_preset,
    register_images,
    resample_to_fixed,
    settings_for,
    stages_from_names,
    validate_settings,
)
from primage.registration.core import (
    compose,
    flatten_transform,
    read_transform,
    smooth_and_shrink,
    write_transform,
)
from primage.registration.truth import (
    grid_image,
    known_affine,
    move_geometry,
    render_phantom,
    sample_through,
    smooth_deformation,
    synthetic_registration_pair,
    transform_error,
)

RIGID = {"stages": stages_from_names("rigid")}


@pytest.fixture(scope="module")
def pair():
    return synthetic_registration_pair()


@pytest.fixture(scope="module")
def rigid_result(pair):
    fixed, moving, *_ = pair
    return register_images(fixed, moving, RIGID)


def _body(fixed):
    return sitk.Cast(fixed > 150, sitk.sitkUInt8)


# --- presets and settings -------------------------------------------------------------------


def test_presets_are_data_files_with_documented_stages():
    assert list_presets() == ["dce-to-t2", "dwi-to-t2", "mr-ct", "mr-ct-rigid", "mr-mr", "pet-ct"]
    for name in list_presets():
        preset = load_preset(name)
        assert preset["source"] == f"builtin:{name}"
        assert len(preset["description"]) > 80 and preset["reference"]
        assert preset["initialisation"] in ("none", "geometry", "moments")
        for stage in preset["stages"]:
            assert stage["metric"] == "mattes"  # every preset pairs different contrasts
            assert len(stage["samples"]) == len(stage["shrink_factors"])


def test_settings_for_picks_stages_and_overrides():
    settings = settings_for("mr-ct", "rigid,affine,bspline", bspline_spacing_mm=30, seed=5)
    assert [s["stage"] for s in settings["stages"]] == ["rigid", "affine", "bspline"]
    assert settings["stages"][0]["shrink_factors"] == [4, 2]  # the preset's coarse rigid
    assert settings["stages"][2]["control_point_spacing_mm"] == 30
    assert settings["initialisation"] == "moments" and settings["seed"] == 5
    # A rigid-only run must not stop at the preset's coarse levels.
    assert settings_for("mr-ct", "rigid")["stages"][0]["shrink_factors"] == [4, 2, 1]
    assert settings_for(None)["preset"] == "mr-mr"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stages": []}, "no registration stage"),
        ({"stages": [{"stage": "affine"}, {"stage": "rigid"}]}, "order rigid, affine"),
        ({"stages": [{"stage": "warp"}]}, "must be one of"),
        ({"stages": [{"stage": "rigid", "metric": "cc"}]}, "metric"),
        ({"stages": [{"stage": "rigid", "samples": [10, 10, 10]}]}, "samples"),
        ({"stages": [{"stage": "rigid", "shrink_factors": [2, 1]}]}, "one value per"),
        ({"stages": [{"stage": "rigid", "speed": 3}]}, "unknown parameter"),
        ({"stages": [{"stage": "bspline", "control_point_spacing_mm": 0}]}, "> 0"),
        ({"stages": [{"stage": "rigid"}], "initialisation": "magic"}, "initialisation"),
        ({"stages": [{"stage": "rigid"}], "qc": {"dice_min": 2}}, "dice_min"),
        ({"stages": [{"stage": "rigid"}], "colour": 1}, "unknown registration setting"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(PrimageInputError, match=message):
        validate_settings(settings)


def test_user_preset_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text('{"stages": [{"stage": "rigid", "metric": "correlation"}]}')
    preset = load_preset(path)
    assert preset["name"] == "mine" and preset["stages"][0]["metric"] == "correlation"
    path.write_text("{nope")
    with pytest.raises(PrimageInputError, match="not valid JSON"):
        load_preset(path)
    with pytest.raises(PrimageInputError, match="unknown registration preset"):
        load_preset("ct-to-moon")


# --- test pairs -------------------------------------------------------------------------------


def test_move_geometry_is_the_known_transform_exactly(pair):
    fixed, _moving, fixed_mask, _moving_mask, truth = pair
    grid = grid_image((10, 9, 8), (1.4, 1.4, 3.5), (11.0, -4.0, 19.0), -8.0)
    axes = np.asarray(grid.GetDirection()).reshape(3, 3)
    for transform in (truth, known_affine((1, 2, 3), (5, 0, 3), (1, 2, 3), (1.1, 0.9, 1.0), axes)):
        moved = move_geometry(grid, transform)
        for index in [(0, 0, 0), (9, 8, 7), (3, 5, 2)]:
            expected = transform.TransformPoint(grid.TransformIndexToPhysicalPoint(index))
            assert np.allclose(moved.TransformIndexToPhysicalPoint(index), expected, atol=1e-9)
    shear = known_affine(
        (0, 0, 0),
        scale=(1.2, 1.0, 1.0),
        scale_axes=np.eye(3)[[1, 0, 2]] * 0.5**0.5 + np.eye(3) * 0.5**0.5,
    )
    with pytest.raises(PrimageInputError, match="shears"):
        move_geometry(grid, shear)
    errors = transform_error(truth, truth, fixed, fixed_mask)
    assert errors["max_mm"] == 0.0
    assert errors["points"] == int(sitk.GetArrayViewFromImage(fixed_mask).sum())


# --- accuracy against known transforms ----------------------------------------------------------


def test_rigid_recovers_the_known_transform(pair, rigid_result):
    fixed, moving, fixed_mask, _moving_mask, truth = pair
    before = transform_error(sitk.Transform(), truth, fixed, _body(fixed))
    after = transform_error(rigid_result.transform, truth, fixed, _body(fixed))
    assert before["mean_mm"] > 4.0
    # Below a quarter of the smallest voxel (1.6 mm) on average, half of it at worst.
    assert after["mean_mm"] < 0.4 and after["max_mm"] < 0.8, after
    record = rigid_result.stages[0]
    assert record["stage"] == "rigid" and record["levels"][-1]["rounds"] == 6
    assert rigid_result.stage_transforms[0].GetName() == "Euler3DTransform"


def test_same_inputs_give_the_same_result(pair, rigid_result):
    # Samples come from a fixed seed; ITK's multi-threaded Mattes metric sums its
    # derivative in thread order, so runs agree to ~1e-5 mm rather than bit for bit.
    fixed, moving, *_ = pair
    again = register_images(fixed, moving, RIGID)
    difference = transform_error(again.transform, rigid_result.transform, fixed)
    assert difference["max_mm"] < 0.01, difference


def test_affine_recovers_scaling_and_rotation():
    fixed, _moving, _fm, _mm, _truth = synthetic_registration_pair()
    grid = grid_image((50, 46, 20), (1.4, 1.4, 3.5), (11.0, -4.0, 19.0), -8.0)
    source, _ = render_phantom(grid, (0.0, 520.0, 210.0, 820.0), seed=12)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    axes = np.asarray(grid.GetDirection()).reshape(3, 3)  # scaling along the moving grid's axes
    truth = known_affine(centre, (3.0, -2.0, 4.0), (3.0, -2.0, 2.0), (1.06, 0.95, 1.04), axes)
    moving = move_geometry(source, truth)
    result = register_images(fixed, moving, settings_for("mr-mr", "rigid,affine"))
    rigid_only = transform_error(result.stage_transforms[0], truth, fixed, _body(fixed))
    after = transform_error(result.transform, truth, fixed, _body(fixed))
    assert after["mean_mm"] < 0.6 and after["mean_mm"] < 0.5 * rigid_only["mean_mm"], after
    assert [p.GetName() for p in result.stage_transforms] == ["Euler3DTransform", "AffineTransform"]


def test_bspline_recovers_a_smooth_deformation():
    grid = grid_image((44, 40, 22), (1.6, 1.6, 3.0), (10.0, -5.0, 20.0), 0.0)
    fine = grid_image((88, 80, 44), (0.8, 0.8, 1.5), (10.0, -5.0, 20.0), 0.0)
    moving, _ = render_phantom(fine, (0.0, 300.0, 700.0, 120.0), seed=3)
    # Smooth texture: local deformation is only observable where the image has structure.
    texture = sitk.GetImageFromArray(
        np.random.default_rng(4).normal(0.0, 1.0, sitk.GetArrayViewFromImage(moving).shape)
    )
    texture.CopyInformation(moving)
    texture = sitk.SmoothingRecursiveGaussian(sitk.Cast(texture, sitk.sitkFloat32), 3.0)
    moving = sitk.SmoothingRecursiveGaussian(moving, 0.8) + 600.0 * texture * sitk.Cast(
        moving > 150, sitk.sitkFloat32
    )
    deformation = smooth_deformation(grid, 3.0, spacing_mm=35.0, seed=2)
    fixed = sample_through(moving, grid, deformation)  # fixed(x) = moving(truth(x))
    settings = settings_for("mr-mr", "rigid,bspline", bspline_spacing_mm=35.0)
    result = register_images(fixed, moving, settings)
    region = sitk.Cast(fixed > 150, sitk.sitkUInt8)
    rigid_only = transform_error(result.stage_transforms[0], deformation, fixed, region)
    after = transform_error(result.transform, deformation, fixed, region)
    assert after["mean_mm"] < 0.6 * rigid_only["mean_mm"], (rigid_only, after)
    assert result.stage_transforms[-1].GetName() == "BSplineTransform"


def test_masks_restrict_the_metric_and_initial_transform_is_kept(pair):
    fixed, moving, fixed_mask, moving_mask, truth = pair
    start = known_affine(
        fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]),
        (2.0, -1.0, 3.0),
        (2.0, -1.0, 1.0),
    )
    result = register_images(
        fixed,
        moving,
        RIGID,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        initial_transform=start,
    )
    parts = flatten_transform(result.transform)
    assert len(parts) == 2 and np.allclose(parts[0].GetParameters(), start.GetParameters())
    assert result.initialisation["method"] == "initial transform"
    after = transform_error(result.transform, truth, fixed, fixed_mask)
    assert after["mean_mm"] < 0.8, after


def test_moving_equal_to_fixed_gives_the_identity(pair):
    fixed = pair[0]
    result = register_images(
        fixed, sitk.Image(fixed), settings_for("mr-mr", "rigid,affine,bspline")
    )
    assert result.identical_inputs
    assert transform_error(result.transform, sitk.Transform(), fixed)["max_mm"] == 0.0
    assert result.kept_start and "nothing to optimise" in result.acceptance["reason"]
    assert all("identity" in stage["skipped"] for stage in result.stages)


def test_progress_reaches_one_and_can_cancel(pair):
    fixed, moving, *_ = pair
    fractions = []
    register_images(fixed, moving, RIGID, progress=lambda f, m: fractions.append(f))
    assert fractions[-1] == 1.0 and np.all(np.diff(fractions) >= -1e-9)

    class Stop(Exception):
        pass

    calls = []

    def cancel(fraction, message):
        calls.append(fraction)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        register_images(fixed, moving, RIGID, progress=cancel)
    assert len(calls) < 20  # stopped promptly, not after the whole optimisation


def test_resample_uses_the_fixed_grid_and_interpolation(pair, rigid_result):
    fixed, moving, fixed_mask, moving_mask, _ = pair
    image = resample_to_fixed(moving, fixed, rigid_result.transform)
    assert image.GetSize() == fixed.GetSize() and image.GetPixelID() == sitk.sitkFloat32
    labels = resample_to_fixed(moving_mask, fixed, rigid_result.transform, interpolation="nearest")
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1}
    a = sitk.GetArrayViewFromImage(labels) > 0
    b = sitk.GetArrayViewFromImage(fixed_mask) > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85


def test_transform_files_round_trip(tmp_path, rigid_result):
    for suffix in (".h5", ".tfm"):
        path = tmp_path / f"t{suffix}"
        write_transform(rigid_result.transform, path)
        back = read_transform(path)
        point = (12.0, -3.0, 25.0)
        assert np.allclose(back.TransformPoint(point), rigid_result.transform.TransformPoint(point))
    assert not list(tmp_path.glob(".*part*"))
    with pytest.raises(PrimageInputError, match="must end with"):
        write_transform(rigid_result.transform, tmp_path / "t.nii")
    (tmp_path / "broken.h5").write_text("not a transform")
    with pytest.raises(PrimageInputError, match="not an ITK transform"):
        read_transform(tmp_path / "broken.h5")
    with pytest.raises(PrimageInputError, match="does not exist"):
        read_transform(tmp_path / "missing.tfm")
    sitk.WriteTransform(sitk.Euler2DTransform(), str(tmp_path / "flat.tfm"))
    with pytest.raises(PrimageInputError, match="2D transform"):
        read_transform(tmp_path / "flat.tfm")
    assert compose([]).GetNumberOfTransforms() == 0


# --- bad input ----------------------------------------------------------------------------------


def test_no_overlap_without_initialisation_is_refused(pair):
    fixed, moving, *_ = pair
    far = sitk.Image(moving)
    far.SetOrigin((np.array(moving.GetOrigin()) + [500.0, 0.0, 0.0]).tolist())
    with pytest.raises(PrimageInputError, match="do not overlap in physical space"):
        register_images(fixed, far, {**RIGID, "initialisation": "none"})
    # The image centres can still be aligned: then it registers.
    result = register_images(fixed, far, {**RIGID, "initialisation": "geometry"})
    assert abs(result.initialisation["translation_mm"][0] - 500.0) < 20.0


@pytest.mark.parametrize("case", ["4d", "2d", "nan", "empty mask", "tiny"])
def test_bad_images_are_refused(pair, case):
    fixed, moving, fixed_mask, *_ = pair
    kwargs = {}
    if case == "4d":
        fixed = sitk.JoinSeries([fixed, fixed])
        match = "4D series"
    elif case == "2d":
        moving = moving[:, :, 5]
        match = "2D"
    elif case == "nan":
        moving = sitk.Image(moving)
        moving.SetPixel(3, 3, 3, float("nan"))
        match = "1 NaN"
    elif case == "empty mask":
        kwargs["fixed_mask"] = fixed_mask * 0
        match = "empty"
    else:
        fixed = fixed[:, :, :3]
        match = "at least 4 voxels"
    with pytest.raises(PrimageInputError, match=match):
        register_images(fixed, moving, RIGID, **kwargs)


def test_mask_on_another_grid_is_resampled_with_a_warning(pair):
    fixed, moving, fixed_mask, *_ = pair
    coarse = sitk.Resample(
        fixed_mask, sitk.Shrink(fixed_mask, [2, 2, 1]), sitk.Transform(), sitk.sitkNearestNeighbor
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register_images(fixed, moving, RIGID, fixed_mask=coarse)
    assert any(issubclass(w.category, GeometryWarning) for w in caught)
    elsewhere = sitk.Image(coarse)
    elsewhere.SetOrigin((np.array(coarse.GetOrigin()) + 900.0).tolist())
    with pytest.raises(PrimageInputError, match="does not overlap"), pytest.warns(GeometryWarning):
        register_images(fixed, moving, RIGID, fixed_mask=elsewhere)


# --- the moving region a registration sees ------------------------------------------------


def _padded(moving, border=(40, 40, 12)):
    """The moving image inside a wide background border: the fixed image sees a part."""
    low = float(sitk.GetArrayViewFromImage(moving).min())
    return sitk.ConstantPad(moving, border, border, low)


def test_resampling_through_the_viewed_region_equals_the_whole_image(pair, rigid_result):
    fixed, moving, *_ = pair
    wide = _padded(moving)
    transform = rigid_result.transform
    assert core.view_region(wide, fixed, [transform]) is not None  # the crop is taken
    for interpolation, itk in (("bspline", sitk.sitkBSpline), ("linear", sitk.sitkLinear)):
        ours = sitk.GetArrayFromImage(
            resample_to_fixed(wide, fixed, transform, interpolation=interpolation)
        )
        whole = sitk.GetArrayFromImage(
            sitk.Resample(wide, fixed, transform, itk, float(
                sitk.GetArrayViewFromImage(wide).min()), sitk.sitkFloat32)
        )  # fmt: skip
        np.testing.assert_allclose(ours, whole, rtol=0, atol=1e-4 * np.abs(whole).max())


def test_no_crop_through_a_deforming_transform_or_when_all_is_seen(pair):
    fixed, moving, *_ = pair
    wide = _padded(moving)
    bspline = sitk.BSplineTransformInitializer(fixed, [3, 3, 3], 3)
    assert core.view_region(wide, fixed, [bspline]) is None
    assert core.view_region(moving, fixed, [sitk.Transform(3, sitk.sitkIdentity)]) is None


def test_registration_on_the_viewed_region_equals_the_whole_image(pair, monkeypatch):
    fixed, moving, _fm, _mm, truth = pair
    wide = _padded(moving, (60, 60, 20))
    cropped = register_images(fixed, wide, RIGID)
    assert "moving_region" in cropped.initialisation
    size = cropped.initialisation["moving_region"]["size"]
    assert np.prod(size) < 0.7 * wide.GetNumberOfPixels()
    monkeypatch.setattr(core, "_VIEW_MIN_SAVING", 1.0)  # never crop
    whole = register_images(fixed, wide, RIGID)
    assert "moving_region" not in whole.initialisation
    error = transform_error(cropped.transform, truth, fixed, _body(fixed))
    assert error["mean_mm"] < 0.4, error
    difference = transform_error(cropped.transform, whole.transform, fixed)
    assert difference["max_mm"] < 0.05, difference


def test_moments_start_equals_itks_initialiser_and_its_subsample(pair, monkeypatch):
    fixed, moving, *_ = pair
    centre, translation = core.initialise(fixed, moving, "moments")

    def weights(image):  # ITK takes the intensities as weights: shifted to be >= 0
        return image - min(0.0, float(sitk.GetArrayViewFromImage(image).min()))

    itk = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            weights(fixed),
            weights(moving),
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
    )
    assert np.abs(translation).max() > 1.0  # a real start, not the identity
    np.testing.assert_allclose(centre, itk.GetCenter(), atol=1e-6)
    np.testing.assert_allclose(translation, itk.GetTranslation(), atol=1e-6)
    monkeypatch.setattr(core, "_MOMENTS_VOXELS", 6000)  # every 2nd voxel per axis
    centre_sub, translation_sub = core.initialise(fixed, moving, "moments")
    spacing = max(moving.GetSpacing())  # within half a voxel on a 50 x 46 x 20 image
    assert np.abs(centre_sub - centre).max() < 0.5 * spacing
    assert np.abs(translation_sub - translation).max() < 0.5 * spacing


def test_geometry_start_equals_itks_initialiser(pair):
    fixed, moving, *_ = pair
    centre, translation = core.initialise(fixed, moving, "geometry")
    itk = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    )
    np.testing.assert_allclose(centre, itk.GetCenter(), atol=1e-6)
    np.testing.assert_allclose(translation, itk.GetTranslation(), atol=1e-6)


@pytest.mark.parametrize(
    ("sigma", "factors"), [(2.0, (4, 4, 4)), (2.0, (4, 4, 2)), (1.0, (2, 2, 1)), (0.5, (1, 3, 2))]
)
def test_pyramid_smoothing_axis_by_axis_equals_smoothing_then_shrinking(pair, sigma, factors):
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray((rng.normal(size=(23, 37, 41)) * 300).astype(np.float32))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-12.0, 30.5, 7.25))
    image.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3).GetMatrix())
    # The pair's moving image: a grid where shrinking axis by axis would keep other voxels
    # than ITK's one-go shrink (its centred start index rounds the other way).
    for source in (image, pair[1]):
        expected = sitk.Shrink(
            sitk.SmoothingRecursiveGaussian(source, [sigma * s for s in source.GetSpacing()]),
            factors,
        )
        ours = smooth_and_shrink(source, sigma, factors)
        assert np.array_equal(
            sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(expected)
        )
        assert ours.GetOrigin() == expected.GetOrigin()
        assert ours.GetSpacing() == expected.GetSpacing()
        assert ours.GetDirection() == expected.GetDirection()
