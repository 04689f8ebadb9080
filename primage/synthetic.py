"""A deterministic synthetic "digital patient" with known ground truth.

The patient is defined in physical (LPS, mm) coordinates and rendered onto an oblique,
anisotropic voxel grid, so code that ignores spacing, origin or direction gives visibly
wrong answers. Every image has a known truth: tissue labels, a tumour mask, the
multiplicative MR bias field, the noise-free intensities, the diffusion coefficient of
every voxel and the kinetic parameters of every tissue. Later modules (kinetics,
radiomics, registration) test themselves against it.

Contents (all on one grid; see :func:`make_digital_patient`). MR images are Int16
magnitudes (rounded, clipped to 32767) as scanners export them:

* ``t2w``, ``t1w``: 3D MR with a smooth multiplicative bias field and Rician noise.
* ``dwi``: 4D, b = 0..1000 s/mm^2, mono-exponential (or IVIM) decay with the per-tissue
  diffusion coefficient D (mm^2/s), the same bias field and Rician noise.
* ``dce``: 4D T1-weighted spoiled gradient echo series; concentration from the extended
  Tofts model with the Parker population arterial input function, converted to signal
  with the SPGR equation; same bias field and Rician noise.
* ``ct``: 3D, int16 Hounsfield units with Gaussian noise (no bias field).
* ``tumour``: UInt8 mask of the whole tumour (viable + necrotic core); ``tissues``: UInt8
  label map (see :data:`TISSUES`).

Randomness (tumour lobulation, noise) comes from ``numpy.random.default_rng`` seeded with
``(seed, stream)``, one stream per purpose, so the same seed always gives the same
patient and adding a modality never changes the others.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.io import volumes_to_series, write_image, write_json, write_text


@dataclass(frozen=True)
class Tissue:
    """Properties of one tissue class of the digital patient.

    Units: ``t2w``/``t1w``/``dwi_s0`` arbitrary MR units; ``adc`` and ``ivim_dstar`` mm^2/s;
    ``ivim_f`` fraction; ``ct_hu`` Hounsfield units; ``t10`` s (native T1); ``ktrans`` 1/min;
    ``ve``/``vp`` fractions; ``m0`` arbitrary units (DCE equilibrium magnetisation).
    """

    name: str
    t2w: float
    t1w: float
    dwi_s0: float
    adc: float
    ivim_f: float
    ivim_dstar: float
    ct_hu: float
    t10: float
    ktrans: float
    ve: float
    vp: float
    m0: float


#: Tissue label -> properties. Label 0 is air (outside the body). Values are plausible
#: for a child's abdomen; neuroblastoma ADC (~0.8e-3 mm^2/s) from the literature range.
TISSUES: dict[int, Tissue] = {
    0: Tissue("air", 0, 0, 0, 0.0, 0.0, 0.0, -1000, 1.0, 0.0, 0.0, 0.0, 0.0),
    1: Tissue("fat", 700, 900, 60, 0.6e-3, 0.0, 0.0, -100, 0.35, 0.01, 0.05, 0.01, 90000),
    2: Tissue("soft_tissue", 320, 420, 350, 1.6e-3, 0.08, 20e-3, 40, 1.1, 0.10, 0.20, 0.03, 80000),
    3: Tissue("muscle", 200, 480, 250, 1.4e-3, 0.05, 20e-3, 50, 1.0, 0.05, 0.10, 0.02, 75000),
    4: Tissue("bone", 150, 350, 120, 0.5e-3, 0.0, 0.0, 700, 0.6, 0.02, 0.05, 0.01, 50000),
    5: Tissue("liver", 260, 560, 300, 1.1e-3, 0.20, 50e-3, 60, 0.8, 0.20, 0.25, 0.10, 75000),
    6: Tissue("kidney", 620, 430, 650, 2.0e-3, 0.15, 20e-3, 35, 1.2, 0.40, 0.25, 0.10, 85000),
    7: Tissue("vessel", 80, 200, 30, 3.0e-3, 0.0, 0.0, 45, 1.6, 0.0, 0.0, 1.0, 90000),
    8: Tissue("tumour", 520, 380, 700, 0.8e-3, 0.10, 20e-3, 38, 1.3, 0.25, 0.30, 0.05, 85000),
    9: Tissue("necrosis", 950, 250, 900, 2.5e-3, 0.0, 0.0, 15, 2.0, 0.01, 0.10, 0.0, 90000),
}

TUMOUR_LABELS = (8, 9)

#: Diffusion weightings (s/mm^2).
DEFAULT_B_VALUES = (0.0, 50.0, 100.0, 200.0, 400.0, 600.0, 800.0, 1000.0)

#: Parker et al. (Magn Reson Med 2006;56:993) population AIF, whole-blood concentration
#: (mmol/L) with time in minutes: two Gaussians plus a sigmoid-modulated exponential.
#: Kept apart from primage.kinetics.aif on purpose: the ground truth must not come from the
#: engine it checks; test_kinetics_dce.py asserts the two transcriptions agree to 1e-12.
PARKER_AIF = {
    "A1": 0.809,  # mmol min
    "A2": 0.330,
    "T1": 0.17046,  # min
    "T2": 0.365,
    "sigma1": 0.0563,  # min
    "sigma2": 0.132,
    "alpha": 1.050,  # mmol
    "beta": 0.1685,  # 1/min
    "s": 38.078,  # 1/min
    "tau": 0.483,  # min
}

#: DCE acquisition (spoiled gradient echo) and contrast agent.
DCE_SEQUENCE = {
    "repetition_time_s": 0.004,
    "flip_angle_deg": 15.0,
    "relaxivity_per_mM_per_s": 4.5,
    "haematocrit": 0.42,
    "aif_delay_s": 20.0,  # shift of Parker's time origin: first-pass peak near 30 s
}


@dataclass
class DigitalPatient:
    """A synthetic patient: images on one grid plus their ground truth.

    ``ground_truth`` holds JSON-ready numbers (per-tissue parameters, acquisition
    settings, noise levels, per-tissue noise-free DCE concentration curves) and, under
    ``ground_truth["images"]``, the truth images: ``bias_field`` (multiplicative, mean 1
    in the body), ``adc`` (D, mm^2/s), ``t2w_noise_free`` and ``t1w_noise_free`` (no bias,
    no noise), and with IVIM ``ivim_f`` and ``ivim_dstar``.
    """

    t2w: sitk.Image
    t1w: sitk.Image
    dwi: sitk.Image
    b_values: list[float]
    dce: sitk.Image
    frame_times: list[float]
    ct: sitk.Image
    tumour: sitk.Image
    tissues: sitk.Image
    ground_truth: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def truth_images(self) -> dict[str, sitk.Image]:
        """The ground-truth images (``bias_field``, ``adc``, noise-free T2w/T1w, ...)."""
        return self.ground_truth["images"]


def oblique_direction(angles_deg: tuple[float, float, float]) -> tuple[float, ...]:
    """Row-major 3x3 direction: rotations about x, then y, then z (degrees)."""
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel().tolist())


def make_grid(
    size=(96, 96, 40),
    spacing=(1.5, 1.5, 4.0),
    centre=(2.0, 10.0, -40.0),
    angles_deg=(4.0, 0.0, 6.0),
) -> sitk.Image:
    """An empty UInt8 image defining a grid whose centre lies at ``centre`` (mm)."""
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    direction = oblique_direction(angles_deg)
    grid.SetDirection(direction)
    half = np.asarray(direction).reshape(3, 3) @ (
        (np.asarray(size, float) - 1) * np.asarray(spacing, float) / 2
    )
    grid.SetOrigin((np.asarray(centre, float) - half).tolist())
    return grid


def physical_points(grid: sitk.Image, centre=(2.0, 10.0, -40.0)) -> np.ndarray:
    """Voxel-centre coordinates relative to ``centre`` (mm), shape (3, z, y, x)."""
    size = grid.GetSize()
    k, j, i = np.meshgrid(np.arange(size[2]), np.arange(size[1]), np.arange(size[0]), indexing="ij")
    index = np.stack([i, j, k]).reshape(3, -1).astype(float)
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    points = direction @ (index * np.asarray(grid.GetSpacing())[:, None])
    points += (np.asarray(grid.GetOrigin()) - np.asarray(centre, float))[:, None]
    return points.reshape(3, size[2], size[1], size[0])


def _ellipsoid(p, centre, axes) -> np.ndarray:
    return sum(((p[d] - centre[d]) / axes[d]) ** 2 for d in range(3)) <= 1.0


def _cylinder(p, centre_xy, axes_xy) -> np.ndarray:
    return ((p[0] - centre_xy[0]) / axes_xy[0]) ** 2 + (
        (p[1] - centre_xy[1]) / axes_xy[1]
    ) ** 2 <= 1


def tissue_labels(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint the anatomy (labels of :data:`TISSUES`) at ``points`` (3, ...) mm.

    Anatomy, in mm relative to the patient centre (LPS: +x left, +y posterior, +z head):
    an elliptic body with a 7 mm fat layer, paraspinal muscles, a vertebral body, the
    aorta, the liver (right, upper), both kidneys (lower) and a lobulated left adrenal
    tumour with an off-centre necrotic core. The tumour outline depends on ``rng``.
    """
    labels = np.zeros(points.shape[1:], np.uint8)
    body_axes = (62.0, 48.0, 130.0)
    labels[_ellipsoid(points, (0, 0, 0), body_axes)] = 1
    inner = tuple(a - 7.0 for a in body_axes)
    labels[_ellipsoid(points, (0, 0, 0), inner)] = 2
    inside = labels == 2
    for side in (-1, 1):
        labels[inside & _cylinder(points, (22.0 * side, 30.0), (13.0, 9.0))] = 3
    labels[inside & _cylinder(points, (0.0, 28.0), (10.0, 10.0))] = 4
    labels[inside & _ellipsoid(points, (-28.0, -5.0, 45.0), (30.0, 32.0, 45.0))] = 5
    for side in (-1, 1):
        labels[inside & _ellipsoid(points, (32.0 * side, 22.0, -45.0), (12.0, 10.0, 28.0))] = 6
    labels[inside & _cylinder(points, (-12.0, 12.0), (6.0, 6.0))] = 7

    # Lobulated tumour: an ellipsoid whose radius is modulated by a few random
    # second-order "bumps" (smooth, so the outline stays realistic).
    centre = np.array([20.0, 0.0, 0.0])
    axes = np.array([22.0, 18.0, 24.0])
    rel = (points - centre[:, None, None, None]) / axes[:, None, None, None]
    radius = np.sqrt(np.sum(rel**2, axis=0)) + 1e-9
    unit = rel / radius
    modulation = np.ones_like(radius)
    for _ in range(4):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        amplitude = rng.uniform(-0.15, 0.15)
        cosine = np.tensordot(v, unit, axes=1)
        modulation += amplitude * (cosine**2 - 1.0 / 3.0)
    tumour = (radius <= modulation) & (labels > 0)
    labels[tumour] = 8
    labels[tumour & _ellipsoid(points, centre + (3.0, -2.0, 2.0), (10.0, 9.0, 12.0))] = 9
    return labels


def bias_field_model(points: np.ndarray, body: np.ndarray) -> np.ndarray:
    """A smooth multiplicative MR bias field (quadratic in log), mean log 0 in the body.

    Range about 0.65-1.45: a receive-coil sensitivity falling off to one side and
    towards the feet, as often seen with paediatric surface coils.
    """
    x, y, z = points[0] / 70.0, points[1] / 50.0, points[2] / 80.0
    log_field = 0.30 * x + 0.15 * y + 0.15 * z - 0.20 * (x**2 + y**2) + 0.10 * x * z
    log_field -= log_field[body].mean()
    return np.exp(log_field)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise of SD ``sigma`` per channel."""
    real = signal + rng.normal(0.0, sigma, signal.shape)
    imaginary = rng.normal(0.0, sigma, signal.shape)
    return np.sqrt(real**2 + imaginary**2)


def parker_aif(t_s: np.ndarray, delay_s: float = DCE_SEQUENCE["aif_delay_s"]) -> np.ndarray:
    """Parker population AIF: whole-blood concentration (mmol/L) at times ``t_s`` (s)."""
    p = PARKER_AIF
    t = (np.asarray(t_s, float) - delay_s) / 60.0  # minutes
    gaussians = sum(
        p[f"A{n}"]
        / (p[f"sigma{n}"] * math.sqrt(2 * math.pi))
        * np.exp(-((t - p[f"T{n}"]) ** 2) / (2 * p[f"sigma{n}"] ** 2))
        for n in (1, 2)
    )
    sigmoid = p["alpha"] * np.exp(-p["beta"] * t) / (1.0 + np.exp(-p["s"] * (t - p["tau"])))
    return gaussians + sigmoid


def extended_tofts(
    t_s: np.ndarray, plasma: np.ndarray, ktrans_per_min: float, ve: float, vp: float
) -> np.ndarray:
    """Tissue concentration (mmol/L) by the extended Tofts model.

    ``plasma`` is the plasma concentration at the uniformly spaced times ``t_s`` (s).
    The convolution uses the exact recursion for a piecewise-linear input.
    """
    t = np.asarray(t_s, float)
    ktrans = ktrans_per_min / 60.0  # 1/s
    if ktrans <= 0 or ve <= 0:
        return vp * plasma
    kep = ktrans / ve
    dt = t[1] - t[0]
    decay = math.exp(-kep * dt)
    # Exact integral of a piecewise-linear Cp against exp(-kep (t - tau)) over one step:
    # conv[n] = decay conv[n-1] + Cp[n] (A - B/dt) + Cp[n-1] B/dt.
    a = (1.0 - decay) / kep
    b = (1.0 - decay - kep * dt * decay) / kep**2
    w_new, w_old = a - b / dt, b / dt
    conv = np.zeros_like(plasma, dtype=float)
    for n in range(1, len(t)):
        conv[n] = decay * conv[n - 1] + w_new * plasma[n] + w_old * plasma[n - 1]
    return vp * plasma + ktrans * conv


def spgr_signal(m0: np.ndarray, r1: np.ndarray, tr_s: float, flip_deg: float) -> np.ndarray:
    """Spoiled gradient echo steady-state signal for longitudinal relaxation rate ``r1`` (1/s)."""
    alpha = math.radians(flip_deg)
    e1 = np.exp(-tr_s * r1)
    return m0 * math.sin(alpha) * (1.0 - e1) / (1.0 - math.cos(alpha) * e1)


def make_digital_patient(
    seed: int = 0,
    *,
    size=(96, 96, 40),
    spacing=(1.5, 1.5, 4.0),
    angles_deg=(4.0, 0.0, 6.0),
    b_values=DEFAULT_B_VALUES,
    frame_times_s=None,
    ivim: bool = False,
    noise_sd: float = 15.0,
    dwi_noise_sd: float = 12.0,
    dce_noise_sd: float = 20.0,
    ct_noise_sd: float = 12.0,
) -> DigitalPatient:
    """Render the digital patient on an oblique grid (``size`` voxels, ``spacing`` mm).

    ``frame_times_s`` defaults to 0-240 s every 6 s (41 frames). ``ivim=False`` gives a
    mono-exponential DWI decay, so the truth ADC equals D exactly; ``ivim=True`` adds the
    pseudo-diffusion compartment (fraction f, coefficient D*) of :data:`TISSUES`. Noise SDs
    are per channel (Rician for MR, Gaussian for CT). A 96x96x40 patient takes ~1 s.
    """
    centre = (2.0, 10.0, -40.0)
    grid = make_grid(size, spacing, centre, angles_deg)
    points = physical_points(grid, centre)
    labels = tissue_labels(points, np.random.default_rng((seed, 0)))
    body = labels > 0
    bias = bias_field_model(points, body)

    def table(attribute: str) -> np.ndarray:
        lookup = np.zeros(max(TISSUES) + 1)
        for label, tissue in TISSUES.items():
            lookup[label] = getattr(tissue, attribute)
        return lookup[labels]

    def image(array: np.ndarray, pixel=sitk.sitkFloat32) -> sitk.Image:
        result = sitk.GetImageFromArray(array)
        result.CopyInformation(grid)
        return sitk.Cast(result, pixel)

    def mr_image(array: np.ndarray) -> sitk.Image:
        # Scanners export integer magnitudes; Int16 also keeps the files small.
        return image(np.clip(np.round(array), 0, 32767), sitk.sitkInt16)

    t2w_clean = table("t2w")
    t1w_clean = table("t1w")
    t2w = rician(t2w_clean * bias, noise_sd, np.random.default_rng((seed, 1)))
    t1w = rician(t1w_clean * bias, noise_sd, np.random.default_rng((seed, 2)))

    # DWI: S(b) = S0 [(1 - f) exp(-b D) + f exp(-b D*)], same coil bias for every b.
    b_values = [float(b) for b in b_values]
    s0 = table("dwi_s0") * bias
    diffusion = table("adc")
    fraction = table("ivim_f") if ivim else np.zeros_like(diffusion)
    dstar = table("ivim_dstar")
    rng = np.random.default_rng((seed, 3))
    dwi_volumes = []
    for b in b_values:
        decay = (1 - fraction) * np.exp(-b * diffusion) + fraction * np.exp(-b * dstar)
        dwi_volumes.append(mr_image(rician(s0 * decay, dwi_noise_sd, rng)))
    dwi = volumes_to_series(dwi_volumes)

    # DCE: extended Tofts with the Parker AIF on a fine time grid, sampled at the frames.
    if frame_times_s is None:
        frame_times_s = np.arange(0.0, 241.0, 6.0)
    frame_times = [float(t) for t in frame_times_s]
    seq = DCE_SEQUENCE
    fine_t = np.arange(0.0, max(frame_times) + 0.25, 0.25)
    blood = parker_aif(fine_t)
    plasma = blood / (1.0 - seq["haematocrit"])
    curves: dict[str, list[float]] = {}
    concentration_by_label = np.zeros((max(TISSUES) + 1, len(frame_times)))
    for label, tissue in TISSUES.items():
        if label == 0:
            continue
        if tissue.name == "vessel":
            fine = blood  # the vessel voxel is whole blood
        else:
            fine = extended_tofts(fine_t, plasma, tissue.ktrans, tissue.ve, tissue.vp)
        sampled = np.interp(frame_times, fine_t, fine)
        concentration_by_label[label] = sampled
        curves[tissue.name] = [round(float(c), 6) for c in sampled]
    m0 = table("m0") * bias
    r10 = np.where(body, 1.0 / table("t10"), 1.0)
    rng = np.random.default_rng((seed, 4))
    dce_volumes = []
    for frame in range(len(frame_times)):
        r1 = r10 + seq["relaxivity_per_mM_per_s"] * concentration_by_label[labels, frame]
        signal = spgr_signal(m0, r1, seq["repetition_time_s"], seq["flip_angle_deg"])
        dce_volumes.append(mr_image(rician(signal, dce_noise_sd, rng)))
    intervals = np.diff(frame_times)
    dce = volumes_to_series(
        dce_volumes, time_spacing=float(intervals.mean()) if len(intervals) else 1.0
    )

    ct_values = table("ct_hu") + np.random.default_rng((seed, 5)).normal(
        0, ct_noise_sd, labels.shape
    )
    ct = image(np.clip(np.round(ct_values), -1024, 3071), sitk.sitkInt16)

    tissues = image(labels, sitk.sitkUInt8)
    tumour = image(np.isin(labels, TUMOUR_LABELS).astype(np.uint8), sitk.sitkUInt8)

    images = {
        "bias_field": image(bias),
        "adc": image(diffusion),
        "t2w_noise_free": image(t2w_clean),
        "t1w_noise_free": image(t1w_clean),
    }
    if ivim:
        images["ivim_f"] = image(fraction)
        images["ivim_dstar"] = image(np.where(fraction > 0, dstar, 0.0))
    ground_truth = {
        "seed": seed,
        "grid": {
            "size": list(grid.GetSize()),
            "spacing_mm": list(grid.GetSpacing()),
            "origin_mm": list(grid.GetOrigin()),
            "direction": list(grid.GetDirection()),
        },
        "tissues": {
            str(label): {"label": label, **asdict(tissue)} for label, tissue in TISSUES.items()
        },
        "tumour_labels": list(TUMOUR_LABELS),
        "tumour_volume_ml": float(np.isin(labels, TUMOUR_LABELS).sum() * np.prod(spacing) / 1000),
        "noise_sd": {
            "t2w": noise_sd,
            "t1w": noise_sd,
            "dwi": dwi_noise_sd,
            "dce": dce_noise_sd,
            "ct": ct_noise_sd,
        },
        "noise_model": {"mr": "rician", "ct": "gaussian"},
        "bias_field": "multiplicative, shared by all MR images, geometric mean 1 in the body",
        "dwi": {"b_values_s_per_mm2": b_values, "ivim": ivim, "adc_units": "mm^2/s"},
        "dce": {
            "frame_times_s": frame_times,
            "model": "extended Tofts; tissue concentration from plasma AIF; vessel = whole blood",
            "aif": {"name": "Parker 2006 (whole blood)", **PARKER_AIF},
            "sequence": dict(seq),
            "units": {
                "ktrans": "1/min",
                "ve": "fraction",
                "vp": "fraction",
                "t10": "s",
                "concentration": "mmol/L",
            },
            "concentration_curves": curves,
        },
        "ct": {"units": "HU"},
        "images": images,
    }
    return DigitalPatient(
        t2w=mr_image(t2w),
        t1w=mr_image(t1w),
        dwi=dwi,
        b_values=b_values,
        dce=dce,
        frame_times=frame_times,
        ct=ct,
        tumour=tumour,
        tissues=tissues,
        ground_truth=ground_truth,
        seed=seed,
    )


#: File names of a case folder (the cohort layout).
CASE_FILES = {
    "t2w": "t2w.nii.gz",
    "t1w": "t1w.nii.gz",
    "dwi": "dwi.nii.gz",
    "bval": "dwi.bval",
    "dce": "dce.nii.gz",
    "times": "dce.times",
    "ct": "ct.nii.gz",
    "tumour": "tumour.nii.gz",
    "tissues": "tissues.nii.gz",
    "ground_truth": "ground_truth.json",
}


def write_case(patient: DigitalPatient, folder: str | os.PathLike) -> dict[str, Path]:
    """Write ``patient`` as a case folder; returns the paths written by role.

    Layout: ``t2w.nii.gz``, ``t1w.nii.gz``, ``ct.nii.gz`` (3D); ``dwi.nii.gz`` (4D, one
    volume per b-value) with ``dwi.bval`` (b-values in s/mm^2, space-separated on one
    line, FSL style); ``dce.nii.gz`` (4D, one volume per frame) with ``dce.times`` (frame
    times in s from the start of the acquisition, space-separated on one line, same
    format as ``.bval``); ``tumour.nii.gz`` and ``tissues.nii.gz`` (UInt8 masks/labels);
    ``ground_truth.json`` and the truth images in ``ground_truth/`` (referenced from the
    JSON under ``"images"``). Every file is written atomically.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {role: folder / name for role, name in CASE_FILES.items()}
    for role in ("t2w", "t1w", "dwi", "dce", "ct", "tumour", "tissues"):
        write_image(getattr(patient, role), paths[role])
    write_text(" ".join(_number(b) for b in patient.b_values) + "\n", paths["bval"])
    write_text(" ".join(_number(t) for t in patient.frame_times) + "\n", paths["times"])
    truth = {key: value for key, value in patient.ground_truth.items() if key != "images"}
    truth["images"] = {}
    for name, truth_image in patient.truth_images.items():
        relative = Path("ground_truth") / f"{name}.nii.gz"
        write_image(truth_image, folder / relative)
        paths[f"truth_{name}"] = folder / relative
        truth["images"][name] = relative.as_posix()
    write_json(truth, paths["ground_truth"])
    return paths


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
