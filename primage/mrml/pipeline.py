"""The "process this case" action: the cohort pipeline's chain on the current scene's nodes.

The nodes of one case (scalar volumes by role; DWI / DCE as sequence nodes or a
diffusion-weighted volume node; the tumour as a segmentation or labelmap) are written as a
case folder, run through :func:`primage.pipeline.case.run_case` (the same code, and so the
same results, as ``primage pipeline run``), and every result comes back as nodes:
preprocessed / registered volumes (4D series as sequence nodes), the registration
transforms (with their QC as node attributes), the tumour segmentation, the kinetic maps,
the Fit-Cluster-Fit habitats, a registration QC table and a features table. With an
``output_folder`` the case outputs are kept there and a second run reuses what is up to
date; without one they go to a temporary folder that is removed afterwards.

:func:`start_case_job` runs the same chain in a separate process (job kind
``pipeline_case``, :mod:`primage.pipeline.jobs`) so that a GUI stays responsive: the nodes
are exported here, the job reports progress and can be cancelled, and
:meth:`CaseJob.finish` imports the results as the same nodes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import read_image, series_to_volumes, write_image, write_text
from primage.mrml.jobs import BackgroundJob, new_job_folder
from primage.mrml.kinetics import HABITAT_COLORS, _add_maps, series_from_node
from primage.mrml.registration import QC_ATTRIBUTE
from primage.mrml.segmentations import mask_from_node, segmentation_from_label_image
from primage.mrml.sequences import VolumeSeries, sequence_node_from_series
from primage.mrml.tables import table_node_from_rows
from primage.mrml.transforms import transform_node_from_sitk
from primage.mrml.volumes import node_label, sitk_from_volume_node, volume_node_from_sitk
from primage.progress import ProgressCallback

#: Node attribute holding the case summary (JSON) on the QC table node.
SUMMARY_ATTRIBUTE = "PRIMAGE.pipeline"
#: Index name and unit of the 4D roles' sequence nodes.
INDEX = {"dwi": ("b", "s/mm2"), "dce": ("time", "s")}


@dataclass
class PipelineNodes:
    """The nodes one "process this case" run created, and the case summary."""

    volumes: dict[str, Any] = field(default_factory=dict)
    sequences: dict[str, Any] = field(default_factory=dict)
    transforms: dict[str, Any] = field(default_factory=dict)
    maps: dict[str, Any] = field(default_factory=dict)
    segmentation: Any = None
    habitats: dict[str, Any] = field(default_factory=dict)
    qc_table: Any = None
    features_table: Any = None
    summary: dict = field(default_factory=dict)


def _export(volume_nodes: Mapping[str, Any], reference_node, tumour_node, segment, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    for role, node in volume_nodes.items():
        if node is None:
            continue
        if role in INDEX:
            image, values, _ = series_from_node(node)
            write_image(image, folder / f"{role}.nii.gz")
            extra = "dwi.bval" if role == "dwi" else "dce.times"
            write_text(" ".join(f"{v:.10g}" for v in values) + "\n", folder / extra)
        else:
            write_image(sitk_from_volume_node(node, role=role), folder / f"{role}.nii.gz")
    if tumour_node is not None:
        mask = mask_from_node(tumour_node, reference_node, segment or None)
        write_image(mask, folder / "tumour.nii.gz")


def _numbers(row: Mapping[str, str]) -> dict[str, Any]:
    from primage.radiomics.tables import to_float

    result = {}
    for key, text in row.items():
        number = to_float(text) if key not in ("image", "label", "error") else None
        result[key] = number if number is not None else text
    return result


def _prepare(
    volume_nodes: Mapping[str, Any], config: str | Path | dict | None, case_name: str
) -> tuple[dict, dict[str, Any], Any]:
    """Check the input before anything is written: the validated configuration, the selected
    nodes by role and the scene (raises :class:`PrimageInputError`)."""
    from primage.pipeline.cohort import check_case_id
    from primage.pipeline.config import load_config, validate_config

    config = validate_config(config) if isinstance(config, dict) else load_config(config)
    # A case made of scene nodes has no DICOM source in case.json: the modules export with
    # their own Export to DICOM (primage.mrml.dicom_export) instead of the pipeline's step.
    config["export"]["dicom"] = False
    check_case_id(case_name)
    reference = config["reference"]
    volume_nodes = {role: node for role, node in volume_nodes.items() if node is not None}
    if reference not in volume_nodes:
        raise PrimageInputError(
            f"select the reference volume ({reference}): every other series is registered onto it"
        )
    scene = volume_nodes[reference].GetScene()
    if scene is None:
        raise PrimageInputError(f"{node_label(volume_nodes[reference])} is not in a scene")
    return config, volume_nodes, scene


def _export_case(
    volume_nodes: Mapping[str, Any],
    tumour_node,
    tumour_segment,
    config: dict,
    work: Path,
    name: str,
) -> Path:
    """Write the nodes as the case folder ``work/input/<name>``; returns it."""
    case_folder = work / "input" / name
    reference_node = volume_nodes[config["reference"]]
    _export(volume_nodes, reference_node, tumour_node, tumour_segment, case_folder)
    return case_folder


def process_case_nodes(
    volume_nodes: Mapping[str, Any],
    tumour_node=None,
    *,
    tumour_segment: str | None = None,
    config: str | Path | dict | None = None,
    case_name: str = "case",
    output_folder: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> PipelineNodes:
    """Run the configured chain on one case's nodes, in this process; every result becomes a
    node (:func:`start_case_job` runs the same in a separate process).

    ``volume_nodes`` maps roles (``t2w``, ``t1w``, ``ct``, ``pet``: scalar volumes;
    ``dwi``, ``dce``: sequence or diffusion-weighted volume nodes) to nodes; the
    configuration's reference role must be among them. ``tumour_node`` (segmentation or
    labelmap; ``tumour_segment``: one segment) is on the reference volume. ``config`` is a
    YAML file, a dict or None (defaults). Raises :class:`PrimageInputError` with the failed
    step's message when the case fails; no node is added then.
    """
    from primage.pipeline.jobs import run_case_folder

    config, volume_nodes, scene = _prepare(volume_nodes, config, case_name)
    temporary = None
    if output_folder is None:
        temporary = tempfile.TemporaryDirectory(prefix="primage-case-")
        output_folder = temporary.name
    try:
        work = Path(output_folder)
        case_folder = _export_case(
            volume_nodes, tumour_node, tumour_segment, config, work, case_name
        )
        summary = run_case_folder(case_folder, config, work / "output", progress=progress)
        return _import(scene, work / "output" / case_name, case_folder, summary, config, case_name)
    finally:
        if temporary is not None:
            temporary.cleanup()


class CaseJob(BackgroundJob):
    """The "process this case" job in a separate process; :meth:`finish` imports the results
    as nodes (the same :class:`PipelineNodes` as :func:`process_case_nodes`)."""

    label = "pipeline"

    def __init__(self, folder: Path, spec: dict[str, Any], scene, name: str):
        super().__init__("pipeline_case", folder, spec, scene)
        self.name = name

    def finish(self) -> PipelineNodes:
        """The result nodes of a finished job (raises with the job's message when it failed,
        e.g. "segment failed: ..."; no node is added then). The job's temporary folder is
        removed; an ``output_folder`` given to :func:`start_case_job` is kept."""
        try:
            self.finished_status()
            summary = json.loads(Path(self.spec["summary_output"]).read_text(encoding="utf-8"))
            return _import(
                self.scene,
                Path(self.spec["output"]) / self.name,
                Path(self.spec["case_folder"]),
                summary,
                self.spec["config"],
                self.name,
            )
        finally:
            self.cleanup()


def start_case_job(
    volume_nodes: Mapping[str, Any],
    tumour_node=None,
    *,
    tumour_segment: str | None = None,
    config: str | Path | dict | None = None,
    case_name: str = "case",
    output_folder: str | Path | None = None,
) -> CaseJob:
    """Start "process this case" in a separate process (arguments as :func:`process_case_nodes`).

    The input is checked and the nodes are exported here, so bad input is refused at once,
    before any process starts; poll, wait for or cancel the returned job and take the nodes
    from :meth:`CaseJob.finish`. The job's files live in a temporary folder, removed by
    ``finish`` and ``cancel``; with an ``output_folder`` the case folder and outputs go there
    instead and are kept (a second run reuses what is up to date).
    """
    config, volume_nodes, scene = _prepare(volume_nodes, config, case_name)
    with new_job_folder("case") as folder:
        work = folder if output_folder is None else Path(output_folder)
        case_folder = _export_case(
            volume_nodes, tumour_node, tumour_segment, config, work, case_name
        )
        spec = {
            "case_folder": str(case_folder.resolve()),
            "config": config,
            "output": str((work / "output").resolve()),
            "summary_output": str(folder / "summary.json"),
        }
        return CaseJob(folder, spec, scene, case_name)


def _import(
    scene, folder: Path, case_folder: Path, summary: dict, config: dict, name: str
) -> PipelineNodes:
    from primage.pipeline.config import find_step_image
    from primage.radiomics.tables import read_csv
    from primage.registration.core import read_transform

    nodes = PipelineNodes(summary=summary)
    reference = config["reference"]
    reference_node = None
    for role in summary["series"]:
        registered = find_step_image(folder / "register", role)
        path = registered or find_step_image(folder / "preprocess", role)
        if path is None:
            continue
        what = "registered" if path == registered else "preprocessed"
        if role in INDEX:
            image = read_image(path, dimension=4, role=role)
            values_file = case_folder / ("dwi.bval" if role == "dwi" else "dce.times")
            values = [float(v) for v in values_file.read_text().split()]
            series = VolumeSeries(series_to_volumes(image), values, *INDEX[role])
            nodes.sequences[role] = sequence_node_from_series(
                series, scene, f"{name} {role} {what}"
            )
        else:
            node = volume_node_from_sitk(
                read_image(path, role=role), scene, f"{name} {role} {what}"
            )
            nodes.volumes[role] = node
            if role == reference:
                reference_node = node
    for tfm in sorted((folder / "register").glob(f"*_to_{reference}.tfm")):
        role = tfm.name[: -len(f"_to_{reference}.tfm")]
        node = transform_node_from_sitk(
            read_transform(tfm), scene, name=f"{name} {role} to {reference}"
        )
        qc = folder / "register" / f"{role}_qc.json"
        if qc.is_file():
            node.SetAttribute(QC_ATTRIBUTE, qc.read_text(encoding="utf-8"))
        nodes.transforms[role] = node
    mask = folder / "segment" / "tumour.nii.gz"
    if mask.is_file():
        nodes.segmentation = segmentation_from_label_image(
            read_image(mask, role="tumour"), scene, {1: "tumour"}, {1: (0.9, 0.2, 0.2)},
            reference_volume_node=reference_node, name=f"{name} tumour",
        )  # fmt: skip
    kinetics = folder / "kinetics"
    maps = {
        key: read_image(kinetics / f"{key}.nii.gz", role=key)
        for key in ("adc", "iauc60", "ktrans", "ve", "kep")
        if (kinetics / f"{key}.nii.gz").is_file()
    }
    if maps:
        nodes.maps = _add_maps(scene, maps, name, json.dumps(summary["kinetics"]), {})
    for parameter in ("adc", "iauc60"):
        habitats = kinetics / f"fcf_{parameter}_habitats.nii.gz"
        if habitats.is_file():
            labels = read_image(habitats, role="habitats")
            present = sorted({int(v) for v in sitk.GetArrayViewFromImage(labels).ravel()} - {0})
            names = {label: f"Habitat {label} ({parameter})" for label in present}
            colours = {
                label: HABITAT_COLORS[(label - 1) % len(HABITAT_COLORS)] for label in present
            }
            nodes.habitats[parameter] = segmentation_from_label_image(
                labels, scene, names, colours, reference_volume_node=reference_node,
                name=f"{name} FCF {parameter} habitats",
            )  # fmt: skip
    qc_rows = [
        {"series": role, **{k: v for k, v in qc.items() if v is not None}}
        for role, qc in summary["registration"].items()
    ]
    qc_rows.insert(0, {"series": reference, "preset": "reference", "verdict": summary["status"]})
    nodes.qc_table = table_node_from_rows(qc_rows, scene, name=f"{name} registration QC")
    nodes.qc_table.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(summary))
    rows = []
    for csv_file in sorted((folder / "radiomics").glob("*.csv")):
        if csv_file.name.endswith(".diagnostics.csv"):
            continue
        rows += [_numbers(row) for row in read_csv(csv_file, role="features")[1]]
    if rows:
        nodes.features_table = table_node_from_rows(rows, scene, name=f"{name} features")
    return nodes
