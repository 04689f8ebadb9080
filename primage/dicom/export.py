"""DICOM out: results as DICOM SEG, Parametric Maps and a TID 1500 Structured Report.

Every object references the source series it was computed on (its study, frame of
reference and instances) and is written with highdicom:

* :func:`segmentation_dataset` — a binary DICOM SEG of a label image (tumour, FCF
  habitats): one segment per label, with its name and coded category / type;
* :func:`parametric_map_dataset` — a float32 Parametric Map with its quantity and UCUM
  unit coded (:data:`MAPS`) and an identity real-world value mapping (stored = real value);
* :func:`measurement_report_dataset` — a Comprehensive 3D SR (TID 1500 Measurement Report)
  with tumour volume, ROI values of the maps, FCF habitat values and radiomic features
  (IBSI codes where IBSI defines the feature as pyradiomics computes it, otherwise the
  pyradiomics name under the private scheme ``99PYRAD``), referencing the SEG;
* :func:`export_results` — all of these from NIfTI results on the series grid.

Result images must lie on the source series' voxel grid (same voxel centres; index order
may differ): nothing is interpolated. Identity: each object carries the pseudonym as
PatientName / PatientID; the source's name, ID, birth date, accession number and any text
containing them are removed (:func:`pseudonymise`). The study and series UIDs are kept, so
the objects stay linked to the source images.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage import __version__
from primage.errors import PrimageInputError

MANUFACTURER = "PRIMAGE"
MODEL = "PRIMAGE for 3D Slicer"
#: Coding scheme of the project's own concepts (maps and values without a standard code).
PRIVATE_SCHEME = "99PRIMAGE"
#: Coding scheme of pyradiomics feature names that have no IBSI code.
PYRADIOMICS_SCHEME = "99PYRAD"
#: Series numbers of the objects written by :func:`export_results`.
SERIES_NUMBERS = {"seg": 9100, "pm": 9200, "sr": 9300}
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
#: Largest deviation of a result grid from the series grid (fraction of a voxel).
GRID_TOLERANCE = 0.01


def _code(value: str, scheme: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value, scheme, meaning)


#: UCUM units (code, meaning) by the unit names used in this project.
UNITS = {
    "mm2/s": ("mm2/s", "square millimeter per second"),
    "s": ("s", "second"),
    "/min": ("/min", "per minute"),
    "{ratio}": ("{ratio}", "ratio"),
    "1": ("1", "no units"),
    "mmol/L": ("mmol/L", "millimole per liter"),
    "g/mL": ("g/mL", "gram per milliliter"),
    "[hnsf'U]": ("[hnsf'U]", "Hounsfield unit"),
    "[arb'U]": ("[arb'U]", "arbitrary unit"),
    "mm3": ("mm3", "cubic millimeter"),
    "mm2": ("mm2", "square millimeter"),
    "mm": ("mm", "millimeter"),
    "/mm": ("/mm", "per millimeter"),
}


@dataclass(frozen=True)
class MapKind:
    """What a parameter map holds: coded quantity (scheme, value, meaning) and UCUM unit."""

    quantity: tuple[str, str, str]
    unit: str
    label: str  # ContentLabel / LUT label (upper case, <= 16 characters)

    def quantity_code(self):
        scheme, value, meaning = self.quantity
        return _code(value, scheme, meaning)

    def unit_code(self):
        return _code(*UNITS[self.unit][:1], "UCUM", UNITS[self.unit][1])


def _private(value: str, meaning: str) -> tuple[str, str, str]:
    return (PRIVATE_SCHEME, value, meaning)


#: Parameter maps that can be exported, by the file name the project writes (``adc.nii.gz``).
MAPS: dict[str, MapKind] = {
    "adc": MapKind(("DCM", "113041", "Apparent Diffusion Coefficient"), "mm2/s", "ADC"),
    "adc_se": MapKind(_private("adc_se", "Standard error of ADC"), "mm2/s", "ADC_SE"),
    "r2": MapKind(_private("r2", "Coefficient of determination of the fit"), "1", "R2"),
    "s0": MapKind(_private("s0", "Signal at b = 0"), "[arb'U]", "S0"),
    "ivim_d": MapKind(("DCM", "113291", "Slow Diffusion Coefficient"), "mm2/s", "IVIM_D"),
    "ivim_dstar": MapKind(("DCM", "113292", "Fast Diffusion Coefficient"), "mm2/s", "IVIM_DSTAR"),
    "ivim_f": MapKind(
        ("DCM", "113293", "Fast Diffusion Coefficient Fraction"), "{ratio}", "IVIM_F"
    ),
    "ivim_s0": MapKind(_private("ivim_s0", "IVIM signal at b = 0"), "[arb'U]", "IVIM_S0"),
    "iauc60": MapKind(("DCM", "126321", "IAUC60"), "s", "IAUC60"),
    "iauc60_se": MapKind(_private("iauc60_se", "Standard error of IAUC60"), "s", "IAUC60_SE"),
    "ttp": MapKind(("DCM", "113069", "Time To Peak"), "s", "TTP"),
    "bolus_arrival": MapKind(("DCM", "126371", "Bolus Arrival Time"), "s", "BAT"),
    "peak_enhancement": MapKind(
        _private("peak_enhancement", "Peak relative enhancement"), "{ratio}", "PEAK_ENH"
    ),
    "wash_in": MapKind(
        _private("wash_in", "Wash-in rate of relative enhancement"), "/min", "WASH_IN"
    ),
    "wash_out": MapKind(
        _private("wash_out", "Wash-out rate of relative enhancement"), "/min", "WASH_OUT"
    ),
    "ser": MapKind(_private("ser", "Signal enhancement ratio"), "{ratio}", "SER"),
    "ktrans": MapKind(("DCM", "126312", "Ktrans"), "/min", "KTRANS"),
    "kep": MapKind(("DCM", "126313", "kep"), "/min", "KEP"),
    "ve": MapKind(("DCM", "126314", "ve"), "{ratio}", "VE"),
    "vp": MapKind(("DCM", "126331", "vp"), "{ratio}", "VP"),
    "ktrans_se": MapKind(_private("ktrans_se", "Standard error of Ktrans"), "/min", "KTRANS_SE"),
    "kep_se": MapKind(_private("kep_se", "Standard error of kep"), "/min", "KEP_SE"),
    "ve_se": MapKind(_private("ve_se", "Standard error of ve"), "{ratio}", "VE_SE"),
    "vp_se": MapKind(_private("vp_se", "Standard error of vp"), "{ratio}", "VP_SE"),
    "rmse": MapKind(_private("rmse", "RMS residual of the Tofts fit"), "mmol/L", "RMSE"),
    "fcf_adc_confidence": MapKind(
        _private("fcf_confidence", "FCF habitat confidence"), "{ratio}", "FCF_ADC_CONF"
    ),
    "fcf_iauc60_confidence": MapKind(
        _private("fcf_confidence", "FCF habitat confidence"), "{ratio}", "FCF_IAUC_CONF"
    ),
    "suv": MapKind(("DCM", "126401", "SUVbw"), "g/mL", "SUVBW"),
}

#: FCF habitat parameter (``fcf.json`` "parameter") -> the map it clusters.
FCF_PARAMETERS = {"ADC": "adc", "iAUC60": "iauc60", "IAUC60": "iauc60"}


def map_kind(name: str) -> MapKind:
    """The :class:`MapKind` of a map name; unknown names are a user error."""
    kind = MAPS.get(name)
    if kind is None:
        raise PrimageInputError(f"unknown map name {name!r}; known maps: {', '.join(sorted(MAPS))}")
    return kind


# --- radiomic feature codes ---------------------------------------------------------------

#: IBSI identifiers of the IBSI features (project IBSI tag -> IBSI code), from the IBSI
#: reference manual; pyradiomics names map to these tags in :mod:`primage.radiomics.ibsi`.
IBSI_CODES = {
    "morph_volume": ("RNU0", "Volume of Mesh"),
    "morph_vol_approx": ("YEKZ", "Volume from Voxel Summation"),
    "morph_area_mesh": ("C0JK", "Surface Area of Mesh"),
    "morph_av": ("2PR5", "Surface to Volume Ratio"),
    "morph_sphericity": ("QCFX", "Sphericity"),
    "morph_diam": ("L0JK", "Maximum 3D Diameter of a Mesh"),
    "morph_pca_maj_axis": ("TDIC", "Major Axis in 3D Length"),
    "morph_pca_min_axis": ("P9VJ", "Minor Axis in 3D Length"),
    "morph_pca_least_axis": ("7J51", "Least Axis in 3D Length"),
    "morph_pca_elongation": ("Q3CK", "Elongation"),
    "morph_pca_flatness": ("N17B", "Flatness"),
    "stat_mean": ("Q4LE", "Mean"),
    "stat_var": ("ECT3", "Variance"),
    "stat_skew": ("KE2A", "Skewness"),
    "stat_median": ("Y12H", "Median"),
    "stat_min": ("1GSF", "Minimum"),
    "stat_p10": ("QG58", "10th percentile"),
    "stat_p90": ("8DWT", "90th percentile"),
    "stat_max": ("84IY", "Maximum"),
    "stat_iqr": ("SALO", "Interquartile range"),
    "stat_range": ("2OJQ", "Range"),
    "stat_mad": ("4FUA", "Mean absolute deviation"),
    "stat_rmad": ("1128", "Robust mean absolute deviation"),
    "stat_energy": ("N8CA", "Energy"),
    "stat_rms": ("5ZWQ", "Root mean square"),
    "ih_entropy": ("TLU2", "Intensity Histogram Entropy"),
    "ih_uniformity": ("BJ5W", "Intensity Histogram Uniformity"),
    "cm_joint_max": ("GYBY", "Joint Maximum of GLCM"),
    "cm_joint_avg": ("60VM", "Joint Average of GLCM"),
    "cm_joint_var": ("UR99", "Joint Variance of GLCM"),
    "cm_joint_entr": ("TU9B", "Joint Entropy of GLCM"),
    "cm_diff_avg": ("TF7R", "Difference Average of GLCM"),
    "cm_diff_var": ("D3YU", "Difference Variance of GLCM"),
    "cm_diff_entr": ("NTRS", "Difference Entropy of GLCM"),
    "cm_sum_avg": ("ZGXS", "Sum Average of GLCM"),
    "cm_sum_entr": ("P6QZ", "Sum Entropy of GLCM"),
    "cm_energy": ("8ZQL", "Angular Second Moment of GLCM"),
    "cm_contrast": ("ACUI", "Contrast of GLCM"),
    "cm_inv_diff": ("IB1Z", "Inverse Difference of GLCM"),
    "cm_inv_diff_norm": ("NDRX", "Normalized Inverse Difference of GLCM"),
    "cm_inv_diff_mom": ("WF0Z", "Inverse Difference Moment of GLCM"),
    "cm_inv_diff_mom_norm": ("1QCO", "Normalized Inverse Difference Moment of GLCM"),
    "cm_inv_var": ("E8JP", "Inverse Variance of GLCM"),
    "cm_corr": ("NI2N", "Correlation of GLCM"),
    "cm_auto_corr": ("QWB0", "Autocorrelation of GLCM"),
    "cm_clust_shade": ("7NFM", "Cluster Shade of GLCM"),
    "cm_clust_prom": ("AE86", "Cluster Prominence of GLCM"),
    "cm_info_corr1": ("R8DG", "First Measure of Information Correlation of GLCM"),
    "cm_info_corr2": ("JN9H", "Second Measure of Information Correlation of GLCM"),
    "szm_sze": ("5QRC", "Small Zone Emphasis"),
    "szm_lze": ("48P8", "Large Zone Emphasis"),
    "szm_zs_entr": ("GU8N", "Zone Size Entropy"),
    "rlm_sre": ("22OV", "Short Runs Emphasis"),
    "rlm_lre": ("W4KF", "Long Runs Emphasis"),
    "rlm_rl_entr": ("HJ9O", "Run Entropy"),
    "ngt_coarseness": ("QCDE", "Coarseness of NGTDM"),
    "ngt_contrast": ("65HE", "Contrast of NGTDM"),
    "ngt_busyness": ("NQ30", "Busyness of NGTDM"),
    "ngt_complexity": ("HDEZ", "Complexity of NGTDM"),
    "ngt_strength": ("1X9X", "Strength of NGTDM"),
}
#: Units of the shape features (pyradiomics name without image type); others: see
#: :func:`feature_code`.
_SHAPE_UNITS = {
    "MeshVolume": "mm3",
    "VoxelVolume": "mm3",
    "SurfaceArea": "mm2",
    "SurfaceVolumeRatio": "/mm",
    "Maximum3DDiameter": "mm",
    "Maximum2DDiameterSlice": "mm",
    "Maximum2DDiameterColumn": "mm",
    "Maximum2DDiameterRow": "mm",
    "MajorAxisLength": "mm",
    "MinorAxisLength": "mm",
    "LeastAxisLength": "mm",
}
#: First-order features in the image's own intensity unit.
_INTENSITY_FEATURES = {
    "Mean", "Median", "Minimum", "Maximum", "10Percentile", "90Percentile",
    "InterquartileRange", "Range", "MeanAbsoluteDeviation", "RobustMeanAbsoluteDeviation",
    "RootMeanSquared",
}  # fmt: skip


def _pyradiomics_to_ibsi() -> dict[str, str]:
    from primage.radiomics.ibsi import FEATURES, KNOWN_DIFFERENCES

    table = {}
    for name, tag, mode in FEATURES:
        if mode != "3D":
            continue
        base = re.sub(r"_(3D_avg|3D)$", "", tag)
        # A feature pyradiomics defines differently (kurtosis, PCA axes) is not IBSI's.
        if base in KNOWN_DIFFERENCES or base not in IBSI_CODES:
            continue
        table.setdefault(name, base)
    return table


def feature_code(name: str, *, intensity_unit: str = "[arb'U]") -> tuple:
    """Concept and UCUM unit key of a pyradiomics feature (e.g. ``original_firstorder_Mean``).

    IBSI code (scheme ``IBSI``) when the project's IBSI table maps the feature and
    pyradiomics computes it as IBSI defines it; otherwise a private code in scheme
    ``99PYRAD`` whose meaning is the pyradiomics name (its value: ``PYR`` + 13 hex digits of
    the SHA-256 of the name, since code values hold at most 16 characters).
    """
    tag = _pyradiomics_to_ibsi().get(name)
    short = name.split("_", 2)[-1]
    if short in _SHAPE_UNITS:
        unit = _SHAPE_UNITS[short]
    elif "_firstorder_" in name and short in _INTENSITY_FEATURES:
        unit = intensity_unit
    elif "_firstorder_" in name and short in ("Variance", "Energy", "TotalEnergy"):
        unit = "[arb'U]"
    else:
        unit = "1"
    if tag is not None:
        value, meaning = IBSI_CODES[tag]
        return _code(value, "IBSI", meaning), unit
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:13]
    return _code(f"PYR{digest}", PYRADIOMICS_SCHEME, name[:64]), unit


def unit_code(unit: str):
    """UCUM concept of a unit key of :data:`UNITS`."""
    code, meaning = UNITS[unit]
    return _code(code, "UCUM", meaning)


# --- the source series --------------------------------------------------------------------


@dataclass
class SourceSeries:
    """The referenced series: headers (no pixel data) and its voxel grid."""

    folder: Path
    datasets: list  # pydicom Datasets, one per file
    reference: sitk.Image  # UInt8 image on the series grid (values unused)
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    identity: list[str] = field(repr=False, default_factory=list)  # strings to remove

    @property
    def multi_frame(self) -> bool:
        return len(self.datasets) == 1 and int(self.datasets[0].get("NumberOfFrames") or 1) > 1


def _identity_strings(datasets) -> list[str]:
    found: set[str] = set()
    for ds in datasets[:1] + datasets[-1:]:
        for keyword in (
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "OtherPatientIDs",
            "PatientBirthName",
            "PatientMotherBirthName",
            "OtherPatientNames",
            "IssuerOfPatientID",
        ):
            value = ds.get(keyword)
            values = (
                list(value)
                if isinstance(value, (list, tuple)) or (type(value).__name__ == "MultiValue")
                else [value]
            )
            found.update(str(v).strip() for v in values if v is not None and str(v).strip())
        name = str(ds.get("PatientName") or "").strip()
        if name:
            found.add(name)
            found.update(part for part in re.split(r"[\^= ]+", name) if len(part) >= 3)
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def _series_grid(series) -> sitk.Image:
    """An empty UInt8 image on the voxel grid of a :class:`primage.dicom.series.Series`."""
    from primage.dicom.series import (
        LayoutProblem,
        check_slice_steps,
        cluster_positions,
        stack_geometry,
    )

    if series.problems:
        raise PrimageInputError(f"the source series cannot be used: {series.problems[0]}")
    try:
        positions = cluster_positions(series.frames)
        check = check_slice_steps(positions.distances, series.frames[0].slice_thickness)
        if not check.ok or check.spacing is None:
            raise LayoutProblem(check.message)
        geometry = stack_geometry([group[0] for group in positions.members], check.spacing)
    except LayoutProblem as problem:
        raise PrimageInputError(f"the source series has no regular voxel grid: {problem}") from None
    reference = sitk.Image([int(v) for v in geometry.size], sitk.sitkUInt8)
    reference.SetOrigin(geometry.origin)
    reference.SetSpacing(geometry.spacing)
    reference.SetDirection(geometry.direction)
    return reference


def read_source_series(
    folder: str | Path, *, series_uid: str | None = None, match: sitk.Image | None = None
) -> SourceSeries:
    """Headers and voxel grid of the image series in ``folder``: the only one, ``series_uid``,
    or the only one whose voxel grid is ``match``'s (a result image).

    The grid is the one ``primage dicom assemble`` writes: origin at the first slice along
    the slice normal, directions (row, column, normal), spacing in mm.
    """
    from primage.dicom.scan import find_files

    folder = Path(folder)
    if not folder.is_dir():
        raise PrimageInputError(f"source series folder does not exist: {folder}")
    return read_source_files(find_files(folder), series_uid=series_uid, match=match, where=folder)


def read_source_files(
    paths: Sequence[str | Path],
    *,
    series_uid: str | None = None,
    match: sitk.Image | None = None,
    where: Path | None = None,
) -> SourceSeries:
    """:func:`read_source_series` from a list of files (in Slicer:
    ``slicer.dicomDatabase.filesForSeries(uid)``)."""
    import pydicom

    from primage.dicom.headers import DicomFileProblem, read_header
    from primage.dicom.series import group_series

    paths = [Path(p) for p in paths]
    folder = where or (paths[0].parent if paths else Path("."))
    headers = []
    for path in paths:
        try:
            header = read_header(path)
        except DicomFileProblem:
            continue
        if header.has_pixels and header.frames:
            headers.append(header)
    groups = group_series(headers)
    if series_uid is not None:
        groups = [s for s in groups if s.series_uid == series_uid]
        if not groups:
            raise PrimageInputError(f"series {series_uid} is not in {folder}")
    if not groups:
        raise PrimageInputError(f"no DICOM image series found in {folder}")
    if len(groups) > 1 and match is not None:
        fitting = []
        for candidate in groups:
            try:
                grid = _series_grid(candidate)
            except PrimageInputError:
                continue
            if _same_grid(match, grid):
                fitting.append(candidate)
        if len(fitting) == 1:
            groups = fitting
        elif not fitting:
            raise PrimageInputError(
                f"none of the {len(groups)} image series in {folder} has the voxel grid of the "
                "results; give the series they were computed on"
            )
        else:
            groups = fitting
    if len(groups) > 1:
        raise PrimageInputError(
            f"{folder} holds {len(groups)} image series"
            + (" on the results' grid" if match is not None else "")
            + "; give the one the results were computed on (--series-uid)"
        )
    series = groups[0]
    reference = _series_grid(series)
    multi = [h for h in series.headers if h.multi_frame]
    if multi and len(series.headers) > 1:
        raise PrimageInputError(
            "the source series mixes several multi-frame files; export needs one multi-frame "
            "file or single-frame files"
        )
    datasets = [pydicom.dcmread(h.path, stop_before_pixels=True) for h in series.headers]
    first = datasets[0]
    frame_of_reference = str(first.get("FrameOfReferenceUID") or "")
    if not frame_of_reference:
        raise PrimageInputError("the source series has no FrameOfReferenceUID")
    return SourceSeries(
        folder=folder,
        datasets=datasets,
        reference=reference,
        series_uid=series.series_uid,
        study_uid=series.study_uid,
        frame_of_reference_uid=frame_of_reference,
        modality=series.modality,
        identity=_identity_strings(datasets),
    )


# --- grids ----------------------------------------------------------------------------------


def _index_matrix(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetDirection(), float).reshape(3, 3) @ np.diag(image.GetSpacing())


def _same_grid(image: sitk.Image, reference: sitk.Image, *, subgrid: bool = False) -> bool:
    """Whether every voxel centre of ``image`` is a voxel centre of ``reference`` (all of them
    unless ``subgrid``), within :data:`GRID_TOLERANCE` of a voxel, in any index order."""
    if image.GetDimension() != 3:
        return False
    ref_matrix = _index_matrix(reference)
    inverse = np.linalg.inv(ref_matrix)
    relation = inverse @ _index_matrix(image)
    offset = inverse @ (np.asarray(image.GetOrigin()) - np.asarray(reference.GetOrigin()))
    permutation = np.round(relation)
    size = np.asarray(image.GetSize())
    ref_size = np.asarray(reference.GetSize())
    ok = (
        np.max(np.abs(relation - permutation)) <= GRID_TOLERANCE
        and np.all(np.abs(permutation).sum(axis=0) == 1)
        and np.all(np.abs(permutation).sum(axis=1) == 1)
        and np.max(np.abs(offset - np.round(offset))) <= GRID_TOLERANCE
    )
    if ok:
        corners = np.array(np.meshgrid(*[(0, n - 1) for n in size], indexing="ij")).reshape(3, -1)
        mapped = permutation @ corners + np.round(offset)[:, None]
        covered = np.abs(permutation) @ size
        ok = (
            (np.all(covered <= ref_size) if subgrid else np.array_equal(covered, ref_size))
            and mapped.min() >= 0
            and np.all(mapped.max(axis=1) <= ref_size - 1)
        )
    return bool(ok)


def onto_series_grid(
    image: sitk.Image, reference: sitk.Image, *, role: str, subgrid: bool = False
) -> sitk.Image:
    """``image`` on ``reference``'s grid, re-indexed without interpolation.

    Accepts an image whose voxel centres are the reference's voxel centres (within
    :data:`GRID_TOLERANCE` of a voxel), whatever its index order (axes swapped or flipped);
    with ``subgrid`` also a part of that grid (voxels outside it become 0). Anything else
    is a user error: results must be on the series grid.
    """
    if image.GetDimension() != 3:
        raise PrimageInputError(f"{role} must be a 3D image, not {image.GetDimension()}D")
    ok = _same_grid(image, reference, subgrid=subgrid)
    if not ok:
        raise PrimageInputError(
            f"{role} is not on the source series' voxel grid (size {tuple(image.GetSize())} vs "
            f"{tuple(reference.GetSize())}, spacing "
            f"{tuple(round(s, 4) for s in image.GetSpacing())} vs "
            f"{tuple(round(s, 4) for s in reference.GetSpacing())} mm, origin "
            f"{tuple(round(o, 2) for o in image.GetOrigin())} vs "
            f"{tuple(round(o, 2) for o in reference.GetOrigin())}); resample it onto the "
            "series first"
        )
    # Every output voxel centre coincides with an input voxel centre: nearest neighbour
    # copies values exactly.
    return sitk.Resample(
        image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, image.GetPixelID()
    )


def _volume(array: np.ndarray, reference: sitk.Image, frame_of_reference_uid: str, channels=None):
    """A highdicom Volume: ``array`` (slice, row, column[, channel]) on ``reference``'s grid
    (LPS)."""
    import highdicom as hd

    direction = np.asarray(reference.GetDirection(), float).reshape(3, 3)
    spacing = reference.GetSpacing()
    affine = np.eye(4)
    # highdicom indexes (slice, row, column); SimpleITK's array order is (z, y, x).
    affine[:3, 0] = direction[:, 2] * spacing[2]
    affine[:3, 1] = direction[:, 1] * spacing[1]
    affine[:3, 2] = direction[:, 0] * spacing[0]
    affine[:3, 3] = reference.GetOrigin()
    return hd.Volume(
        array, affine, "PATIENT", frame_of_reference_uid=frame_of_reference_uid, channels=channels
    )


def volume_image(volume) -> sitk.Image:
    """A highdicom Volume (slice, row, column) as a SimpleITK image (x = column, LPS)."""
    affine = np.asarray(volume.affine, float)
    columns = [affine[:3, 2], affine[:3, 1], affine[:3, 0]]
    spacing = [float(np.linalg.norm(c)) for c in columns]
    direction = np.column_stack([c / s for c, s in zip(columns, spacing, strict=True)])
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(spacing)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    return image


# --- identity -------------------------------------------------------------------------------

#: Attributes removed from every exported object (identify the patient or staff).
_REMOVED = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthTime",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "IssuerOfPatientID",
    "PatientComments",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "PerformingPhysicianName",
    "OperatorsName",
    "RequestingPhysician",
    "ReferringPhysicianIdentificationSequence",
)
_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "DA", "DT", "AE"}
#: Largest value length of the short text VRs (characters).
_MAX_LENGTH = {"SH": 16, "CS": 16, "AE": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}


def check_pseudonym(pseudonym: str, source: SourceSeries | None = None) -> str:
    """A pseudonym usable as PatientID / PatientName (not the source's own identity)."""
    from primage.dicom.pseudonym import PSEUDONYM_PATTERN

    pseudonym = (pseudonym or "").strip()
    if not PSEUDONYM_PATTERN.fullmatch(pseudonym):
        raise PrimageInputError(
            "the pseudonym must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    if source is not None and any(
        pseudonym.lower() == s.lower() or s.lower() in pseudonym.lower() for s in source.identity
    ):
        raise PrimageInputError("the pseudonym contains the source patient's name or ID")
    return pseudonym


def pseudonymise(dataset, pseudonym: str, identity: Sequence[str]) -> None:
    """Give ``dataset`` the pseudonym as identity and remove the source identity (in place).

    PatientName and PatientID become the pseudonym; birth date, accession number and
    referring physician are emptied; :data:`_REMOVED` attributes are deleted; any other text
    value containing an identity string gets the pseudonym instead (e.g. a StudyID
    built from the patient ID). Raises ``RuntimeError`` if an identity string survives.
    """
    dataset.PatientName = f"{pseudonym}^"  # family name only (one PN component)
    dataset.PatientID = pseudonym
    for keyword in ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"):
        if keyword in dataset:
            setattr(dataset, keyword, "")
    for keyword in _REMOVED:
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = "PRIMAGE pseudonym; source identity removed"
    patterns = [re.compile(re.escape(s), re.IGNORECASE) for s in identity]

    def clean(ds) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    clean(item)
            elif element.VR in _TEXT_VRS and element.value not in (None, ""):
                values = element.value if element.VM > 1 else [element.value]
                cleaned = [str(v) for v in values]
                for pattern in patterns:
                    cleaned = [pattern.sub(pseudonym, v) for v in cleaned]
                if cleaned != [str(v) for v in values]:
                    limit = _MAX_LENGTH.get(element.VR)
                    if element.VR in ("DA", "DT") or (
                        limit is not None and any(len(v) > limit for v in cleaned)
                    ):
                        element.value = ""  # a value that cannot hold the pseudonym: emptied
                    else:
                        element.value = cleaned if element.VM > 1 else cleaned[0]

    clean(dataset)
    leftover = _identity_left(dataset, identity)
    if leftover:
        raise RuntimeError(f"identity left in the exported object ({leftover})")


def _identity_left(dataset, identity: Sequence[str]) -> str | None:
    lowered = [s.lower() for s in identity]
    for element in dataset.iterall():
        if element.VR in _TEXT_VRS and element.value not in (None, ""):
            text = str(element.value).lower()
            if any(s in text for s in lowered):
                return element.keyword or str(element.tag)
    return None


# --- objects --------------------------------------------------------------------------------


@dataclass
class Segment:
    """One segment: the label value in the label image, its name and coded meaning."""

    label: int
    name: str
    category: tuple[str, str, str] = ("SCT", "49755003", "Morphologically Abnormal Structure")
    type: tuple[str, str, str] = ("SCT", "108369006", "Tumor")
    algorithm: str = "AUTOMATIC"  # MANUAL, SEMIAUTOMATIC or AUTOMATIC
    color: tuple[float, float, float] | None = None  # RGB 0..1 (recommended display colour)


def _uid() -> str:
    import highdicom as hd

    return str(hd.UID())


def _common(pseudonym: str, source: SourceSeries, *, series_number: int) -> dict:
    return dict(
        series_instance_uid=_uid(),
        series_number=series_number,
        sop_instance_uid=_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL,
        software_versions=__version__,
        device_serial_number="1",
    )


def segmentation_dataset(
    source: SourceSeries,
    labels: sitk.Image,
    segments: Sequence[Segment],
    *,
    pseudonym: str,
    series_number: int = SERIES_NUMBERS["seg"],
    description: str = "PRIMAGE segmentation",
):
    """A binary DICOM SEG of ``labels`` (on the series grid): one segment per entry of
    ``segments`` (voxels equal to its ``label``), numbered 1.. in that order."""
    labels = onto_series_grid(labels, source.reference, role=description)
    array = sitk.GetArrayFromImage(labels)
    masks = [(segment, array == segment.label) for segment in segments]
    return segmentation_from_masks(
        source, masks, pseudonym=pseudonym, series_number=series_number, description=description
    )


def segmentation_from_masks(
    source: SourceSeries,
    masks: Sequence[tuple[Segment, np.ndarray]],
    *,
    pseudonym: str,
    series_number: int = SERIES_NUMBERS["seg"],
    description: str = "PRIMAGE segmentation",
):
    """A binary DICOM SEG of (segment, boolean array on the series grid, numpy z-y-x) pairs;
    segments may overlap. Segment numbers are 1.. in the given order."""
    import highdicom as hd

    if not masks:
        raise PrimageInputError(f"{description}: no segments to export")
    shape = tuple(reversed(source.reference.GetSize()))
    stacked = np.zeros((*shape, len(masks)), np.uint8)
    descriptions = []
    for number, (segment, inside) in enumerate(masks, start=1):
        inside = np.asarray(inside, bool)
        if inside.shape != shape:
            raise PrimageInputError(f"{description}: segment {segment.name!r} is not on the grid")
        if not inside.any():
            raise PrimageInputError(
                f"{description}: segment {segment.name!r} (label {segment.label}) is empty"
            )
        stacked[..., number - 1] = inside
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment.name[:64],
                segmented_property_category=_code(
                    segment.category[1], segment.category[0], segment.category[2]
                ),
                segmented_property_type=_code(segment.type[1], segment.type[0], segment.type[2]),
                algorithm_type=segment.algorithm,
                algorithm_identification=None
                if segment.algorithm == "MANUAL"
                else hd.AlgorithmIdentificationSequence(
                    name="PRIMAGE",
                    version=__version__,
                    family=_code("110001", "DCM", "Image Processing"),
                ),
                display_color=None
                if segment.color is None
                else hd.color.CIELabColor.from_rgb(*(255.0 * c for c in segment.color)),
            )
        )
    volume = _volume(
        stacked,
        source.reference,
        source.frame_of_reference_uid,
        channels={"SegmentNumber": list(range(1, len(masks) + 1))},
    )
    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=volume,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_description=description[:64],
        content_label="PRIMAGE",
        content_description=description[:64],
        **_common(pseudonym, source, series_number=series_number),
    )
    pseudonymise(seg, pseudonym, source.identity)
    return seg


def parametric_map_dataset(
    source: SourceSeries,
    image: sitk.Image,
    name: str,
    *,
    pseudonym: str,
    series_number: int = SERIES_NUMBERS["pm"],
):
    """A float32 Parametric Map of map ``name`` (a key of :data:`MAPS`) on the series grid.

    Values are stored as they are (float32, NaN kept); the real-world value mapping is the
    identity (slope 1, intercept 0) with the map's coded quantity and UCUM unit.
    """
    import highdicom as hd

    kind = map_kind(name)
    image = onto_series_grid(image, source.reference, role=f"map {name}")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        raise PrimageInputError(f"map {name} has no finite value")
    low, high = float(finite.min()), float(finite.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=kind.label,
        lut_explanation=f"{kind.quantity[2]} ({UNITS[kind.unit][0]})"[:64],
        unit=kind.unit_code(),
        value_range=(low, high),
        slope=1,
        intercept=0,
        quantity_definition=kind.quantity_code(),
    )
    centre = 0.5 * (low + high)
    width = max(high - low, 1e-12)
    pm = hd.pm.ParametricMap(
        source_images=source.datasets,
        pixel_array=_volume(array, source.reference, source.frame_of_reference_uid),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=centre, window_width=width)],
        series_description=f"PRIMAGE {kind.label} ({UNITS[kind.unit][0]})"[:64],
        content_label=re.sub(r"[^A-Z0-9_ ]", "_", kind.label.upper())[:16],
        content_description=kind.quantity[2][:64],
        **_common(pseudonym, source, series_number=series_number),
    )
    pseudonymise(pm, pseudonym, source.identity)
    return pm


@dataclass
class Measurement:
    """One numeric value of the report: concept, value, unit key (:data:`UNITS`)."""

    concept: object  # highdicom CodedConcept
    value: float
    unit: str
    derivation: object | None = None  # e.g. SCT Mean / Median
    map_uid: str | None = None  # SOP instance UID of the Parametric Map it was measured on
    method: object | None = None  # e.g. DCM "Sum of segmented voxel method for volume"


@dataclass
class MeasurementGroup:
    """Values of one segment of a SEG (TID 1411 volumetric ROI group)."""

    tracking_id: str
    segmentation: object  # the SEG dataset
    segment_number: int
    measurements: list[Measurement]
    finding: tuple[str, str, str] = ("SCT", "108369006", "Tumor")
    algorithm: tuple[str, str] | None = None  # (name, version)


def measurement_report_dataset(
    source: SourceSeries,
    groups: Sequence[MeasurementGroup],
    *,
    pseudonym: str,
    evidence: Sequence = (),
    series_number: int = SERIES_NUMBERS["sr"],
):
    """A Comprehensive 3D SR holding a TID 1500 Measurement Report of ``groups``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=_uid(), name=MODEL, manufacturer_name=MANUFACTURER
            ),
        )
    )
    procedure = {
        "CT": ("25045-6", "CT unspecified body region"),
        "PT": ("44136-0", "PET unspecified body region"),
    }.get(source.modality, ("25056-3", "MRI unspecified body region"))
    items = []
    for group in groups:
        seg = group.segmentation
        measurements = [
            hd.sr.Measurement(
                name=m.concept,
                value=float(m.value),
                unit=unit_code(m.unit),
                derivation=m.derivation,
                method=m.method,
                # The value was measured on this Parametric Map (TID 300 "Source of
                # Measurement"); an RWV-map reference would name the wrong SOP class.
                referenced_images=None
                if m.map_uid is None
                else [hd.sr.SourceImageForMeasurement(PARAMETRIC_MAP_STORAGE, m.map_uid)],
            )
            for m in group.measurements
            if np.isfinite(m.value)
        ]
        items.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_uid(), identifier=group.tracking_id[:64]
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=group.segment_number,
                    source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid),
                ),
                finding_type=_code(group.finding[1], group.finding[0], group.finding[2]),
                algorithm_id=None
                if group.algorithm is None
                else hd.sr.AlgorithmIdentification(
                    name=group.algorithm[0], version=group.algorithm[1]
                ),
                measurements=measurements,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=_code(procedure[0], "LN", procedure[1]),
        imaging_measurements=items,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source.datasets, *evidence],
        content=report,
        series_instance_uid=_uid(),
        series_number=series_number,
        sop_instance_uid=_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description="PRIMAGE measurements",
        manufacturer_model_name=MODEL,
        software_versions=__version__,
        device_serial_number="1",
        is_complete=True,
    )
    pseudonymise(sr, pseudonym, source.identity)
    return sr


def encode(dataset, *, deflate: bool = False) -> bytes:
    """The DICOM file bytes of ``dataset`` (preamble and file meta included).

    ``deflate`` writes the Deflated Explicit VR Little Endian transfer syntax (zlib over the
    whole data set, lossless): binary SEG frames shrink about 15x, float maps about 2x, but
    not every archive accepts it.
    """
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    if deflate:
        if dataset.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
            raise ValueError("only Explicit VR Little Endian objects are deflated")
        dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


# --- reading back -----------------------------------------------------------------------------


def read_back(data: bytes):
    """The highdicom object of an encoded SEG, Parametric Map or SR."""
    import highdicom as hd
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data))
    modality = dataset.Modality
    if modality == "SEG":
        return hd.seg.Segmentation.from_dataset(dataset)
    if modality == "SR":
        return hd.sr.Comprehensive3DSR.from_dataset(dataset)
    return hd.pm.ParametricMap.from_dataset(dataset)


def object_image(obj) -> sitk.Image:
    """Voxels of a read-back SEG (label = segment number) or Parametric Map (real values)."""
    if obj.Modality == "SEG":
        volume = obj.get_volume(combine_segments=True, skip_overlap_checks=True)
    else:
        volume = obj.get_volume()
    return volume_image(volume)


def _agreement(obj, expected: np.ndarray, reference: sitk.Image) -> dict:
    image = onto_series_grid(object_image(obj), reference, role="read-back object", subgrid=True)
    values = sitk.GetArrayFromImage(image)
    both = np.isfinite(values) & np.isfinite(expected)
    same_nan = bool(np.array_equal(np.isnan(values), np.isnan(expected)))
    difference = float(np.max(np.abs(values[both] - expected[both]))) if both.any() else 0.0
    return {"max_abs_difference": difference, "same_nan": same_nan}


# --- the whole export -------------------------------------------------------------------------


@dataclass
class ExportedObject:
    """One written object and its figures."""

    kind: str  # "seg", "pm" or "sr"
    name: str
    path: Path
    sop_instance_uid: str
    bytes: int
    build_s: float
    write_s: float
    read_back_s: float
    agreement: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "file": self.path.name,
            "sop_instance_uid": self.sop_instance_uid,
            "bytes": self.bytes,
            "build_s": round(self.build_s, 4),
            "write_s": round(self.write_s, 4),
            "read_back_s": round(self.read_back_s, 4),
            **({"agreement": self.agreement} if self.agreement else {}),
        }


@dataclass
class ExportResult:
    """What :func:`export_results` wrote (objects and the manifest ``dicom_export.json``)."""

    objects: list[ExportedObject]
    manifest: Path
    measurements: int


def _stem(path: str | Path) -> str:
    from primage.io import image_stem

    return image_stem(path)


def _as_image(value, role: str) -> sitk.Image:
    from primage.io import read_image

    if isinstance(value, sitk.Image):
        return value
    return read_image(value, dimension=3, role=role)


def _label_segments(
    array: np.ndarray, names: Mapping[int, str] | None, default: str, algorithm: str
) -> list[Segment]:
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise PrimageInputError(f"{default} must hold integer labels")
    labels = [int(v) for v in np.unique(array) if v != 0]
    if not labels:
        raise PrimageInputError(f"{default} is empty (no voxel with a label)")
    if min(labels) < 0:
        raise PrimageInputError(f"{default} holds negative labels")
    names = dict(names or {})
    return [
        Segment(
            label,
            names.get(label) or (default if len(labels) == 1 else f"{default} {label}"),
            algorithm=algorithm,
        )
        for label in labels
    ]


def _roi_measurements(
    maps: Mapping[str, tuple[np.ndarray, str]], inside: np.ndarray
) -> list[Measurement]:
    from pydicom.sr.codedict import codes

    from primage.kinetics.dwi import roi_statistics

    out = []
    for name, (array, uid) in maps.items():
        values = array[inside].astype(float)
        # Maps hold 0 where no fit was possible: such voxels are not values.
        stats = roi_statistics(values[np.isfinite(values) & (values != 0)])
        kind = MAPS[name]
        for key, derivation in (
            ("mean", codes.SCT.Mean),
            ("median", codes.SCT.Median),
            ("sd", codes.SCT.StandardDeviation),
        ):
            if key in stats:
                out.append(
                    Measurement(kind.quantity_code(), stats[key], kind.unit, derivation, uid)
                )
    return out


def _volume_measurement(voxels: int, reference: sitk.Image) -> Measurement:
    from pydicom.sr.codedict import codes

    return Measurement(
        codes.SCT.Volume,
        voxels * float(np.prod(reference.GetSpacing())),
        "mm3",
        method=codes.DCM.SumOfSegmentedVoxelMethodForVolume,
    )


def _habitat_table(path: Path) -> dict | None:
    """``fcf_<p>.json`` beside ``fcf_<p>_habitats.nii.gz`` (the pipeline's layout), if any."""
    import json

    stem = _stem(path)
    sidecar = path.with_name(stem.removesuffix("_habitats") + ".json")
    if not sidecar.is_file():
        return None
    try:
        table = json.loads(sidecar.read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise PrimageInputError(f"habitat table {sidecar} cannot be read: {error}") from None
    return table if isinstance(table, dict) and "habitats" in table else None


_FEATURE_NAME = re.compile(
    r"^[A-Za-z0-9.-]+_(shape|shape2D|firstorder|glcm|glrlm|glszm|gldm|ngtdm)_\w+$"
)


def read_feature_table(path: str | Path) -> list[tuple[str, str, dict[str, float]]]:
    """(image, label, {feature: value}) rows of a radiomics CSV (``primage radiomics``)."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"feature table does not exist: {path}")
    rows = []
    with path.open(newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            values = {}
            for key, text in row.items():
                if key and _FEATURE_NAME.match(key):
                    try:
                        values[key] = float(text)
                    except (TypeError, ValueError):
                        continue
            if values:
                rows.append((row.get("image") or _stem(path), str(row.get("label") or "1"), values))
    if not rows:
        raise PrimageInputError(f"feature table {path} holds no pyradiomics feature values")
    return rows


def _intensity_unit(image_name: str) -> str:
    if image_name in MAPS:
        return MAPS[image_name].unit
    return {"ct": "[hnsf'U]", "pet": "g/mL"}.get(image_name, "[arb'U]")


def case_results(case_folder: str | Path) -> dict:
    """The results of one pipeline case folder (``OUT/<case>``), as :func:`export_results`
    arguments: ``segment/tumour.nii.gz``, the maps and FCF habitats of ``kinetics/`` (file
    names of :data:`MAPS`, ``*_habitats.nii.gz``) and the tables of ``radiomics/``."""
    folder = Path(case_folder)
    if not folder.is_dir():
        raise PrimageInputError(f"case folder does not exist: {folder}")
    tumour = folder / "segment" / "tumour.nii.gz"
    kinetics = sorted((folder / "kinetics").glob("*.nii.gz"))
    found = {
        "tumour": tumour if tumour.is_file() else None,
        "habitats": [p for p in kinetics if _stem(p).endswith("_habitats")],
        "maps": {_stem(p): p for p in kinetics if _stem(p) in MAPS},
        "features": [
            p
            for p in sorted((folder / "radiomics").glob("*.csv"))
            if not p.name.endswith(".diagnostics.csv")
        ],
    }
    if found["tumour"] is None and not found["habitats"] and not found["maps"]:
        raise PrimageInputError(
            f"{folder} holds no pipeline results (segment/tumour.nii.gz, kinetics/*.nii.gz)"
        )
    if found["tumour"] is None:
        found["features"] = []  # features need the tumour segment they describe
    return found


def export_results(
    source_folder: str | Path,
    output_folder: str | Path,
    *,
    pseudonym: str | Callable[[str], str | None],
    series_uid: str | None = None,
    tumour: str | Path | sitk.Image | None = None,
    tumour_names: Mapping[int, str] | None = None,
    tumour_algorithm: str = "SEMIAUTOMATIC",
    habitats: Sequence[str | Path] = (),
    maps: Mapping[str, str | Path | sitk.Image] | None = None,
    features: Sequence[str | Path] = (),
    verify: bool = True,
    deflate: bool = False,
) -> ExportResult:
    """Write SEG (tumour, each habitat image), Parametric Maps and the SR into ``output_folder``.

    ``maps`` maps a name of :data:`MAPS` to a NIfTI path or image; ``tumour_algorithm`` says
    how the tumour was drawn (DICOM SEG algorithm type); ``habitats`` are FCF
    habitat label images (``fcf_adc_habitats.nii.gz``, with ``fcf_adc.json`` beside it for
    the habitat values); ``features`` radiomics CSV tables. Every input must be on the
    source series' grid; the source is the folder's only series, ``series_uid``, or the only
    one on the results' grid. ``pseudonym`` is the pseudonym or a function of the source's
    PatientID (a :class:`primage.dicom.pseudonym.Pseudonymiser`). The SR (tumour volume, ROI mean/median/SD of each map, habitat
    values, features) is written when a tumour is given. With ``verify`` each object is read
    back and its voxels compared with the input (figures in ``dicom_export.json``);
    ``deflate`` writes the lossless deflated transfer syntax (see :func:`encode`).
    """
    from primage.io import check_outputs_not_inputs, write_bytes, write_json

    maps = dict(maps or {})
    for name in maps:
        map_kind(name)
    if tumour is None and not habitats and not maps:
        raise PrimageInputError("nothing to export: give a tumour mask, habitats or maps")
    if features and tumour is None:
        raise PrimageInputError("radiomic features need the tumour mask they were measured in")
    first = tumour if tumour is not None else (next(iter(maps.values()), None) or habitats[0])
    # Only used to pick the series when the folder holds several.
    match = _as_image(first, "result image") if series_uid is None else None
    source = read_source_series(source_folder, series_uid=series_uid, match=match)
    if callable(pseudonym):
        pseudonym = pseudonym(str(source.datasets[0].get("PatientID") or ""))
        if pseudonym is None:
            raise PrimageInputError("the pseudonym map has no entry for the source series' patient")
    pseudonym = check_pseudonym(pseudonym, source)
    output = Path(output_folder)
    if (
        output.resolve() == source.folder.resolve()
        or source.folder.resolve() in output.resolve().parents
    ):
        raise PrimageInputError("write the DICOM objects outside the source series folder")
    inputs = [
        p for p in [tumour, *habitats, *maps.values(), *features] if isinstance(p, (str, Path))
    ]
    reference = source.reference
    objects: list[ExportedObject] = []
    written_objects: list = []  # SEG and PM datasets: the SR's evidence

    def emit(kind: str, name: str, build, expected: np.ndarray | None) -> object:
        start = time.perf_counter()
        with warnings.catch_warnings():
            # pydicom's remarks on the source's own values (over-long SH, one-part names).
            warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
            dataset = build()
        built = time.perf_counter()
        data = encode(dataset, deflate=deflate)
        path = output / f"{kind}_{name}.dcm"
        check_outputs_not_inputs([path], inputs)
        write_bytes(data, path)
        written = time.perf_counter()
        agreement = {}
        if verify:
            obj = read_back(data)
            if expected is not None:
                agreement = _agreement(obj, expected, reference)
                if agreement["max_abs_difference"] != 0 or not agreement["same_nan"]:
                    raise RuntimeError(f"{path.name} read back differs from its input: {agreement}")
        done = time.perf_counter()
        written_objects.append(dataset)
        objects.append(
            ExportedObject(
                kind, name, path, str(dataset.SOPInstanceUID), len(data),
                built - start, written - built, done - written, agreement,
            )
        )  # fmt: skip
        return dataset

    groups: list[MeasurementGroup] = []
    tumour_seg, tumour_segments, tumour_array = None, [], None
    if tumour is not None:
        image = onto_series_grid(_as_image(tumour, "tumour mask"), reference, role="tumour mask")
        tumour_array = sitk.GetArrayFromImage(image)
        if tumour_algorithm not in ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"):
            raise PrimageInputError(
                f"tumour algorithm must be MANUAL, SEMIAUTOMATIC or AUTOMATIC, not {tumour_algorithm!r}"
            )
        tumour_segments = _label_segments(tumour_array, tumour_names, "tumour", tumour_algorithm)
        expected = np.zeros(tumour_array.shape, np.float64)
        for number, segment in enumerate(tumour_segments, start=1):
            expected[tumour_array == segment.label] = number
        tumour_seg = emit(
            "seg",
            "tumour",
            lambda: segmentation_dataset(
                source, image, tumour_segments, pseudonym=pseudonym, description="PRIMAGE tumour"
            ),
            expected,
        )

    map_arrays: dict[str, tuple[np.ndarray, str]] = {}
    for offset, (name, value) in enumerate(sorted(maps.items())):
        image = onto_series_grid(_as_image(value, f"map {name}"), reference, role=f"map {name}")
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        pm = emit(
            "pm",
            name,
            lambda image=image, name=name, offset=offset: parametric_map_dataset(
                source,
                image,
                name,
                pseudonym=pseudonym,
                series_number=SERIES_NUMBERS["pm"] + offset,
            ),  # fmt: skip
            array.astype(np.float64),
        )
        map_arrays[name] = (array, str(pm.SOPInstanceUID))

    if tumour_seg is not None:
        for number, segment in enumerate(tumour_segments, start=1):
            inside = tumour_array == segment.label
            groups.append(
                MeasurementGroup(
                    segment.name,
                    tumour_seg,
                    number,
                    [
                        _volume_measurement(int(inside.sum()), reference),
                        *_roi_measurements(map_arrays, inside),
                    ],
                )
            )

    for offset, path in enumerate(habitats, start=1):
        path = Path(path)
        name = _stem(path)
        image = onto_series_grid(
            _as_image(path, f"habitats {name}"), reference, role=f"habitats {name}"
        )
        array = sitk.GetArrayFromImage(image)
        table = _habitat_table(path)
        values = {int(h["label"]): h for h in (table or {}).get("habitats", [])}
        parameter = FCF_PARAMETERS.get(str((table or {}).get("parameter")))
        title = name.removesuffix("_habitats").replace("_", " ").upper()
        segments = _label_segments(array, None, f"{title} habitat", "AUTOMATIC")
        for segment in segments:
            segment.name = f"{title} habitat {segment.label}"
            if segment.label in values and parameter:
                unit = UNITS[MAPS[parameter].unit][0]
                segment.name += f" ({values[segment.label]['value']:.4g} {unit})"
        expected = np.zeros(array.shape, np.float64)
        for number, segment in enumerate(segments, start=1):
            expected[array == segment.label] = number
        seg = emit(
            "seg",
            name,
            lambda image=image, segments=segments, name=name, offset=offset: segmentation_dataset(
                source,
                image,
                segments,
                pseudonym=pseudonym,
                series_number=SERIES_NUMBERS["seg"] + offset,
                description=f"PRIMAGE {name}",
            ),  # fmt: skip
            expected,
        )
        for number, segment in enumerate(segments, start=1):
            inside = array == segment.label
            found = [_volume_measurement(int(inside.sum()), reference)]
            row = values.get(segment.label)
            if row is not None and parameter:
                kind = MAPS[parameter]
                found.append(Measurement(kind.quantity_code(), float(row["value"]), kind.unit))
            groups.append(
                MeasurementGroup(
                    segment.name,
                    seg,
                    number,
                    found,
                    algorithm=("PRIMAGE Fit-Cluster-Fit", __version__),
                )
            )

    if features:
        by_label = {str(segment.label): n for n, segment in enumerate(tumour_segments, start=1)}
        for path in features:
            for image_name, label, values in read_feature_table(path):
                number = by_label.get(label, 1)
                unit = _intensity_unit(image_name)
                found = []
                for feature, value in values.items():
                    concept, feature_unit = feature_code(feature, intensity_unit=unit)
                    found.append(Measurement(concept, value, feature_unit))
                groups.append(
                    MeasurementGroup(
                        f"{tumour_segments[number - 1].name} radiomics {image_name}",
                        tumour_seg,
                        number,
                        found,
                        algorithm=("pyradiomics", _pyradiomics_version()),
                    )
                )

    measurements = sum(len(g.measurements) for g in groups)
    if groups:
        emit(
            "sr",
            "measurements",
            lambda: measurement_report_dataset(
                source, groups, pseudonym=pseudonym, evidence=list(written_objects)
            ),
            None,
        )
    manifest = write_json(
        {
            "primage_version": __version__,
            "source_series_uid": source.series_uid,
            "grid": {
                "size": list(reference.GetSize()),
                "spacing_mm": list(reference.GetSpacing()),
                "origin_mm": list(reference.GetOrigin()),
                "direction": list(reference.GetDirection()),
            },
            "measurements": measurements,
            "objects": [o.record() for o in objects],
        },
        output / "dicom_export.json",
    )
    return ExportResult(objects, manifest, measurements)


def _pyradiomics_version() -> str:
    try:
        from importlib.metadata import version

        return version("pyradiomics")
    except Exception:  # noqa: BLE001 - not installed: the table still came from it
        return "unknown"
