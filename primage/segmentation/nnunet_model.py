"""nnU-Net v2 inference on trained model folders (``pip install 'primage[nnunet]'``).

A model folder is what ``nnUNetv2_train`` writes under ``nnUNet_results``
(``Dataset<ID>_<NAME>/<Trainer>__<Plans>__<configuration>``): ``dataset.json``,
``plans.json`` and ``fold_<k>/checkpoint_final.pth`` for one or more folds. The folder is
checked first (files present, JSON readable, SimpleITK image reader, labels not
region-based). Checkpoints are read with ``torch.load(..., weights_only=True)``; only
numpy scalar and dtype classes (in nnU-Net's training log) are allowed besides tensors,
so no arbitrary pickle runs. The network is rebuilt by nnU-Net from the plans, and
``nnUNetPredictor`` runs its own preprocessing, sliding-window inference (mirroring
test-time augmentation unless switched off) and the ensemble of the chosen folds (all by
default). nnU-Net returns the label map on the input's voxel grid (it resamples the class
probabilities back, then takes the arg-max); the input's geometry is copied onto it and the
label names are those of ``dataset.json``.

nnunetv2 and torch are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import same_geometry

CHECKPOINT = "checkpoint_final.pth"
INSTALL_HINT = "install the optional extra: pip install 'primage[nnunet]'"


def is_nnunet_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / "dataset.json").is_file() or (folder / "plans.json").is_file()


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PrimageInputError(f"{path} is not valid JSON ({error})") from None


def available_folds(folder: Path) -> list[str]:
    folds = [p.parent.name[len("fold_") :] for p in folder.glob(f"fold_*/{CHECKPOINT}")]
    return sorted(folds, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def check_nnunet_folder(folder: str | os.PathLike, folds=None) -> dict:
    """Check an nnU-Net v2 model folder (no torch needed); returns a description."""
    folder = Path(folder)
    missing = [n for n in ("dataset.json", "plans.json") if not (folder / n).is_file()]
    found = available_folds(folder)
    if not found:
        missing.append(f"fold_*/{CHECKPOINT}")
    if missing:
        raise PrimageInputError(
            f"nnU-Net model folder {folder} is incomplete: missing {', '.join(missing)}"
        )
    dataset, plans = _json(folder / "dataset.json"), _json(folder / "plans.json")
    channels = dataset.get("channel_names", dataset.get("modality"))
    labels = dataset.get("labels")
    if not isinstance(channels, dict) or not channels or not isinstance(labels, dict):
        raise PrimageInputError(f"{folder / 'dataset.json'} lacks channel_names or labels")
    if any(not isinstance(v, int) for v in labels.values()):
        raise PrimageInputError(
            f"{folder} is a region-based nnU-Net model; only plain label models are supported"
        )
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader != "SimpleITKIO":
        raise PrimageInputError(
            f"{folder} was planned with the {reader} image reader; only SimpleITKIO models "
            "are supported (axis order)"
        )
    if folds:
        folds = [str(f) for f in folds]
        absent = [f for f in folds if f not in found]
        if absent:
            raise PrimageInputError(
                f"fold(s) {', '.join(absent)} not in {folder} (available: {', '.join(found)})"
            )
    return {
        "dataset": dataset,
        "plans": plans,
        "folds": folds or found,
        "channels": {str(k): str(v) for k, v in channels.items()},
        "labels": {str(k): int(v) for k, v in labels.items()},
    }


def _load_checkpoint(path: Path) -> dict:
    import torch

    safe = [np.dtype, np._core.multiarray.scalar] + [
        getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")
    ]
    try:
        with torch.serialization.safe_globals(safe):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PrimageInputError(
            f"nnU-Net checkpoint {path} cannot be loaded safely (weights_only): "
            f"{str(error).strip().splitlines()[-1][:160]}"
        ) from None
    required = ("network_weights", "trainer_name", "init_args")
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in required):
        raise PrimageInputError(f"{path} is not an nnU-Net checkpoint (network_weights missing)")
    return checkpoint


@dataclass
class NnunetModel:
    folder: Path
    description: dict
    predictor: object
    device: object
    checkpoints: dict
    mirroring: bool

    @property
    def in_channels(self) -> int:
        return len(self.description["channels"])

    @property
    def labels(self) -> dict[str, int]:
        return self.description["labels"]

    def provenance(self) -> dict:
        from importlib.metadata import version

        from primage.segmentation.deep import sha256_file

        return {
            "folder": str(self.folder.resolve()),
            "format": "nnunetv2",
            "nnunetv2_version": version("nnunetv2"),
            "trainer": self.checkpoints["trainer"],
            "configuration": self.checkpoints["configuration"],
            "folds": self.description["folds"],
            "epochs_trained": self.checkpoints["epochs"],
            "test_time_mirroring": self.mirroring,
            "checkpoints_sha256": self.checkpoints["sha256"],
            "plans_sha256": sha256_file(self.folder / "plans.json"),
            "dataset_json_sha256": sha256_file(self.folder / "dataset.json"),
        }

    def predict(self, images: list[sitk.Image], progress=None) -> sitk.Image:
        return predict_nnunet(self, images)


def load_nnunet(
    folder: str | os.PathLike, device: str = "cpu", folds=None, mirroring: bool = True
) -> NnunetModel:
    """Check and load an nnU-Net v2 model folder (the chosen folds, all by default)."""
    from primage.segmentation.deep import resolve_device, sha256_file

    folder = Path(folder)
    description = check_nnunet_folder(folder, folds)
    torch_device = resolve_device(device)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints path warnings
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
            from nnunetv2.utilities.label_handling.label_handling import (
                determine_num_input_channels,
            )
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError as error:
        raise PrimageInputError(
            f"nnU-Net inference needs nnunetv2 ({error.name} is missing); {INSTALL_HINT}"
        ) from None
    parameters, hashes = [], {}
    trainer_name = configuration = mirroring_axes = None
    epochs = {}
    for fold in description["folds"]:
        path = folder / f"fold_{fold}" / CHECKPOINT
        checkpoint = _load_checkpoint(path)
        hashes[f"fold_{fold}"] = sha256_file(path)
        epochs[f"fold_{fold}"] = int(checkpoint.get("current_epoch", -1))
        if trainer_name is None:
            trainer_name = checkpoint["trainer_name"]
            configuration = checkpoint["init_args"]["configuration"]
            mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes")
        elif checkpoint["init_args"]["configuration"] != configuration:
            raise PrimageInputError(f"folds of {folder} were trained on different configurations")
        parameters.append(checkpoint["network_weights"])
    plans_manager = PlansManager(description["plans"])
    try:
        configuration_manager = plans_manager.get_configuration(configuration)
    except Exception:
        raise PrimageInputError(
            f"plans.json of {folder} has no configuration {configuration!r} (inconsistent folder)"
        ) from None
    dataset = description["dataset"]
    channels = determine_num_input_channels(plans_manager, configuration_manager, dataset)
    outputs = plans_manager.get_label_manager(dataset).num_segmentation_heads
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if trainer_class is None:
        raise PrimageInputError(f"nnU-Net trainer {trainer_name!r} of {folder} is not installed")
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager, channels, outputs, enable_deep_supervision=False
    )
    try:
        network.load_state_dict(parameters[0])
    except RuntimeError as error:
        raise PrimageInputError(
            f"checkpoints of {folder} do not fit its plans: {str(error).splitlines()[0][:160]}"
        ) from None
    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=torch_device.type == "cuda",
            device=torch_device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        predictor.manual_initialization(
            network,
            plans_manager,
            configuration_manager,
            parameters,
            dataset,
            trainer_name,
            mirroring_axes,
        )
    record = {
        "trainer": trainer_name,
        "configuration": configuration,
        "sha256": hashes,
        "epochs": epochs,
    }
    return NnunetModel(folder, description, predictor, torch_device, record, mirroring)


def predict_nnunet(model: NnunetModel, images: list[sitk.Image]) -> sitk.Image:
    """UInt8 label image on the grid of ``images[0]`` (one image per model channel)."""
    if len(images) != model.in_channels:
        raise PrimageInputError(
            f"nnU-Net model {model.folder} takes {model.in_channels} input channel(s) "
            f"({', '.join(model.description['channels'].values())}); {len(images)} given"
        )
    for index, image in enumerate(images[1:], start=2):
        if not same_geometry(images[0], image):
            raise PrimageInputError(f"input {index} is not on the voxel grid of input 1")
    data = np.stack([sitk.GetArrayFromImage(im).astype(np.float32) for im in images])
    properties = {"spacing": [float(s) for s in reversed(images[0].GetSpacing())]}
    with contextlib.redirect_stdout(io.StringIO()):
        labels = model.predictor.predict_single_npy_array(data, properties, None, None, False)
    labels = np.asarray(labels)
    if labels.shape != data.shape[1:]:
        raise PrimageInputError(
            f"nnU-Net returned a {labels.shape} label map for a {data.shape[1:]} input"
        )
    result = sitk.GetImageFromArray(labels.astype(np.uint8))
    result.CopyInformation(images[0])
    return result
