"""nnU-Net v2 inference and deep features on model folders (``pip install 'primage[nnunet]'``).

A model folder is what ``nnUNetv2_train`` writes under ``nnUNet_results``
(``Dataset<ID>_<NAME>/<Trainer>__<Plans>__<configuration>``): ``dataset.json``,
``plans.json`` and ``fold_<k>/checkpoint_final.pth`` for one or more folds. The folder is
checked first (files present, JSON readable, SimpleITK image reader, labels not
region-based). Checkpoints are read with ``torch.load(..., weights_only=True)``; only
numpy scalar and dtype classes (in nnU-Net's training log) are allowed besides tensors,
so no arbitrary pickle runs. The network is rebuilt by nnU-Net from the plans.

Prediction: nnU-Net's own preprocessing (transpose, crop to the non-zero region,
normalisation, resampling to the plan's spacing), its sliding-window inference (mirroring
test-time augmentation unless switched off) with the logits of the chosen folds (all by
default) averaged, then the arg-max **on nnU-Net's preprocessed grid**. The labels go back
to the input grid with nearest neighbour (:func:`labels_to_input_grid`: undo the
resampling, the crop and the transpose), so that only label values of ``dataset.json``
appear; nnunetv2 itself would resample the class probabilities instead.

Deep features (:func:`nnunet_deep_features`): the encoder of the first selected fold on a
window of the preprocessed volume around the mask, pooled inside the mask on the
bottleneck grid, with the columns of the primage DynUNet version.

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
LABEL_RESAMPLING = (
    "arg-max of the folds' mean logits on nnU-Net's preprocessed grid, then nearest "
    "neighbour onto the input grid (voxel centres mapped as nnU-Net's resampling)"
)
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
            "label_resampling": LABEL_RESAMPLING,
        }

    @property
    def feature_weights_sha256(self) -> str:
        """Checksum of the checkpoint whose encoder gives the deep features (first fold)."""
        return self.checkpoints["sha256"][f"fold_{self.description['folds'][0]}"]

    def predict(self, images: list[sitk.Image], progress=None) -> sitk.Image:
        return predict_nnunet(self, images, progress)

    def feature_names(self) -> list[str]:
        return nnunet_feature_names(self)

    def deep_features(self, images: list[sitk.Image], mask: sitk.Image) -> dict:
        return nnunet_deep_features(self, images, mask)


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
    if configuration_manager.previous_stage_name is not None:
        raise PrimageInputError(
            f"{folder} is a cascade stage ({configuration}) that needs the previous stage's "
            "segmentation; not supported"
        )
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


def _input_array(model: NnunetModel, images: list[sitk.Image]) -> np.ndarray:
    """The channels as nnU-Net's SimpleITKIO reads them: (c, z, y, x) float32."""
    if len(images) != model.in_channels:
        raise PrimageInputError(
            f"nnU-Net model {model.folder} takes {model.in_channels} input channel(s) "
            f"({', '.join(model.description['channels'].values())}); {len(images)} given"
        )
    for index, image in enumerate(images[1:], start=2):
        if not same_geometry(images[0], image):
            raise PrimageInputError(f"input {index} is not on the voxel grid of input 1")
    return np.stack([sitk.GetArrayFromImage(im).astype(np.float32) for im in images])


def _preprocess(model: NnunetModel, images: list[sitk.Image], seg: np.ndarray | None = None):
    """nnU-Net's own preprocessing of one case; returns (data, seg, properties)."""
    predictor = model.predictor
    data = _input_array(model, images)
    properties = {"spacing": [float(s) for s in reversed(images[0].GetSpacing())]}
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        return preprocessor.run_case_npy(
            data,
            None if seg is None else seg[None],
            properties,
            predictor.plans_manager,
            predictor.configuration_manager,
            predictor.dataset_json,
        )


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """For each of ``size_in`` voxels, the nearest of ``size_out`` voxels covering the same
    extent.

    nnU-Net resamples with skimage ``resize`` / ``map_coordinates`` with aligned voxel
    edges (``align_corners=False``, also for its separate-z path): output voxel ``j`` sits
    at input index ``(j + 0.5) * size_in / size_out - 0.5``. Inverted, input voxel ``i``
    sits at ``(i + 0.5) * size_out / size_in - 0.5``; rounding half up gives
    ``floor((2i + 1) * size_out / (2 * size_in))``, computed in integers (exact ties).
    """
    index = np.arange(size_in, dtype=np.int64)
    return ((2 * index + 1) * size_out) // (2 * size_in)


def labels_to_input_grid(labels: np.ndarray, properties: dict, transpose_backward) -> np.ndarray:
    """Labels on nnU-Net's preprocessed grid -> (z, y, x) array of the input grid: nearest
    neighbour onto the cropped grid, zeros outside the crop box, axes transposed back."""
    cropped_shape = properties["shape_after_cropping_and_before_resampling"]
    maps = [nearest_indices(n, m) for n, m in zip(cropped_shape, labels.shape, strict=True)]
    full = np.zeros(properties["shape_before_cropping"], labels.dtype)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"])
    full[box] = labels[np.ix_(*maps)]
    return full.transpose(transpose_backward)


def predict_nnunet(model: NnunetModel, images: list[sitk.Image], progress=None) -> sitk.Image:
    """Label image on the grid of ``images[0]`` (one image per model channel): the folds'
    mean logits arg-maxed on nnU-Net's preprocessed grid, then nearest neighbour back."""
    import torch

    from primage.progress import no_progress

    progress = progress or no_progress
    progress(0.05, "nnU-Net preprocessing")
    data, _, properties = _preprocess(model, images)
    progress(0.2, f"nnU-Net inference ({len(model.description['folds'])} fold(s))")
    predictor = model.predictor
    with contextlib.redirect_stdout(io.StringIO()):
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
    progress(0.9, "labels back to the input grid (nearest neighbour)")
    labels = predictor.label_manager.convert_logits_to_segmentation(logits)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    dtype = np.uint8 if max(model.labels.values()) < 256 else np.uint16
    array = labels_to_input_grid(
        labels.astype(dtype), properties, predictor.plans_manager.transpose_backward
    )
    if array.shape != images[0].GetSize()[::-1]:
        raise PrimageInputError(f"nnU-Net labels {array.shape} do not fit the input grid")
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(images[0])
    progress(1.0, "done")
    return result


# --------------------------------------------------------------------------- deep features
def _encoder(model: NnunetModel):
    """The first selected fold's network encoder (skips list; the last is the bottleneck)."""
    network = getattr(model.predictor.network, "_orig_mod", model.predictor.network)  # compiled
    encoder = getattr(network, "encoder", None)
    if not all(hasattr(encoder, key) for key in ("strides", "output_channels")):
        raise PrimageInputError(
            f"the network of {model.folder} ({type(network).__name__}) has no nnU-Net encoder "
            "(encoder.strides, encoder.output_channels): no deep features"
        )
    if len(model.predictor.configuration_manager.patch_size) != 3:
        raise PrimageInputError(f"{model.folder} is a 2D configuration; deep features need 3D")
    return encoder


def nnunet_feature_names(model: NnunetModel) -> list[str]:
    from primage.segmentation.deep import bottleneck_feature_names

    return bottleneck_feature_names(int(_encoder(model).output_channels[-1]))


def _window(inside: np.ndarray, patch, stride) -> tuple[list[int], list[int]]:
    """Starts and sizes of a window (the patch, or the mask's box if larger, rounded up to the
    stride) centred on the mask's bounding box and kept inside the volume where it fits."""
    starts, sizes = [], []
    for axis, (p, k) in enumerate(zip(patch, stride, strict=True)):
        hits = np.flatnonzero(np.any(inside, axis=tuple(a for a in range(3) if a != axis)))
        lo, hi, n = int(hits[0]), int(hits[-1]) + 1, inside.shape[axis]
        size = int(np.ceil(max(p, hi - lo) / k) * k)
        start = (lo + hi) // 2 - size // 2
        start = min(max(start, 0), n - size) if n >= size else -((size - n) // 2)
        starts.append(start)
        sizes.append(size)
    return starts, sizes


def _take(array: np.ndarray, starts, sizes) -> np.ndarray:
    """(c, z, y, x) window of ``array``; zeros beyond its edges (as nnU-Net pads)."""
    out = np.zeros((array.shape[0], *sizes), np.float32)
    source, target = [slice(None)], [slice(None)]
    for start, size, n in zip(starts, sizes, array.shape[1:], strict=True):
        lo, hi = max(start, 0), min(start + size, n)
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[tuple(target)] = array[tuple(source)]
    return out


def nnunet_deep_features(model: NnunetModel, images: list[sitk.Image], mask: sitk.Image) -> dict:
    """Bottleneck activations of the first selected fold's encoder, pooled (mean, max) inside
    the mask; same columns as :func:`primage.segmentation.deep.deep_features`.

    Image and mask (non-zero = inside) go through nnU-Net's preprocessing together (the mask
    as nnU-Net resamples labels). The encoder sees one window of the preprocessed volume:
    the plan's patch size (or the mask's bounding box, if larger, rounded up to the total
    stride) centred on the mask, zero-padded beyond the volume, so instance normalisation
    sees patch-sized input as in training and memory stays bounded. Folds are not averaged:
    their channels need not correspond.
    """
    import torch

    from primage.segmentation.deep import pool_in_mask

    if not same_geometry(images[0], mask):
        raise PrimageInputError("mask is not on the voxel grid of the image")
    mask_array = sitk.GetArrayFromImage(mask) != 0
    if not mask_array.any():
        raise PrimageInputError("mask is empty")
    encoder = _encoder(model)
    data, seg, _ = _preprocess(model, images, mask_array.astype(np.int8))
    inside = seg[0] > 0
    if not inside.any():
        raise PrimageInputError("mask is empty after nnU-Net's preprocessing (cropped away)")
    stride = np.prod(np.array(encoder.strides, dtype=np.int64), axis=0)
    starts, sizes = _window(inside, model.predictor.configuration_manager.patch_size, stride)
    window = _take(data, starts, sizes)
    window_mask = _take(inside[None].astype(np.float32), starts, sizes)[0]
    network = getattr(model.predictor.network, "_orig_mod", model.predictor.network)
    network.load_state_dict(model.predictor.list_of_parameters[0])
    network.to(model.device).eval()
    with torch.no_grad():
        x = torch.as_tensor(window[None], device=model.device)
        bottleneck = encoder(x)[-1][0]  # (channels, z, y, x)
        return pool_in_mask(bottleneck, window_mask, nnunet_feature_names(model))
