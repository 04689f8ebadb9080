"""The digital patient: determinism, geometry and ground truth checked independently."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from primage.io import read_image, same_geometry, series_to_volumes
from primage.synthetic import (
    TISSUES,
    extended_tofts,
    make_digital_patient,
    parker_aif,
    spgr_signal,
    write_case,
)

SMALL = {"size": (40, 40, 16), "spacing": (3.6, 3.6, 10.0)}


@pytest.fixture(scope="module")
def patient():
    return make_digital_patient(0)


@pytest.fixture(scope="module")
def small():
    return make_digital_patient(1, **SMALL, frame_times_s=np.arange(0.0, 121.0, 10.0))


def _a(image):
    return sitk.GetArrayFromImage(image).astype(np.float64)


def test_same_seed_same_patient_other_seed_other_noise(small):
    again = make_digital_patient(1, **SMALL, frame_times_s=np.arange(0.0, 121.0, 10.0))
    for role in ("t2w", "dwi", "dce", "ct", "tissues"):
        np.testing.assert_array_equal(_a(getattr(small, role)), _a(getattr(again, role)))
    other = make_digital_patient(2, **SMALL, frame_times_s=np.arange(0.0, 121.0, 10.0))
    assert not np.array_equal(_a(small.t2w), _a(other.t2w))


def test_grid_is_oblique_anisotropic_and_shared(patient):
    grid = patient.t2w
    assert grid.GetSize() == (96, 96, 40) and grid.GetSpacing() == (1.5, 1.5, 4.0)
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    assert not np.allclose(direction, np.eye(3))
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-12)
    for role in ("t1w", "ct", "tumour", "tissues"):
        assert same_geometry(getattr(patient, role), grid)
    for name, image in patient.truth_images.items():
        assert same_geometry(image, grid), name
    for series, count in ((patient.dwi, 8), (patient.dce, len(patient.frame_times))):
        assert series.GetSize()[3] == count
        assert same_geometry(series_to_volumes(series)[0], grid)
    assert patient.b_values == [0, 50, 100, 200, 400, 600, 800, 1000]


def test_tumour_mask_and_tissue_labels(patient):
    labels = _a(patient.tissues)
    tumour = _a(patient.tumour)
    np.testing.assert_array_equal(tumour, np.isin(labels, (8, 9)))
    assert set(np.unique(labels)) == set(TISSUES)
    volume_ml = tumour.sum() * np.prod(patient.t2w.GetSpacing()) / 1000.0
    assert volume_ml == pytest.approx(patient.ground_truth["tumour_volume_ml"])
    assert 10.0 < volume_ml < 100.0
    # The necrotic core lies inside the tumour, away from its surface.
    necrosis = labels == 9
    assert necrosis.sum() > 100


def test_bias_field_is_smooth_and_centred_in_the_body(patient):
    bias = _a(patient.truth_images["bias_field"])
    body = _a(patient.tissues) > 0
    assert abs(np.log(bias[body]).mean()) < 1e-6
    assert 0.5 < bias[body].min() and bias[body].max() < 2.0
    assert bias[body].max() / bias[body].min() > 1.5  # strong enough to matter
    # Smooth: neighbouring voxels differ by < 2 % along x.
    assert np.abs(np.diff(np.log(bias), axis=2)).max() < 0.02


def test_t2w_is_truth_times_bias_plus_rician_noise(patient):
    labels = _a(patient.tissues)
    image = _a(patient.t2w) / _a(patient.truth_images["bias_field"])
    for label in (2, 5, 8):
        values = image[labels == label]
        # High SNR: the Rician mean is within ~1 % of the true value.
        assert values.mean() == pytest.approx(TISSUES[label].t2w, rel=0.02)
    air = _a(patient.t2w)[labels == 0]
    # Rayleigh noise in air: mean sigma sqrt(pi / 2).
    assert air.mean() == pytest.approx(15.0 * math.sqrt(math.pi / 2), rel=0.05)


def test_dwi_decays_with_the_true_adc(patient):
    labels = _a(patient.tissues)
    series = _a(patient.dwi)  # (b, z, y, x)
    b = np.array(patient.b_values)
    adc = _a(patient.truth_images["adc"])
    for label in (5, 6, 8):
        signal = series[:, labels == label].mean(axis=1)
        slope = -np.polyfit(b, np.log(signal), 1)[0]
        assert slope == pytest.approx(TISSUES[label].adc, rel=0.03)
        assert np.all(adc[labels == label] == np.float32(TISSUES[label].adc))


def test_ivim_option_adds_pseudo_diffusion():
    patient = make_digital_patient(0, ivim=True, **SMALL)
    labels = _a(patient.tissues)
    series = _a(patient.dwi)
    b = np.array(patient.b_values)
    liver = series[:, labels == 5].mean(axis=1)
    high = b >= 200
    d_high_b = -np.polyfit(b[high], np.log(liver[high]), 1)[0]
    d_all_b = -np.polyfit(b, np.log(liver), 1)[0]
    assert d_high_b == pytest.approx(TISSUES[5].adc, rel=0.08)
    # Perfusion inflates the all-b ADC; the inflation expected from the noise-free model:
    t = TISSUES[5]
    model = (1 - t.ivim_f) * np.exp(-b * t.adc) + t.ivim_f * np.exp(-b * t.ivim_dstar)
    expected = -np.polyfit(b, np.log(model), 1)[0]
    assert expected > 1.05 * t.adc
    assert d_all_b == pytest.approx(expected, rel=0.03)
    assert "ivim_f" in patient.truth_images


def test_parker_aif_peaks_after_the_delay():
    t = np.arange(0.0, 120.0, 0.1)
    blood = parker_aif(t, delay_s=20.0)
    assert t[np.argmax(blood)] == pytest.approx(20.0 + 0.17046 * 60.0, abs=0.5)
    assert 5.0 < blood.max() < 7.0  # Parker's first-pass peak, mmol/L


def test_extended_tofts_matches_a_brute_force_convolution():
    t = np.arange(0.0, 200.0, 0.25)
    plasma = parker_aif(t) / 0.58
    ktrans, ve, vp = 0.25, 0.3, 0.05
    fast = extended_tofts(t, plasma, ktrans, ve, vp)
    kep = ktrans / ve / 60.0
    fine = np.arange(0.0, 200.0, 0.01)
    fine_plasma = np.interp(fine, t, plasma)
    for n in (200, 400, 790):
        mask = fine <= t[n]
        integrand = fine_plasma[mask] * np.exp(-kep * (t[n] - fine[mask]))
        expected = vp * plasma[n] + ktrans / 60.0 * np.trapezoid(integrand, fine[mask])
        assert fast[n] == pytest.approx(expected, rel=2e-3)


def test_dce_baseline_follows_the_spgr_equation(patient):
    labels = _a(patient.tissues)
    bias = _a(patient.truth_images["bias_field"])
    first = series_to_volumes(patient.dce)[0]
    seq = patient.ground_truth["dce"]["sequence"]
    for label in (3, 5, 8):
        tissue = TISSUES[label]
        expected = spgr_signal(
            tissue.m0, 1.0 / tissue.t10, seq["repetition_time_s"], seq["flip_angle_deg"]
        )
        measured = (_a(first) / bias)[labels == label].mean()
        assert measured == pytest.approx(expected, rel=0.02)
    tumour_curve = patient.ground_truth["dce"]["concentration_curves"]["tumour"]
    assert tumour_curve[0] < 0.05 and max(tumour_curve) > 0.3


def test_ct_in_hounsfield_units(patient):
    assert patient.ct.GetPixelID() == sitk.sitkInt16
    labels, ct = _a(patient.tissues), _a(patient.ct)
    for label in (0, 1, 4, 5, 8):
        assert ct[labels == label].mean() == pytest.approx(TISSUES[label].ct_hu, abs=1.5)


def test_write_case_layout_round_trips(small, tmp_path):
    paths = write_case(small, tmp_path / "case")
    folder = tmp_path / "case"
    for name in (
        "t2w.nii.gz", "t1w.nii.gz", "dwi.nii.gz", "dwi.bval", "dce.nii.gz", "dce.times",
        "ct.nii.gz", "tumour.nii.gz", "tissues.nii.gz", "ground_truth.json",
    ):  # fmt: skip
        assert (folder / name).is_file(), name
    assert [float(b) for b in (folder / "dwi.bval").read_text().split()] == small.b_values
    assert [float(t) for t in (folder / "dce.times").read_text().split()] == small.frame_times
    dwi = read_image(paths["dwi"], dimension=4)
    np.testing.assert_array_equal(_a(dwi), _a(small.dwi))
    assert same_geometry(series_to_volumes(dwi)[0], small.t2w)
    t2w = read_image(paths["t2w"])
    assert same_geometry(t2w, small.t2w)
    truth = json.loads((folder / "ground_truth.json").read_text())
    assert truth["dwi"]["b_values_s_per_mm2"] == small.b_values
    assert truth["tissues"]["8"]["name"] == "tumour"
    for relative in truth["images"].values():
        assert (folder / relative).is_file()
    bias = read_image(folder / truth["images"]["bias_field"])
    np.testing.assert_allclose(_a(bias), _a(small.truth_images["bias_field"]), rtol=1e-6)
