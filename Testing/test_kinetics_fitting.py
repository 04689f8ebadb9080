"""The batched solvers of primage.kinetics.fitting against numpy and scipy, problem by problem;
voxel chunks of primage.kinetics.series."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from primage.kinetics.fitting import levenberg_marquardt, solve_small, standard_errors

B = np.array([0.0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0])  # b / 1000 (ms/um^2)


def exponential(params, _rows):
    decay = np.exp(-np.outer(B, params[1]))
    prediction = params[0] * decay
    return prediction, np.stack([decay, -B[:, None] * prediction])


@pytest.mark.parametrize("size", [1, 2, 3])
def test_solve_small_matches_numpy_and_flags_singular_systems(size):
    rng = np.random.default_rng(size)
    n = 200
    a = rng.normal(size=(n, size, size)) + 3 * np.eye(size)
    a[-1] = 0.0  # singular
    b = rng.normal(size=(n, size))
    x = solve_small(np.moveaxis(a, 0, -1).copy(), b.T.copy())
    expected = np.linalg.solve(a[:-1], b[:-1, :, None])[..., 0]
    np.testing.assert_allclose(x[:, :-1].T, expected, rtol=1e-9, atol=1e-12)
    assert np.all(np.isnan(x[:, -1]))


def _scipy_fit(data, start, lower, upper):
    def residual(p):
        return p[0] * np.exp(-B * p[1]) - data

    def jacobian(p):
        decay = np.exp(-B * p[1])
        return np.stack([decay, -B * p[0] * decay], axis=1)

    fit = least_squares(
        residual, start, jac=jacobian, bounds=(lower, upper), method="trf", xtol=1e-14, ftol=1e-14
    )
    return fit.x


def test_levenberg_marquardt_agrees_with_scipy_including_problems_on_a_bound():
    rng = np.random.default_rng(7)
    n = 300
    adc = rng.uniform(0.3, 3.0, n)
    clean = np.exp(-np.outer(B, adc))
    # A third of the problems are noise only (like air around the body): their optimum
    # lies on the ADC = 0 bound or inside, with a poorly determined ADC.
    clean[:, : n // 3] = 0.2
    data = np.abs(clean + rng.normal(0, 0.03, clean.shape))
    lower, upper = np.array([0.0, 0.0]), np.array([np.inf, 5.0])
    start = np.vstack([data[0], np.full(n, 1.0)])
    fit = levenberg_marquardt(exponential, start, data, lower, upper)
    reference = np.array([_scipy_fit(data[:, i], start[:, i], lower, upper) for i in range(n)]).T
    errors = standard_errors(fit.covariance).T
    assert fit.converged.mean() > 0.99
    ok = fit.converged
    # Within 5 % of a standard error of scipy's optimum: far inside the noise.
    difference = np.abs(fit.params - reference)[:, ok]
    assert np.all(difference <= 0.05 * errors[:, ok] + 1e-9)
    on_bound = reference[1] <= 1e-9
    assert on_bound.sum() >= 20  # the case this test is about really occurs
    # On the bound the amplitude is the least-squares value with ADC fixed at 0: mean(data).
    np.testing.assert_allclose(fit.params[0, on_bound], data[:, on_bound].mean(axis=0), rtol=1e-6)


def test_problems_with_the_optimum_on_a_bound_converge_in_a_few_iterations():
    rng = np.random.default_rng(3)
    data = 0.2 + np.abs(rng.normal(0, 0.01, (B.size, 500)))  # flat: ADC optimum below 0
    data += 0.05 * B[:, None]  # rising with b: the optimum is ADC = 0 for every problem
    start = np.vstack([data[0], np.full(500, 0.5)])
    fit = levenberg_marquardt(exponential, start, data, [0.0, 0.0], [np.inf, 5.0], max_iterations=6)
    assert fit.converged.all()
    np.testing.assert_array_equal(fit.params[1], 0.0)
    np.testing.assert_allclose(fit.params[0], data.mean(axis=0), rtol=1e-6)


def test_exact_data_converge_fully_despite_the_noise_relative_stop():
    adc = np.linspace(0.2, 3.0, 50)
    data = 1.7 * np.exp(-np.outer(B, adc))
    start = np.vstack([np.full(50, 1.0), np.full(50, 1.0)])
    fit = levenberg_marquardt(exponential, start, data, [0.0, 0.0], [np.inf, 5.0])
    assert fit.converged.all()
    np.testing.assert_allclose(fit.params[1], adc, rtol=1e-8)
    np.testing.assert_allclose(fit.params[0], 1.7, rtol=1e-8)


def test_a_problem_started_at_its_constrained_minimum_stops_at_once():
    # Rising data: the optimum is ADC = 0 with the mean as amplitude. Started there, no
    # step can lower the RSS; the solver must say so, not raise the damping to 1e12.
    rng = np.random.default_rng(5)
    data = 0.2 + 0.05 * B[:, None] + np.abs(rng.normal(0, 0.01, (B.size, 100)))
    start = np.vstack([data.mean(axis=0), np.zeros(100)])
    fit = levenberg_marquardt(exponential, start, data, [0.0, 0.0], [np.inf, 5.0])
    assert fit.converged.all()
    assert fit.iterations <= 2
    np.testing.assert_allclose(fit.params, start, rtol=1e-9, atol=1e-12)


def test_voxel_chunks_and_mean_signal_with_and_without_a_mask():
    import SimpleITK as sitk

    from primage.kinetics.series import load_series

    rng = np.random.default_rng(2)
    array = rng.uniform(1, 2, (5, 4, 6, 7)).astype(np.float32)  # frames, z, y, x
    series = sitk.JoinSeries([sitk.GetImageFromArray(frame) for frame in array])
    flat = array.reshape(5, -1)
    mask_array = rng.uniform(size=(4, 6, 7)) > 0.5
    mask = sitk.GetImageFromArray(mask_array.astype(np.uint8))
    for voxels, chosen in ((load_series(series), np.arange(flat.shape[1])),
                           (load_series(series, mask), np.flatnonzero(mask_array))):  # fmt: skip
        np.testing.assert_array_equal(voxels.index, chosen)
        for start, stop in voxels.chunks(17):
            np.testing.assert_array_equal(voxels.chunk(start, stop), flat[:, chosen[start:stop]].T)
        np.testing.assert_allclose(voxels.mean_signal(), flat[:, chosen].mean(axis=1), rtol=1e-6)


def test_monoexponential_projection_finds_the_general_solvers_minimum():
    """Variable projection (ADC) against the bounded Levenberg-Marquardt on the same
    problems: Rician-noisy decays at SNR 5-100, decays beyond both bounds, noise only."""
    from primage.kinetics.dwi import _exponential_model, fit_monoexponential

    rng = np.random.default_rng(3)
    b = np.array([0.0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0])  # 1000 s/mm^2 units
    n = 6000
    d = np.concatenate([rng.uniform(0.3, 3.0, n - 1000), np.full(500, -0.5), np.full(500, 8.0)])
    snr = rng.uniform(5.0, 100.0, n)
    clean = np.exp(-np.outer(b, d))
    noisy = np.hypot(clean + rng.normal(size=clean.shape) / snr, rng.normal(size=clean.shape) / snr)
    noisy[:, :200] = np.abs(rng.normal(size=(b.size, 200)))  # noise only
    y = noisy / noisy.max(axis=0)
    start = np.clip(rng.uniform(0.0, 5.0, n), 0.0, 5.0)
    a, d_fit, covariance = fit_monoexponential(y, b, start, 0.0, 5.0)
    general = levenberg_marquardt(
        _exponential_model(b), np.vstack([np.ones(n), start]), y, [0.0, 0.0], [np.inf, 5.0]
    )
    rss = ((y - a * np.exp(-np.outer(b, d_fit))) ** 2).sum(axis=0)
    assert np.all((d_fit >= 0.0) & (d_fit <= 5.0)) and np.all(a >= 0.0)
    assert np.all(rss <= general.rss * (1 + 1e-4) + 1e-12)  # never a worse minimum
    se = standard_errors(general.covariance)[:, 1]
    tissue = slice(200, n - 1000)
    assert np.median(np.abs(d_fit - general.params[1])[tissue] / se[tissue]) < 1e-3
    np.testing.assert_allclose(
        standard_errors(covariance)[tissue], standard_errors(general.covariance)[tissue], rtol=0.02
    )
    assert np.all(d_fit[n - 1000 : n - 500] == 0.0)  # a rising signal: held at the lower bound


def test_fit_threads_keeps_the_chunked_fits_in_the_calling_thread():
    import threading

    import SimpleITK as sitk

    from primage.io import volumes_to_series
    from primage.kinetics.series import default_workers, fit_threads, load_series, map_chunks

    rng = np.random.default_rng(0)
    frames = [sitk.GetImageFromArray(rng.uniform(1, 2, (10, 40, 40))) for _ in range(3)]
    voxels = load_series(volumes_to_series(frames))  # 16,000 voxels: several chunks

    def threads_used(**limit) -> set[int]:
        def work(start, stop):
            return threading.get_ident()

        return {ident for _, _, ident in map_chunks(voxels, work, size=2000, **limit)}

    if default_workers() > 1:  # without a limit the chunks go to a pool of threads
        assert threading.get_ident() not in threads_used()
    with fit_threads(1):
        assert default_workers() == 1
        assert threads_used() == {threading.get_ident()}
    assert default_workers() >= 1
