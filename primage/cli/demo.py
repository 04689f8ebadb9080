"""``primage demo``: the whole pipeline on the synthetic digital patient, with a report.

Writes into ``--output-dir``: ``case/`` (the digital patient in the cohort case layout,
with its ground truth), ``preprocessed/`` (each modality through its preset, with JSON
sidecars and the N4 bias fields), ``report.md`` (figures measured against the ground
truth), ``summary.json`` (the same figures, machine-readable) and ``montage.png`` (central
axial T2w slice: raw | N4-corrected | preset output | true bias | estimated bias), and one
sub-folder per capability section (:data:`DEMO_SECTIONS`: registration, segmentation, kinetics, radiomics, cohort). Only
these demo files are (over)written; anything else in the folder is left alone.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage import __version__
from primage.errors import PrimageInputError
from primage.io import write_image, write_json, write_text
from primage.progress import ConsoleProgress, ProgressCallback, no_progress, sub_progress

#: Capability sections of the demo after preprocessing: (output sub-folder, module whose
#: ``run_demo(case_folder, output_folder, progress)`` returns Markdown report lines).
DEMO_SECTIONS = (
    ("registration", "primage.registration.demo"),
    ("segmentation", "primage.segmentation.demo"),
    ("kinetics", "primage.kinetics.demo"),
    ("radiomics", "primage.radiomics.demo"),
    # A small generated cohort through the whole pipeline (2 workers), with report.html.
    ("cohort", "primage.pipeline.demo"),
)


def register(subparsers) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline on a synthetic patient and write a report",
        description="Build the synthetic digital patient, run every modality through its "
        "preset and write case/, preprocessed/, report.md, summary.json and montage.png "
        "into --output-dir (only these demo files are overwritten).",
    )
    parser.add_argument("--output-dir", required=True, help="folder for the demo files")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the patient")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``primage demo``."""
    progress = None if args.quiet else ConsoleProgress()
    summary = run_demo(args.output_dir, seed=args.seed, progress=progress)
    if not args.quiet:
        sys.stderr.write(
            f"primage: demo written to {args.output_dir} ({summary['seconds_total']:.1f} s); "
            f"see {Path(args.output_dir) / 'report.md'}\n"
        )
    return 0


# --- measurements -----------------------------------------------------------------------


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float64)


def _erode(mask: np.ndarray, reference: sitk.Image, radius=(2, 2, 1)) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return sitk.GetArrayFromImage(sitk.BinaryErode(image, list(radius))).astype(bool)


def log_correlation(estimated: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Pearson correlation of log fields inside ``region`` (scale-free: N4's field is
    only defined up to a constant factor)."""
    return float(np.corrcoef(np.log(estimated[region]), np.log(truth[region]))[0, 1])


def detrended_sd(values: np.ndarray, region: np.ndarray) -> float:
    """SD of ``values`` in ``region`` after removing a quadratic trend in voxel
    coordinates: the noise SD, insensitive to a residual smooth bias field."""
    coordinates = np.argwhere(region).astype(np.float64)
    coordinates -= coordinates.mean(axis=0)
    coordinates /= np.maximum(coordinates.std(axis=0), 1e-9)
    z, y, x = coordinates.T
    design = np.column_stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z])
    target = values[region]
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.std(target - design @ coefficients))


def adc_fit(series: np.ndarray, b_values: list[float], region: np.ndarray) -> np.ndarray:
    """Voxel-wise mono-exponential ADC (mm^2/s) by log-linear least squares over all b."""
    b = np.asarray(b_values, float)
    signal = np.maximum(series[:, region], 1e-3)  # (b, voxels)
    design = np.column_stack([np.ones_like(b), -b])
    coefficients, *_ = np.linalg.lstsq(design, np.log(signal), rcond=None)
    return coefficients[1]


def _window(array: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (array - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def write_montage(panels: list[np.ndarray], path: Path, zoom: int = 2) -> Path:
    """Tile 2D uint8 panels side by side (2 px gap) and write a PNG with SimpleITK."""
    height = max(panel.shape[0] for panel in panels)
    tiles = []
    for panel in panels:
        padded = np.zeros((height, panel.shape[1]), np.uint8)
        padded[: panel.shape[0]] = panel
        tiles.extend([padded, np.full((height, 2), 255 // 2, np.uint8)])
    montage = np.concatenate(tiles[:-1], axis=1)
    montage = np.kron(montage, np.ones((zoom, zoom), np.uint8))
    # Temporary name keeps the .png ending so SimpleITK picks the PNG writer.
    temporary = path.with_name(f".{path.stem}.part.png")
    sitk.WriteImage(sitk.GetImageFromArray(montage), str(temporary))
    temporary.replace(path)
    return path


# --- the demo ---------------------------------------------------------------------------


def _sidecar(case_file: Path, preset: dict, result, output: Path, bias: Path | None) -> dict:
    from primage.cli.preprocess import sha256

    return {
        "primage_version": __version__,
        "command": "demo",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": str(case_file.resolve()), "sha256": sha256(case_file)},
        "preset": preset["name"],
        "output": str(output.resolve()),
        "bias_field": str(bias.resolve()) if bias else None,
        "steps": result.records,
        "seconds_total": round(result.seconds, 3),
        "versions": {
            "primage": __version__,
            "simpleitk": sitk.Version_VersionString(),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def run_demo(
    output_dir: str | Path, *, seed: int = 0, progress: ProgressCallback | None = None
) -> dict:
    """Build the digital patient, preprocess every modality, measure, write the report.

    Returns the summary dict (also written as ``summary.json``). Takes ~15 s on 2 cores.
    """
    from primage.preprocessing import load_preset, run_steps, run_steps_series
    from primage.synthetic import CASE_FILES, TISSUES, make_digital_patient, spgr_signal, write_case

    overall = progress or no_progress
    # Preprocessing takes the first half of the bar, the capability sections the rest.
    progress = sub_progress(overall, 0.0, 0.5)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise PrimageInputError(f"--output-dir {output_dir} exists and is not a folder")
    start = time.perf_counter()
    case_dir, out_dir = output_dir / "case", output_dir / "preprocessed"

    progress(0.0, "building the digital patient")
    patient = make_digital_patient(seed)
    progress(0.05, "writing the case folder")
    case_paths = write_case(patient, case_dir)

    labels = sitk.GetArrayFromImage(patient.tissues)
    body = labels > 0
    name_to_label = {tissue.name: label for label, tissue in TISSUES.items()}
    liver = _erode(labels == name_to_label["liver"], patient.tissues)
    viable = labels == name_to_label["tumour"]
    soft = _erode(labels == name_to_label["soft_tissue"], patient.tissues)
    true_bias = _array(patient.truth_images["bias_field"])

    summary: dict = {"seed": seed, "primage_version": __version__, "modalities": {}}
    results = {}
    modalities = ("t2w", "t1w", "dwi", "dce", "ct")
    spans = {
        "t2w": (0.1, 0.3),
        "t1w": (0.3, 0.5),
        "dwi": (0.5, 0.6),
        "dce": (0.6, 0.85),
        "ct": (0.85, 0.9),
    }
    for modality in modalities:
        preset = load_preset(modality)
        image = getattr(patient, modality)
        step_progress = sub_progress(progress, *spans[modality])
        report = lambda f, m, p=step_progress, mod=modality: p(f, f"{mod}: {m}")  # noqa: E731
        if image.GetDimension() == 4:
            result = run_steps_series(image, preset["steps"], progress=report)
        else:
            result = run_steps(image, preset["steps"], progress=report)
        results[modality] = result
        output = out_dir / f"{modality}.nii.gz"
        write_image(result.image, output)
        bias_path = None
        if result.bias_field is not None:
            bias_path = write_image(result.bias_field, out_dir / f"{modality}_bias_field.nii.gz")
        write_json(
            _sidecar(case_paths[modality], preset, result, output, bias_path),
            out_dir / f"{modality}.json",
        )
        summary["modalities"][modality] = {
            "preset": preset["name"],
            "steps": [record["step"] for record in result.records],
            "seconds": round(result.seconds, 3),
        }

    progress(0.9, "measuring against the ground truth")
    # T2w/T1w: N4 and denoising. The N4 output alone is raw / bias (N4 is the first step).
    for modality in ("t2w", "t1w"):
        raw = _array(getattr(patient, modality))
        estimated = _array(results[modality].bias_field)
        n4_only = raw / estimated
        final = _array(results[modality].image)
        clean = _array(patient.truth_images[f"{modality}_noise_free"])

        def cv(values: np.ndarray, region: np.ndarray) -> float:
            return float(values[region].std() / values[region].mean())

        def ratio(values: np.ndarray) -> float:
            return float(values[viable].mean() / values[soft].mean())

        def snr(values: np.ndarray) -> float:
            # mean / detrended SD: scale-free, since N4 fixes no overall scale
            return float(values[liver].mean() / detrended_sd(values, liver))

        def cnr(values: np.ndarray) -> float:
            difference = values[viable].mean() - values[soft].mean()
            return float(difference / detrended_sd(values, liver))

        summary["modalities"][modality].update(
            {
                "bias_log_correlation_body": round(log_correlation(estimated, true_bias, body), 4),
                "liver_cv_raw": round(cv(raw, liver), 4),
                "liver_cv_n4": round(cv(n4_only, liver), 4),
                "liver_cv_ideal": round(cv(raw / true_bias, liver), 4),
                "liver_snr_raw": round(snr(raw), 2),
                "liver_snr_n4": round(snr(n4_only), 2),
                "liver_snr_final": round(snr(final), 2),
                "tumour_soft_tissue_cnr_n4": round(cnr(n4_only), 2),
                "tumour_soft_tissue_cnr_final": round(cnr(final), 2),
                "tumour_to_soft_tissue_ratio_raw": round(ratio(raw), 4),
                "tumour_to_soft_tissue_ratio_n4": round(ratio(n4_only), 4),
                "tumour_to_soft_tissue_ratio_final": round(ratio(final), 4),
                "tumour_to_soft_tissue_ratio_truth": round(ratio(clean), 4),
            }
        )

    # DWI: voxel-wise ADC in the viable tumour, raw vs preprocessed vs truth.
    raw_dwi = _array(patient.dwi)
    final_dwi = _array(results["dwi"].image)
    true_adc = float(TISSUES[name_to_label["tumour"]].adc)
    adc_raw = adc_fit(raw_dwi, patient.b_values, viable)
    adc_final = adc_fit(final_dwi, patient.b_values, viable)
    summary["modalities"]["dwi"].update(
        {
            "tumour_adc_truth": true_adc,
            "tumour_adc_median_raw": float(f"{np.median(adc_raw):.4e}"),
            "tumour_adc_median_final": float(f"{np.median(adc_final):.4e}"),
            "tumour_adc_iqr_raw": float(f"{np.subtract(*np.percentile(adc_raw, [75, 25])):.4e}"),
            "tumour_adc_iqr_final": float(
                f"{np.subtract(*np.percentile(adc_final, [75, 25])):.4e}"
            ),
        }
    )

    # DCE: relative enhancement of the viable tumour at the peak, raw vs preprocessed vs
    # the noise-free truth (bias and M0 cancel in the ratio).
    times = np.asarray(patient.frame_times)
    baseline = times < 15.0
    gt_dce = patient.ground_truth["dce"]
    tumour_tissue = TISSUES[name_to_label["tumour"]]
    seq = gt_dce["sequence"]
    r1 = 1.0 / tumour_tissue.t10 + seq["relaxivity_per_mM_per_s"] * np.asarray(
        gt_dce["concentration_curves"]["tumour"]
    )
    true_curve = spgr_signal(1.0, r1, seq["repetition_time_s"], seq["flip_angle_deg"])
    true_enhancement = true_curve / true_curve[baseline].mean() - 1.0

    def enhancement(series: sitk.Image) -> np.ndarray:
        curve = _array(series)[:, viable].mean(axis=1)
        return curve / curve[baseline].mean() - 1.0

    enh_raw, enh_final = enhancement(patient.dce), enhancement(results["dce"].image)
    summary["modalities"]["dce"].update(
        {
            "tumour_peak_enhancement_truth": round(float(true_enhancement.max()), 4),
            "tumour_peak_enhancement_raw": round(float(enh_raw.max()), 4),
            "tumour_peak_enhancement_final": round(float(enh_final.max()), 4),
            "tumour_curve_max_abs_difference_final_vs_raw": round(
                float(np.abs(enh_final - enh_raw).max()), 4
            ),
        }
    )

    # CT: HU preserved by resampling (means per tissue on the new grid, labels resampled
    # with the label-aware interpolator).
    from primage.preprocessing.filters import resample_to_spacing

    ct_final = results["ct"].image
    labels_final = sitk.GetArrayFromImage(
        resample_to_spacing(patient.tissues, ct_final.GetSpacing(), "label")
    )
    labels_final_image = sitk.GetImageFromArray(labels_final)
    labels_final_image.CopyInformation(ct_final)
    ct_raw_array, ct_final_array = _array(patient.ct), _array(ct_final)
    # Means over eroded regions, so partial-volume voxels at the borders do not count.
    liver_final = _erode(labels_final == 5, labels_final_image, (2, 2, 2))
    viable_core = _erode(viable, patient.tissues, (1, 1, 1))
    viable_final_core = _erode(labels_final == 8, labels_final_image, (2, 2, 2))
    summary["modalities"]["ct"].update(
        {
            "input_size": list(patient.ct.GetSize()),
            "output_size": list(ct_final.GetSize()),
            "output_spacing_mm": list(ct_final.GetSpacing()),
            "liver_hu_raw": round(float(ct_raw_array[liver].mean()), 2),
            "liver_hu_final": round(float(ct_final_array[liver_final].mean()), 2),
            "tumour_hu_raw": round(float(ct_raw_array[viable_core].mean()), 2),
            "tumour_hu_final": round(float(ct_final_array[viable_final_core].mean()), 2),
            "tumour_hu_truth": float(TISSUES[8].ct_hu),
            "liver_hu_truth": float(TISSUES[5].ct_hu),
            "tumour_volume_ml_raw": round(
                float(viable.sum() * np.prod(patient.ct.GetSpacing()) / 1000), 3
            ),
            "tumour_volume_ml_resampled_labels": round(
                float((labels_final == 8).sum() * np.prod(ct_final.GetSpacing()) / 1000), 3
            ),
        }
    )

    sections = []
    for index, (folder, module_name) in enumerate(DEMO_SECTIONS):
        span = 0.45 / len(DEMO_SECTIONS)
        section_progress = sub_progress(overall, 0.5 + index * span, 0.5 + (index + 1) * span)
        module = importlib.import_module(module_name)
        sections.append(module.run_demo(case_dir, output_dir / folder, progress=section_progress))

    progress = overall
    progress(0.95, "writing the report and montage")
    montage_path = _montage(patient, results["t2w"], true_bias, body, output_dir / "montage.png")
    summary["seconds_total"] = round(time.perf_counter() - start, 2)
    summary["files"] = {
        "case": str(case_dir),
        "preprocessed": str(out_dir),
        "montage": str(montage_path),
        "case_files": sorted(CASE_FILES.values()),
    }
    write_json(summary, output_dir / "summary.json")
    write_text(_report(summary, patient, sections), output_dir / "report.md")
    progress(1.0, "demo done")
    return summary


def _montage(patient, t2w_result, true_bias: np.ndarray, body: np.ndarray, path: Path) -> Path:
    z = patient.t2w.GetSize()[2] // 2
    raw = _array(patient.t2w)[z]
    estimated = _array(t2w_result.bias_field)
    n4_only = raw / estimated[z]
    final = _array(t2w_result.image)[z]
    # Fields are compared after fixing the free scale: geometric mean 1 in the body.
    estimated = estimated / np.exp(np.log(estimated[body]).mean())
    high = float(np.percentile(raw[raw > 0], 99.5))
    panels = [
        _window(raw, 0, high),
        _window(n4_only, 0, high),
        _window(final, 0, high),
        _window(np.where(body[z], true_bias[z], 0), 0.6, 1.5),
        _window(np.where(body[z], estimated[z], 0), 0.6, 1.5),
    ]
    return write_montage(panels, path)


def _report(summary: dict, patient, sections: list[list[str]]) -> str:
    m = summary["modalities"]
    t2, t1, dwi, dce, ct = (m[k] for k in ("t2w", "t1w", "dwi", "dce", "ct"))
    grid = patient.ground_truth["grid"]
    lines = [
        "# PRIMAGE demo report",
        "",
        f"Synthetic digital patient, seed {summary['seed']}; grid {grid['size']} voxels of "
        f"{[round(s, 2) for s in grid['spacing_mm']]} mm, oblique direction. primage "
        f"{summary['primage_version']}, total {summary['seconds_total']} s. Every figure is "
        "measured against the known ground truth (`case/ground_truth.json`).",
        "",
        "## Presets run",
        "",
        "| modality | preset steps | seconds |",
        "|---|---|---|",
    ]
    for key, values in m.items():
        lines.append(f"| {key} | {', '.join(values['steps'])} | {values['seconds']} |")
    lines += [
        "",
        "## N4 bias-field correction and denoising (T2w, T1w)",
        "",
        "Bias correlation: Pearson correlation of log(estimated field) with log(true field) "
        "inside the body. Liver CV: SD/mean of an eroded liver region (the ideal is the raw "
        "image divided by the true field: only noise remains). SNR: liver mean / liver "
        "residual SD after removing a quadratic trend (scale-free; N4 fixes no overall "
        "scale). CNR: (viable tumour mean - soft tissue mean) / that noise SD. Ratio: "
        "viable tumour mean / soft-tissue mean; the truth is the noise-free, bias-free "
        "image, so the ratio shows how much bias N4 removed and that the diffusion "
        "keeps the contrast.",
        "",
        "| measure | T2w | T1w |",
        "|---|---|---|",
    ]
    rows = [
        ("bias log-correlation (body)", "bias_log_correlation_body"),
        ("liver CV raw", "liver_cv_raw"),
        ("liver CV after N4", "liver_cv_n4"),
        ("liver CV ideal (true field removed)", "liver_cv_ideal"),
        ("liver SNR raw", "liver_snr_raw"),
        ("liver SNR after N4", "liver_snr_n4"),
        ("liver SNR after N4 + diffusion", "liver_snr_final"),
        ("tumour/soft-tissue CNR after N4", "tumour_soft_tissue_cnr_n4"),
        ("tumour/soft-tissue CNR after N4 + diffusion", "tumour_soft_tissue_cnr_final"),
        ("tumour/soft tissue ratio raw", "tumour_to_soft_tissue_ratio_raw"),
        ("tumour/soft tissue ratio after N4", "tumour_to_soft_tissue_ratio_n4"),
        ("tumour/soft tissue ratio after N4 + diffusion", "tumour_to_soft_tissue_ratio_final"),
        ("tumour/soft tissue ratio truth", "tumour_to_soft_tissue_ratio_truth"),
    ]
    for title, key in rows:
        lines.append(f"| {title} | {t2[key]} | {t1[key]} |")
    lines += [
        "",
        f"Noise SD of the synthetic T2w/T1w: {patient.ground_truth['noise_sd']['t2w']} (Rician).",
        "",
        "## DWI (preset per b-value volume)",
        "",
        "Voxel-wise mono-exponential ADC (log-linear fit over all b-values) in the viable "
        "tumour, mm^2/s:",
        "",
        "| | median ADC | IQR |",
        "|---|---|---|",
        f"| truth | {dwi['tumour_adc_truth']:.3e} | 0 |",
        f"| raw | {dwi['tumour_adc_median_raw']:.3e} | {dwi['tumour_adc_iqr_raw']:.3e} |",
        f"| preprocessed | {dwi['tumour_adc_median_final']:.3e} | {dwi['tumour_adc_iqr_final']:.3e} |",
        "",
        "## DCE (preset per frame)",
        "",
        "Peak relative enhancement of the mean viable-tumour signal (S/S_baseline - 1):",
        f"truth {dce['tumour_peak_enhancement_truth']}, raw {dce['tumour_peak_enhancement_raw']}, "
        f"preprocessed {dce['tumour_peak_enhancement_final']}; largest change of the "
        f"enhancement curve by preprocessing: {dce['tumour_curve_max_abs_difference_final_vs_raw']}.",
        "",
        "## CT (resampled to 1 mm isotropic)",
        "",
        f"Grid {ct['input_size']} -> {ct['output_size']} voxels. Mean HU in eroded regions, "
        f"liver: {ct['liver_hu_raw']} -> {ct['liver_hu_final']} (truth {ct['liver_hu_truth']}); "
        f"viable tumour: {ct['tumour_hu_raw']} -> {ct['tumour_hu_final']} (truth "
        f"{ct['tumour_hu_truth']}); labels resampled label-aware. Viable tumour volume: "
        f"{ct['tumour_volume_ml_raw']} ml -> {ct['tumour_volume_ml_resampled_labels']} ml.",
        "",
        "## Montage",
        "",
        "`montage.png`, central axial slice: raw T2w | after N4 | after the t2w preset | true "
        "bias field | estimated bias field (both fields scaled to geometric mean 1 in the "
        "body, window 0.6-1.5).",
        "",
        "![montage](montage.png)",
        "",
    ]
    for section in sections:
        lines += [*section, ""]
    return "\n".join(lines)
