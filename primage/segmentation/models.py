"""One entry point for trained segmentation models: primage DynUNet folders
(:mod:`primage.segmentation.deep`) and nnU-Net v2 folders
(:mod:`primage.segmentation.nnunet_model`).

Both loaded models offer ``in_channels``, ``labels`` (name -> value), ``device``,
``predict(images) -> label image on images[0]'s grid`` and ``provenance()`` (checksums,
versions) for the output's sidecar.
"""

from __future__ import annotations

import os
from pathlib import Path

from primage.errors import PrimageInputError


def model_kind(folder: str | os.PathLike) -> str:
    """``"primage"`` or ``"nnunet"``; refuses anything else with a clear message."""
    from primage.segmentation.deep import CONFIG_FILE
    from primage.segmentation.nnunet_model import is_nnunet_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise PrimageInputError(f"model folder does not exist: {folder}")
    if (folder / CONFIG_FILE).is_file():
        return "primage"
    if is_nnunet_folder(folder):
        return "nnunet"
    raise PrimageInputError(
        f"model folder {folder} has no {CONFIG_FILE} (primage model) nor dataset.json and "
        "plans.json (nnU-Net model): not a model folder"
    )


def check_model(folder: str | os.PathLike, folds=None) -> str:
    """Check a model folder without loading torch; returns its kind."""
    from primage.segmentation.deep import check_model_folder
    from primage.segmentation.nnunet_model import check_nnunet_folder

    kind = model_kind(folder)
    if kind == "primage":
        if folds:
            raise PrimageInputError("--folds applies to nnU-Net model folders only")
        check_model_folder(folder)
    else:
        check_nnunet_folder(folder, folds)
    return kind


def load_model(folder: str | os.PathLike, device: str = "cpu", folds=None, mirroring=True):
    """Load either kind of model folder onto ``device`` (cpu or cuda; no silent fallback)."""
    from primage.segmentation import deep, nnunet_model

    if check_model(folder, folds) == "primage":
        return deep.load_model(folder, device=device)
    return nnunet_model.load_nnunet(folder, device=device, folds=folds, mirroring=mirroring)


def model_channel_names(folder: str | os.PathLike, folds=None) -> list[str]:
    """The input channels a model folder expects, in order (no torch needed)."""
    import json

    from primage.segmentation.deep import CONFIG_FILE

    folder = Path(folder)
    if check_model(folder, folds) == "primage":
        channels = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))["channel_names"]
    else:
        dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        channels = dataset.get("channel_names", dataset.get("modality"))
    return [str(channels[key]) for key in sorted(channels, key=int)]


def load_feature_model(folder: str | os.PathLike, device: str = "cpu", fold: int | None = None):
    """Load a model folder for deep features: a primage folder, or one fold of an nnU-Net
    folder (``fold``; default the lowest), since feature channels differ between folds."""
    from primage.segmentation.nnunet_model import available_folds

    folds = None
    if model_kind(folder) == "nnunet":
        folds = [fold] if fold is not None else available_folds(Path(folder))[:1]
    elif fold is not None:
        raise PrimageInputError("--fold applies to nnU-Net model folders only")
    check_model(folder, folds)
    return load_model(folder, device=device, folds=folds)
