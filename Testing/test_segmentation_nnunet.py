"""nnU-Net v2 inference on a real model folder that nnunetv2 itself trains in the set-up.

The set-up (Testing/_nnunet_model.py, ~40 s on 2 cores) exports blob cases with
``primage segment export-nnunet`` (so nnU-Net's own dataset integrity check runs on our
export), plans and preprocesses them and trains folds 0 and 1 of 3d_fullres for one epoch
of 20 batches. nnunetv2 comes from the ``nnunet`` extra, which ``make test`` installs;
without it these tests fail with an install hint (CI must run them).
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

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def nnunet_model(tmp_path_factory):
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        pytest.fail("nnunetv2 is missing: pip install -e '.[test,seg,nnunet]' (make test does)")
    base = tmp_path_factory.mktemp("nnunet")
    completed = subprocess.run(
        [sys.executable, str(HERE / "_nnunet_model.py"), str(base), "20"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    folder = Path(completed.stdout.strip().splitlines()[-1])
    assert (folder / "plans.json").is_file() and (
        folder / "fold_1" / "checkpoint_final.pth"
    ).is_file()
    return folder, base / "data"


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def _refused(code, captured, *paths):
    assert code == 2, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    for path in paths:
        assert not Path(path).exists()
    return captured.err


def test_folds_ensemble_predicts_on_the_input_grid(nnunet_model, tmp_path, capsys):
    folder, data = nnunet_model
    image = sitk.ReadImage(str(data / "case000_image.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "case000_mask.nii.gz"))) > 0
    output = tmp_path / "seg.nii.gz"
    code, captured = _run(
        ["segment", "predict", "--model", folder, "--input", data / "case000_image.nii.gz",
         "--output", output],
        capsys,
    )  # fmt: skip
    assert code == 0, captured.err
    assert captured.out == ""  # nnU-Net's own prints are kept off stdout
    seg = sitk.ReadImage(str(output))
    assert seg.GetSize() == image.GetSize() and seg.GetOrigin() == image.GetOrigin()
    labels = sitk.GetArrayFromImage(seg)
    assert set(np.unique(labels)) <= {0, 1}
    dice = 2 * (truth & (labels > 0)).sum() / (truth.sum() + (labels > 0).sum())
    assert dice > 0.7, dice  # one short epoch per fold: a working model, not a good one
    sidecar = json.loads((tmp_path / "seg.json").read_text())
    model = sidecar["model"]
    assert model["format"] == "nnunetv2" and model["folds"] == ["0", "1"]
    assert set(model["checkpoints_sha256"]) == {"fold_0", "fold_1"}
    assert "nearest neighbour" in model["label_resampling"]
    assert sidecar["labels"] == {"background": 0, "tumour": 1}


def test_one_fold_and_bad_folds(nnunet_model, tmp_path, capsys):
    folder, data = nnunet_model
    output = tmp_path / "seg.nii.gz"
    base = ["segment", "predict", "--model", folder, "--input", data / "case001_image.nii.gz",
            "--output", output, "--no-mirroring"]  # fmt: skip
    code, captured = _run([*base, "--folds", "1"], capsys)
    assert code == 0, captured.err
    assert json.loads((tmp_path / "seg.json").read_text())["model"]["folds"] == ["1"]
    output.unlink()
    (tmp_path / "seg.json").unlink()
    assert "fold(s) 7" in _refused(*_run([*base, "--folds", "7"], capsys), output)


def test_incomplete_or_mismatched_nnunet_input_is_refused(nnunet_model, tmp_path, capsys):
    folder, data = nnunet_model
    image = data / "case000_image.nii.gz"
    output = tmp_path / "seg.nii.gz"

    def predict(model, inputs=(image,)):
        argv = ["segment", "predict", "--model", model, "--output", output]
        for item in inputs:
            argv += ["--input", item]
        return _refused(*_run(argv, capsys), output, tmp_path / "seg.json")

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "plans.json").unlink()
    assert "missing plans.json" in predict(copy)
    shutil.copy(folder / "plans.json", copy / "plans.json")
    for checkpoint in copy.glob("fold_*/checkpoint_final.pth"):
        checkpoint.unlink()
    assert "checkpoint_final.pth" in predict(copy)
    shutil.copy(folder / "fold_0" / "checkpoint_final.pth", copy / "fold_0")
    (copy / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    assert "cannot be loaded safely" in predict(copy)
    assert "1 input channel" in predict(folder, inputs=(image, image))


# --------------------------------------------------------------------------- labels on the input grid
def _anisotropic_padded_input(data) -> sitk.Image:
    """case000 on an anisotropic, rotated grid (not the plan's 1 mm) inside a zero border, so
    that nnU-Net resamples, crops to the non-zero region and the direction matters."""
    image = sitk.ReadImage(str(data / "case000_image.nii.gz"))
    grid = sitk.Image([23, 29, 13], sitk.sitkFloat32)
    grid.SetSpacing((1.37, 1.17, 2.61))
    grid.SetOrigin((-1.2, 0.7, -3.1))
    moved = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear))
    result = sitk.GetImageFromArray(np.pad(moved, ((2, 1), (0, 3), (4, 0))))
    result.SetSpacing(grid.GetSpacing())
    result.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    result.SetOrigin((5.0, -2.0, 1.5))
    return result


def _preprocessed_labels(model, image):
    """nnU-Net's preprocessing and fold-averaged logits, arg-max on its own grid."""
    import torch

    predictor = model.predictor
    data, _, props = predictor.configuration_manager.preprocessor_class(False).run_case_npy(
        sitk.GetArrayFromImage(image)[None].astype(np.float32),
        None,
        {"spacing": list(reversed(image.GetSpacing()))},
        predictor.plans_manager,
        predictor.configuration_manager,
        predictor.dataset_json,
    )
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
    return np.argmax(logits.numpy(), axis=0).astype(np.uint8), props


def _independent_nearest_neighbour(model, image):
    """sitk.Resample (nearest) of the preprocessed-grid labels, with that grid written as a
    physical image: crop box origin, spacing s * n_in / n_out, first centre half a new voxel
    in from the box edge (skimage resize with aligned edges), axes transposed back."""
    labels, props = _preprocessed_labels(model, image)
    backward = model.predictor.plans_manager.transpose_backward
    labels = labels.transpose(backward)  # (z, y, x) of the input
    box = [props["bbox_used_for_cropping"][i] for i in backward]
    cropped = [props["shape_after_cropping_and_before_resampling"][i] for i in backward]
    assert any(lo > 0 for lo, _ in box), "the test input must be cropped by nnU-Net"
    assert labels.shape != tuple(cropped), "the test input must be resampled by nnU-Net"
    grid = sitk.GetImageFromArray(labels)
    ratio = [n_in / n_out for n_in, n_out in zip(cropped, labels.shape, strict=True)][::-1]
    start = [lo + r / 2 - 0.5 for (lo, _), r in zip(box[::-1], ratio, strict=True)]
    grid.SetSpacing([s * r for s, r in zip(image.GetSpacing(), ratio, strict=True)])
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint(start))
    resampled = sitk.Resample(grid, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    # Voxels whose centre falls exactly halfway between two preprocessed centres: either is
    # nearest, and sitk's floating-point arithmetic picks one or the other.
    ties = np.zeros(image.GetSize()[::-1], bool)
    for axis, ((lo, hi), n_in, n_out) in enumerate(zip(box, cropped, labels.shape, strict=True)):
        i = np.arange(hi - lo)
        tied = np.zeros(image.GetSize()[2 - axis], bool)
        tied[lo:hi] = ((2 * i + 1) * n_out) % (2 * n_in) == 0
        ties |= np.expand_dims(tied, [a for a in range(3) if a != axis])
    return sitk.GetArrayFromImage(resampled), ties


def _transposed_copy(folder, tmp_path):
    """The model folder with plans transposing the axes (2, 0, 1) before the network."""
    copy = tmp_path / "transposed"
    shutil.copytree(folder, copy)
    plans = json.loads((copy / "plans.json").read_text())
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    (copy / "plans.json").write_text(json.dumps(plans))
    return copy


@pytest.mark.parametrize("transposed", [False, True])
def test_labels_are_nearest_neighbour_of_the_preprocessed_grid(nnunet_model, tmp_path, transposed):
    from scipy import ndimage

    from primage.segmentation.models import load_model

    folder, data = nnunet_model
    folder = _transposed_copy(folder, tmp_path) if transposed else folder
    model = load_model(folder, mirroring=False)
    image = _anisotropic_padded_input(data)
    result = model.predict([image])
    assert result.GetSize() == image.GetSize() and result.GetOrigin() == image.GetOrigin()
    assert result.GetDirection() == image.GetDirection()
    ours = sitk.GetArrayFromImage(result)
    assert set(np.unique(ours).tolist()) <= set(model.labels.values())
    independent, ties = _independent_nearest_neighbour(model, image)
    assert ties.mean() < 0.5
    assert np.array_equal(ours[~ties], independent[~ties])
    # nnunetv2's own output (class probabilities resampled, then arg-max) agrees but for
    # voxels next to a label boundary of it.
    array = sitk.GetArrayFromImage(image)[None].astype(np.float32)
    own = model.predictor.predict_single_npy_array(
        array, {"spacing": list(reversed(image.GetSpacing()))}, None, None, False
    )
    assert (ours == own).mean() > 0.99
    cube = np.ones((3, 3, 3), bool)
    band = ndimage.binary_dilation(own > 0, cube) & ~ndimage.binary_erosion(own > 0, cube)
    assert not np.any((ours != own) & ~band)
    dice = 2 * ((ours > 0) & (own > 0)).sum() / ((ours > 0).sum() + (own > 0).sum())
    assert dice > 0.8, dice  # small object (~200 voxels), 2.6 mm slices
    assert "nearest neighbour" in model.provenance()["label_resampling"]


def test_nearest_indices_invert_nnunet_resampling():
    from primage.segmentation.nnunet_model import nearest_indices

    assert nearest_indices(4, 4).tolist() == [0, 1, 2, 3]
    assert nearest_indices(2, 4).tolist() == [1, 3]  # ties at 0.5 round up, as ITK does
    assert nearest_indices(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    for n_in, n_out in [(13, 34), (29, 33), (23, 31), (7, 3)]:
        centres = (np.arange(n_in) + 0.5) * n_out / n_in - 0.5  # skimage, aligned edges
        assert np.all(np.abs(nearest_indices(n_in, n_out) - centres) <= 0.5)


def test_region_based_and_cascade_models_are_refused(nnunet_model, tmp_path):
    from primage.errors import PrimageInputError
    from primage.segmentation.models import check_model, load_model

    folder, _ = nnunet_model
    copy = tmp_path / "regions"
    shutil.copytree(folder, copy)
    dataset = json.loads((copy / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    dataset["regions_class_order"] = [1, 2]
    (copy / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(PrimageInputError, match="region-based"):
        check_model(copy)
    shutil.copy(folder / "dataset.json", copy / "dataset.json")
    plans = json.loads((copy / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["previous_stage"] = "3d_lowres"
    (copy / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PrimageInputError, match="cascade"):
        load_model(copy)


# --------------------------------------------------------------------------- deep features
def _features(folder, image, mask, output, capsys, *extra):
    argv = ["segment", "deep-features", "--model", folder, "--image", image, "--mask", mask,
            "--output", output, *extra]  # fmt: skip
    code, captured = _run(argv, capsys)
    return code, captured


def _read_row(path):
    header, values, *rest = Path(path).read_text().splitlines()
    assert not rest  # one row per case
    return dict(zip(header.split(","), values.split(","), strict=True))


def test_deep_features_from_nnunet_folder(nnunet_model, tmp_path, capsys):
    folder, data = nnunet_model
    image, mask = data / "case000_image.nii.gz", data / "case000_mask.nii.gz"
    background = tmp_path / "background.nii.gz"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(mask)) == 0, sitk.sitkUInt8), str(background))
    rows = {}
    for name, region, extra in [("a", mask, ()), ("b", mask, ()), ("bg", background, ()),
                                ("f1", mask, ("--fold", "1"))]:  # fmt: skip
        code, captured = _features(folder, image, region, tmp_path / f"{name}.csv", capsys, *extra)
        assert code == 0, captured.err
        rows[name] = _read_row(tmp_path / f"{name}.csv")
    plans = json.loads((folder / "plans.json").read_text())
    width = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][
        "features_per_stage"
    ][-1]
    deep = [c for c in rows["a"] if c.startswith("deep_bottleneck_m")]
    assert deep == [f"deep_bottleneck_{s}_{i:03d}" for s in ("mean", "max") for i in range(width)]
    assert list(rows["a"])[:7] == ["case", "image", "mask", "model_weights_sha256",
                                   "primage_version", "deep_pooling_region",
                                   "deep_bottleneck_voxels"]  # fmt: skip
    assert rows["a"] == rows["b"]  # deterministic
    assert all(np.isfinite(float(rows["a"][c])) for c in deep)
    values = {k: np.array([float(r[c]) for c in deep]) for k, r in rows.items()}
    assert np.abs(values["a"] - values["bg"]).max() > 1e-3  # tumour and background differ
    assert int(rows["bg"]["deep_bottleneck_voxels"]) > int(rows["a"]["deep_bottleneck_voxels"])
    assert list(rows["f1"]) == list(rows["a"])
    assert rows["f1"]["model_weights_sha256"] != rows["a"]["model_weights_sha256"]
    assert not np.allclose(values["f1"], values["a"])  # another fold's encoder


def test_deep_features_of_a_tiny_mask_fall_back_to_its_box(nnunet_model):
    from primage.segmentation.models import load_model

    folder, data = nnunet_model
    image = sitk.ReadImage(str(data / "case000_image.nii.gz"))
    tiny = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    tiny.CopyInformation(image)
    tiny[16, 16, 16] = 1
    model = load_model(folder, folds=["0"])
    row = model.deep_features([image], tiny)
    assert row["deep_pooling_region"] == "mask bounding box"
    assert row["deep_bottleneck_voxels"] == 1
    assert len(row) == 2 + len(model.feature_names())


def test_deep_features_bad_input_is_refused(nnunet_model, tmp_path, capsys):
    folder, data = nnunet_model
    image, mask = data / "case000_image.nii.gz", data / "case000_mask.nii.gz"
    output = tmp_path / "features.csv"
    shifted, empty = tmp_path / "shifted.nii.gz", tmp_path / "empty.nii.gz"
    tumour = sitk.ReadImage(str(mask))
    sitk.WriteImage(tumour * 0, str(empty))
    tumour.SetOrigin((3.0, 0.0, 0.0))
    sitk.WriteImage(tumour, str(shifted))
    err = _refused(*_features(folder, image, shifted, output, capsys), output)
    assert "not on the voxel grid" in err
    assert "mask is empty" in _refused(*_features(folder, image, empty, output, capsys), output)
    err = _refused(*_features(folder, image, mask, output, capsys, "--fold", "7"), output)
    assert "fold(s) 7" in err
