"""primage.io: reading with clear errors, atomic writing, masks, series."""

import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _primage_images import image_from_array, oblique_direction, write_zero_spacing_mha

from primage.errors import PrimageInputError
from primage.io import (
    GeometryWarning,
    SeriesFile,
    check_outputs_not_inputs,
    count_nonfinite,
    image_stem,
    image_suffix,
    mask_on_image_grid,
    read_frame_means,
    read_image,
    read_series_box,
    read_volume_grid,
    replace_nonfinite,
    same_geometry,
    series_to_volumes,
    series_volume,
    volumes_to_series,
    write_image,
    write_json,
    write_series,
)


def _volume(seed=0, shape=(6, 7, 8)):
    array = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return image_from_array(array)


def test_suffix_and_stem():
    assert image_suffix("a/b/t2w.nii.gz") == ".nii.gz"
    assert image_suffix("x.SEG.NRRD") == ".seg.nrrd"
    assert image_stem("dir/t2w.nii.gz") == "t2w"
    assert image_stem("mask.seg.nrrd") == "mask"


def test_read_missing_file(tmp_path):
    with pytest.raises(PrimageInputError, match="does not exist"):
        read_image(tmp_path / "nothing.nii.gz")


def test_read_folder(tmp_path):
    with pytest.raises(PrimageInputError, match="folder"):
        read_image(tmp_path)


def test_read_text_file_named_like_an_image(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_text("this is not an image\n")
    with pytest.raises(PrimageInputError, match="not an image SimpleITK can read"):
        read_image(path, role="input")


def test_read_round_trip_keeps_geometry(tmp_path):
    image = _volume()
    path = write_image(image, tmp_path / "v.nrrd")
    back = read_image(path)
    assert same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_4d_where_3d_expected_is_refused(tmp_path):
    series = volumes_to_series([_volume(0), _volume(1)])
    path = write_image(series, tmp_path / "series.nii.gz")
    with pytest.raises(PrimageInputError, match="4D series of 2 volumes"):
        read_image(path, dimension=3)
    assert read_image(path, dimension=4).GetSize()[3] == 2


def test_single_volume_4d_is_accepted_as_3d(tmp_path):
    series = volumes_to_series([_volume(0)])
    path = write_image(series, tmp_path / "one.nii.gz")
    volume = read_image(path, dimension=3)
    assert volume.GetDimension() == 3
    assert np.allclose(volume.GetDirection(), oblique_direction(), atol=1e-5)


def test_3d_where_4d_expected_is_refused(tmp_path):
    path = write_image(_volume(), tmp_path / "v.nii.gz")
    with pytest.raises(PrimageInputError, match="single 3D volume"):
        read_image(path, dimension=4)


def test_zero_spacing_header_is_refused(tmp_path):
    path = write_zero_spacing_mha(tmp_path / "zero.mha")
    with pytest.raises(PrimageInputError, match="spacing"):
        read_image(path)


def test_check_spacing_on_an_image_in_memory():
    from primage.io import check_spacing

    image = _volume()
    check_spacing(image)
    # SimpleITK refuses to set zero spacing, so emulate a corrupt one via a mock object.
    with pytest.raises(PrimageInputError, match="invalid voxel spacing"):
        check_spacing(type("Fake", (), {"GetSpacing": lambda self: (1.0, float("nan"), 1.0)})())


def test_vector_image_is_refused(tmp_path):
    vector = sitk.Compose([_volume(0), _volume(1)])
    path = write_image(vector, tmp_path / "vector.nrrd")
    with pytest.raises(PrimageInputError, match="components per voxel"):
        read_image(path)


def test_count_and_replace_nonfinite():
    array = np.ones((4, 5, 6), np.float32)
    array[0, 0, 0] = np.nan
    array[1, 2, 3] = np.inf
    array[3, 4, 5] = -np.inf
    image = image_from_array(array)
    assert count_nonfinite(image) == 3
    fixed = replace_nonfinite(image, 0.0)
    assert count_nonfinite(fixed) == 0
    assert same_geometry(fixed, image)
    assert sitk.GetArrayViewFromImage(fixed)[1, 2, 3] == 0
    assert count_nonfinite(sitk.Cast(fixed, sitk.sitkInt16)) == 0


def test_series_round_trip_keeps_oblique_geometry():
    volumes = [_volume(seed) for seed in range(3)]
    series = volumes_to_series(volumes, time_spacing=6.0)
    assert series.GetSize() == (8, 7, 6, 3)
    assert series.GetSpacing()[3] == 6.0
    back = series_to_volumes(series)
    for original, restored in zip(volumes, back, strict=True):
        assert same_geometry(original, restored)
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(original), sitk.GetArrayViewFromImage(restored)
        )


def test_volumes_on_different_grids_cannot_form_a_series():
    other = _volume(1)
    other.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(PrimageInputError, match="another grid"):
        volumes_to_series([_volume(0), other])


def test_mask_on_same_grid_is_binarised_without_warning():
    labels = np.zeros((6, 7, 8), np.int16)
    labels[2:4, 2:5, 3:6] = 7
    image = _volume()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = mask_on_image_grid(image_from_array(labels), image)
    assert mask.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask), (labels != 0).astype(np.uint8))


def test_mask_on_another_grid_is_resampled_with_a_warning():
    image = _volume(shape=(10, 12, 14))
    # A mask with 3x the spacing (odd factor: no nearest-neighbour ties), same origin and
    # direction, with one coarse voxel set at index (x=2, y=1, z=1).
    coarse = np.zeros((4, 4, 5), np.uint8)
    coarse[1, 1, 2] = 1
    mask = image_from_array(coarse, spacing=tuple(3 * s for s in image.GetSpacing()))
    with pytest.warns(GeometryWarning, match="nearest-neighbour"):
        resampled = mask_on_image_grid(mask, image)
    assert same_geometry(resampled, image)
    # Independent expectation: fine index i lies in coarse voxel rint(i / 3).
    z, y, x = np.indices((10, 12, 14))
    expected = (np.rint(x / 3) == 2) & (np.rint(y / 3) == 1) & (np.rint(z / 3) == 1)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(resampled), expected)


def test_empty_mask_is_refused():
    image = _volume()
    empty = image_from_array(np.zeros((6, 7, 8), np.uint8))
    with pytest.raises(PrimageInputError, match="empty"):
        mask_on_image_grid(empty, image)


def test_mask_outside_the_image_is_refused():
    image = _volume()
    far = image_from_array(np.ones((6, 7, 8), np.uint8), origin=(500.0, 500.0, 500.0))
    with pytest.warns(GeometryWarning), pytest.raises(PrimageInputError, match="does not overlap"):
        mask_on_image_grid(far, image)


def test_outputs_may_not_be_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.nii.gz").write_bytes(b"x")
    with pytest.raises(PrimageInputError, match="also an input"):
        check_outputs_not_inputs(["./sub/../in.nii.gz"], [tmp_path / "in.nii.gz"])
    check_outputs_not_inputs(["out.nii.gz", None], ["in.nii.gz", None])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):  # PNG cannot hold complex voxels: the writer fails
        write_image(sitk.Image([2, 2, 2], sitk.sitkComplexFloat64), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []
    write_image(_volume(), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_image(_volume(), tmp_path / "v.nii.gz")
        json_path = write_json({"a": 1}, tmp_path / "v.json")
    finally:
        os.umask(umask)
    for written in (path, json_path):
        assert stat.S_IMODE(written.stat().st_mode) == 0o644


def test_write_json_handles_numpy_and_paths(tmp_path):
    path = write_json(
        {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3), "p": Path("a/b")},
        tmp_path / "d.json",
    )
    assert json.loads(path.read_text()) == {"n": 3, "x": 0.5, "a": [0, 1, 2], "p": "a/b"}


@pytest.mark.parametrize("name", ["out.mhd", "out.nhdr"])
def test_detached_header_formats_get_their_final_data_file_names(tmp_path, name):
    image = _volume()
    write_image(image, tmp_path / name)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and not any(n.startswith(".") for n in names), names
    back = read_image(tmp_path / name)
    assert same_geometry(back, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    write_image(image * 2.0, tmp_path / name)  # overwriting keeps the same two files
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def _frames(count, pixel=np.float32):
    rng = np.random.default_rng(count)
    volumes = []
    for _ in range(count):
        volume = sitk.GetImageFromArray((rng.normal(size=(5, 6, 7)) * 100).astype(pixel))
        volume.SetSpacing((0.7, 0.8, 3.0))
        volume.SetOrigin((10.0, -4.0, 2.5))
        volume.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.1, -0.2, 0.3).GetMatrix())
        volumes.append(volume)
    return volumes


@pytest.mark.parametrize("given", ["list", "iterator"])  # an iterator: written as it comes
@pytest.mark.parametrize("pixel", [np.float32, np.int16])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
def test_write_series_equals_writing_the_joined_series(tmp_path, pixel, suffix, given):
    volumes = _frames(6, pixel)
    source = volumes if given == "list" else (v for v in volumes)
    ours = write_series(source, tmp_path / f"ours{suffix}", time_origin=3.0, time_spacing=2.5)
    joined = sitk.JoinSeries(volumes, 3.0, 2.5)
    theirs = tmp_path / f"itk{suffix}"
    sitk.WriteImage(joined, str(theirs))
    a, b = sitk.ReadImage(str(ours)), sitk.ReadImage(str(theirs))
    assert a.GetSize() == (7, 6, 5, 6) and a.GetPixelID() == joined.GetPixelID()
    assert same_geometry(a, b, tolerance=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(joined))
    if suffix == ".nii":  # the same file as ITK's, byte for byte
        assert ours.read_bytes() == theirs.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours.name, theirs.name])


def test_write_series_refuses_no_volumes_and_joins_mixed_grids(tmp_path):
    with pytest.raises(PrimageInputError, match="at least one volume"):
        write_series([], tmp_path / "s.nii")
    volumes = _frames(4)
    volumes[3] = sitk.Cast(volumes[3], sitk.sitkFloat64)  # JoinSeries refuses it too
    with pytest.raises(RuntimeError):
        write_series(volumes, tmp_path / "s.nii")
    assert list(tmp_path.iterdir()) == []


def test_write_series_refuses_a_streamed_frame_on_another_grid_and_leaves_no_file(tmp_path):
    volumes = _frames(5)
    volumes[3].SetOrigin((11.0, -4.0, 2.5))
    with pytest.raises(PrimageInputError, match="frame 3 of s.nii is on another grid"):
        write_series(iter(volumes), tmp_path / "s.nii")
    assert list(tmp_path.iterdir()) == []
    two = _frames(2)  # nothing appended after ITK's first two frames
    path = write_series(iter(two), tmp_path / "two.nii")
    assert np.array_equal(
        sitk.GetArrayViewFromImage(sitk.ReadImage(str(path))),
        sitk.GetArrayViewFromImage(sitk.JoinSeries(two)),
    )


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])  # streamed, and read whole then cut
def test_series_box_grid_and_frame_means_equal_the_whole_series(tmp_path, suffix):
    volumes = _frames(5)
    path = write_series(volumes, tmp_path / f"s{suffix}", time_origin=1.0, time_spacing=2.0)
    whole = sitk.ReadImage(str(path))
    box = read_series_box(path, (2, 1, 3), (4, 3, 2))
    expected = whole[2:6, 1:4, 3:5, :]
    assert np.array_equal(sitk.GetArrayViewFromImage(box), sitk.GetArrayViewFromImage(expected))
    assert same_geometry(box, expected, tolerance=1e-9)
    grid = read_volume_grid(path)
    assert same_geometry(grid, series_to_volumes(whole)[0], tolerance=1e-9)
    assert grid.GetPixelID() == sitk.sitkUInt8  # a grid only: the header, no voxels read
    means = read_frame_means(path)
    np.testing.assert_allclose(
        means, sitk.GetArrayViewFromImage(whole).mean(axis=(1, 2, 3), dtype=float), rtol=1e-12
    )
    series = SeriesFile(path)  # volume by volume: streamed from .nii, cut from .nii.gz
    assert (series.count, series.time_origin, series.time_spacing) == (5, 1.0, 2.0)
    for index, volume in enumerate(series.volumes()):
        expected = series_volume(whole, index)
        assert np.array_equal(
            sitk.GetArrayViewFromImage(volume), sitk.GetArrayViewFromImage(expected)
        )
        assert same_geometry(volume, expected, tolerance=0.0)
    with pytest.raises(IndexError):
        series.volume(5)


def test_series_readers_refuse_a_missing_file_and_a_volume(tmp_path):
    with pytest.raises(PrimageInputError, match="DCE file does not exist"):
        read_volume_grid(tmp_path / "none.nii", role="DCE")
    path = tmp_path / "v.nii"
    sitk.WriteImage(_frames(1)[0], str(path))
    with pytest.raises(PrimageInputError, match="is 3D; a 4D image is expected"):
        read_series_box(path, (0, 0, 0), (1, 1, 1))
