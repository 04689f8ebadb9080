"""Kinetic maps on MRML nodes: the logic behind the PrimageKinetics module.

Inputs: a DWI as a sequence node (b-values from its index values) or a diffusion-weighted
volume node (b-values from the node); a DCE series as a sequence node (times from its
index values, s); the tumour (and the AIF vessel) as a segmentation node + segment, or a
labelmap. The b-values / times can be overridden (the module shows them for editing).

Outputs are new nodes in the input's scene, created only after the whole computation
succeeded (a cancelled or failed run adds nothing): parameter maps as scalar volumes with
a colour table and window/level, habitats as a segmentation (one segment per habitat),
results as a table node and the ROI / habitat signal with its fitted curve as a plot chart.
Long fits report progress through ``progress(fraction, message)``; raising
:class:`KineticsCancelled` from it stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import slicer
from vtk.util import numpy_support

from primage.errors import PrimageInputError
from primage.io import volumes_to_series
from primage.kinetics.series import KineticsCancelled, reference_volume
from primage.kinetics.values import format_values, parse_values
from primage.mrml.geometry import sitk_geometry_from_ijk_to_ras
from primage.mrml.plots import plot_chart_from_curves
from primage.mrml.segmentations import mask_from_node, segmentation_from_label_image
from primage.mrml.sequences import series_from_sequence_node
from primage.mrml.tables import table_node_from_rows
from primage.mrml.volumes import ijk_to_ras_matrix, node_label, volume_node_from_sitk

__all__ = [
    "KineticsCancelled",
    "KineticsNodes",
    "adc_from_nodes",
    "dce_from_nodes",
    "fcf_from_nodes",
    "index_values_text",
    "ivim_from_nodes",
    "parse_index_values",
    "series_from_node",
    "tofts_from_nodes",
]

#: Display of each map: (Slicer colour node ID, fixed window range or None for percentiles).
MAP_DISPLAY = {
    "adc": ("vtkMRMLColorTableNodeFileViridis.txt", (0.0, 3e-3)),
    "adc_se": ("vtkMRMLColorTableNodeFileInferno.txt", None),
    "ivim_d": ("vtkMRMLColorTableNodeFileViridis.txt", (0.0, 3e-3)),
    "ivim_f": ("vtkMRMLColorTableNodeFileInferno.txt", (0.0, 0.4)),
    "ivim_dstar": ("vtkMRMLColorTableNodeFileInferno.txt", None),
    "iauc60": ("vtkMRMLColorTableNodeFileInferno.txt", None),
    "ktrans": ("vtkMRMLColorTableNodeFileInferno.txt", None),
    "ve": ("vtkMRMLColorTableNodeFileViridis.txt", (0.0, 1.0)),
    "vp": ("vtkMRMLColorTableNodeFileViridis.txt", (0.0, 0.2)),
    "confidence": ("vtkMRMLColorTableNodeFileViridis.txt", (0.0, 1.0)),
}
DEFAULT_COLOR = "vtkMRMLColorTableNodeFileInferno.txt"
HABITAT_COLORS = [(0.27, 0.51, 0.71), (0.84, 0.15, 0.16), (0.17, 0.63, 0.17), (1.0, 0.5, 0.05)]
#: Node attribute recording the analysis behind an output node (JSON text).
RECORD_ATTRIBUTE = "PRIMAGE.kinetics"


@dataclass
class KineticsNodes:
    """The nodes created by one analysis (names -> nodes) and the JSON-ready summary."""

    volumes: dict = field(default_factory=dict)
    table: object = None
    chart: object = None
    segmentation: object = None
    summary: dict = field(default_factory=dict)


# --- inputs -----------------------------------------------------------------------------


def _dwi_volume_node_series(node) -> tuple[sitk.Image, np.ndarray]:
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise PrimageInputError(f"DWI {node_label(node)} has no image data")
    components = image_data.GetNumberOfScalarComponents()
    if node.GetNumberOfGradients() != components:
        raise PrimageInputError(
            f"DWI {node_label(node)} has {components} volumes but "
            f"{node.GetNumberOfGradients()} gradients/b-values"
        )
    dims = image_data.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    array = scalars.reshape(tuple(reversed(dims)) + (components,))
    origin, spacing, direction = sitk_geometry_from_ijk_to_ras(ijk_to_ras_matrix(node))
    volumes = []
    for component in range(components):
        volume = sitk.GetImageFromArray(np.array(array[..., component], copy=True))
        volume.SetOrigin(origin)
        volume.SetSpacing(spacing)
        volume.SetDirection(direction)
        volumes.append(volume)
    b_values = np.array([node.GetBValue(i) for i in range(components)], dtype=float)
    return volumes_to_series(volumes), b_values


def series_from_node(node) -> tuple[sitk.Image, np.ndarray, str]:
    """A 4D image, its index values (b in s/mm^2 or times in s) and the index name."""
    if node is None:
        raise PrimageInputError("no series node given")
    if node.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
        image, values = _dwi_volume_node_series(node)
        return image, values, "b"
    if node.IsA("vtkMRMLSequenceNode"):
        series = series_from_sequence_node(node)
        if len(series.volumes) < 2:
            raise PrimageInputError(f"sequence {node_label(node)} has fewer than two volumes")
        return series.to_image4d(), series.values, series.name
    raise PrimageInputError(
        f"{node_label(node)} is neither a sequence node nor a diffusion-weighted volume node"
    )


def index_values_text(node) -> str:
    """The b-values or times of a series node as editable text ("0, 50, 400")."""
    if node is None:
        return ""
    if node.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
        return format_values([node.GetBValue(i) for i in range(node.GetNumberOfGradients())])
    if node.IsA("vtkMRMLSequenceNode"):
        values = []
        for index in range(node.GetNumberOfDataNodes()):
            try:
                values.append(float(node.GetNthIndexValue(index)))
            except ValueError:
                return ""
        return format_values(values)
    return ""


def parse_index_values(text: str, *, role: str) -> np.ndarray:
    """Numbers from the module's text field (commas, spaces or a file path)."""
    if not str(text).strip():
        raise PrimageInputError(f"no {role} given")
    return parse_values(str(text), role=role)


def _values(node, text: str | None, role: str) -> tuple[sitk.Image, np.ndarray]:
    image, values, _name = series_from_node(node)
    if text is not None and str(text).strip():
        values = parse_index_values(text, role=role)
    return image, values


def _mask(mask_node, segment, image4d: sitk.Image):
    if mask_node is None:
        return None
    reference = volume_node_from_sitk(
        reference_volume(image4d), None, node=slicer.vtkMRMLScalarVolumeNode()
    )
    return mask_from_node(mask_node, reference, segment or None)


# --- outputs ----------------------------------------------------------------------------


def _display(node, name: str, image: sitk.Image) -> None:
    display = node.GetDisplayNode()
    if display is None:
        return
    color, window = MAP_DISPLAY.get(name, (DEFAULT_COLOR, None))
    display.SetAndObserveColorNodeID(color)
    if window is None:
        values = sitk.GetArrayFromImage(image)
        values = values[np.isfinite(values) & (values != 0)]
        window = (0.0, float(np.percentile(values, 99))) if values.size else (0.0, 1.0)
        if window[1] <= window[0]:
            window = (window[0], window[0] + 1.0)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(*window)


def _scene(node):
    scene = node.GetScene() if node is not None else None
    if scene is None:
        raise PrimageInputError(f"input {node_label(node)} is not in a scene")
    return scene


def _add_maps(scene, maps: dict, prefix: str, record: str, units: dict) -> dict:
    nodes = {}
    for name, image in maps.items():
        node = volume_node_from_sitk(image, scene, name=f"{prefix} {name}")
        _display(node, name, image)
        node.SetAttribute(RECORD_ATTRIBUTE, record)
        if name in units:
            node.SetAttribute("PRIMAGE.unit", str(units[name]))
        nodes[name] = node
    return nodes


def _json(summary: dict) -> str:
    import json

    def default(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        return str(value)

    return json.dumps(summary, default=default)


def _roi_rows(roi: dict, units: dict) -> list[dict]:
    rows = []
    for name, stats in roi.items():
        if not isinstance(stats, dict) or "voxels" not in stats:
            continue
        rows.append({"parameter": name, "unit": str(units.get(name, "")), **stats})
    return rows


# --- analyses -----------------------------------------------------------------------------


def adc_from_nodes(
    dwi_node,
    *,
    b_values: str | None = None,
    mask_node=None,
    mask_segment: str | None = None,
    bmin: float | None = None,
    method: str = "nlls",
    average: str = "none",
    progress=None,
) -> KineticsNodes:
    """ADC, ADC SE, S0 and R^2 volumes; with a mask a ROI table and the ROI-mean signal chart."""
    from primage.kinetics.dwi import adc_maps

    scene = _scene(dwi_node)
    image, values = _values(dwi_node, b_values, "b-values")
    mask = _mask(mask_node, mask_segment, image)
    result = adc_maps(
        image, values, mask, bmin=bmin or None, method=method, average=average, progress=progress
    )
    units = result.summary["maps"]
    output = KineticsNodes(summary=result.summary)
    output.volumes = _add_maps(scene, result.maps, dwi_node.GetName(), _json(result.summary), units)
    if mask is not None:
        rows = _roi_rows(result.summary["roi"], {"adc": units["adc"], "adc_se": units["adc_se"]})
        fit = result.summary["roi"]["mean_signal_fit"]
        rows.append(
            {
                "parameter": "adc (ROI-mean signal fit)",
                "unit": units["adc"],
                "mean": fit["adc"],
                "sd": fit["adc_se"],
                "voxels": rows[0]["voxels"],
            }
        )
        output.table = table_node_from_rows(rows, scene, name=f"{dwi_node.GetName()} ADC table")
        curve = result.curve
        output.chart = plot_chart_from_curves(
            {
                "ROI mean signal": (curve["b"], curve["signal"]),
                "fit": (curve["b_fit"], curve["fit"]),
            },
            scene,
            f"{dwi_node.GetName()} ADC fit",
            "b (s/mm^2)",
            "signal",
            points_only=["ROI mean signal"],
        )
    return output


def ivim_from_nodes(
    dwi_node,
    *,
    b_values: str | None = None,
    mask_node=None,
    mask_segment: str | None = None,
    b_threshold: float = 200.0,
    progress=None,
) -> KineticsNodes:
    """IVIM D, f, D* and S0 volumes (segmented fit); with a mask a table and chart."""
    from primage.kinetics.dwi import ivim_maps

    scene = _scene(dwi_node)
    image, values = _values(dwi_node, b_values, "b-values")
    mask = _mask(mask_node, mask_segment, image)
    result = ivim_maps(image, values, mask, b_threshold=b_threshold, progress=progress)
    units = result.summary["maps"]
    output = KineticsNodes(summary=result.summary)
    output.volumes = _add_maps(scene, result.maps, dwi_node.GetName(), _json(result.summary), units)
    if mask is not None:
        output.table = table_node_from_rows(
            _roi_rows(result.summary["roi"], units), scene, name=f"{dwi_node.GetName()} IVIM table"
        )
        curve = result.curve
        output.chart = plot_chart_from_curves(
            {
                "ROI mean signal": (curve["b"], curve["signal"]),
                "fit": (curve["b_fit"], curve["fit"]),
            },
            scene,
            f"{dwi_node.GetName()} IVIM fit",
            "b (s/mm^2)",
            "signal",
            points_only=["ROI mean signal"],
        )
    return output


def dce_from_nodes(
    dce_node,
    *,
    times: str | None = None,
    mask_node=None,
    mask_segment: str | None = None,
    baseline_frames: int | None = None,
    progress=None,
) -> KineticsNodes:
    """Semi-quantitative DCE volumes (iAUC60, TTP, ...); with a mask a table and the
    relative-enhancement curve of the mask mean."""
    from primage.kinetics.dce import dce_maps

    scene = _scene(dce_node)
    image, values = _values(dce_node, times, "frame times")
    mask = _mask(mask_node, mask_segment, image)
    result = dce_maps(
        image, values, mask, baseline_frames=baseline_frames or None, progress=progress
    )
    units = result.summary["units"]
    output = KineticsNodes(summary=result.summary)
    output.volumes = _add_maps(scene, result.maps, dce_node.GetName(), _json(result.summary), units)
    if mask is not None:
        output.table = table_node_from_rows(
            _roi_rows(result.summary["roi"], units), scene, name=f"{dce_node.GetName()} DCE table"
        )
        frames = result.summary["baseline_frames"]
        signal = result.curve["signal"]
        enhancement = signal / signal[:frames].mean() - 1.0
        output.chart = plot_chart_from_curves(
            {"mask mean": (result.curve["times"], enhancement)},
            scene,
            f"{dce_node.GetName()} enhancement",
            "time (s)",
            "relative enhancement",
        )
    return output


def tofts_from_nodes(
    dce_node,
    *,
    times: str | None = None,
    mask_node=None,
    mask_segment: str | None = None,
    aif: str = "parker",
    aif_node=None,
    aif_segment: str | None = None,
    extended: bool = False,
    signal_is_concentration: bool = False,
    t10_tissue_s: float = 1.3,
    t10_blood_s: float = 1.6,
    flip_angle_deg: float = 15.0,
    repetition_time_s: float = 0.004,
    relaxivity: float = 4.5,
    haematocrit: float = 0.42,
    baseline_frames: int | None = None,
    progress=None,
) -> KineticsNodes:
    """Ktrans, kep, ve (and vp) volumes of a DCE series; AIF "parker" (delay fitted) or
    "segment" (mean curve inside ``aif_node``/``aif_segment``, whole blood). A signal
    series is first converted to concentration (SPGR) with ``t10_tissue_s``; the AIF
    segment's mean signal with ``t10_blood_s``."""
    from primage.kinetics.aif import aif_from_blood_curve
    from primage.kinetics.dce import concentration_image, prepare_dce, spgr_concentration
    from primage.kinetics.series import load_series
    from primage.kinetics.tofts import tofts_maps

    scene = _scene(dce_node)
    image, values = _values(dce_node, times, "frame times")
    mask = _mask(mask_node, mask_segment, image)
    if aif not in ("parker", "segment"):
        raise PrimageInputError(f"unknown AIF {aif!r}: use parker or segment")
    if aif == "segment" and aif_node is None:
        raise PrimageInputError("choose the segmentation (and segment) of the AIF vessel")
    _, values = prepare_dce(image, values)
    frames = baseline_frames or None
    if signal_is_concentration:
        concentration = sitk.Cast(image, sitk.sitkFloat32)
    else:
        concentration, frames = concentration_image(
            image,
            values,
            t10_s=t10_tissue_s,
            flip_angle_deg=flip_angle_deg,
            repetition_time_s=repetition_time_s,
            relaxivity=relaxivity,
            baseline_frames=frames,
        )
    arterial = "parker"
    if aif == "segment":
        vessel_mask = _mask(aif_node, aif_segment, image)
        if signal_is_concentration:
            blood = load_series(
                concentration, vessel_mask, role="AIF", allow_zero_frames=True
            ).mean_signal()
        else:
            signal = load_series(image, vessel_mask, role="AIF").mean_signal()
            blood = spgr_concentration(
                signal[None, :],
                frames,
                t10_s=t10_blood_s,
                flip_angle_deg=flip_angle_deg,
                repetition_time_s=repetition_time_s,
                relaxivity=relaxivity,
            )[0]
            blood = np.nan_to_num(blood, nan=0.0)
        arterial = aif_from_blood_curve(values, blood, haematocrit, source="segment")
    result = tofts_maps(
        concentration,
        values,
        arterial,
        mask,
        extended=extended,
        haematocrit=haematocrit,
        progress=progress,
    )
    units = result.summary["units"]
    output = KineticsNodes(summary=result.summary)
    output.volumes = _add_maps(scene, result.maps, dce_node.GetName(), _json(result.summary), units)
    rows = [
        {"parameter": f"{k} (mean-curve fit)", "unit": units.get(k, ""), "mean": v}
        for k, v in result.summary["mean_curve_fit"].items()
    ]
    if mask is not None:
        rows = _roi_rows(result.summary["roi"], units) + rows
    output.table = table_node_from_rows(rows, scene, name=f"{dce_node.GetName()} Tofts table")
    curve = result.curve
    output.chart = plot_chart_from_curves(
        {
            "mean concentration": (curve["times"], curve["concentration"]),
            "Tofts fit": (curve["times_fit"], curve["fit"]),
        },
        scene,
        f"{dce_node.GetName()} Tofts fit",
        "time (s)",
        "concentration (mM)",
        points_only=["mean concentration"],
    )
    return output


def fcf_from_nodes(
    series_node,
    parameter: str,
    *,
    values: str | None = None,
    mask_node=None,
    mask_segment: str | None = None,
    clusters: int = 2,
    confidence: float = 0.70,
    baseline_frames: int | None = None,
    progress=None,
) -> KineticsNodes:
    """Fit-Cluster-Fit habitats of ADC (a DWI node) or iAUC60 (a DCE node) in the tumour.

    Creates a habitat segmentation (one segment per habitat, excluded voxels in none), a
    confidence volume, the habitat table and a chart of each habitat's mean signal with
    its fitted curve (iAUC60: relative enhancement).
    """
    from primage.kinetics.fcf import fcf_maps

    if mask_node is None:
        raise PrimageInputError("Fit-Cluster-Fit needs the tumour segmentation")
    scene = _scene(series_node)
    role = "b-values" if parameter == "adc" else "frame times"
    image, index_values = _values(series_node, values, role)
    mask = _mask(mask_node, mask_segment, image)
    result = fcf_maps(
        image,
        index_values,
        mask,
        parameter=parameter,
        clusters=clusters,
        confidence=confidence,
        baseline_frames=baseline_frames or None,
        progress=progress,
    )
    record = result.result.record()
    name = series_node.GetName()
    output = KineticsNodes(summary=record)
    output.volumes = _add_maps(
        scene, {"confidence": result.confidence}, f"{name} FCF {parameter}", _json(record), {}
    )
    title = record["parameter"]
    names = {
        h.label: f"Habitat {h.label} ({title} {'low' if h.label == 1 else 'higher'})"
        for h in result.result.habitats
    }
    names[len(names)] = names[len(names)].replace("higher", "highest")
    colors = {label: HABITAT_COLORS[(label - 1) % len(HABITAT_COLORS)] for label in names}
    output.segmentation = segmentation_from_label_image(
        result.habitats,
        scene,
        names,
        colors,
        reference_volume_node=output.volumes["confidence"],
        name=f"{name} FCF {parameter} habitats",
    )
    output.table = table_node_from_rows(
        [h.record() for h in result.result.habitats], scene, name=f"{name} FCF {parameter} table"
    )
    curves, points = {}, []
    for habitat in result.result.habitats:
        if habitat.voxels_kept == 0:
            continue
        measured = f"habitat {habitat.label} mean"
        curves[measured] = (habitat.x, habitat.signal)
        points.append(measured)
        if parameter == "adc":
            curves[f"habitat {habitat.label} fit"] = (habitat.x_fit, habitat.fit)
    x_label = "b (s/mm^2)" if parameter == "adc" else "time (s)"
    y_label = "signal" if parameter == "adc" else "relative enhancement"
    if curves:
        output.chart = plot_chart_from_curves(
            curves,
            scene,
            f"{name} FCF {parameter}",
            x_label,
            y_label,
            points_only=points if parameter == "adc" else (),
        )
    return output
