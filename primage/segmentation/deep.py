"""Built-in deep-learning segmentation: train, predict and deep features with MONAI's DynUNet.

The network is MONAI's ``DynUNet`` (the nnU-Net-style 3D U-Net) with deep supervision.
Training is patch based (``RandCropByPosNegLabeld``: half the patches centred on tumour),
with flips, 90-degree rotations, intensity scale/shift and Gaussian noise; the loss is
Dice + cross-entropy on the main output and on each deep-supervision head, weighted
1, 1/2, 1/4, ... (normalised). Validation uses sliding-window inference
(``monai.inferers.sliding_window_inference``, Gaussian blending) and the mean foreground
Dice. Every epoch appends to ``training_log.csv``/``training_log.json`` and writes a
resumable ``checkpoint_latest.pth`` (model, optimiser, epoch, RNG state); the end of
training writes the model folder:

* ``config.json``: format, network, channels, labels (nnU-Net style ``{"background": 0,
  "tumour": 1}``), target spacing, patch size, normalisation, ``weights_sha256``.
* ``model.pth``: the network's ``state_dict`` (tensors only).

Everything torch is loaded with ``torch.load(..., weights_only=True)`` (no arbitrary
pickles), and the weights' SHA-256 is checked against ``config.json`` before use.

torch and MONAI are optional (``pip install primage[seg]``): this module imports them
inside functions only, and says how to install them when they are missing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage import __version__
from primage.errors import PrimageInputError
from primage.io import read_image, same_geometry, write_json, write_text
from primage.progress import ProgressCallback, no_progress

MODEL_FORMAT = "primage-dynunet"
MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pth"
CHECKPOINT_FILE = "checkpoint_latest.pth"
LOG_CSV = "training_log.csv"
LOG_JSON = "training_log.json"
INSTALL_HINT = "install the optional extra: pip install 'primage[seg]'"


# --------------------------------------------------------------------------- dependencies
def require_torch():
    """Import torch and MONAI, or raise a clear error saying how to install them."""
    try:
        import monai  # noqa: F401
        import torch
    except ImportError as error:
        raise PrimageInputError(
            f"deep-learning segmentation needs torch and MONAI ({error.name} is missing); "
            + INSTALL_HINT
        ) from None
    return torch


def resolve_device(name: str):
    """``"cpu"`` or ``"cuda"``/``"cuda:N"`` as a torch device; CUDA where none exists is an
    error (no silent fallback to the CPU)."""
    torch = require_torch()
    name = (name or "cpu").strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise PrimageInputError(
                f"device {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU on "
                "this machine; use --device cpu (nothing falls back silently)"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PrimageInputError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist"
            )
        return device
    raise PrimageInputError(f"unknown device {name!r}; use cpu or cuda")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- input
def read_pairs(path: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Read a pairs CSV (header ``image,mask``; relative paths are relative to the CSV)."""
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"pairs file does not exist: {path}")
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "mask"]:
        raise PrimageInputError(f"pairs file {path} must start with the header line 'image,mask'")
    pairs = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise PrimageInputError(f"pairs file {path} line {number}: expected 'image,mask'")
        image, mask = (Path(cell.strip()) for cell in row[:2])
        image = image if image.is_absolute() else path.parent / image
        mask = mask if mask.is_absolute() else path.parent / mask
        pairs.append((image, mask))
    if not pairs:
        raise PrimageInputError(f"pairs file {path} lists no (image, mask) pair")
    return pairs


def _mask_labels(mask: sitk.Image, role: str) -> np.ndarray:
    array = sitk.GetArrayFromImage(mask)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise PrimageInputError(f"{role} is not an integer label image")
    if np.any(array < 0):
        raise PrimageInputError(f"{role} has negative labels")
    return array.astype(np.int64)


def normalise(array: np.ndarray) -> np.ndarray:
    """Z-score one channel (the normalisation the model records and predict repeats)."""
    array = np.asarray(array, np.float32)
    std = float(array.std())
    return (array - float(array.mean())) / (std if std > 0 else 1.0)


def _resample(image: sitk.Image, spacing, interpolator, pixel=sitk.sitkFloat32) -> sitk.Image:
    old_size = np.array(image.GetSize(), float)
    old_spacing = np.array(image.GetSpacing(), float)
    new_size = [max(1, int(round(s))) for s in old_size * old_spacing / np.array(spacing)]
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        tuple(float(s) for s in spacing),
        image.GetDirection(),
        0,
        pixel,
    )


def _needs_resampling(image: sitk.Image, spacing) -> bool:
    return not np.allclose(image.GetSpacing(), spacing, rtol=0.01)


@dataclass
class Case:
    channels: list[np.ndarray]  # z, y, x float32 (normalised)
    label: np.ndarray | None  # z, y, x int64
    name: str = ""


def _item(item, role: str) -> sitk.Image:
    return item if isinstance(item, sitk.Image) else read_image(item, role=role)


def _item_name(item, index: int, role: str) -> str:
    return f"{role} {index + 1} (in memory)" if isinstance(item, sitk.Image) else str(item)


def _item_digest(item) -> str:
    if isinstance(item, sitk.Image):
        digest = hashlib.sha256(np.ascontiguousarray(sitk.GetArrayViewFromImage(item)).tobytes())
        digest.update(repr((item.GetSpacing(), item.GetOrigin(), item.GetDirection())).encode())
        return digest.hexdigest()
    return sha256_file(item)


def load_training_cases(
    pairs: list[tuple],
) -> tuple[list[Case], list[float], list[int]]:
    """Read and check every pair before anything is written; returns the cases (on the
    target spacing: the median spacing), the target spacing (x, y, z) and the labels.
    A pair is two paths or two SimpleITK images (the MRML layer passes images)."""
    images, masks = [], []
    for index, (image_item, mask_item) in enumerate(pairs):
        image_path = _item_name(image_item, index, "image")
        mask_path = _item_name(mask_item, index, "mask")
        image = _item(image_item, "training image")
        mask = _item(mask_item, "training mask")
        if not same_geometry(image, mask):
            raise PrimageInputError(
                f"mask {mask_path} is not on the voxel grid of image {image_path}"
            )
        labels = _mask_labels(mask, f"training mask {mask_path}")
        if not np.any(labels):
            raise PrimageInputError(f"training mask {mask_path} is empty")
        images.append(image)
        masks.append((mask, labels))
    spacing = [float(s) for s in np.median([im.GetSpacing() for im in images], axis=0)]
    all_labels = sorted({int(v) for _, labels in masks for v in np.unique(labels)} | {0})
    if all_labels != list(range(len(all_labels))):
        raise PrimageInputError(
            f"mask labels must be consecutive 0..N, found {all_labels}; relabel the masks"
        )
    cases = []
    for index, image, (mask, labels) in zip(range(len(pairs)), images, masks, strict=True):
        if _needs_resampling(image, spacing):
            image = _resample(image, spacing, sitk.sitkLinear)
            mask = _resample(mask, spacing, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
            labels = sitk.GetArrayFromImage(mask).astype(np.int64)
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        item = pairs[index][0]
        name = f"case {index + 1}" if isinstance(item, sitk.Image) else Path(item).name
        cases.append(Case([normalise(array)], labels, name=name))
    return cases, spacing, all_labels


# --------------------------------------------------------------------------- network
@dataclass
class NetworkSpec:
    in_channels: int
    out_channels: int
    filters: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    deep_supr_num: int = 2

    @property
    def strides(self) -> list[int]:
        return [1] + [2] * (len(self.filters) - 1)

    def as_dict(self) -> dict:
        return {
            "class": "monai.networks.nets.DynUNet",
            "spatial_dims": 3,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": [3] * len(self.filters),
            "strides": self.strides,
            "upsample_kernel_size": self.strides[1:],
            "filters": self.filters,
            "deep_supervision": True,
            "deep_supr_num": self.deep_supr_num,
            "res_block": True,
            "norm_name": "instance",
        }


def build_network(spec: dict):
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=3,
        in_channels=int(spec["in_channels"]),
        out_channels=int(spec["out_channels"]),
        kernel_size=spec["kernel_size"],
        strides=spec["strides"],
        upsample_kernel_size=spec["upsample_kernel_size"],
        filters=spec["filters"],
        norm_name=spec.get("norm_name", "instance"),
        deep_supervision=bool(spec["deep_supervision"]),
        deep_supr_num=int(spec["deep_supr_num"]),
        res_block=bool(spec["res_block"]),
    )


def _divisor(spec: dict) -> int:
    return int(np.prod(spec["strides"]))


# --------------------------------------------------------------------------- training
@dataclass
class TrainOptions:
    epochs: int = 30
    iterations_per_epoch: int = 20
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (32, 32, 32)
    learning_rate: float = 3e-3
    validation_fraction: float = 0.2
    seed: int = 0
    filters: tuple[int, ...] = (8, 16, 32, 64)
    deep_supr_num: int = 2


def _augmentations(patch, seed: int):
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    transform = Compose(
        [
            SpatialPadd(keys=keys, spatial_size=patch),
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=patch, pos=1, neg=1, num_samples=1
            ),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            RandRotate90d(keys=keys, prob=0.5, spatial_axes=(1, 2)),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.2, std=0.05),
        ]
    )
    transform.set_random_state(seed=seed)
    return transform


def _pad_to_multiple(array: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple]:
    """Pad the last three axes up to a multiple (edge mode); returns the crop to undo it."""
    shape = array.shape[-3:]
    target = [int(np.ceil(s / multiple) * multiple) for s in shape]
    pad = [(0, 0)] * (array.ndim - 3) + [(0, t - s) for s, t in zip(shape, target, strict=True)]
    return np.pad(array, pad, mode="edge"), tuple(slice(0, s) for s in shape)


def sliding_window_probabilities(network, channels: np.ndarray, patch, device) -> np.ndarray:
    """Softmax probabilities (classes, z, y, x) of one case by sliding-window inference."""
    import torch
    from monai.inferers import sliding_window_inference

    network.eval()
    with torch.no_grad():
        tensor = torch.as_tensor(channels[None], dtype=torch.float32, device=device)
        logits = sliding_window_inference(
            tensor,
            roi_size=list(patch),
            sw_batch_size=2,
            predictor=network,
            overlap=0.5,
            mode="gaussian",
        )
        return torch.softmax(logits, dim=1)[0].cpu().numpy()


def dice_per_label(truth: np.ndarray, prediction: np.ndarray, labels) -> dict[int, float]:
    out = {}
    for label in labels:
        a, b = truth == label, prediction == label
        total = int(a.sum() + b.sum())
        out[int(label)] = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
    return out


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(np.random.default_rng(seed).permutation(n))
    if n < 2 or fraction <= 0:
        return order, order  # one case: validate on the training case (said in the log)
    n_val = min(n - 1, max(1, int(round(n * fraction))))
    return sorted(order[n_val:]), sorted(order[:n_val])


def check_model_output(folder: Path, resume: bool) -> None:
    """Refuse an output model folder that is a file, or not empty without resume."""
    if folder.exists() and not folder.is_dir():
        raise PrimageInputError(f"output {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not resume:
            raise PrimageInputError(
                f"output folder {folder} is not empty; choose a new folder, or --resume to "
                "continue its training"
            )
        if not (folder / CHECKPOINT_FILE).is_file():
            raise PrimageInputError(f"--resume: {folder} holds no {CHECKPOINT_FILE}")


def train(
    pairs: list[tuple],
    output: str | os.PathLike,
    options: TrainOptions | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: ProgressCallback | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train a DynUNet on (image, mask) pairs (paths or SimpleITK images); writes the model
    folder; returns its config.

    All input is read and checked before the folder is created. With ``resume`` an
    interrupted run continues from ``checkpoint_latest.pth`` (same pairs and options).
    ``on_epoch`` receives each epoch's log row (epoch, loss, validation_dice,
    learning_rate, seconds) once its checkpoint is written, for live plots.
    """
    torch = require_torch()
    from monai.losses import DiceCELoss

    options = options or TrainOptions()
    progress = progress or no_progress
    folder = Path(output)
    check_model_output(folder, resume)
    torch_device = resolve_device(device)
    if options.epochs < 1 or options.iterations_per_epoch < 1 or options.batch_size < 1:
        raise PrimageInputError("epochs, iterations per epoch and batch size must be >= 1")
    cases, spacing, labels = load_training_cases(pairs)
    spec = NetworkSpec(1, len(labels), list(options.filters), options.deep_supr_num).as_dict()
    patch = [int(np.ceil(p / _divisor(spec)) * _divisor(spec)) for p in options.patch_size]
    train_ids, val_ids = _split(len(cases), options.validation_fraction, options.seed)
    pairs_digest = hashlib.sha256(
        "\n".join(f"{_item_digest(i)},{_item_digest(m)}" for i, m in pairs).encode()
    ).hexdigest()
    options_record = {
        "epochs": options.epochs,
        "iterations_per_epoch": options.iterations_per_epoch,
        "batch_size": options.batch_size,
        "patch_size": patch,
        "learning_rate": options.learning_rate,
        "validation_fraction": options.validation_fraction,
        "seed": options.seed,
        "optimizer": "AdamW(weight_decay=1e-5) with polynomial decay (power 0.9)",
        "loss": "DiceCELoss(softmax, to_onehot_y) per deep-supervision head, weights 1/2^k",
        "augmentations": [
            "RandCropByPosNegLabel(pos=1, neg=1)",
            "RandFlip(x3)",
            "RandRotate90(y,x)",
            "RandScaleIntensity(0.1)",
            "RandShiftIntensity(0.1)",
            "RandGaussianNoise(0.05)",
        ],
    }

    torch.manual_seed(options.seed)
    network = build_network(spec).to(torch_device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=options.learning_rate, weight_decay=1e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    heads = 1 + spec["deep_supr_num"]
    weights = np.array([0.5**k for k in range(heads)])
    weights = (weights / weights.sum()).tolist()
    log: list[dict] = []
    start_epoch = 0
    if resume and (folder / CHECKPOINT_FILE).is_file():
        state = _load_torch(folder / CHECKPOINT_FILE, "checkpoint")
        if state.get("pairs_sha256") != pairs_digest or state.get("network") != json.dumps(spec):
            raise PrimageInputError(
                f"--resume: the checkpoint in {folder} was trained on other pairs or another "
                "network; start a new folder"
            )
        network.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"])
        log = json.loads(state["log"])
    transform = _augmentations(patch, options.seed + start_epoch)
    rng = np.random.default_rng(options.seed + 1000 + start_epoch)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    total_iterations = options.epochs * options.iterations_per_epoch
    for epoch in range(start_epoch, options.epochs):
        network.train()
        losses = []
        epoch_start = time.perf_counter()
        for iteration in range(options.iterations_per_epoch):
            done = epoch * options.iterations_per_epoch + iteration
            lr = options.learning_rate * (1 - done / total_iterations) ** 0.9
            for group in optimiser.param_groups:
                group["lr"] = lr
            images, targets = [], []
            for index in rng.choice(train_ids, size=options.batch_size):
                case = cases[int(index)]
                sample = transform(
                    {"image": np.stack(case.channels), "label": case.label[None].astype(np.float32)}
                )[0]
                images.append(torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32))
                targets.append(torch.as_tensor(np.asarray(sample["label"]), dtype=torch.float32))
            x = torch.stack(images).to(torch_device)
            y = torch.stack(targets).to(torch_device)
            optimiser.zero_grad()
            outputs = network(x)  # (batch, heads, classes, z, y, x) in training mode
            loss = sum(w * loss_function(outputs[:, k], y) for k, w in enumerate(weights))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            optimiser.step()
            losses.append(float(loss.detach().cpu()))
            progress(
                (done + 1) / total_iterations,
                f"epoch {epoch + 1}/{options.epochs} loss {np.mean(losses):.4f}",
            )
        dices = []
        for index in val_ids:
            case = cases[index]
            padded, crop = _pad_to_multiple(np.stack(case.channels), _divisor(spec))
            probabilities = sliding_window_probabilities(network, padded, patch, torch_device)
            prediction = np.argmax(probabilities, axis=0)[crop]
            per_label = dice_per_label(case.label, prediction, labels[1:])
            dices.append(float(np.mean(list(per_label.values()))))
        row = {
            "epoch": epoch + 1,
            "loss": round(float(np.mean(losses)), 6),
            "validation_dice": round(float(np.mean(dices)), 6),
            "learning_rate": round(lr, 8),
            "seconds": round(time.perf_counter() - epoch_start, 3),
        }
        log.append(row)
        _write_log(folder, log)
        buffer = io.BytesIO()
        torch.save(
            {
                "model": network.state_dict(),
                "optimizer": optimiser.state_dict(),
                "epoch": epoch + 1,
                "torch_rng": torch.get_rng_state(),
                "pairs_sha256": pairs_digest,
                "network": json.dumps(spec),
                "log": json.dumps(log),
            },
            buffer,
        )
        _write_bytes(buffer.getvalue(), folder / CHECKPOINT_FILE)
        if on_epoch is not None:
            on_epoch(dict(row))

    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    _write_bytes(buffer.getvalue(), folder / WEIGHTS_FILE)
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "primage_version": __version__,
        "torch_version": torch.__version__,
        "monai_version": __import__("monai").__version__,
        "network": spec,
        "channel_names": {"0": "image"},
        "labels": {
            ("background" if v == 0 else "tumour" if v == 1 else f"label_{v}"): v for v in labels
        },
        "spacing": spacing,
        "patch_size": patch,
        "normalization": "zscore per channel (whole volume)",
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(folder / WEIGHTS_FILE),
        "training": {
            **options_record,
            "cases": len(cases),
            "training_cases": [cases[i].name for i in train_ids],
            "validation_cases": [cases[i].name for i in val_ids],
            "validation_note": None if len(cases) > 1 else "one case: validated on itself",
            "pairs_sha256": pairs_digest,
            "device": str(torch_device),
            "final_validation_dice": log[-1]["validation_dice"] if log else None,
            "seconds_total": round(time.perf_counter() - started, 3),
        },
    }
    write_json(config, folder / CONFIG_FILE)
    return config


def _write_bytes(data: bytes, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _write_log(folder: Path, log: list[dict]) -> None:
    columns = list(log[0])
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in log]
    write_text("\n".join(lines) + "\n", folder / LOG_CSV)
    write_json(log, folder / LOG_JSON)


def _load_torch(path: Path, role: str):
    torch = require_torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or pickled-object file is refused, not executed
        raise PrimageInputError(
            f"{role} {path} cannot be loaded safely (weights_only): {str(error).splitlines()[0][:160]}"
        ) from None


# --------------------------------------------------------------------------- model folder
@dataclass
class LoadedModel:
    folder: Path
    config: dict
    network: object
    device: object

    @property
    def in_channels(self) -> int:
        return int(self.config["network"]["in_channels"])

    @property
    def labels(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.config["labels"].items()}

    def predict(self, images: list[sitk.Image], progress=None) -> sitk.Image:
        return predict(self, images, progress)  # the module-level function

    @property
    def feature_weights_sha256(self) -> str:
        return self.config["weights_sha256"]

    def feature_names(self) -> list[str]:
        return deep_feature_names(self)

    def deep_features(self, images: list[sitk.Image], mask: sitk.Image) -> dict:
        return deep_features(self, images, mask)  # the module-level function

    def provenance(self) -> dict:
        return {
            "folder": str(self.folder.resolve()),
            "format": self.config["format"],
            "format_version": self.config["format_version"],
            "trained_with_primage": self.config.get("primage_version"),
            "weights_sha256": self.config["weights_sha256"],
            "config_sha256": sha256_file(self.folder / CONFIG_FILE),
        }


def check_model_folder(folder: str | os.PathLike) -> dict:
    """Check a primage model folder is complete and consistent (no torch needed); returns
    its config. nnU-Net folders: :mod:`primage.segmentation.models` dispatches."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrimageInputError(f"model folder does not exist: {folder}")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise PrimageInputError(
            f"model folder {folder} has no {CONFIG_FILE} (primage model) nor dataset.json and "
            "plans.json (nnU-Net model): not a model folder"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PrimageInputError(f"model config {config_path} is not valid JSON ({error})") from None
    if config.get("format") != MODEL_FORMAT:
        raise PrimageInputError(f"model config {config_path} is not a {MODEL_FORMAT} model")
    if int(config.get("format_version", -1)) > MODEL_FORMAT_VERSION:
        raise PrimageInputError(
            f"model {folder} has format version {config.get('format_version')}; this primage "
            f"reads up to {MODEL_FORMAT_VERSION} (update primage)"
        )
    required = ("network", "labels", "spacing", "patch_size", "weights_file", "weights_sha256")
    missing = [key for key in required if key not in config]
    if missing:
        raise PrimageInputError(f"model config {config_path} lacks {', '.join(missing)}")
    weights = folder / config["weights_file"]
    if Path(config["weights_file"]).name != config["weights_file"] or not weights.is_file():
        raise PrimageInputError(f"model folder {folder} is missing its weights {weights.name}")
    if sha256_file(weights) != config["weights_sha256"]:
        raise PrimageInputError(
            f"model weights {weights} do not match the checksum in {CONFIG_FILE} (changed or "
            "corrupt); re-export the model"
        )
    return config


def load_model(folder: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Check and load a model folder onto ``device``."""
    config = check_model_folder(folder)
    require_torch()
    torch_device = resolve_device(device)
    network = build_network(config["network"])
    state = _load_torch(Path(folder) / config["weights_file"], "model weights")
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise PrimageInputError(
            f"model weights in {folder} do not fit its network description: "
            f"{str(error).splitlines()[0][:160]}"
        ) from None
    network.to(torch_device).eval()
    return LoadedModel(Path(folder), config, network, torch_device)


def _model_inputs(model: LoadedModel, images: list[sitk.Image]) -> tuple[np.ndarray, sitk.Image]:
    if len(images) != model.in_channels:
        raise PrimageInputError(
            f"model {model.folder} takes {model.in_channels} input channel(s) "
            f"({', '.join(model.config.get('channel_names', {}).values())}); "
            f"{len(images)} given"
        )
    for index, image in enumerate(images[1:], start=2):
        if not same_geometry(images[0], image):
            raise PrimageInputError(f"input {index} is not on the voxel grid of input 1")
    spacing = model.config["spacing"]
    working = [
        _resample(im, spacing, sitk.sitkLinear) if _needs_resampling(im, spacing) else im
        for im in images
    ]
    channels = np.stack([normalise(sitk.GetArrayFromImage(im)) for im in working])
    return channels, working[0]


def predict(
    model: LoadedModel, images: list[sitk.Image], progress: ProgressCallback | None = None
) -> sitk.Image:
    """Label image (UInt8) on the grid of ``images[0]``: sliding-window inference on the
    model's spacing, then nearest-neighbour resampling back to the input grid."""
    progress = progress or no_progress
    channels, working = _model_inputs(model, images)
    progress(0.1, "sliding-window inference")
    divisor = _divisor(model.config["network"])
    padded, crop = _pad_to_multiple(channels, divisor)
    probabilities = sliding_window_probabilities(
        model.network, padded, model.config["patch_size"], model.device
    )
    labels = np.argmax(probabilities, axis=0)[crop].astype(np.uint8)
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(working)
    if not same_geometry(result, images[0]):
        result = sitk.Resample(
            result, images[0], sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )
    progress(1.0, "done")
    return result


# --------------------------------------------------------------------------- deep features
def bottleneck_feature_names(width: int) -> list[str]:
    """Deep-feature columns for a bottleneck of ``width`` channels (mean, then max)."""
    return [f"deep_bottleneck_{stat}_{i:03d}" for stat in ("mean", "max") for i in range(width)]


def deep_feature_names(model: LoadedModel) -> list[str]:
    return bottleneck_feature_names(int(model.config["network"]["filters"][-1]))


def pool_in_mask(features, mask: np.ndarray, names: list[str]) -> dict:
    """Pool bottleneck ``features`` (torch, channels x z x y x) inside ``mask`` (z, y, x on
    the network input's grid, a multiple of the bottleneck's).

    The mask is carried to the bottleneck grid by average pooling; cells at least half inside
    count. A tumour too small for any such cell falls back to the bounding box of the cells
    it touches (``deep_pooling_region`` says which was used).
    """
    import torch

    m = torch.as_tensor(np.asarray(mask, np.float32)[None, None], device=features.device)
    m = torch.nn.functional.adaptive_avg_pool3d(m, features.shape[1:])[0, 0]
    region, inside = "mask", m >= 0.5
    if not bool(inside.any()):
        touched = torch.nonzero(m > 0)
        lo, hi = touched.min(dim=0).values, touched.max(dim=0).values + 1
        inside = torch.zeros_like(inside)
        inside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
        region = "mask bounding box"
    values = features[:, inside].cpu().numpy()
    width = values.shape[0]
    row = dict(zip(names[:width], values.mean(axis=1).tolist(), strict=True))
    row.update(zip(names[width:], values.max(axis=1).tolist(), strict=True))
    return {
        "deep_pooling_region": region,
        "deep_bottleneck_voxels": int(values.shape[1]),
        **{k: round(float(v), 7) for k, v in row.items()},
    }


def deep_features(model: LoadedModel, images: list[sitk.Image], mask: sitk.Image) -> dict:
    """Bottleneck activations of the encoder pooled (mean, max) inside the mask
    (:func:`pool_in_mask`), on the whole volume padded to the network's total stride."""
    import torch

    if not same_geometry(images[0], mask):
        raise PrimageInputError("mask is not on the voxel grid of the image")
    mask_array = sitk.GetArrayFromImage(mask) != 0
    if not mask_array.any():
        raise PrimageInputError("mask is empty")
    channels, working = _model_inputs(model, images)
    if not same_geometry(working, mask):
        mask_image = sitk.Resample(
            sitk.Cast(mask != 0, sitk.sitkUInt8),
            working,
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            0,
            sitk.sitkUInt8,
        )
        mask_array = sitk.GetArrayFromImage(mask_image) != 0
    divisor = _divisor(model.config["network"])
    padded, _ = _pad_to_multiple(channels, divisor)
    padded_mask = np.zeros(padded.shape[1:], np.float32)
    padded_mask[tuple(slice(0, s) for s in mask_array.shape)] = mask_array
    network = model.network
    with torch.no_grad():
        x = torch.as_tensor(padded[None], dtype=torch.float32, device=model.device)
        x = network.input_block(x)
        for block in network.downsamples:
            x = block(x)
        x = network.bottleneck(x)[0]  # (features, z, y, x)
        return pool_in_mask(x, padded_mask, deep_feature_names(model))
