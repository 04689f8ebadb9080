""".nii.gz files written by primage.io: parallel-deflated gzip that every reader decodes to
exactly the NIfTI ITK writes, written atomically."""

from __future__ import annotations

import gzip
import zlib

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

import primage.io as pio
from primage.io import write_image


def _image(array: np.ndarray, pixel=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing([0.8, 0.9, 2.5, 1.0][: image.GetDimension()])
    image.SetOrigin([10.0, -20.0, 30.0, 0.0][: image.GetDimension()])
    return sitk.Cast(image, pixel) if pixel is not None else image


def _images():
    rng = np.random.default_rng(0)
    noisy = rng.normal(0, 1, (12, 40, 50)).astype(np.float32)  # barely compressible
    series = np.clip(rng.normal(300, 40, (4, 10, 30, 20)), 0, None).astype(np.int16)
    mask = np.zeros((10, 30, 20), np.uint8)
    mask[3:7, 10:20, 5:15] = 1
    return {"float map": _image(noisy), "int16 series": _image(series), "mask": _image(mask)}


@pytest.mark.parametrize("name", ["float map", "int16 series", "mask"])
@pytest.mark.parametrize("block", [1 << 22, 3001])  # one block; many blocks (odd size)
def test_nifti_gz_unzips_to_itks_own_nifti_and_reads_back_everywhere(
    tmp_path, monkeypatch, name, block
):
    monkeypatch.setattr(pio, "GZIP_BLOCK_BYTES", block)
    image = _images()[name]
    written = write_image(image, tmp_path / "out.nii.gz")
    sitk.WriteImage(image, str(tmp_path / "itk.nii"))
    data = written.read_bytes()
    # One gzip member (nothing after the end of the stream), same bytes as ITK's NIfTI.
    inflater = zlib.decompressobj(31)
    unzipped = inflater.decompress(data)
    assert inflater.eof and inflater.unused_data == b""
    assert unzipped == (tmp_path / "itk.nii").read_bytes()
    assert gzip.decompress(data) == unzipped
    back = sitk.ReadImage(str(written))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    # nibabel sees the same voxels (x fastest: the transpose of SimpleITK's array).
    nib = np.asarray(nibabel.load(str(written)).dataobj)
    np.testing.assert_array_equal(nib.T, sitk.GetArrayFromImage(image))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["itk.nii", "out.nii.gz"]


def test_nifti_gz_write_failure_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "map.nii.gz"
    write_image(_images()["mask"], target)
    before = target.read_bytes()

    def broken(block, last):
        raise OSError("disk full")

    monkeypatch.setattr(pio, "_deflate", broken)
    with pytest.raises(OSError, match="disk full"):
        write_image(_images()["float map"], target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["map.nii.gz"]


def test_compression_pays_where_data_repeat(tmp_path):
    # The fast settings still compress masks and masked maps (runs of zeros) strongly.
    mask = _images()["mask"]
    size = write_image(mask, tmp_path / "mask.nii.gz").stat().st_size
    assert size < 0.05 * mask.GetNumberOfPixels()
