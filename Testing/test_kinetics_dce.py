"""DCE: iAUC60 against analytic integrals, bolus arrival, SPGR conversion, Tofts recovery."""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.kinetics.aif import (
    PARKER,
    aif_from_blood_curve,
    parker_blood,
    population_aif,
    read_aif_csv,
    sampled_aif,
)
from primage.kinetics.dce import (
    dce_maps,
    mean_curve_arrival,
    semi_quantitative,
    spgr_concentration,
    window_weights,
)
from primage.kinetics.tofts import (
    ExponentialConvolution,
    fit_population_delay,
    fit_tofts,
    tofts_maps,
)
from primage.kinetics.values import check_frame_times
from primage.synthetic import PARKER_AIF, extended_tofts, parker_aif, spgr_signal

A, TAU, T0 = 0.8, 20.0, 30.0


def enhancement(t, t0=T0):
    """Relative enhancement A (1 - exp(-(t - t0)/tau)) after t0, 0 before."""
    u = np.maximum(np.asarray(t, float) - t0, 0.0)
    return A * (1.0 - np.exp(-u / TAU))


def analytic_iauc(t0, start, length=60.0):
    """Exact integral of the enhancement from start to start + length (start >= t0)."""

    def primitive(t):
        u = t - t0
        return A * (u + TAU * np.exp(-u / TAU))

    return primitive(start + length) - primitive(start)


def test_iauc60_matches_the_analytic_integral():
    times = np.arange(0.0, 240.1, 1.0)
    signal = 500.0 * (1.0 + enhancement(times))[None, :]
    result = semi_quantitative(signal, times, baseline_frames=20, global_arrival=T0)
    assert result.bolus_arrival[0] == pytest.approx(T0, abs=0.05)  # 1 s frames
    exact = analytic_iauc(T0, T0)
    # Trapezoidal rule on 1 s frames: error ~ dt^2/12 * |f'(t0)| ~ 2e-3 s here, plus the
    # arrival's sub-frame error times RE(t0 + 60 s) ~ 0.76 (0.05 s -> 0.04 at most).
    assert result.iauc60[0] == pytest.approx(exact, abs=0.04)


@pytest.mark.parametrize("start", [31.3, 37.75])
def test_window_interpolates_at_both_ends(start):
    """A window starting and ending between frames: linear interpolation at both ends."""
    times = np.arange(0.0, 200.1, 0.5)
    curve = enhancement(times)
    weights = window_weights(times, np.array([start]), 60.0)
    value = float(weights[0] @ curve)
    assert value == pytest.approx(analytic_iauc(T0, start), rel=1e-4)
    # For a piecewise-linear curve the rule is exact.
    line = 2.0 * times + 1.0
    exact = (start + 60.0) ** 2 - start**2 + 60.0
    assert float(weights[0] @ line) == pytest.approx(exact, rel=1e-12)


def test_automatic_arrival_and_baseline_are_found():
    times = np.arange(0.0, 300.1, 2.0)
    signal = 1000.0 * (1 + enhancement(times, 31.0) * np.exp(-np.maximum(times - 31, 0) / 200))
    assert mean_curve_arrival(signal, times) == pytest.approx(31.0, abs=0.5)
    rng = np.random.default_rng(0)
    noisy = signal[None, :] + rng.normal(0, 5.0, (500, times.size))
    result = semi_quantitative(noisy, times, baseline_frames=15, global_arrival=31.0, noise_sd=5.0)
    assert np.median(result.bolus_arrival) == pytest.approx(31.0, abs=1.0)
    # The SE of iAUC60 (BAT held fixed) is of the size of the spread of the estimates.
    assert np.median(result.iauc60_se) == pytest.approx(result.iauc60.std(), rel=0.5)


def test_semi_quantitative_parameters_of_a_piecewise_linear_curve():
    """Rise 0 -> 1.2 from 20 s to 50 s, then fall to 0.9 at 170 s: every value is known."""
    times = np.arange(0.0, 170.1, 2.0)
    re = np.interp(times, [0, 20, 50, 170], [0, 0, 1.2, 0.9])
    result = semi_quantitative(
        200.0 * (1 + re)[None, :],
        times,
        baseline_frames=10,
        global_arrival=20.0,
        arrival="global",
        ser_early_s=60.0,
    )
    assert result.peak_enhancement[0] == pytest.approx(1.2)
    assert result.ttp[0] == pytest.approx(30.0)
    assert result.wash_in[0] == pytest.approx(1.2 / 30.0 * 60.0)  # per minute
    assert result.wash_out[0] == pytest.approx(-0.3 / 120.0 * 60.0)
    assert result.ser[0] == pytest.approx(np.interp(80.0, [50, 170], [1.2, 0.9]) / 0.9)
    exact = 0.5 * 30 * 1.2 + 30 * (1.2 + np.interp(80.0, [50, 170], [1.2, 0.9])) / 2
    assert result.iauc60[0] == pytest.approx(exact, rel=1e-12)


def test_spgr_conversion_round_trip():
    t10, flip, tr, r1 = 1.3, 15.0, 0.004, 4.5
    concentration = np.array([0.0, 0.0, 0.1, 0.5, 1.0, 2.0, 0.7])
    signal = spgr_signal(1000.0, 1 / t10 + r1 * concentration, tr, flip)
    back = spgr_concentration(
        signal[None, :], 2, t10_s=t10, flip_angle_deg=flip, repetition_time_s=tr, relaxivity=r1
    )
    np.testing.assert_allclose(back[0], concentration, atol=1e-9)
    with pytest.raises(PrimageInputError, match="flip angle"):
        spgr_concentration(
            signal[None, :], 2, t10_s=t10, flip_angle_deg=0, repetition_time_s=tr, relaxivity=r1
        )


def test_parker_aif_matches_the_synthetic_patient():
    assert PARKER == PARKER_AIF
    t = np.arange(0.0, 300.0, 0.5)
    np.testing.assert_allclose(parker_blood(t, 20.0), parker_aif(t, 20.0), rtol=1e-12)


def test_convolution_matches_the_exact_fine_grid_recursion():
    """The moment recursion on coarse frames equals the synthetic's 0.25 s recursion."""
    fine = np.arange(0.0, 300.01, 0.25)
    plasma = parker_aif(fine, 20.0) / (1 - 0.42)
    times = np.arange(0.0, 300.01, 5.0)
    convolution = ExponentialConvolution(times, population_aif(20.0))
    for ktrans, ve in [(0.25, 0.3), (1.0, 0.2), (0.02, 0.5)]:
        reference = np.interp(times, fine, extended_tofts(fine, plasma, ktrans, ve, 0.0))
        model = ktrans * convolution.evaluate(np.array([ktrans / ve]))[:, 0]
        np.testing.assert_allclose(model, reference, atol=2e-4 * reference.max())


def test_convolution_derivative_matches_finite_differences():
    times = np.concatenate([np.arange(0.0, 60.0, 2.0), np.arange(60.0, 300.1, 7.5)])
    convolution = ExponentialConvolution(times, population_aif(15.0))
    kep = np.array([0.05, 0.8, 4.0, 9.0])
    _, derivative = convolution.evaluate(kep, derivative=True)
    step = 1e-6 * kep
    numeric = (convolution.evaluate(kep + step) - convolution.evaluate(kep - step)) / (2 * step)
    np.testing.assert_allclose(derivative, numeric, rtol=1e-5, atol=1e-10)


# QIBA-like grid of tissue parameters (Ktrans 1/min, ve, vp).
TISSUES = [
    (0.01, 0.1, 0.0),
    (0.05, 0.2, 0.01),
    (0.1, 0.1, 0.02),
    (0.25, 0.3, 0.05),
    (0.35, 0.5, 0.1),
    (0.6, 0.4, 0.03),
]


@pytest.mark.parametrize("interval_s", [2.0, 3.5, 5.0, 10.0])
@pytest.mark.parametrize("extended", [False, True])
def test_tofts_recovers_parameters_within_dro_tolerances(interval_s, extended):
    """Noise-free curves from the synthetic patient's exact 0.25 s model, sampled like
    clinical protocols (2-10 s frames over 5 min); tolerances: ve +- 0.05, Ktrans +- (0.005
    + 10 %) (QIBA DRO)."""
    fine = np.arange(0.0, 300.01, 0.25)
    plasma = parker_aif(fine, 20.0) / (1 - 0.42)
    times = np.arange(0.0, 300.01, interval_s)
    curves = np.array(
        [
            np.interp(times, fine, extended_tofts(fine, plasma, k, ve, vp if extended else 0.0))
            for k, ve, vp in TISSUES
        ]
    )
    fit = fit_tofts(curves, times, population_aif(20.0), extended=extended)
    truth = np.array(TISSUES)
    assert np.all(np.abs(fit.ve - truth[:, 1]) <= 0.05)
    assert np.all(np.abs(fit.ktrans - truth[:, 0]) <= 0.005 + 0.1 * truth[:, 0])
    # Far inside the tolerances in fact: the model is exact up to the AIF integration.
    np.testing.assert_allclose(fit.ktrans, truth[:, 0], rtol=2e-3, atol=1e-4)
    if extended:
        np.testing.assert_allclose(fit.vp, truth[:, 2], atol=2e-3)


def test_tofts_with_noise_and_a_measured_aif(tmp_path):
    times = np.arange(0.0, 240.1, 4.0)
    aif_times = np.arange(0.0, 240.1, 1.0)
    plasma = parker_blood(aif_times, 18.0) / (1 - 0.42)
    path = tmp_path / "aif.csv"
    path.write_text(
        "time_s,plasma_mM\n" + "".join(f"{t},{c}\n" for t, c in zip(aif_times, plasma, strict=True))
    )
    aif = read_aif_csv(path)
    convolution = ExponentialConvolution(times, aif)
    rng = np.random.default_rng(5)
    n = 2000
    ktrans, ve = rng.uniform(0.05, 0.5, n), rng.uniform(0.1, 0.5, n)
    clean = (ktrans * convolution.evaluate(ktrans / ve)).T
    fit = fit_tofts(clean + rng.normal(0, 0.005, clean.shape), times, aif)
    assert np.median(np.abs(fit.ktrans / ktrans - 1)) < 0.03
    assert np.median(np.abs(fit.ve - ve)) < 0.01
    # The reported SEs describe the actual errors (z-scores with SD ~ 1).
    z = (fit.ktrans - ktrans) / fit.ktrans_se
    assert 0.7 < np.std(z[np.isfinite(z)]) < 1.4


def test_population_delay_is_found():
    fine = np.arange(0.0, 300.01, 0.25)
    plasma = parker_aif(fine, 23.0) / (1 - 0.42)
    times = np.arange(0.0, 300.01, 3.0)
    curve = np.interp(times, fine, extended_tofts(fine, plasma, 0.3, 0.35, 0.04))
    assert fit_population_delay(curve, times, extended=True) == pytest.approx(23.0, abs=0.3)


def test_aif_checks(tmp_path):
    short = sampled_aif(np.array([0.0, 100.0]), np.array([0.0, 1.0]), source="short")
    with pytest.raises(PrimageInputError, match="ends at 100 s but the tissue curves run to 200 s"):
        short.check_covers(np.array([0.0, 100.0, 200.0]))
    late = sampled_aif(np.array([10.0, 300.0]), np.array([0.0, 1.0]), source="late")
    with pytest.raises(PrimageInputError, match="starts at 10 s"):
        late.check_covers(np.array([0.0, 100.0, 200.0]))
    bad = tmp_path / "bad.csv"
    bad.write_text("t,c\n0,1\nx,2\n")
    with pytest.raises(PrimageInputError, match="line 3"):
        read_aif_csv(bad)
    with pytest.raises(PrimageInputError, match="strictly increasing"):
        sampled_aif(np.array([0.0, 5.0, 5.0]), np.array([0.0, 1.0, 2.0]))
    blood = aif_from_blood_curve(np.array([0.0, 1.0]), np.array([0.58, 1.16]), 0.42)
    np.testing.assert_allclose(blood.plasma(np.array([0.0, 1.0])), [1.0, 2.0])


def test_frame_time_checks():
    with pytest.raises(PrimageInputError, match="duplicate times at positions 1 and 2"):
        check_frame_times(np.array([0.0, 5.0, 5.0, 10.0]), 4)
    with pytest.raises(PrimageInputError, match="unsorted times"):
        check_frame_times(np.array([0.0, 10.0, 5.0, 15.0]), 4)
    with pytest.raises(PrimageInputError, match="3 frame times given but the DCE series has 4"):
        check_frame_times(np.array([0.0, 1.0, 2.0]), 4)


def _image4d(frames: np.ndarray) -> sitk.Image:
    volumes = [sitk.GetImageFromArray(f.astype(np.float32)) for f in frames]
    return sitk.JoinSeries(volumes)


def test_dce_and_tofts_maps_on_images():
    times = np.arange(0.0, 180.1, 3.0)
    shape = (2, 6, 7)
    curve = 400.0 * (1 + enhancement(times))
    frames = curve[:, None, None, None] * np.ones((1, *shape))
    result = dce_maps(_image4d(frames), times)
    iauc = sitk.GetArrayFromImage(result.maps["iauc60"])
    assert iauc.shape == shape
    np.testing.assert_allclose(iauc, analytic_iauc(T0, T0), rtol=5e-3)
    assert result.summary["baseline_frames"] == 11  # frames at 0..30 s
    assert result.summary["units"]["iauc60"].startswith("s")

    fine = np.arange(0.0, 180.01, 0.25)
    plasma = parker_aif(fine, 20.0) / (1 - 0.42)
    conc = np.interp(times, fine, extended_tofts(fine, plasma, 0.2, 0.25, 0.0))
    maps = tofts_maps(
        _image4d(conc[:, None, None, None] * np.ones((1, *shape))),
        times,
        "parker",
        aif_delay_s=20.0,
    )
    np.testing.assert_allclose(sitk.GetArrayFromImage(maps.maps["ktrans"]), 0.2, rtol=2e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(maps.maps["ve"]), 0.25, atol=1e-3)
    assert "vp" not in maps.maps
    assert math.isclose(maps.summary["aif"]["delay_s"], 20.0)
