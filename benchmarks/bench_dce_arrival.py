"""Bolus arrival and iAUC60 on every enhancement curve type: this method against the
previous one (the linear-quadratic knot fit up to half the rise, git commit f0683ac).

Run: ``.venv/bin/python benchmarks/bench_dce_arrival.py`` (``--quick``: 40 noisy
realisations instead of 200). Curves are relative enhancement RE(u), u = t - t0 > 0 (0 up to
and including t0), on a 500-unit baseline, frames every ``dt`` s from 0 to 300 s; the truth is
t0 and the integral of the continuous model from t0 to t0 + 60 s (scipy.integrate.quad).
Noise-free: the worst error over frame intervals 2, 3, 5 s and onsets on and between frames.
Noisy: Rician magnitude noise (SD 500 / SNR in both channels), 3 s frames, t0 = 25.3 s;
the median absolute error over the realisations, each analysed as one voxel of a region
whose mean curve gives the fallback arrival and the baseline frames.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import integrate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from primage.kinetics import dce  # noqa: E402


def gamma(alpha, beta, peak=1.0):
    return lambda u: peak * (u / (alpha * beta)) ** alpha * np.exp(alpha - u / beta)


CURVES = {
    "III wash-out": lambda u: 1.2 * (1 - np.exp(-u / 12.0)) * np.exp(-u / 150.0),
    "II plateau": lambda u: 0.9 * (1 - np.exp(-u / 15.0)),
    "I step + slow rise": lambda u: 0.12 + 0.5 * (1 - np.exp(-u / 400.0)),
    "I step + linear rise": lambda u: 0.1 + 0.6 * u / 300.0,
    "I slow start": lambda u: 0.6 * (1 - np.exp(-u / 200.0)),
    "I convex start": lambda u: 0.6 * (u / 40.0) ** 2 / (1 + (u / 40.0) ** 2),
    "gamma a=2 b=5": gamma(2.0, 5.0),
    "gamma a=3 b=4": gamma(3.0, 4.0),
    "gamma + plateau": lambda u: gamma(2.0, 6.0)(u) + 0.3 * (1 - np.exp(-u / 30.0)),
    "weak (RE 0.05)": lambda u: 0.05 * (1 - np.exp(-u / 20.0)) * np.exp(-u / 300.0),
}
LATE_S = 90.0  # the late-arrival variant of each curve


def previous_method():
    """The dce module as of commit f0683ac (before this method), or None."""
    try:
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", "f0683ac:primage/kinetics/dce.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "dce_previous.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("dce_previous", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dce_previous"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def sampled(model, times, t0):
    u = times - t0
    return np.where(u > 0, model(np.maximum(u, 0.0)), 0.0)


def analyse(module, signal, times):
    """Arrival (s) and iAUC60 of each row, as dce_maps does for a region."""
    mean = signal.mean(axis=0)
    region_arrival = module.mean_curve_arrival(mean, times)
    frames = max(int(np.count_nonzero(times <= region_arrival + 1e-9)), 1)
    noise = module.pooled_noise_sd(module.baseline_variance(signal, frames), frames)
    result = module.semi_quantitative(
        signal, times, baseline_frames=frames, global_arrival=region_arrival, noise_sd=noise
    )
    return result.bolus_arrival, result.iauc60, region_arrival


def noise_free(module, model, t0_base):
    worst_arrival = worst_region = worst_iauc = 0.0
    for dt in (2.0, 3.0, 5.0):
        for offset in (0.0, 1.3, 0.4 * dt + 0.1):
            t0 = t0_base + offset
            times = np.arange(0.0, 300.01, dt)
            signal = 500.0 * (1.0 + sampled(model, times, t0))[None, :]
            arrival, iauc, region = analyse(module, signal, times)
            truth = integrate.quad(model, 0.0, 60.0, limit=200)[0]
            worst_arrival = max(worst_arrival, abs(arrival[0] - t0) / dt)
            worst_region = max(worst_region, abs(region - t0) / dt)
            worst_iauc = max(worst_iauc, abs(iauc[0] / truth - 1) * 100)
    return worst_arrival, worst_region, worst_iauc


def noisy(module, model, snr, count, seed, t0=25.3, dt=3.0):
    rng = np.random.default_rng(seed)
    times = np.arange(0.0, 300.01, dt)
    clean = 500.0 * (1.0 + sampled(model, times, t0))
    sigma = 500.0 / snr
    shape = (count, times.size)
    signal = np.hypot(clean + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    arrival, iauc, _ = analyse(module, signal, times)
    truth = integrate.quad(model, 0.0, 60.0, limit=200)[0]
    return (
        float(np.median(np.abs(arrival - t0))),
        float(np.median(np.abs(iauc / truth - 1)) * 100),
        float(np.median(iauc / truth - 1) * 100),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 40 if args.quick else 200
    methods = {"new": dce}
    old = previous_method()
    if old is not None:
        methods["old"] = old
    else:
        print("(previous method not available: git show f0683ac failed)")
    print("Noise-free, worst over dt 2/3/5 s and 3 onsets: arrival |error| in frames (voxel,")
    print("region mean curve), iAUC60 |error| in %")
    for late in (False, True):
        for name, model in CURVES.items():
            label = name + (" (late)" if late else "")
            line = f"  {label:28s}"
            for method, module in methods.items():
                a, r, i = noise_free(module, model, LATE_S if late else 24.0)
                line += f" {method}: {a:4.2f} fr {r:4.2f} fr {i:5.1f} %  "
            print(line)
    for snr in (50.0, 20.0):
        print(f"Rician noise, SNR {snr:g} at baseline, {count} realisations, dt 3 s, t0 25.3 s:")
        print("  median |arrival error| (s), median |iAUC60 error| (%), median iAUC60 bias (%)")
        for name, model in CURVES.items():
            line = f"  {name:28s}"
            for method, module in methods.items():
                a, i, b = noisy(module, model, snr, count, seed=12)
                line += f" {method}: {a:5.2f} s {i:5.1f} % {b:+6.1f} %  "
            print(line)


if __name__ == "__main__":
    main()
