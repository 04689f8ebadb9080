"""The kinetics step reads each 4D series once and fits inside the box of the tumour grown
by ``kinetics.margin_mm``: its maps, on the full series grid, equal the engine's maps of
the uncut series with the same region (ADC, semi-quantitative DCE, Tofts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from _pipeline_data import write_small_case

import primage.pipeline.steps as steps
from primage.kinetics import adc_maps, dce_maps, tofts_maps
from primage.kinetics.dce import concentration_image
from primage.kinetics.series import reference_volume
from primage.kinetics.values import parse_values
from primage.pipeline import run_cohort
from primage.pipeline.config import step_image_name
from primage.registration.core import dilate_mask

CONFIG = {
    "steps": ["register", "segment", "kinetics"],
    "register": {"presets": {"dwi": "none", "dce": "none"}, "snapshots": False},
    "kinetics": {"margin_mm": 4.0, "tofts": {"enabled": True}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cohort = tmp_path_factory.mktemp("cohort")
    case = write_small_case(cohort / "case", 0, roles=("dwi", "dce"))
    out = tmp_path_factory.mktemp("out")
    reads: list[str] = []  # whole images read, and boxes ("box:" + path)

    def counted(function, prefix):
        def wrapper(path, *args, **kwargs):
            reads.append(prefix + str(path))
            return function(path, *args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "read_image", counted(steps.read_image, ""))
        patch.setattr(steps, "read_series_box", counted(steps.read_series_box, "box:"))
        result = run_cohort(cohort, CONFIG, out, workers=0)
    assert not result.failed
    return case, out / "case", reads


def _uncut(folder, role):
    series = sitk.ReadImage(str(folder / "register" / step_image_name(role)))
    grid = reference_volume(series)
    tumour = sitk.Resample(
        sitk.Cast(sitk.ReadImage(str(folder / "segment" / "tumour.nii.gz")) != 0, sitk.sitkUInt8),
        grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8,
    )  # fmt: skip
    return series, dilate_mask(tumour, CONFIG["kinetics"]["margin_mm"])


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_only_the_box_of_each_series_is_read_once(run):
    _, folder, reads = run
    for role in ("dwi", "dce"):
        path = str(folder / "register" / step_image_name(role))
        assert reads.count("box:" + path) == 1, role
        assert reads.count(path) == 0, role  # never the whole series


def test_box_is_smaller_than_the_grid_and_maps_stay_on_the_full_grid(run):
    _, folder, _ = run
    series, region = _uncut(folder, "dce")
    inside = np.argwhere(sitk.GetArrayViewFromImage(region) > 0)
    box = np.prod(inside.max(axis=0) - inside.min(axis=0) + 1)
    assert box < 0.5 * np.prod(region.GetSize())
    ktrans = sitk.ReadImage(str(folder / "kinetics" / "ktrans.nii.gz"))
    assert ktrans.GetSize() == region.GetSize()
    assert np.allclose(ktrans.GetOrigin(), region.GetOrigin())
    assert np.allclose(ktrans.GetDirection(), region.GetDirection())


def test_maps_equal_the_uncut_series(run):
    case, folder, _ = run
    kinetics = folder / "kinetics"
    series, region = _uncut(folder, "dwi")
    b = parse_values(case / "dwi.bval", role="b-values")
    expected = adc_maps(series, b, region).maps["adc"]
    assert np.count_nonzero(sitk.GetArrayViewFromImage(expected)) > 100
    np.testing.assert_allclose(_array(kinetics / "adc.nii.gz"), sitk.GetArrayFromImage(expected))

    series, region = _uncut(folder, "dce")
    times = parse_values(case / "dce.times", role="frame times")
    expected = dce_maps(series, times, region).maps["iauc60"]
    np.testing.assert_allclose(_array(kinetics / "iauc60.nii.gz"), sitk.GetArrayFromImage(expected))

    acquisition = json.loads((kinetics / "tofts.json").read_text())["acquisition"]
    concentration, _ = concentration_image(
        series,
        times,
        **{k: acquisition[k] for k in ("t10_s", "flip_angle_deg", "repetition_time_s")},
        relaxivity=acquisition["relaxivity"],
    )
    expected = tofts_maps(concentration, times, "parker", region, extended=acquisition["extended"])
    for name in ("ktrans", "ve"):
        np.testing.assert_allclose(
            _array(kinetics / f"{name}.nii.gz"),
            sitk.GetArrayFromImage(expected.maps[name]),
            rtol=1e-6,
            atol=1e-9,
            err_msg=name,
        )
