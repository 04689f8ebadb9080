"""``primage segment`` deep-learning actions (torch and MONAI: ``pip install 'primage[seg]'``).

- ``train --pairs PAIRS.csv --output MODEL_DIR [--epochs N] [--device cpu|cuda]``: train the
  built-in DynUNet (deep supervision, patches, Dice + CE); writes ``config.json``,
  ``model.pth``, ``training_log.csv``/``.json`` and ``checkpoint_latest.pth`` (``--resume``).
- ``predict --model MODEL_DIR --input IMG [--input IMG2] --output SEG.nii.gz
  [--device ...] [--postprocess largest,fill] [--folds 0 1] [--no-mirroring]``: a primage or
  an nnU-Net v2 model folder (``nnunet`` extra); label image on the first input's grid and
  a sidecar ``SEG.json`` with the model's checksums and versions.
- ``deep-features --model MODEL_DIR --image IMG --mask MASK --output FEATURES.csv
  [--fold K]``: a primage or an nnU-Net v2 model folder (the encoder of one fold: the
  lowest, or ``--fold``); one CSV row.
- ``export-nnunet --pairs PAIRS.csv --dataset-id N --name NAME --output DIR`` (no torch).

PAIRS.csv: header ``image,mask``, one pair per line, paths relative to the CSV allowed.
Everything is checked before the first file is written: bad input leaves no output.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from primage import __version__
from primage.errors import PrimageInputError
from primage.io import (
    IMAGE_SUFFIXES,
    check_outputs_not_inputs,
    image_stem,
    image_suffix,
    read_image,
    write_image,
    write_json,
    write_text,
)
from primage.progress import ConsoleProgress


def register_deep(actions) -> None:
    """Add train, predict, deep-features and export-nnunet to the ``segment`` actions."""
    train = actions.add_parser(
        "train",
        help="train the built-in 3D U-Net (MONAI DynUNet, deep supervision) on image/mask pairs",
        description="Patch-based training of a DynUNet with deep supervision, Dice + CE loss, "
        "augmentations and sliding-window validation; writes a self-describing model folder.",
    )
    train.add_argument("--pairs", required=True, help="CSV with header 'image,mask'")
    train.add_argument("--output", "-o", required=True, help="model folder (new or empty)")
    train.add_argument("--epochs", type=int, default=30, help="epochs (30)")
    train.add_argument("--iterations", type=int, default=20, help="batches per epoch (20)")
    train.add_argument("--batch-size", type=int, default=2, help="patches per batch (2)")
    train.add_argument(
        "--patch-size", type=int, nargs=3, default=[32, 32, 32], metavar=("Z", "Y", "X")
    )
    train.add_argument("--learning-rate", type=float, default=3e-3)
    train.add_argument("--validation-fraction", type=float, default=0.2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    train.add_argument("--resume", action="store_true", help="continue checkpoint_latest.pth")
    train.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    train.set_defaults(handler=run_train)

    predict = actions.add_parser(
        "predict",
        help="segment input image(s) with a trained model folder (primage or nnU-Net v2)",
        description="Sliding-window inference with a primage model folder (labels resampled "
        "with nearest neighbour onto the first input's grid) or an nnU-Net v2 model folder "
        "(dataset.json, plans.json, fold_*/checkpoint_final.pth; folds ensembled).",
    )
    predict.add_argument("--model", "-m", required=True, help="model folder")
    predict.add_argument("--input", "-i", action="append", required=True, help="channel image")
    predict.add_argument("--output", "-o", required=True, help="output label image")
    predict.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    predict.add_argument(
        "--postprocess", help="post-processing steps, e.g. largest,fill (see segment postprocess)"
    )
    predict.add_argument(
        "--folds", nargs="+", help="nnU-Net folds to ensemble (default: every fold present)"
    )
    predict.add_argument(
        "--no-mirroring", action="store_true", help="nnU-Net: no mirroring test-time augmentation"
    )
    predict.set_defaults(handler=run_predict)

    features = actions.add_parser(
        "deep-features",
        help="encoder bottleneck activations pooled (mean, max) inside a mask, as CSV",
        description="One CSV row: case, checksums, pooling region and deep_bottleneck_mean_NNN "
        "/ deep_bottleneck_max_NNN columns (stable names from the model's bottleneck width). "
        "primage folders: the whole volume; nnU-Net v2 folders: nnU-Net's preprocessing and "
        "one fold's encoder on a patch-sized window around the mask.",
    )
    features.add_argument("--model", "-m", required=True, help="model folder")
    features.add_argument("--image", "-i", action="append", required=True, help="channel image")
    features.add_argument("--mask", required=True, help="tumour mask (non-zero = inside)")
    features.add_argument("--output", "-o", required=True, help="features CSV")
    features.add_argument("--case", help="case id in the row (default: image file name)")
    features.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    features.add_argument(
        "--fold", help="nnU-Net: the fold whose encoder is used (default: the lowest present)"
    )
    features.set_defaults(handler=run_deep_features)

    export = actions.add_parser(
        "export-nnunet",
        help="write image/mask pairs as an nnU-Net v2 raw data set",
        description="Writes DIR/Dataset<ID>_<NAME>/{imagesTr,labelsTr,dataset.json}.",
    )
    export.add_argument("--pairs", required=True, help="CSV with header 'image,mask'")
    export.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id 1..999")
    export.add_argument("--name", required=True, help="dataset name (letters, digits, _ -)")
    export.add_argument("--output", "-o", required=True, help="nnUNet_raw folder")
    export.add_argument("--channel-name", default="MR", help="channel name in dataset.json (MR)")
    export.set_defaults(handler=run_export_nnunet)


def _check_image_output(path: str) -> tuple[Path, Path]:
    output = Path(path)
    if image_suffix(output) not in IMAGE_SUFFIXES:
        raise PrimageInputError(
            f"output {output} has no image file ending; use one of " + ", ".join(IMAGE_SUFFIXES)
        )
    return output, output.with_name(image_stem(output) + ".json")


def _describe(path) -> dict:
    from primage.segmentation.deep import sha256_file

    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``primage segment train``."""
    from primage.segmentation.deep import TrainOptions, read_pairs, train

    pairs = read_pairs(args.pairs)
    check_outputs_not_inputs([args.output], [p for pair in pairs for p in pair])
    options = TrainOptions(
        epochs=args.epochs,
        iterations_per_epoch=args.iterations,
        batch_size=args.batch_size,
        patch_size=tuple(args.patch_size),
        learning_rate=args.learning_rate,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    progress = None if args.quiet else ConsoleProgress()
    config = train(
        pairs, args.output, options, device=args.device, resume=args.resume, progress=progress
    )
    if not args.quiet:
        sys.stderr.write(
            f"primage: model in {args.output}; final validation Dice "
            f"{config['training']['final_validation_dice']}\n"
        )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Handler of ``primage segment predict``."""
    from primage.segmentation.models import check_model, load_model
    from primage.segmentation.postprocess import parse_steps, postprocess_label_image

    output, sidecar = _check_image_output(args.output)
    check_outputs_not_inputs([output, sidecar], args.input)
    steps = parse_steps(args.postprocess) if args.postprocess else []
    check_model(args.model, args.folds)
    images = [read_image(p, role=f"input {i + 1}") for i, p in enumerate(args.input)]
    model = load_model(
        args.model, device=args.device, folds=args.folds, mirroring=not args.no_mirroring
    )
    start = time.perf_counter()
    result = model.predict(images)
    records = []
    if steps:
        import numpy as np
        import SimpleITK as sitk

        if np.any(sitk.GetArrayViewFromImage(result)):
            result, records = postprocess_label_image(result, steps)
    write_image(result, output)
    write_json(
        {
            "primage_version": __version__,
            "command": "segment predict",
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model.provenance(),
            "device": str(model.device),
            "inputs": [_describe(p) for p in args.input],
            "output": str(output.resolve()),
            "labels": model.labels,
            "postprocess": records,
            "seconds_total": round(time.perf_counter() - start, 3),
        },
        sidecar,
    )
    return 0


def run_deep_features(args: argparse.Namespace) -> int:
    """Handler of ``primage segment deep-features``."""
    from primage.segmentation.models import load_feature_model

    output = Path(args.output)
    if output.suffix.lower() != ".csv":
        raise PrimageInputError(f"output {output} must be a .csv file")
    check_outputs_not_inputs([output], [*args.image, args.mask])
    images = [read_image(p, role=f"image {i + 1}") for i, p in enumerate(args.image)]
    mask = read_image(args.mask, role="mask")
    model = load_feature_model(args.model, device=args.device, fold=args.fold)
    features = model.deep_features(images, mask)
    row = {
        "case": args.case or image_stem(args.image[0]),
        "image": str(Path(args.image[0]).resolve()),
        "mask": str(Path(args.mask).resolve()),
        "model_weights_sha256": model.feature_weights_sha256,
        "primage_version": __version__,
        **features,
    }
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    write_text(buffer.getvalue(), output)
    return 0


def run_export_nnunet(args: argparse.Namespace) -> int:
    """Handler of ``primage segment export-nnunet``."""
    from primage.segmentation.deep import read_pairs
    from primage.segmentation.nnunet_export import export_nnunet

    pairs = read_pairs(args.pairs)
    folder = export_nnunet(
        pairs, args.dataset_id, args.name, args.output, channel_name=args.channel_name
    )
    sys.stderr.write(f"primage: wrote nnU-Net raw data set {folder}\n")
    return 0
