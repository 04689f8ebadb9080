"""IBSI compliance: the project's features of the IBSI digital phantom against the reference.

The IBSI chapter 1 digital phantom (5 x 4 x 4 voxels of 2 mm, grey levels 1-6, a 74-voxel
region) is measured with the ``ibsi`` preset, with the phantom's own prescription
applied on top: no resampling, no re-segmentation, one bin per grey level (bin width 1).
Texture is computed twice: in 3D (IBSI ``_3D_avg`` / ``_3D``) and with pyradiomics'
``force2D`` in the axial plane, whose matrices are merged over slices per direction
(IBSI ``_2_5D_avg`` / ``_2_5D``).

Every IBSI feature that pyradiomics computes is listed in :data:`FEATURES` (pyradiomics
name -> IBSI tag). A value *matches* when it lies within the reference tolerance, widened
by half a unit of the third significant digit, because IBSI reports phantom values
rounded to three significant digits (with tolerance 0). Differences pyradiomics is known
to have are explained in :data:`KNOWN_DIFFERENCES`.
"""

from __future__ import annotations

import csv
import math
import platform
from dataclasses import dataclass
from pathlib import Path

from primage import __version__
from primage.errors import PrimageInputError
from primage.radiomics.params import load_params

#: The phantom's prescription on top of the ``ibsi`` preset.
PHANTOM_SETTINGS = {
    "binWidth": 1,
    "resampledPixelSpacing": None,
    "resegmentRange": None,
    "minimumROIDimensions": 1,
}

_SHAPE = {
    "MeshVolume": "morph_volume",
    "VoxelVolume": "morph_vol_approx",
    "SurfaceArea": "morph_area_mesh",
    "SurfaceVolumeRatio": "morph_av",
    "Sphericity": "morph_sphericity",
    "Maximum3DDiameter": "morph_diam",
    "MajorAxisLength": "morph_pca_maj_axis",
    "MinorAxisLength": "morph_pca_min_axis",
    "LeastAxisLength": "morph_pca_least_axis",
    "Elongation": "morph_pca_elongation",
    "Flatness": "morph_pca_flatness",
}
_FIRSTORDER = {
    "Mean": "stat_mean",
    "Variance": "stat_var",
    "Skewness": "stat_skew",
    "Kurtosis": "stat_kurt",
    "Median": "stat_median",
    "Minimum": "stat_min",
    "10Percentile": "stat_p10",
    "90Percentile": "stat_p90",
    "Maximum": "stat_max",
    "InterquartileRange": "stat_iqr",
    "Range": "stat_range",
    "MeanAbsoluteDeviation": "stat_mad",
    "RobustMeanAbsoluteDeviation": "stat_rmad",
    "Energy": "stat_energy",
    "RootMeanSquared": "stat_rms",
    "Entropy": "ih_entropy",
    "Uniformity": "ih_uniformity",
}
_GLCM = {
    "MaximumProbability": "cm_joint_max",
    "JointAverage": "cm_joint_avg",
    "SumSquares": "cm_joint_var",
    "JointEntropy": "cm_joint_entr",
    "DifferenceAverage": ["cm_diff_avg", "cm_dissimilarity"],
    "DifferenceVariance": "cm_diff_var",
    "DifferenceEntropy": "cm_diff_entr",
    "SumAverage": "cm_sum_avg",
    "ClusterTendency": ["cm_clust_tend", "cm_sum_var"],
    "SumEntropy": "cm_sum_entr",
    "JointEnergy": "cm_energy",
    "Contrast": "cm_contrast",
    "Id": "cm_inv_diff",
    "Idn": "cm_inv_diff_norm",
    "Idm": "cm_inv_diff_mom",
    "Idmn": "cm_inv_diff_mom_norm",
    "InverseVariance": "cm_inv_var",
    "Correlation": "cm_corr",
    "Autocorrelation": "cm_auto_corr",
    "ClusterShade": "cm_clust_shade",
    "ClusterProminence": "cm_clust_prom",
    "Imc1": "cm_info_corr1",
    "Imc2": "cm_info_corr2",
}
_GLRLM = {
    "ShortRunEmphasis": "rlm_sre",
    "LongRunEmphasis": "rlm_lre",
    "LowGrayLevelRunEmphasis": "rlm_lgre",
    "HighGrayLevelRunEmphasis": "rlm_hgre",
    "ShortRunLowGrayLevelEmphasis": "rlm_srlge",
    "ShortRunHighGrayLevelEmphasis": "rlm_srhge",
    "LongRunLowGrayLevelEmphasis": "rlm_lrlge",
    "LongRunHighGrayLevelEmphasis": "rlm_lrhge",
    "GrayLevelNonUniformity": "rlm_glnu",
    "GrayLevelNonUniformityNormalized": "rlm_glnu_norm",
    "RunLengthNonUniformity": "rlm_rlnu",
    "RunLengthNonUniformityNormalized": "rlm_rlnu_norm",
    "RunPercentage": "rlm_r_perc",
    "GrayLevelVariance": "rlm_gl_var",
    "RunVariance": "rlm_rl_var",
    "RunEntropy": "rlm_rl_entr",
}
_GLSZM = {
    "SmallAreaEmphasis": "szm_sze",
    "LargeAreaEmphasis": "szm_lze",
    "LowGrayLevelZoneEmphasis": "szm_lgze",
    "HighGrayLevelZoneEmphasis": "szm_hgze",
    "SmallAreaLowGrayLevelEmphasis": "szm_szlge",
    "SmallAreaHighGrayLevelEmphasis": "szm_szhge",
    "LargeAreaLowGrayLevelEmphasis": "szm_lzlge",
    "LargeAreaHighGrayLevelEmphasis": "szm_lzhge",
    "GrayLevelNonUniformity": "szm_glnu",
    "GrayLevelNonUniformityNormalized": "szm_glnu_norm",
    "SizeZoneNonUniformity": "szm_zsnu",
    "SizeZoneNonUniformityNormalized": "szm_zsnu_norm",
    "ZonePercentage": "szm_z_perc",
    "GrayLevelVariance": "szm_gl_var",
    "ZoneVariance": "szm_zs_var",
    "ZoneEntropy": "szm_zs_entr",
}
_NGTDM = {
    "Coarseness": "ngt_coarseness",
    "Contrast": "ngt_contrast",
    "Busyness": "ngt_busyness",
    "Complexity": "ngt_complexity",
    "Strength": "ngt_strength",
}
_GLDM = {
    "SmallDependenceEmphasis": "ngl_lde",
    "LargeDependenceEmphasis": "ngl_hde",
    "LowGrayLevelEmphasis": "ngl_lgce",
    "HighGrayLevelEmphasis": "ngl_hgce",
    "SmallDependenceLowGrayLevelEmphasis": "ngl_ldlge",
    "SmallDependenceHighGrayLevelEmphasis": "ngl_ldhge",
    "LargeDependenceLowGrayLevelEmphasis": "ngl_hdlge",
    "LargeDependenceHighGrayLevelEmphasis": "ngl_hdhge",
    "GrayLevelNonUniformity": "ngl_glnu",
    "DependenceNonUniformity": "ngl_dcnu",
    "DependenceNonUniformityNormalized": "ngl_dcnu_norm",
    "GrayLevelVariance": "ngl_gl_var",
    "DependenceVariance": "ngl_dc_var",
    "DependenceEntropy": "ngl_dc_entr",
}

#: (pyradiomics feature, IBSI tag, mode) for every IBSI feature pyradiomics computes;
#: mode "3D" or "2.5D" (force2D) says which run gives the value.
FEATURES: list[tuple[str, str, str]] = []


def _add(prefix: str, table: dict, suffix: str, mode: str) -> None:
    for name, tags in table.items():
        for tag in [tags] if isinstance(tags, str) else tags:
            FEATURES.append((f"original_{prefix}_{name}", f"{tag}{suffix}", mode))


_add("shape", _SHAPE, "", "3D")
_add("firstorder", _FIRSTORDER, "", "3D")
for _mode, _matrix_suffix, _free_suffix in (
    ("3D", "_3D_avg", "_3D"),
    ("2.5D", "_2_5D_avg", "_2_5D"),
):
    _add("glcm", _GLCM, _matrix_suffix, _mode)
    _add("glrlm", _GLRLM, _matrix_suffix, _mode)
    _add("glszm", _GLSZM, _free_suffix, _mode)
    _add("ngtdm", _NGTDM, _free_suffix, _mode)
    _add("gldm", _GLDM, _free_suffix, _mode)

#: Why pyradiomics differs from IBSI for some features (tag prefix -> reason).
KNOWN_DIFFERENCES = {
    "stat_kurt": "pyradiomics reports kurtosis, IBSI excess kurtosis (kurtosis - 3): the "
    "project's value minus 3 is the IBSI value",
}
_PCA = (
    "pyradiomics takes the PCA eigenvalues of the voxel-centre covariance with the "
    "population (1/N) normalisation, IBSI with the sample (1/(N-1)) one: axis lengths "
    "differ by sqrt(N/(N-1)), 0.7 % for 74 voxels (ratios such as elongation and flatness "
    "do not)"
)
for _tag in ("morph_pca_maj_axis", "morph_pca_min_axis", "morph_pca_least_axis"):
    KNOWN_DIFFERENCES[_tag] = _PCA


@dataclass
class Comparison:
    """One IBSI feature: the reference, the project's value and the verdict."""

    tag: str
    feature: str
    mode: str
    reference: float | None
    tolerance: float | None
    value: float
    status: str  # "match", "differs", "no reference"
    note: str


def read_reference(path: str | Path) -> dict[str, tuple[float | None, float | None]]:
    """IBSI reference values: tag -> (value, tolerance); None where no consensus."""
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"IBSI reference file does not exist: {path}")
    reference = {}
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream, delimiter=";"):
            value, tolerance = row["reference value"].strip(), row["tolerance"].strip()
            reference[row["tag"].strip()] = (
                float(value) if value else None,
                float(tolerance) if tolerance else None,
            )
    return reference


def allowed_deviation(reference: float, tolerance: float) -> float:
    """Tolerance plus half a unit of the reference's third significant digit."""
    if reference == 0:
        return tolerance
    rounding = 0.5 * 10 ** (math.floor(math.log10(abs(reference))) - 2)
    return tolerance + rounding


def phantom_features(image_path: str | Path, mask_path: str | Path) -> dict[str, dict[str, float]]:
    """The phantom's features with the ``ibsi`` preset: ``{"3D": {...}, "2.5D": {...}}``."""
    import copy

    from primage.radiomics.extraction import Task, run_task

    parameters = load_params("ibsi")
    values: dict[str, dict[str, float]] = {}
    for mode, extra in (("3D", {}), ("2.5D", {"force2D": True, "force2Ddimension": 0})):
        params = copy.deepcopy(parameters.params)
        settings = params.setdefault("setting", {})
        for key, value in {**PHANTOM_SETTINGS, **extra}.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        task = Task("phantom", "ROI", 1, str(image_path), str(mask_path), params, "ibsi + phantom")
        result = run_task(task)
        if not result.ok:
            raise PrimageInputError(f"the IBSI phantom could not be measured: {result.error}")
        values[mode] = result.features
    return values


def compare(
    values: dict[str, dict[str, float]], reference: dict[str, tuple[float | None, float | None]]
) -> list[Comparison]:
    """Every mapped feature against its reference value."""
    rows = []
    for feature, tag, mode in FEATURES:
        value = values[mode][feature]
        ref, tolerance = reference.get(tag, (None, None))
        note = ""
        if ref is None:
            status, note = "no reference", "IBSI reached no consensus value"
        elif abs(value - ref) <= allowed_deviation(ref, tolerance or 0.0):
            status = "match"
        else:
            status = "differs"
            known = [text for key, text in KNOWN_DIFFERENCES.items() if tag.startswith(key)]
            note = known[0] if known else "not explained yet"
        rows.append(Comparison(tag, feature, mode, ref, tolerance, value, status, note))
    return rows


def _format(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.6g}"


def markdown(rows: list[Comparison], *, reference_source: str) -> str:
    """The compliance report (docs/ibsi-compliance.md)."""
    import numpy
    import radiomics
    import SimpleITK

    matched = sum(r.status == "match" for r in rows)
    differs = [r for r in rows if r.status == "differs"]
    no_reference = sum(r.status == "no reference" for r in rows)
    lines = [
        "# IBSI compliance of the radiomics features",
        "",
        "Generated by `scripts/ibsi_compliance.py`; do not edit by hand. "
        "`Testing/test_radiomics_ibsi.py` checks that every feature marked *match* "
        "stays within tolerance.",
        "",
        "Image: the IBSI chapter 1 digital phantom (5 x 4 x 4 voxels of 2 mm, 74 voxels in "
        "the region of interest); reference values and tolerances: "
        f"`{reference_source}` (IBSI consensus values).",
        "",
        "Settings: the `ibsi` preset (`primage/presets/radiomics/ibsi.yaml`) with the "
        "phantom's own prescription on top: no resampling, no re-segmentation, bin width 1 "
        "(one bin per grey level). 3D texture matrices give IBSI's `_3D_avg` (GLCM, GLRLM: "
        "per direction, averaged over the 13 directions) and `_3D` features; pyradiomics' "
        "`force2D` in the axial plane gives `_2_5D_avg` / `_2_5D` (matrices merged over "
        "slices per in-plane direction).",
        "",
        "A value *matches* when |value - reference| <= tolerance + half a unit of the "
        "reference's third significant digit (IBSI rounds phantom values to three "
        "significant digits and gives tolerance 0).",
        "",
        f"Versions: primage {__version__}, pyradiomics {radiomics.__version__}, "
        f"SimpleITK {SimpleITK.Version_VersionString()}, numpy {numpy.__version__}, "
        f"Python {platform.python_version()}.",
        "",
        "## Summary",
        "",
        f"- {len(rows)} IBSI features are computed by pyradiomics: **{matched} match**, "
        f"{len(differs)} differ, {no_reference} have no IBSI consensus value.",
    ]
    for row in differs:
        lines.append(f"- `{row.tag}` ({row.feature}) differs: {row.note}.")
    lines += [
        "- Not computed by pyradiomics (no rows below): local intensity (`loc_`), intensity "
        "histogram features other than entropy and uniformity (`ih_`), intensity-volume "
        "histogram (`ivh_`), the remaining morphology (`morph_comp_*`, `morph_sph_dispr`, "
        "`morph_asphericity`, `morph_com`, bounding-box and ellipsoid densities, "
        "`morph_integ_int`, Moran's I, Geary's C), `stat_medad`, `stat_cov`, `stat_qcod`, "
        "distance-zone matrices (`dzm_`), GLDM `ngl_glnu_norm`, `ngl_dc_perc`, "
        "`ngl_dc_energy`, the 2D (per-slice) and merged-direction (`_comb`) variants.",
        "- pyradiomics features without an IBSI counterpart: `shape_Maximum2DDiameter*`, "
        "`firstorder_TotalEnergy` (energy x voxel volume), `glcm_MCC`.",
        "",
        "## Features",
        "",
        "| IBSI tag | pyradiomics feature | reference | tolerance | project | status | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row.tag}` | `{row.feature}`{' (force2D)' if row.mode == '2.5D' else ''} | "
            f"{_format(row.reference)} | {_format(row.tolerance)} | {_format(row.value)} | "
            f"{row.status} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def parse_report(text: str) -> list[dict[str, str]]:
    """The feature rows of a report written by :func:`markdown` (tag, feature, status...)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append(
            {
                "tag": cells[0].strip("`"),
                "feature": cells[1].split("`")[1],
                "reference": cells[2],
                "tolerance": cells[3],
                "value": cells[4],
                "status": cells[5],
            }
        )
    return rows
