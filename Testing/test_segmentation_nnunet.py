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
