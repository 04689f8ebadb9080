"""Scenarios shared by the pytest suite (slicer-core) and the Slicer modules' self-tests.

Each scenario takes the MRML scene to work in (``slicer.vtkMRMLScene()`` in pytest,
``slicer.mrmlScene`` inside Slicer), builds its own small deterministic data, runs the
MRML-level logic and raises :class:`AssertionError` with a message when something is
wrong. Only numpy, SimpleITK and MRML are used, so they run the same in both places.
"""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from primage.mrml.preprocessing import RECORDS_ATTRIBUTE, preprocess_volume_node
from primage.mrml.segmentations import segmentation_from_label_image
from primage.mrml.volumes import volume_node_from_sitk

#: Fast steps for the preprocessing scenario (the real presets run N4, which takes longer).
SCENARIO_STEPS = [
    {"step": "anisotropic_diffusion", "iterations": 2},
    {"step": "zscore"},
]


def _check(condition: bool, message: str) -> None:
    # Not ``assert``: the checks must also run under ``python -O``.
    if not condition:
        raise AssertionError(message)


def synthetic_t2w(size=(32, 32, 16), seed: int = 7) -> tuple[sitk.Image, sitk.Image]:
    """Small oblique, anisotropic T2w-like volume and a tumour mask (both deterministic).

    Returns ``(image, mask)``: Float32 intensities (a bright ellipsoidal "tumour" in a
    darker body, a smooth bias and Gaussian noise) and a UInt8 tumour mask, both on a grid
    with spacing 0.8 x 0.9 x 3.0 mm, a non-zero origin and rotated axes.
    """
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in reversed(size)), indexing="ij")
    centre = (np.array(size, dtype=float) - 1.0) / 2.0
    body = ((i - centre[0]) / (0.45 * size[0])) ** 2 + ((j - centre[1]) / (0.4 * size[1])) ** 2
    tumour = (
        ((i - centre[0] - 3) / 6.0) ** 2
        + ((j - centre[1] + 2) / 5.0) ** 2
        + ((k - centre[2]) / 3.0) ** 2
    )
    values = np.where(body <= 1.0, 300.0, 20.0) + np.where(tumour <= 1.0, 400.0, 0.0)
    values *= 1.0 + 0.2 * i / size[0]  # smooth bias along i
    values += rng.normal(0.0, 25.0, size=values.shape)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    mask = sitk.GetImageFromArray((tumour <= 1.0).astype(np.uint8))
    angle = np.radians(20.0)
    direction = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    for item in (image, mask):
        item.SetSpacing((0.8, 0.9, 3.0))
        item.SetOrigin((-12.0, 8.5, 30.0))
        item.SetDirection(direction.ravel().tolist())
    return image, mask


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def preprocessing_scenario(scene) -> object:
    """Preprocess a synthetic volume node in ``scene`` and check the result; returns the output node.

    Checks: a new scalar volume "<input> preprocessed" exists in the scene, on exactly the
    input's grid; the input's voxels and geometry are untouched; the applied steps are
    recorded in the node attribute; the z-score inside the tumour mask (a segmentation
    node) has mean 0 and SD 1; progress ran to 1.
    """
    image, mask = synthetic_t2w()
    input_node = volume_node_from_sitk(image, scene, name="PRIMAGE selftest T2w")
    mask_node = segmentation_from_label_image(
        mask, scene, {1: "tumour"}, {1: (0.9, 0.2, 0.2)}, reference_volume_node=input_node
    )
    input_before = np.array(slicer.util.arrayFromVolume(input_node), copy=True)
    geometry_before = _ijk_to_ras(input_node)
    reports: list[float] = []

    output_node = preprocess_volume_node(
        input_node,
        steps=SCENARIO_STEPS,
        mask_node=mask_node,
        progress=lambda fraction, message: reports.append(float(fraction)),
    )

    _check(output_node is not None, "no output node was returned")
    _check(output_node is not input_node, "the input node was overwritten")
    _check(output_node.GetScene() is scene, "the output node is not in the scene")
    _check(output_node.IsA("vtkMRMLScalarVolumeNode"), "the output is not a scalar volume")
    _check(
        output_node.GetName() == "PRIMAGE selftest T2w preprocessed",
        f"unexpected output name {output_node.GetName()!r}",
    )
    _check(
        np.array_equal(slicer.util.arrayFromVolume(input_node), input_before),
        "the input voxels changed",
    )
    _check(np.allclose(_ijk_to_ras(input_node), geometry_before), "the input geometry changed")
    _check(
        np.allclose(_ijk_to_ras(output_node), geometry_before, atol=1e-9),
        "the output is not on the input grid (IJK-to-RAS differs)",
    )
    output = slicer.util.arrayFromVolume(output_node)
    _check(
        output.shape == input_before.shape, f"output shape {output.shape} != {input_before.shape}"
    )
    _check(bool(np.all(np.isfinite(output))), "the output has NaN or infinite voxels")
    inside = sitk.GetArrayFromImage(mask).astype(bool)
    mean, sd = float(output[inside].mean()), float(output[inside].std())
    _check(abs(mean) < 1e-3 and abs(sd - 1.0) < 1e-2, f"z-score in the mask: mean {mean}, SD {sd}")
    plain = (input_before - input_before[inside].mean()) / input_before[inside].std()
    _check(
        not np.allclose(output, plain, atol=1e-3), "the output equals a plain z-score: no smoothing"
    )
    text = output_node.GetAttribute(RECORDS_ATTRIBUTE)
    _check(bool(text), f"the output has no {RECORDS_ATTRIBUTE} attribute")
    records = json.loads(text)
    _check(
        [record.get("step") for record in records] == [step["step"] for step in SCENARIO_STEPS],
        f"recorded steps {records} do not match the steps run",
    )
    _check(
        records[0].get("parameters", {}).get("iterations") == 2,
        f"the recorded parameters are incomplete: {records[0]}",
    )
    _check(bool(reports) and reports[-1] == 1.0, f"progress did not reach 1: {reports[-3:]}")
    _check(bool(np.all(np.diff(reports) >= 0)), "progress went backwards")
    return output_node


# --- radiomics ----------------------------------------------------------------------------


def radiomics_scene(scene) -> tuple[list, object]:
    """Two volumes and a segmentation for the radiomics scenarios.

    Volumes: "PRIMAGE selftest T2w" (:func:`synthetic_t2w`) and "PRIMAGE selftest CT"
    (Int16 "Hounsfield units": 40 outside, 60 in the tumour, 20 in its core, plus noise),
    on the same oblique grid. Segmentation (reference: the T2w): "tumour" (the tumour shell),
    "core" (its centre, 2 voxels in from the edge in-plane) and "empty" (no voxel).
    """
    image, mask = synthetic_t2w()
    tumour = sitk.GetArrayFromImage(mask).astype(bool)
    core = sitk.GetArrayFromImage(sitk.BinaryErode(mask, [2, 2, 0])).astype(bool)
    labels = np.where(core, 2, np.where(tumour, 1, 0)).astype(np.uint8)
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(mask)
    rng = np.random.default_rng(11)
    hounsfield = np.where(core, 20.0, np.where(tumour, 60.0, 40.0)) + rng.normal(
        0, 8.0, labels.shape
    )
    ct = sitk.GetImageFromArray(np.round(hounsfield).astype(np.int16))
    ct.CopyInformation(image)
    t2w_node = volume_node_from_sitk(image, scene, name="PRIMAGE selftest T2w")
    ct_node = volume_node_from_sitk(ct, scene, name="PRIMAGE selftest CT")
    segmentation = segmentation_from_label_image(
        label_image,
        scene,
        {1: "tumour", 2: "core", 3: "empty"},
        {1: (0.9, 0.2, 0.2), 2: (0.9, 0.8, 0.2)},
        reference_volume_node=t2w_node,
        name="PRIMAGE selftest segmentation",
    )
    return [t2w_node, ct_node], segmentation


def _table_rows(table_node) -> list[dict]:
    from primage.mrml.tables import rows_from_table_node

    return rows_from_table_node(table_node)


def radiomics_scenario(scene) -> object:
    """Extract features of 2 volumes x 3 segments in ``scene`` and check the tables.

    Checks: one row per (volume, segment) with ``image`` and ``segment`` first; the 107
    features of the ``primage`` preset; the empty segment's rows carry an error and the
    others none; (T2w, tumour) equals pyradiomics run directly on the same voxels; the CT
    volume got the CT settings (no normalisation, 25 HU bins) and its tumour mean matches
    the voxels' mean; the diagnostics table has one row per pair; progress reached 1.
    Returns the feature table node.
    """
    import radiomics
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from primage.mrml.radiomics import extract_features_from_nodes
    from primage.mrml.segmentations import label_images_from_segmentation
    from primage.mrml.volumes import sitk_from_volume_node
    from primage.radiomics.params import load_params

    volumes, segmentation = radiomics_scene(scene)
    reports: list[float] = []
    table, diagnostics = extract_features_from_nodes(
        volumes,
        segmentation,
        preset="primage",
        progress=lambda fraction, message: reports.append(float(fraction)),
    )
    _check(table.GetScene() is scene, "the feature table is not in the scene")
    rows = _table_rows(table)
    _check(len(rows) == 6, f"expected 6 rows (2 volumes x 3 segments), got {len(rows)}")
    columns = list(rows[0])
    _check(columns[:2] == ["image", "segment"], f"first columns are {columns[:2]}")
    features = [c for c in columns if c.startswith("original_")]
    _check(len(features) == 107, f"the primage preset gave {len(features)} features, not 107")
    pairs = [(row["image"], row["segment"]) for row in rows]
    expected = [(v.GetName(), s) for v in volumes for s in ("tumour", "core", "empty")]
    _check(pairs == expected, f"rows {pairs} are not {expected}")
    for row in rows:
        if row["segment"] == "empty":
            _check("empty" in row["error"], f"the empty segment has no clear error: {row}")
        else:
            _check(row["error"] == "", f"row {row['image']} x {row['segment']}: {row['error']}")
            _check(
                all(np.isfinite(row[f]) for f in features if "Maximum2D" not in f),
                "a feature is NaN",
            )

    # The same voxels through pyradiomics itself give the same numbers.
    t2w = sitk_from_volume_node(volumes[0])
    tumour_mask = label_images_from_segmentation(segmentation, reference=volumes[0])["tumour"][0]
    radiomics.setVerbosity(60)
    direct = RadiomicsFeatureExtractor(load_params("primage").params).execute(
        t2w, tumour_mask, label=1
    )
    for name in features:
        _check(
            rows[0][name] == float(direct[name])
            or (np.isnan(rows[0][name]) and np.isnan(direct[name])),
            f"{name}: table {rows[0][name]} != pyradiomics {float(direct[name])}",
        )

    # CT settings: no normalisation, so the tumour mean stays in HU (z-scores x 100 would
    # be about 130 here); B-spline resampling of the thin shell to 1 mm mixes in a little
    # of the core (20 HU) and the surroundings (40 HU), hence the 5 HU tolerance.
    ct = sitk.GetArrayFromImage(sitk_from_volume_node(volumes[1])).astype(float)
    ct_mask = label_images_from_segmentation(segmentation, reference=volumes[1])["tumour"][0]
    voxels_mean = float(ct[sitk.GetArrayFromImage(ct_mask).astype(bool)].mean())
    ct_mean = rows[3]["original_firstorder_Mean"]
    _check(abs(ct_mean - voxels_mean) < 5.0, f"CT tumour mean {ct_mean} HU vs voxels {voxels_mean}")
    side = _table_rows(diagnostics)
    _check(len(side) == 6, f"the diagnostics table has {len(side)} rows")
    modalities = [row["diagnostics_primage_modality"] for row in side]
    _check(modalities == ["", "", "", "ct", "ct", "ct"], f"modalities {modalities}")
    _check(
        all(row["diagnostics_primage_settings_hash"] for row in side), "a settings hash is missing"
    )
    _check(bool(reports) and reports[-1] == 1.0, f"progress did not reach 1: {reports[-3:]}")
    return table


def radiomics_job_scenario(scene) -> object:
    """The extraction in a separate process (as the module runs it) and a cancelled job.

    Checks: the job reports progress and ends without error; its table equals the
    in-process table value for value; a cancelled job stops at once and leaves no files.
    Returns the job's feature table node.
    """
    from primage.mrml.radiomics import extract_features_from_nodes, start_extraction_job

    volumes, segmentation = radiomics_scene(scene)
    job = start_extraction_job(
        volumes, segmentation, ["tumour", "core"], preset="primage", workers=2
    )
    fractions: list[float] = []
    status = job.wait(300, progress=lambda fraction, message: fractions.append(fraction))
    _check(not status.error and status.returncode == 0, f"the job failed: {status.error}")
    _check(fractions[-1] == 1.0, f"the job's progress did not reach 1: {fractions[-3:]}")
    table, _diagnostics = job.finish()
    _check(not job.folder.exists(), "the job's temporary folder was not removed")
    reference, _ = extract_features_from_nodes(
        volumes, segmentation, ["tumour", "core"], preset="primage", diagnostics="none"
    )
    rows, expected = _table_rows(table), _table_rows(reference)
    _check(len(rows) == len(expected) == 4, f"job rows {len(rows)}, in-process {len(expected)}")
    for row, wanted in zip(rows, expected, strict=True):
        for name, value in wanted.items():
            same = row[name] == value or (
                isinstance(value, float) and np.isnan(value) and np.isnan(row[name])
            )
            _check(same, f"{row['image']} x {row['segment']} {name}: {row[name]} != {value}")

    cancelled = start_extraction_job(volumes, segmentation, preset="full", workers=1)
    cancelled.cancel()
    _check(cancelled.process.poll() is not None, "the cancelled job is still running")
    _check(not cancelled.folder.exists(), "the cancelled job left its files")
    return table


# --- kinetics ----------------------------------------------------------------------------

#: Planted truth of the kinetics scenario: ADC (mm^2/s) of the two halves of the tumour,
#: and the relative-enhancement curve A (1 - exp(-(t - t0)/tau)) of the DCE series.
KINETICS_TRUTH = {
    "adc_low": 0.8e-3,
    "adc_high": 1.8e-3,
    "b_values": (0.0, 50.0, 100.0, 200.0, 400.0, 600.0, 800.0, 1000.0),
    "t0_s": 30.0,
    "amplitude": 0.8,
    "tau_s": 20.0,
    "frame_interval_s": 3.0,
    "frames": 61,
}


def kinetics_inputs(scene, size=(12, 12, 4), seed: int = 11):
    """A DWI sequence (b-values as index), a DCE sequence (times) and a tumour segmentation.

    The tumour (the central 8 x 8 x 4 voxels) has ADC 0.8e-3 in its left and 1.8e-3 mm^2/s
    in its right half (S0 1000, Rician noise SD 10); the DCE relative enhancement is the
    same analytic curve in every voxel (baseline 1000, noise-free). Deterministic.
    """
    from primage.mrml.sequences import VolumeSeries, sequence_node_from_series

    truth = KINETICS_TRUTH
    rng = np.random.default_rng(seed)
    shape = tuple(reversed(size))
    tumour = np.zeros(shape, np.uint8)
    tumour[:, 2:10, 2:10] = 1
    adc = np.where(
        np.arange(size[0])[None, None, :] < size[0] // 2, truth["adc_low"], truth["adc_high"]
    ) * np.ones(shape)
    reference, _ = synthetic_t2w(size=size)
    dwi_volumes = []
    for b in truth["b_values"]:
        clean = 1000.0 * np.exp(-b * adc)
        noisy = np.hypot(clean + rng.normal(0, 10.0, shape), rng.normal(0, 10.0, shape))
        volume = sitk.GetImageFromArray(noisy.astype(np.float32))
        volume.CopyInformation(reference)
        dwi_volumes.append(volume)
    times = np.arange(truth["frames"]) * truth["frame_interval_s"]
    dce_volumes = []
    for t in times:
        u = max(t - truth["t0_s"], 0.0)
        value = 1000.0 * (1.0 + truth["amplitude"] * (1.0 - np.exp(-u / truth["tau_s"])))
        volume = sitk.GetImageFromArray(np.full(shape, value, np.float32))
        volume.CopyInformation(reference)
        dce_volumes.append(volume)
    dwi = sequence_node_from_series(
        VolumeSeries(dwi_volumes, truth["b_values"], "b", "s/mm2"), scene, "selftest DWI"
    )
    dce = sequence_node_from_series(
        VolumeSeries(dce_volumes, times, "time", "s"), scene, "selftest DCE"
    )
    mask = sitk.GetImageFromArray(tumour)
    mask.CopyInformation(reference)
    segmentation = segmentation_from_label_image(mask, scene, {1: "tumour"}, name="selftest tumour")
    return dwi, dce, segmentation


def analytic_iauc60() -> float:
    """Exact integral of A (1 - exp(-u / tau)) over u in [0, 60] s (the scenario's curve)."""
    truth = KINETICS_TRUTH
    a, tau = truth["amplitude"], truth["tau_s"]
    return float(a * (60.0 - tau * (1.0 - np.exp(-60.0 / tau))))


def kinetics_scenario(scene) -> dict:
    """ADC, Fit-Cluster-Fit and DCE maps on sequence nodes in ``scene``, checked against truth.

    Checks: map volumes on the series grid with a colour table; ROI ADC of each half within
    2 % of the truth; a table and a plot chart; two habitat segments matching the planted
    halves (Dice >= 0.9) with robust values within 2 %; iAUC60 within 1 % of the analytic
    integral (the trapezoidal rule on 3 s frames is the only error); a cancelled run adds
    no node. Returns the created nodes by analysis.
    """
    from primage.mrml.kinetics import (
        KineticsCancelled,
        adc_from_nodes,
        dce_from_nodes,
        fcf_from_nodes,
    )
    from primage.mrml.segmentations import mask_from_node

    truth = KINETICS_TRUTH
    dwi, dce, segmentation = kinetics_inputs(scene)
    adc = adc_from_nodes(dwi, mask_node=segmentation)
    _check(set(adc.volumes) == {"adc", "adc_se", "s0", "r2"}, f"ADC volumes: {list(adc.volumes)}")
    adc_node = adc.volumes["adc"]
    _check(adc_node.GetScene() is scene, "the ADC volume is not in the scene")
    display = adc_node.GetDisplayNode()
    _check(display is None or bool(display.GetColorNodeID()), "the ADC map has no colour table")
    values = slicer.util.arrayFromVolume(adc_node)
    _check(values.shape == (4, 12, 12), f"ADC map shape {values.shape}")
    left, right = values[:, 2:10, 2:6], values[:, 2:10, 6:10]
    for region, expected in ((left, truth["adc_low"]), (right, truth["adc_high"])):
        median = float(np.median(region))
        _check(abs(median / expected - 1) < 0.02, f"ADC {median:.4e}, expected {expected:.4e}")
    _check(float(np.abs(values[:, 0, :]).max()) == 0.0, "voxels outside the mask are not 0")
    _check(adc.table is not None and adc.table.GetNumberOfRows() >= 2, "no ROI table")
    _check(adc.chart is not None and adc.chart.GetNumberOfPlotSeriesNodes() == 2, "no ADC chart")

    fcf = fcf_from_nodes(dwi, "adc", mask_node=segmentation)
    segments = fcf.segmentation.GetSegmentation()
    _check(segments.GetNumberOfSegments() == 2, "FCF: two habitat segments expected")
    habitats = fcf.summary["habitats"]
    for habitat, expected in zip(habitats, (truth["adc_low"], truth["adc_high"]), strict=True):
        _check(abs(habitat["value"] / expected - 1) < 0.02, f"FCF habitat {habitat}")
    labels = np.zeros((4, 12, 12), int)
    for index in range(2):
        segment_id = segments.GetNthSegmentID(index)
        mask = mask_from_node(fcf.segmentation, fcf.volumes["confidence"], segment_id)
        labels[sitk.GetArrayFromImage(mask) > 0] = index + 1
    planted = np.zeros_like(labels)
    planted[:, 2:10, 2:6], planted[:, 2:10, 6:10] = 1, 2
    for label in (1, 2):
        dice = (
            2
            * np.sum((labels == label) & (planted == label))
            / (np.sum(labels == label) + np.sum(planted == label))
        )
        _check(dice >= 0.9, f"FCF habitat {label}: Dice {dice:.3f} < 0.9")

    dce_nodes = dce_from_nodes(dce, mask_node=segmentation)
    iauc = slicer.util.arrayFromVolume(dce_nodes.volumes["iauc60"])[:, 2:10, 2:10]
    exact = analytic_iauc60()
    _check(
        abs(float(np.median(iauc)) / exact - 1) < 0.01,
        f"iAUC60 {float(np.median(iauc)):.3f} s, analytic {exact:.3f} s",
    )

    count = scene.GetNumberOfNodes()

    def cancel(fraction: float, message: str) -> None:
        if fraction > 0:
            raise KineticsCancelled("cancelled by the scenario")

    try:
        adc_from_nodes(dwi, mask_node=segmentation, progress=cancel)
    except KineticsCancelled:
        pass
    else:
        raise AssertionError("cancelling did not stop the fit")
    _check(scene.GetNumberOfNodes() == count, "a cancelled run added nodes to the scene")
    return {"adc": adc, "fcf": fcf, "dce": dce_nodes}


# --- registration -------------------------------------------------------------------------

from primage.registration.truth import (  # noqa: E402 - shared with the engine tests
    grid_image,
    render_phantom,
    synthetic_registration_pair,
)


def registration_pair_nodes(scene):
    """The synthetic pair as nodes: fixed and moving volumes, a fixed tumour segmentation
    and a moving tumour labelmap. Returns ``(fixed, moving, fixed_mask, moving_mask)``."""
    fixed, moving, fixed_mask, moving_mask, _truth = synthetic_registration_pair()
    fixed_node = volume_node_from_sitk(fixed, scene, name="PRIMAGE selftest fixed")
    moving_node = volume_node_from_sitk(moving, scene, name="PRIMAGE selftest moving")
    fixed_mask_node = segmentation_from_label_image(
        fixed_mask, scene, {1: "tumour"}, {1: (0.9, 0.2, 0.2)}, reference_volume_node=fixed_node
    )
    moving_mask_node = volume_node_from_sitk(
        moving_mask, scene, name="PRIMAGE selftest moving tumour", labelmap=True
    )
    return fixed_node, moving_node, fixed_mask_node, moving_mask_node


def registration_scenario(scene) -> object:
    """Register the synthetic pair in ``scene`` and prove the transform node's direction.

    Checks: the result transform node moves the moving volume (placed under it, not
    hardened) onto the fixed one: the node's "to parent" sends each moving point of the
    known transform back to its fixed point within 1 mm (the opposite convention misses
    by more than 3 mm), and the moving tumour labelmap under the node, read in world
    coordinates, overlaps the fixed tumour (Dice > 0.85); the QC is stored on the node and
    mutual information improved; a rerun with masks refills the same node; the resampled
    volume lies on the fixed grid. Returns the transform node.
    """
    from primage.mrml.geometry import lps_to_ras_points, ras_to_lps_points
    from primage.mrml.registration import QC_ATTRIBUTE, register_volume_nodes
    from primage.mrml.volumes import sitk_from_volume_node

    fixed, _moving, fixed_mask, _moving_mask, truth = synthetic_registration_pair()
    fixed_node, moving_node, fixed_mask_node, moving_mask_node = registration_pair_nodes(scene)
    moving_before = np.array(slicer.util.arrayFromVolume(moving_node), copy=True)
    reports: list[float] = []

    result = register_volume_nodes(
        fixed_node,
        moving_node,
        preset="mr-mr",
        stages="rigid",
        resample=True,
        progress=lambda fraction, message: reports.append(float(fraction)),
    )
    node = result.transform_node
    _check(node is not None and node.GetScene() is scene, "no transform node in the scene")
    _check(
        moving_node.GetTransformNodeID() == node.GetID(),
        "the moving volume is not under the result transform",
    )
    _check(node.GetTransformNodeID() is None, "the result transform has a parent it should not")
    _check(
        np.array_equal(slicer.util.arrayFromVolume(moving_node), moving_before),
        "the moving voxels changed (the transform must not be hardened)",
    )

    # Direction: to parent (moving -> fixed, RAS) undoes the known fixed -> moving transform.
    index = np.argwhere(sitk.GetArrayFromImage(fixed_mask) > 0)[::7][:, ::-1]
    fixed_points = np.array(
        [fixed.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in index]
    )
    moving_points = np.array([truth.TransformPoint(p.tolist()) for p in fixed_points])
    to_parent = node.GetTransformToParent()
    back = ras_to_lps_points(
        np.array([to_parent.TransformPoint(*p) for p in lps_to_ras_points(moving_points)])
    )
    error = np.linalg.norm(back - fixed_points, axis=1)
    _check(error.max() < 1.0, f"to-parent misses the fixed points by up to {error.max():.2f} mm")
    from_parent = node.GetTransformFromParent()
    wrong = ras_to_lps_points(
        np.array([from_parent.TransformPoint(*p) for p in lps_to_ras_points(moving_points)])
    )
    _check(
        np.linalg.norm(wrong - fixed_points, axis=1).mean() > 3.0,
        "the check cannot tell the two transform directions apart",
    )

    # Applying the node to the moving tumour labelmap puts it on the fixed tumour.
    moving_mask_node.SetAndObserveTransformNodeID(node.GetID())
    placed = sitk_from_volume_node(moving_mask_node, world=True)
    on_fixed = sitk.Resample(placed, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    a = sitk.GetArrayFromImage(on_fixed) > 0
    b = sitk.GetArrayFromImage(fixed_mask) > 0
    dice = 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    _check(dice > 0.85, f"the moving tumour under the transform node has Dice {dice:.3f}")
    moving_mask_node.SetAndObserveTransformNodeID(None)

    qc = json.loads(node.GetAttribute(QC_ATTRIBUTE) or "{}")
    _check(qc.get("verdict") in ("ok", "review"), f"no QC verdict on the node: {qc}")
    _check(
        qc["metric_after"]["mutual_information"] > qc["metric_before"]["mutual_information"],
        "mutual information did not improve",
    )
    volume = result.volume_node
    _check(volume is not None, "no resampled volume")
    _check(
        np.allclose(_ijk_to_ras(volume), _ijk_to_ras(fixed_node), atol=1e-6),
        "the resampled volume is not on the fixed grid",
    )
    _check(bool(reports) and reports[-1] == 1.0, "progress did not reach 1")

    # Rerun with masks (the PRIMAGE route) into the same transform node.
    again = register_volume_nodes(
        fixed_node,
        moving_node,
        preset="mr-mr",
        stages="rigid",
        fixed_mask_node=fixed_mask_node,
        moving_mask_node=moving_mask_node,
        output_transform_node=node,
    )
    _check(again.transform_node is node, "the rerun did not refill the same transform node")
    _check(again.qc.get("dice_after", 0.0) > 0.85, f"Dice after the rerun: {again.qc}")
    return node


def motion_scenario(scene) -> object:
    """Motion-correct a 5-frame sequence with two frames moved by known rigid motions.

    Checks: a new sequence with the same index values, a table with one row per frame,
    the recovered translations of the moved frames within 0.5 mm of the truth, small
    framewise displacement where nothing moved, and a plot chart. Returns the sequence.
    """
    from primage.mrml.registration import correct_sequence_motion
    from primage.mrml.sequences import (
        VolumeSeries,
        sequence_node_from_series,
        series_from_sequence_node,
    )
    from primage.registration.truth import known_affine

    grid = grid_image((40, 36, 16), (2.0, 2.0, 4.0), (10.0, -5.0, 20.0), 10.0)
    still, _mask = render_phantom(grid, (0.0, 300.0, 650.0, 150.0), seed=21)
    centre = np.array(
        still.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in still.GetSize()])
    )
    motions = {
        2: known_affine(centre, (2.0, 0.0, -3.0), (2.5, -1.5, 1.0)),
        3: known_affine(centre, (0.0, 2.0, 2.0), (-2.0, 2.0, -1.5)),
    }
    frames = []
    for index in range(5):
        frame = still * (1.0 + 0.15 * index)  # contrast uptake changes intensities
        if index in motions:
            # frame(M(x)) = still(x): sample through the inverse motion.
            frame = sitk.Resample(frame, frame, motions[index].GetInverse(), sitk.sitkLinear, 0.0)
        frames.append(sitk.Cast(frame, sitk.sitkFloat32))
    times = [0.0, 10.0, 20.0, 30.0, 40.0]
    sequence = sequence_node_from_series(
        VolumeSeries(frames, times, "time", "s"), scene, name="PRIMAGE selftest DCE"
    )
    result = correct_sequence_motion(sequence, reference="first", transform="rigid")
    corrected = series_from_sequence_node(result.sequence_node)
    _check(len(corrected.volumes) == 5, "the corrected sequence does not have 5 frames")
    _check(np.allclose(corrected.values, times), f"index values changed: {corrected.values}")
    rows = result.result.table
    _check(result.table_node.GetTable().GetNumberOfRows() == 5, "the motion table needs 5 rows")
    for index, motion in motions.items():
        expected = np.array(motion.TransformPoint(centre.tolist())) - centre
        found = np.array([rows[index][k] for k in ("tx_mm", "ty_mm", "tz_mm")])
        _check(
            np.linalg.norm(found - expected) < 0.5,
            f"frame {index}: translation {found.round(2)} mm, expected {expected.round(2)}",
        )
    _check(rows[1]["framewise_displacement_mm"] < 0.5, "motion found where there was none")
    _check(rows[2]["framewise_displacement_mm"] > 2.0, "the moved frame shows no displacement")
    _check(result.chart_node.GetNumberOfPlotSeriesNodes() == 7, "the motion chart needs 7 curves")
    return result.sequence_node


def segmentation_scenario(scene) -> object:
    """Compare two segmentations and build a STAPLE consensus in ``scene``; check the tables.

    Two offset spheres (0.8 x 0.8 x 3 mm voxels) as reference and test segment "tumour":
    the table row equals the engine on the same masks and the Hausdorff distance is within
    1.5 mm of the analytic value; a third and fourth observer give a STAPLE consensus whose
    table has one row per observer with sensitivities in [0, 1]. Returns the metrics table.
    """
    from primage.mrml.segmentation_metrics import (
        compare_segmentation_nodes,
        staple_from_segmentation_nodes,
    )
    from primage.mrml.tables import rows_from_table_node
    from primage.segmentation.metrics import compare_label_images
    from primage.segmentation.truth import sphere_pair

    a, b, truth = sphere_pair(size=(64, 64, 20), radius_a=15.0, radius_b=13.0)
    names = {1: "tumour"}
    reference = segmentation_from_label_image(a, scene, names, name="reference")
    test = segmentation_from_label_image(b, scene, names, name="test")
    table = compare_segmentation_nodes(reference, test)
    _check(table.GetScene() is scene, "the metrics table is not in the scene")
    rows = rows_from_table_node(table)
    _check(len(rows) == 1, f"expected one row (tumour vs tumour), got {len(rows)}")
    row = rows[0]
    _check(row["reference_segment"] == "tumour", f"reference segment {row['reference_segment']}")
    expected = compare_label_images(a, b)[0]
    for name in ("dice", "jaccard", "hausdorff", "hausdorff95", "assd", "fnr", "fpr_modified"):
        _check(
            abs(row[name] - expected[name]) < 1e-9,
            f"{name}: table {row[name]} != engine {expected[name]}",
        )
    _check(
        abs(row["hausdorff"] - truth["hausdorff"]) < 1.5,
        f"Hausdorff {row['hausdorff']} mm far from the analytic {truth['hausdorff']} mm",
    )
    _check(table.GetColumnUnitLabel("hausdorff") == "mm", "the hausdorff column has no unit")
    shifted = sitk.BinaryDilate(b, [1, 1, 0])
    third = segmentation_from_label_image(shifted, scene, names, name="observer 3")
    consensus, observers = staple_from_segmentation_nodes([reference, test, third], "tumour")
    _check(consensus.GetSegmentation().GetNumberOfSegments() == 1, "consensus segments")
    observer_rows = rows_from_table_node(observers)
    _check(
        [r["observer"] for r in observer_rows] == ["reference", "test", "observer 3"],
        f"observer rows {observer_rows}",
    )
    _check(
        all(
            0.0 <= r["sensitivity"] <= 1.0 and 0.0 <= r["specificity"] <= 1.0 for r in observer_rows
        ),
        "sensitivity or specificity outside [0, 1]",
    )
    return table


def segmentation_jobs_scenario(scene, folder) -> object:
    """Train and auto-segment in separate processes, as the module's Train and Auto-segment
    sections run them (needs torch and MONAI).

    Three blob volumes, each with a segmentation made on it (reference geometry = the volume,
    as the Segment Editor sets it), give the training pairs; a short training reports one
    event per epoch, which fill a loss/Dice chart; the model folder (under ``folder``) then
    segments the first volume into a segmentation with a segment named "tumour" and the
    model's checksum. Returns the segmentation node.
    """
    from pathlib import Path

    from primage.mrml.segmentation_models import (
        TRAINING_CHART_TITLE,
        start_segmentation_job,
        start_training_job,
        training_options,
        training_pairs_from_volumes,
    )
    from primage.segmentation.blobs import blob_case

    volumes = []
    for seed in (0, 1, 2):
        image, mask = blob_case(seed, shape=(24, 24, 24))
        volume = volume_node_from_sitk(image, scene, name=f"training T2w {seed}")
        segmentation = segmentation_from_label_image(
            mask, scene, {1: "tumour"}, reference_volume_node=volume, name=f"tumour {seed}"
        )
        _check(
            segmentation.GetNodeReference("referenceImageGeometryRef") is volume,
            "the segmentation does not name its volume",
        )
        volumes.append(volume)
    pairs = training_pairs_from_volumes(volumes, "tumour")
    _check([p[0] for p in pairs] == volumes, "training pairs are not the checked volumes")
    options = training_options(epochs=3, iterations_per_epoch=3, patch_size=(16, 16, 16))
    model_folder = Path(folder) / "model"
    job = start_training_job(pairs, model_folder, options=options)
    status = job.wait(timeout=600)
    _check(not status.error, f"training failed: {status.error}")
    chart = job.update_chart()
    config = job.finish()
    epochs = [e["epoch"] for e in job.events if e.get("type") == "epoch"]
    _check(epochs == [1, 2, 3], f"epoch events {epochs}")
    _check(chart is not None and chart.GetTitle() == TRAINING_CHART_TITLE, "no training chart")
    _check(chart.GetNumberOfPlotSeriesNodes() == 2, "the chart should show loss and Dice")
    job = start_segmentation_job(model_folder, [volumes[0]], postprocess="largest")
    status = job.wait(timeout=600)
    _check(not status.error, f"segmentation failed: {status.error}")
    node = job.finish(name="auto")
    segmentation = node.GetSegmentation()
    names = [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ]
    _check(names == ["tumour"], f"segment names {names}")
    checksum = json.loads(node.GetAttribute("primage.model.weights_sha256"))
    _check(checksum == config["weights_sha256"], "the model checksum is not on the node")
    return node


def pipeline_scenario(scene, background: bool = False) -> object:
    """The "process this case" action on scene nodes: a small digital patient (T2w volume, DWI and DCE
    sequence nodes, tumour segmentation) through the whole chain; every result is a node.
    With ``background`` the chain runs as the module runs it, in a separate process
    (``start_case_job``, waited for, then ``finish``); the checks are the same.

    Checks: the registered DWI is a sequence of the same b-values on the T2w grid, the
    tumour segmentation and the ADC map exist, the tumour's median ADC is near the truth
    (0.8e-3 mm^2/s), the features table has one row per measured image, the QC table one
    row per series, and the input nodes are unchanged. Returns the :class:`PipelineNodes`.
    """
    from primage.mrml.pipeline import process_case_nodes, start_case_job
    from primage.mrml.sequences import (
        VolumeSeries,
        sequence_node_from_series,
        series_from_sequence_node,
    )
    from primage.mrml.volumes import sitk_from_volume_node, volume_node_from_sitk
    from primage.synthetic import make_digital_patient

    patient = make_digital_patient(4, size=(40, 40, 12), spacing=(3.6, 3.6, 13.0))
    t2w = volume_node_from_sitk(patient.t2w, scene, "T2w")
    dwi = sequence_node_from_series(
        VolumeSeries.from_image4d(patient.dwi, patient.b_values, "b", "s/mm2"), scene, "DWI"
    )
    dce = sequence_node_from_series(
        VolumeSeries.from_image4d(patient.dce, patient.frame_times, "time", "s"), scene, "DCE"
    )
    tumour = segmentation_from_label_image(patient.tumour, scene, {1: "tumour"}, name="Tumour")
    before = sitk.GetArrayFromImage(sitk_from_volume_node(t2w))
    config = {
        "preprocess": {"presets": {"t2w": "t2w", "dwi": "dwi"}},
        "radiomics": {"images": ["t2w", "adc"]},
    }
    volumes = {"t2w": t2w, "dwi": dwi, "dce": dce}
    if background:
        job = start_case_job(volumes, tumour, config=config, case_name="patient")
        seen = []
        job.wait(timeout=600, progress=lambda fraction, message: seen.append(fraction))
        nodes = job.finish()  # raises with the job's message when it failed
        _check(any(0 < f < 1 for f in seen), "the job reported no progress")
        _check(not job.folder.exists(), "the job's temporary folder was not removed")
    else:
        nodes = process_case_nodes(volumes, tumour, config=config, case_name="patient")
    _check(nodes.summary["status"] in ("ok", "review"), f"case failed: {nodes.summary['message']}")
    registered = series_from_sequence_node(nodes.sequences["dwi"])
    _check(np.allclose(registered.values, patient.b_values), "registered DWI lost its b-values")
    _check(
        registered.volumes[0].GetSize() == patient.t2w.GetSize(),
        "the registered DWI is not on the T2w grid",
    )
    _check({"dwi", "dce"} <= set(nodes.transforms), "a registration transform node is missing")
    _check(nodes.segmentation is not None, "no tumour segmentation node")
    adc = sitk.GetArrayFromImage(sitk_from_volume_node(nodes.maps["adc"]))
    inside = sitk.GetArrayFromImage(patient.tissues) == 8  # viable tumour
    median = float(np.median(adc[inside & (adc > 0)]))
    _check(abs(median - 0.8e-3) < 0.15e-3, f"tumour ADC {median:.3g} is far from 0.8e-3 mm^2/s")
    _check("adc" in nodes.habitats, "no Fit-Cluster-Fit habitat segmentation")
    _check(nodes.features_table.GetNumberOfRows() == 2, "the features table needs 2 rows")
    _check(nodes.qc_table.GetNumberOfRows() == 3, "the QC table needs one row per series")
    after = sitk.GetArrayFromImage(sitk_from_volume_node(t2w))
    _check(np.array_equal(before, after), "the input T2w node was modified")
    return nodes


def dicom_export_inputs(scene, folder) -> dict:
    """A small study written as DICOM into ``folder`` (an invented patient): a T2w series
    and a DWI series on one grid, loaded as a volume node and a sequence node (b-values as
    index) that carry their series UIDs in the subject hierarchy as Slicer's DICOM module
    leaves them, a tumour segmentation on that grid, and the database lookup
    ``files_for_series(uid)`` (as ``slicer.dicomDatabase.filesForSeries``).
    Returns ``{"t2w", "dwi", "tumour", "files_for_series"}``."""
    from pathlib import Path

    import pydicom

    from primage.dicom.synthetic import IDENTITIES, Study, split_volumes, write_series
    from primage.mrml.dicom import load_dicom_files
    from primage.synthetic import make_digital_patient

    b_values = [0, 300, 600, 1000]
    patient = make_digital_patient(
        4, size=(16, 16, 5), spacing=(3.0, 3.0, 5.0), b_values=tuple(b_values)
    )
    study = Study(IDENTITIES["siemens"], "SIEMENS")
    written = {
        "t2w": write_series(
            Path(folder) / "t2w", study, [patient.t2w], description="t2_tse_tra",
            series_number=2, attributes={"EchoTime": "100", "RepetitionTime": "4000"},
        ),
        "dwi": write_series(
            Path(folder) / "dwi", study, split_volumes(patient.dwi), description="ep2d_diff",
            series_number=4, b_values=b_values,
        ),
    }  # fmt: skip
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    by_uid: dict[str, list[str]] = {}
    result: dict = {}
    for role, files in written.items():
        nodes, skipped = load_dicom_files(scene, [str(f) for f in files])
        _check(not skipped and role in nodes, f"the {role} series did not load: {skipped}")
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        by_uid[uid] = [str(f) for f in files]
        node = nodes[role]
        item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(
            hierarchy.GetSceneItemID(), node
        )
        hierarchy.SetItemUID(item, "DICOM", uid)
        result[role] = node
    tumour = sitk.Cast(patient.tumour > 0, sitk.sitkUInt8)
    result["tumour"] = segmentation_from_label_image(
        tumour, scene, {1: "tumour"}, name="selftest DICOM tumour"
    )
    result["files_for_series"] = lambda uid: list(by_uid.get(uid, []))
    return result
