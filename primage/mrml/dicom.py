"""DICOM series <-> MRML: role proposals for loaded nodes, and series assembled into nodes.

Slicer's DICOM database is Qt/CTK and lives only in the application, so these functions
take what it gives as plain arguments: a callable ``files_for_series(series_uid)`` (in
Slicer ``slicer.dicomDatabase.filesForSeries``) or lists of file paths. Slicer's DICOM
plugins give each loaded series a subject hierarchy item whose ``"DICOM"`` UID is the
SeriesInstanceUID; that is how a node is traced back to its files.

From Slicer's Python console, after loading a study in the DICOM module::

    from primage.mrml.dicom import propose_scene_roles, nodes_by_role
    rows = propose_scene_roles(slicer.mrmlScene, slicer.dicomDatabase.filesForSeries)
    nodes_by_role(slicer.mrmlScene)          # {"t2w": [node], "dwi": [...], ...}

or, to assemble a study's series with PRIMAGE's rules (b-values / times as sequence index
values, PET in SUVbw)::

    from primage.mrml.dicom import load_dicom_files
    db = slicer.dicomDatabase
    files = [f for s in db.seriesForStudy(studyUID) for f in db.filesForSeries(s)]
    nodes, skipped = load_dicom_files(slicer.mrmlScene, files)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import slicer

from primage.dicom.assemble import PixelProblem, mask_image, plan_images
from primage.dicom.inventory import valid_roles
from primage.dicom.masks import plan_masks
from primage.dicom.rtstruct import ContourProblem
from primage.dicom.scan import ROLE_AXIS, check_study, scan_files
from primage.dicom.seg_in import SegProblem
from primage.errors import PrimageInputError
from primage.io import series_to_volumes
from primage.mrml.segmentations import segmentation_from_label_image
from primage.mrml.sequences import VolumeSeries, sequence_node_from_series
from primage.mrml.volumes import node_label, volume_node_from_sitk

ROLE_ATTRIBUTE = "PRIMAGE.role"
RULE_ATTRIBUTE = "PRIMAGE.roleRule"
STATUS_ATTRIBUTE = "PRIMAGE.roleStatus"
#: Index name and unit of the sequence nodes of the 4D roles.
AXIS_INDEX = {"b": ("b", "s/mm2"), "time": ("time", "s")}
NODE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLSequenceNode")


def series_uid_of_node(node) -> str | None:
    """SeriesInstanceUID of a node loaded from DICOM (its subject hierarchy "DICOM" UID)."""
    scene = node.GetScene()
    if scene is None:
        return None
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(node) if hierarchy is not None else 0
    if not item:
        return None
    return hierarchy.GetItemUID(item, "DICOM") or None


def _dicom_nodes(scene) -> list:
    nodes = []
    for class_name in NODE_CLASSES:
        collection = scene.GetNodesByClass(class_name)
        for index in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(index)
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node in nodes:
                continue
            nodes.append(node)
    return nodes


def propose_node_roles(
    nodes: Iterable, files_for_series: Callable[[str], Iterable[str]]
) -> list[dict]:
    """Propose a role for each node loaded from DICOM; store it on the node.

    The files of all the nodes' series are scanned together, so series split per time
    point (DCE) are recognised as one acquisition. Each node gets the attributes
    ``PRIMAGE.role``, ``PRIMAGE.roleRule`` and ``PRIMAGE.roleStatus``; nodes without a
    DICOM series UID are left alone. Returns one row per node: node, series UID, role,
    rule, status, reason.
    """
    nodes = list(nodes)
    uids = {node.GetID(): series_uid_of_node(node) for node in nodes}
    files = []
    for uid in dict.fromkeys(u for u in uids.values() if u):
        files.extend(str(f) for f in (files_for_series(uid) or []))
    result = scan_files(files) if files else None
    by_uid = {info.uid: info for info in result.series} if result else {}
    rows = []
    for node in nodes:
        info = by_uid.get(uids[node.GetID()])
        if info is None:
            continue
        node.SetAttribute(ROLE_ATTRIBUTE, info.role)
        node.SetAttribute(RULE_ATTRIBUTE, info.rule)
        node.SetAttribute(STATUS_ATTRIBUTE, info.status)
        rows.append(
            {
                "node": node,
                "series_uid": info.uid,
                "role": info.role,
                "rule": info.rule,
                "status": info.status,
                "reason": info.reason,
            }
        )
    return rows


def propose_scene_roles(scene, files_for_series: Callable[[str], Iterable[str]]) -> list[dict]:
    """:func:`propose_node_roles` for every volume and sequence node of ``scene``."""
    return propose_node_roles(_dicom_nodes(scene), files_for_series)


def set_node_role(node, role: str) -> None:
    """Override a node's role (any role of the rule table, or ``skip``)."""
    if role not in valid_roles():
        raise PrimageInputError(f"unknown role {role!r}; use one of {', '.join(valid_roles())}")
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetAttribute(RULE_ATTRIBUTE, "set by the user")


def node_role(node) -> str | None:
    """The role stored on a node, or None."""
    return node.GetAttribute(ROLE_ATTRIBUTE) if node is not None else None


def nodes_by_role(scene) -> dict[str, list]:
    """``role -> nodes`` for every volume / sequence node that has a role."""
    found: dict[str, list] = {}
    for node in _dicom_nodes(scene):
        role = node_role(node)
        if role:
            found.setdefault(role, []).append(node)
    return found


def load_dicom_files(
    scene,
    files: Iterable[str],
    *,
    roles: dict[str, str] | None = None,
    tumour_pattern: str | None = None,
) -> tuple[dict[str, object], list[dict]]:
    """Assemble DICOM files into nodes with PRIMAGE's rules; returns (nodes, skipped).

    Each output of the case layout becomes a node named like its file (``t2w``, ``dwi``,
    ``dce``, ``pet``, ``t2w_2`` ...): a scalar volume, or for DWI / DCE a sequence node whose
    index values are the b-values (``b``, s/mm2) or frame times (``time``, s). PET holds
    SUVbw (g/ml). RT Structure Sets and SEG objects drawn on a loaded 3D image become
    segmentation nodes (``tumour_ct`` ...) with one segment per tumour ROI (named like the
    ROI, ``tumour_pattern`` as in ``primage dicom assemble --tumour-roi``), on that image's
    grid. ``roles`` (series UID -> role) overrides proposed roles. Series that cannot be
    assembled correctly are returned in ``skipped`` with the reason.
    """
    files = [str(f) for f in files]
    if not files:
        raise PrimageInputError("no DICOM files given")
    result = scan_files(files)
    if not result.series:
        raise PrimageInputError("none of the given files is a DICOM image series")
    nodes: dict[str, object] = {}
    skipped: list[dict] = []
    for number, infos in enumerate(result.studies.values(), start=1):
        for info in infos:
            if roles and info.uid in roles:
                info.role = roles[info.uid]
        prefix = "" if len(result.studies) == 1 else f"study{number} "
        plans = check_study(infos, tumour_pattern)
        for plan in plans:
            if plan.problem is None:
                try:
                    image, record = plan_images(plan)
                except PixelProblem as problem:
                    plan.problem = str(problem)
            if plan.problem is not None:
                skipped.append(
                    {
                        "role": plan.role,
                        "series_uids": [m.uid for m in plan.members],
                        "reason": plan.problem,
                    }
                )
                continue
            name = prefix + plan.name
            if plan.layout.axis == "none":
                node = volume_node_from_sitk(image, scene, name=name)
            else:
                index_name, unit = AXIS_INDEX[ROLE_AXIS[plan.role]]
                series = VolumeSeries(
                    series_to_volumes(image), plan.layout.values, index_name, unit
                )
                node = sequence_node_from_series(series, scene, name=name)
            node.SetAttribute(ROLE_ATTRIBUTE, plan.role)
            node.SetAttribute(RULE_ATTRIBUTE, plan.members[0].rule)
            if plan.suv is not None:
                node.SetAttribute("PRIMAGE.units", "SUVbw g/ml")
            if record.get("b_value_source"):
                node.SetAttribute("PRIMAGE.bValueSource", record["b_value_source"])
            if record.get("time_source"):
                node.SetAttribute("PRIMAGE.timeSource", record["time_source"])
            nodes[name] = node
        for mask in plan_masks(infos, plans, tumour_pattern):
            problem = mask.problem
            if problem is None and (mask.image.problem or mask.image.layout.axis != "none"):
                problem = f"its image {mask.image.name} is not loaded as a 3D volume"
            if problem is None:
                try:
                    image, record = mask_image(mask)
                except (ContourProblem, SegProblem) as error:
                    problem = str(error)
            if problem is not None:
                skipped.append(
                    {"role": mask.kind, "series_uids": [mask.info.uid], "reason": problem}
                )
                continue
            names = {int(label): text for label, text in record["labels"].items()}
            node = segmentation_from_label_image(
                image, scene, names, reference_volume_node=nodes[prefix + mask.image.name],
                name=prefix + mask.name,
            )  # fmt: skip
            node.SetAttribute(ROLE_ATTRIBUTE, "tumour")
            nodes[prefix + mask.name] = node
    return nodes, skipped


def describe(rows: list[dict]) -> str:
    """Proposed roles as text lines (for the Python console)."""
    return "\n".join(
        f"{node_label(row['node'])}: {row['role']} ({row['rule']}; {row['status']})" for row in rows
    )
