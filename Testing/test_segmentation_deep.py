"""Built-in deep-learning segmentation (train, predict, deep features) and export-nnunet.

torch and MONAI come from the ``seg`` extra, which ``make test`` installs. Without them the
tests that need them fail with an install hint instead of skipping (CI must run them);
``test_engine_imports_no_torch`` and the export tests need neither.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from primage.cli import main
from primage.errors import PrimageInputError
from primage.segmentation.blobs import blob_case, write_blob_pairs

EPOCHS, ITERATIONS = 10, 15  # ~15 s on 2 CPU cores; validation Dice ~0.89


def _need_torch():
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pytest.fail("torch and MONAI are missing: pip install -e '.[test,seg]' (make test does)")


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_refused(code, err, *paths):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for path in paths:
        assert not Path(path).exists(), f"partial output {path}"


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blobs")
    pairs_csv, pairs = write_blob_pairs(folder, 6, seed=0)
    return pairs_csv, pairs


@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    _need_torch()
    folder = tmp_path_factory.mktemp("model") / "dynunet"
    code = main(
        [
            "segment", "train", "--pairs", str(data[0]), "--output", str(folder),
            "--epochs", str(EPOCHS), "--iterations", str(ITERATIONS),
            "--validation-fraction", "0.34", "-q",
        ]
    )  # fmt: skip
    assert code == 0
    return folder


def test_engine_imports_no_torch():
    script = (
        "import importlib, pkgutil, sys, primage\n"
        "def walk(p):\n"
        "    for i in pkgutil.iter_modules(p.__path__, p.__name__ + '.'):\n"
        "        if i.name == 'primage.mrml': continue\n"
        "        m = importlib.import_module(i.name)\n"
        "        if i.ispkg: walk(m)\n"
        "walk(primage)\n"
        "from primage.cli import build_parser; build_parser()\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        "('torch', 'monai', 'nnunetv2', 'torchvision')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_missing_torch_is_a_clear_error(data, tmp_path):
    script = (
        "import sys; sys.modules['torch'] = None; sys.modules['monai'] = None\n"
        "from primage.cli import main\n"
        f"sys.exit(main(['segment', 'train', '--pairs', {str(data[0])!r}, "
        f"'--output', {str(tmp_path / 'm')!r}, '-q']))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "primage[seg]" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m").exists()


def test_training_reaches_validation_dice(model):
    config = json.loads((model / "config.json").read_text())
    log = json.loads((model / "training_log.json").read_text())
    assert len(log) == EPOCHS
    assert set(log[0]) >= {"epoch", "loss", "validation_dice"}
    assert (
        (model / "training_log.csv")
        .read_text()
        .splitlines()[0]
        .startswith("epoch,loss,validation_dice")
    )
    assert log[-1]["loss"] < log[0]["loss"]
    assert config["training"]["final_validation_dice"] >= 0.85, log
    assert config["network"]["deep_supervision"] and config["labels"] == {
        "background": 0,
        "tumour": 1,
    }
    assert len(config["training"]["validation_cases"]) == 2
    from primage.segmentation.deep import sha256_file

    assert sha256_file(model / "model.pth") == config["weights_sha256"]


def test_predict_held_out_case_with_provenance(model, tmp_path, capsys):
    image, truth = blob_case(100)
    image.SetSpacing((0.9, 1.1, 1.0))  # model spacing is 1 mm: resampled there and back
    truth.SetSpacing((0.9, 1.1, 1.0))
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    output = tmp_path / "seg.nii.gz"
    code, err = _run(
        [
            "segment", "predict", "--model", model, "--input", tmp_path / "img.nii.gz",
            "--output", output, "--postprocess", "largest,fill",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    seg = sitk.ReadImage(str(output))
    assert seg.GetSize() == image.GetSize()
    assert np.allclose(seg.GetSpacing(), image.GetSpacing(), atol=1e-5)
    dice = _dice(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(truth))
    assert dice >= 0.85, dice
    sidecar = json.loads((tmp_path / "seg.json").read_text())
    config = json.loads((model / "config.json").read_text())
    assert sidecar["model"]["weights_sha256"] == config["weights_sha256"]
    assert sidecar["primage_version"] and sidecar["labels"]["tumour"] == 1
    assert [r["step"] for r in sidecar["postprocess"]] == ["largest", "fill"]


def test_resume_continues_the_log(data, tmp_path, capsys):
    _need_torch()
    folder = tmp_path / "m"
    base = ["segment", "train", "--pairs", data[0], "--output", folder, "--iterations", "2", "-q"]
    assert _run([*base, "--epochs", "1"], capsys)[0] == 0
    code, err = _run([*base, "--epochs", "1"], capsys)  # non-empty folder without --resume
    _assert_refused(code, err)
    assert _run([*base, "--epochs", "2", "--resume"], capsys)[0] == 0
    log = json.loads((folder / "training_log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2]
    other = tmp_path / "other.csv"
    other.write_text("image,mask\n" + "\n".join(f"{i},{m}" for i, m in data[1][:3]) + "\n")
    code, err = _run(
        ["segment", "train", "--pairs", other, "--output", folder, "--epochs", "3", "--resume"],
        capsys,
    )
    _assert_refused(code, err)


def test_deep_features_stable_columns(model, data, tmp_path, capsys):
    image, mask = data[1][0]
    rows = []
    for name in ("a.csv", "b.csv"):
        code, err = _run(
            [
                "segment", "deep-features", "--model", model, "--image", image, "--mask", mask,
                "--output", tmp_path / name,
            ],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        rows.append((tmp_path / name).read_text().splitlines())
    header, values = rows[0][0].split(","), rows[0][1].split(",")
    width = json.loads((model / "config.json").read_text())["network"]["filters"][-1]
    deep = [c for c in header if c.startswith("deep_bottleneck_m")]
    assert deep == [f"deep_bottleneck_mean_{i:03d}" for i in range(width)] + [
        f"deep_bottleneck_max_{i:03d}" for i in range(width)
    ]
    assert len(rows[0]) == 2 and rows[0] == rows[1]  # one row, deterministic
    assert all(np.isfinite(float(values[header.index(c)])) for c in deep)
    assert values[header.index("deep_pooling_region")] == "mask"


def _copy_model(model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    return copy


def test_bad_model_folders_are_refused(model, data, tmp_path, capsys):
    image = data[1][0][0]
    output = tmp_path / "seg.nii.gz"

    def predict(folder, *extra, inputs=(image,)):
        argv = ["segment", "predict", "--model", folder, "--output", output, *extra]
        for item in inputs:
            argv += ["--input", item]
        code, err = _run(argv, capsys)
        _assert_refused(code, err, output, tmp_path / "seg.json")
        return err

    copy = _copy_model(model, tmp_path)
    (copy / "model.pth").unlink()
    assert "missing its weights" in predict(copy)
    shutil.rmtree(copy)
    copy = _copy_model(model, tmp_path)
    (copy / "config.json").unlink()
    assert "no config.json" in predict(copy)
    shutil.rmtree(copy)
    copy = _copy_model(model, tmp_path)
    with open(copy / "model.pth", "ab") as stream:
        stream.write(b"tampered")
    assert "checksum" in predict(copy)
    # nnU-Net folder without plans.json, then without any fold checkpoint.
    nnunet = tmp_path / "nnunet"
    (nnunet / "fold_0").mkdir(parents=True)
    (nnunet / "dataset.json").write_text("{}")
    (nnunet / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    assert "missing plans.json" in predict(nnunet)
    (nnunet / "plans.json").write_text("{}")
    (nnunet / "fold_0" / "checkpoint_final.pth").unlink()
    assert "checkpoint_final.pth" in predict(nnunet)
    # Wrong number of input channels; CUDA that does not exist (no silent CPU fallback).
    assert "1 input channel" in predict(model, inputs=(image, image))
    assert "cuda" in predict(model, "--device", "cuda:99").lower()


def test_pickled_weights_are_not_executed(model, tmp_path, capsys):
    import torch

    copy = _copy_model(model, tmp_path)
    torch.save({"object": Path("/")}, copy / "model.pth")  # a pickled non-tensor object
    from primage.segmentation.deep import sha256_file

    config = json.loads((copy / "config.json").read_text())
    config["weights_sha256"] = sha256_file(copy / "model.pth")
    (copy / "config.json").write_text(json.dumps(config))
    output = tmp_path / "seg.nii.gz"
    code, err = _run(
        ["segment", "predict", "--model", copy, "--input", Path(model).parent, "--output", output],
        capsys,
    )
    _assert_refused(code, err, output)  # the input is a folder: refused before loading
    image, _ = blob_case(1)
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    code, err = _run(
        ["segment", "predict", "--model", copy, "--input", tmp_path / "img.nii.gz",
         "--output", output],
        capsys,
    )  # fmt: skip
    _assert_refused(code, err, output)
    assert "weights_only" in err


def test_export_nnunet_reads_back(data, tmp_path, capsys):
    code, err = _run(
        [
            "segment", "export-nnunet", "--pairs", data[0], "--dataset-id", "7",
            "--name", "Blobs", "--output", tmp_path / "raw",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    root = tmp_path / "raw" / "Dataset007_Blobs"
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "MR"}
    assert dataset["labels"] == {"background": 0, "tumour": 1}
    assert dataset["numTraining"] == 6 and dataset["file_ending"] == ".nii.gz"
    images = sorted(p.name for p in (root / "imagesTr").iterdir())
    labels = sorted(p.name for p in (root / "labelsTr").iterdir())
    assert images == [f"Blobs_{i:03d}_0000.nii.gz" for i in range(6)]
    assert labels == [f"Blobs_{i:03d}.nii.gz" for i in range(6)]
    for index, (image_path, mask_path) in enumerate(data[1]):
        original = sitk.ReadImage(str(image_path))
        written = sitk.ReadImage(str(root / "imagesTr" / images[index]))
        label = sitk.ReadImage(str(root / "labelsTr" / labels[index]))
        assert np.array_equal(sitk.GetArrayFromImage(original), sitk.GetArrayFromImage(written))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert label.GetSpacing() == original.GetSpacing()
        assert label.GetOrigin() == original.GetOrigin()
        assert np.array_equal(
            sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
        )
    # The same data set again is refused (no overwrite).
    code, err = _run(
        ["segment", "export-nnunet", "--pairs", data[0], "--dataset-id", "7", "--name",
         "Blobs", "--output", tmp_path / "raw"],
        capsys,
    )  # fmt: skip
    _assert_refused(code, err)


def test_export_nnunet_bad_input_leaves_nothing(data, tmp_path, capsys):
    image_path, mask_path = data[1][0]
    gap = sitk.ReadImage(str(mask_path)) * 2  # labels {0, 2}: a gap nnU-Net rejects
    sitk.WriteImage(gap, str(tmp_path / "gap.nii.gz"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"image,mask\n{image_path},{tmp_path / 'gap.nii.gz'}\n")
    out = tmp_path / "raw"
    base = ["segment", "export-nnunet", "--pairs", pairs, "--output", out]
    code, err = _run([*base, "--dataset-id", "3", "--name", "X"], capsys)
    _assert_refused(code, err, out / "Dataset003_X")
    assert "consecutive" in err
    code, err = _run([*base, "--dataset-id", "3", "--name", "bad name"], capsys)
    _assert_refused(code, err, out)
    moved = sitk.ReadImage(str(mask_path))
    moved.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    pairs.write_text(f"image,mask\n{image_path},{tmp_path / 'moved.nii.gz'}\n")
    code, err = _run([*base, "--dataset-id", "3", "--name", "X"], capsys)
    _assert_refused(code, err, out / "Dataset003_X")
    pairs.write_text("img,seg\na,b\n")
    code, err = _run([*base, "--dataset-id", "3", "--name", "X"], capsys)
    _assert_refused(code, err, out / "Dataset003_X")


def test_mrml_volume_nodes_to_named_segments(model, mrml_scene):
    pytest.importorskip("slicer")
    from primage.mrml.segmentation_models import segment_volume_nodes
    from primage.mrml.segmentations import segment_binary_image
    from primage.mrml.volumes import volume_node_from_sitk
    from primage.synthetic import oblique_direction

    image, truth = blob_case(101)
    for item in (image, truth):
        item.SetDirection(oblique_direction((10.0, -5.0, 20.0)))
        item.SetOrigin((12.0, -4.0, 30.0))
    volume = volume_node_from_sitk(image, mrml_scene, name="T2w")
    node = segment_volume_nodes(model, [volume], mrml_scene, postprocess="largest")
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment_id = segmentation.GetNthSegmentID(0)
    assert segmentation.GetSegment(segment_id).GetName() == "tumour"
    mask = segment_binary_image(node, segment_id)
    mask = sitk.Resample(mask, truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert _dice(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(truth)) >= 0.85
    config = json.loads((model / "config.json").read_text())
    assert json.loads(node.GetAttribute("primage.model.weights_sha256")) == config["weights_sha256"]
    with pytest.raises(PrimageInputError, match="input channel"):
        segment_volume_nodes(model, [volume, volume], mrml_scene)


def test_mrml_training_from_scene_nodes(mrml_scene, tmp_path):
    pytest.importorskip("slicer")
    _need_torch()
    from primage.mrml.segmentation_models import segment_volume_nodes, train_from_nodes
    from primage.mrml.segmentations import segmentation_from_label_image
    from primage.mrml.volumes import volume_node_from_sitk
    from primage.segmentation.deep import TrainOptions

    pairs = []
    for seed in (0, 1):
        image, mask = blob_case(seed)
        volume = volume_node_from_sitk(image, mrml_scene, name=f"T2w {seed}")
        segmentation = segmentation_from_label_image(mask, mrml_scene, {1: "tumour"})
        pairs.append((volume, segmentation, "tumour"))
    options = TrainOptions(epochs=2, iterations_per_epoch=2)
    config = train_from_nodes(pairs, tmp_path / "model", options=options)
    split = config["training"]["training_cases"] + config["training"]["validation_cases"]
    assert sorted(split) == ["case 1", "case 2"]
    assert len(json.loads((tmp_path / "model" / "training_log.json").read_text())) == 2
    node = segment_volume_nodes(tmp_path / "model", [pairs[0][0]], mrml_scene)
    assert node.IsA("vtkMRMLSegmentationNode")
    with pytest.raises(PrimageInputError, match="pair"):
        train_from_nodes([], tmp_path / "other")


def test_mrml_deep_features_and_nnunet_export_from_nodes(model, mrml_scene, tmp_path):
    """deep-features and export-nnunet through the MRML layer give what the engine gives on
    the same images and masks."""
    pytest.importorskip("slicer")
    from primage.mrml.segmentation_models import (
        deep_features_from_nodes,
        export_nnunet_from_nodes,
    )
    from primage.mrml.segmentations import segmentation_from_label_image
    from primage.mrml.tables import rows_from_table_node
    from primage.mrml.volumes import volume_node_from_sitk
    from primage.segmentation.deep import load_model

    cases = []
    for seed in (201, 202):
        image, mask = blob_case(seed)
        volume = volume_node_from_sitk(image, mrml_scene, name=f"case {seed}")
        segmentation = segmentation_from_label_image(mask, mrml_scene, {1: "tumour"})
        cases.append(((volume, segmentation, "tumour"), image, mask))
    table = deep_features_from_nodes(model, [c[0] for c in cases], mrml_scene)
    rows = rows_from_table_node(table)
    assert [row["case"] for row in rows] == ["case 201", "case 202"]
    engine = load_model(model)
    for row, (_, image, mask) in zip(rows, cases, strict=True):
        expected = engine.deep_features([image], mask)
        numeric = [k for k, v in expected.items() if isinstance(v, float)]
        assert len(numeric) == 2 * 64
        assert [row[k] for k in numeric] == pytest.approx([expected[k] for k in numeric], abs=1e-6)
    assert rows[0]["deep_bottleneck_mean_000"] != rows[1]["deep_bottleneck_mean_000"]

    folder = export_nnunet_from_nodes([c[0] for c in cases], 7, "Blobs", tmp_path / "raw")
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "tumour": 1} and dataset["numTraining"] == 2
    for index, (_, _, mask) in enumerate(cases):
        labels = sitk.ReadImage(str(folder / "labelsTr" / f"Blobs_{index:03d}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(mask))
        assert (folder / "imagesTr" / f"Blobs_{index:03d}_0000.nii.gz").is_file()
    with pytest.raises(PrimageInputError, match="already exists"):
        export_nnunet_from_nodes([c[0] for c in cases], 7, "Blobs", tmp_path / "raw")
    with pytest.raises(PrimageInputError, match="case"):
        deep_features_from_nodes(model, [], mrml_scene)
