"""Background (separate-process) training and inference through MRML, as the module runs them.

Real slicer-core nodes; the jobs run ``python -m primage.jobs`` in a child process with torch.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.segmentation.blobs import blob_case

pytest.importorskip("slicer")


def _need_torch():
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pytest.fail("torch and MONAI are missing: pip install -e '.[test,seg]' (make test does)")


@pytest.fixture
def training_pairs(mrml_scene):
    from primage.mrml.segmentations import segmentation_from_label_image
    from primage.mrml.volumes import volume_node_from_sitk

    pairs = []
    for seed in (0, 1, 2):
        image, mask = blob_case(seed, shape=(24, 24, 24))
        volume = volume_node_from_sitk(image, mrml_scene, name=f"T2w {seed}")
        segmentation = segmentation_from_label_image(mask, mrml_scene, {1: "tumour"})
        pairs.append((volume, segmentation, "tumour"))
    return pairs


def _labels(node, reference):
    from primage.mrml.segmentations import segment_binary_image

    segmentation = node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    for value, segment_id in enumerate(ids, start=1):
        mask = segment_binary_image(node, segment_id)
        if mask is None:
            continue
        mask = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        out[sitk.GetArrayViewFromImage(mask) > 0] = value
    return out


def test_jobs_scenario_and_background_labels_equal_in_process(mrml_scene, tmp_path):
    """The module's scenario (train, chart, auto-segment in separate processes), then the
    background segmentation is compared voxel for voxel with the in-process one."""
    _need_torch()
    from primage.mrml.segmentation_models import segment_volume_nodes
    from primage.mrml.selftest import segmentation_jobs_scenario
    from primage.mrml.volumes import sitk_from_volume_node

    background = segmentation_jobs_scenario(mrml_scene, tmp_path)
    log = json.loads((tmp_path / "model" / "training_log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2, 3]
    chart = mrml_scene.GetFirstNodeByClass("vtkMRMLPlotChartNode")
    series = mrml_scene.GetNodeByID(chart.GetNthPlotSeriesNodeID(1))
    dice_column = series.GetTableNode().GetTable().GetColumnByName(series.GetYColumnName())
    assert [dice_column.GetValue(i) for i in range(3)] == pytest.approx(
        [row["validation_dice"] for row in log]
    )
    volume = mrml_scene.GetFirstNodeByName("training T2w 0")
    in_process = segment_volume_nodes(
        tmp_path / "model", [volume], mrml_scene, postprocess="largest"
    )
    grid = sitk_from_volume_node(volume)
    assert np.array_equal(_labels(background, grid), _labels(in_process, grid))
    assert _labels(background, grid).any()


def test_cancel_stops_training_from_a_pairs_file(mrml_scene, tmp_path):
    _need_torch()
    from primage.mrml.segmentation_models import start_training_job_from_file
    from primage.segmentation.blobs import write_blob_pairs
    from primage.segmentation.deep import TrainOptions

    pairs_csv, _ = write_blob_pairs(tmp_path / "pairs", 2, shape=(24, 24, 24))
    options = TrainOptions(epochs=500, iterations_per_epoch=50, patch_size=(16, 16, 16))
    job = start_training_job_from_file(pairs_csv, tmp_path / "model", mrml_scene, options=options)
    deadline = time.monotonic() + 120
    while job.poll().fraction == 0.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.poll().running
    job.cancel()
    assert job.process.poll() is not None
    assert not job.folder.exists()
    assert not (tmp_path / "model" / "config.json").exists()


def test_bad_input_is_refused_before_any_process(training_pairs, mrml_scene, tmp_path):
    from primage.mrml.segmentation_models import (
        start_segmentation_job,
        start_training_job,
        start_training_job_from_file,
    )

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(PrimageInputError, match="not empty"):
        start_training_job(training_pairs, tmp_path / "busy")
    with pytest.raises(PrimageInputError, match="pair"):
        start_training_job([], tmp_path / "new")
    with pytest.raises(PrimageInputError, match="not a model folder"):
        start_segmentation_job(tmp_path / "busy", [training_pairs[0][0]])
    (tmp_path / "pairs.csv").write_text("image,mask\nmissing.nii.gz,missing_mask.nii.gz\n")
    with pytest.raises(PrimageInputError, match="missing file"):
        start_training_job_from_file(tmp_path / "pairs.csv", tmp_path / "new", mrml_scene)
    assert not (tmp_path / "new").exists()


def test_training_pairs_need_a_segmentation_made_on_each_volume(training_pairs, mrml_scene):
    from primage.mrml.segmentation_models import training_pairs_from_volumes
    from primage.mrml.volumes import volume_node_from_sitk

    # The fixture's segmentations name no volume: nothing was "made on" these volumes.
    with pytest.raises(PrimageInputError, match="Segment Editor"):
        training_pairs_from_volumes([training_pairs[0][0]])
    with pytest.raises(PrimageInputError, match="check at least one volume"):
        training_pairs_from_volumes([])
    image, _ = blob_case(5, shape=(24, 24, 24))
    volume = volume_node_from_sitk(image, mrml_scene, name="lone")
    from primage.mrml.segmentations import segmentation_from_label_image

    _, mask = blob_case(5, shape=(24, 24, 24))
    segmentation_from_label_image(mask, mrml_scene, {1: "tumour"}, reference_volume_node=volume)
    with pytest.raises(PrimageInputError, match="no segment 'core'"):
        training_pairs_from_volumes([volume], "core")
    [(found_volume, _, segment_id)] = training_pairs_from_volumes([volume], "tumour")
    assert found_volume is volume and segment_id


def test_module_requirements_pin_what_pyproject_pins(tmp_path):
    """The module installs the versions the engine is tested with, and only what is missing."""
    from pathlib import Path

    import tomllib

    from primage.mrml.dependencies import (
        TORCH_REQUIREMENT,
        missing_requirements,
        read_requirements,
        requirements_for_model,
    )

    repo = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((repo / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pinned = set(extras["seg"]) | set(extras["nnunet"])
    path = repo / "PrimageSegmentation" / "Resources" / "requirements.txt"
    assert set(read_requirements(path)) <= pinned
    assert TORCH_REQUIREMENT in pinned
    assert requirements_for_model(path, None) == ["monai==1.6.1"]
    for name in ("dataset.json", "plans.json"):
        (tmp_path / name).write_text("{}")
    assert requirements_for_model(path, tmp_path) == ["nnunetv2==2.8.1"]
    assert missing_requirements(["monai==1.6.1", "surely-not-installed-xyz==1.0"]) == [
        "surely-not-installed-xyz==1.0"
    ]


def test_failing_job_reports_its_message(training_pairs, mrml_scene, tmp_path):
    """A CUDA device that does not exist: the job fails with the engine's one-line message."""
    _need_torch()
    from primage.mrml.segmentation_models import start_training_job
    from primage.segmentation.deep import TrainOptions

    options = TrainOptions(epochs=1, iterations_per_epoch=1, patch_size=(16, 16, 16))
    job = start_training_job(training_pairs, tmp_path / "model", options=options, device="cuda:99")
    status = job.wait(timeout=120)
    assert status.returncode == 2 and "CUDA GPU" in status.error
    with pytest.raises(PrimageInputError, match="CUDA"):
        job.finish()
    assert not job.folder.exists()
