"""Automatic segmentation through MRML: a trained model on volume nodes -> segmentation node.

Thin bridge over :mod:`primage.segmentation.models` (primage DynUNet or nnU-Net v2 folders):
volume nodes become SimpleITK images (their IJK-to-RAS geometry kept), the model predicts
on the first node's grid, and the labels become a segmentation node with one segment per
model label, named as in the model's ``config.json``. The model's provenance (weights
checksum, version) is stored as node attributes ``primage.model.*``.
"""

from __future__ import annotations

from collections.abc import Sequence

from primage.errors import PrimageInputError
from primage.io import json_text
from primage.mrml.segmentations import segmentation_from_label_image
from primage.mrml.volumes import node_label, sitk_from_volume_node


def segment_volume_nodes(
    model_folder,
    volume_nodes: Sequence,
    scene,
    *,
    device: str = "cpu",
    folds=None,
    postprocess: str | None = None,
    name: str | None = None,
    progress=None,
):
    """Run a model folder (primage or nnU-Net v2) on one volume node per input channel; returns the new
    segmentation node (reference geometry: the first volume node)."""
    from primage.segmentation.models import load_model
    from primage.segmentation.postprocess import postprocess_label_image

    if not volume_nodes:
        raise PrimageInputError("give at least one input volume node")
    images = [
        sitk_from_volume_node(node, role=f"input {node_label(node)}") for node in volume_nodes
    ]
    model = load_model(model_folder, device=device, folds=folds)
    labels = model.predict(images, progress=progress)
    if postprocess:
        import numpy as np
        import SimpleITK as sitk

        if np.any(sitk.GetArrayViewFromImage(labels)):
            labels, _ = postprocess_label_image(labels, postprocess)
    names = {value: key for key, value in model.labels.items() if value != 0}
    node = segmentation_from_label_image(
        labels,
        scene,
        names,
        reference_volume_node=volume_nodes[0],
        name=name or f"{volume_nodes[0].GetName()} auto-segmentation",
    )
    for key, value in model.provenance().items():
        node.SetAttribute(f"primage.model.{key}", json_text(value))
    return node


def train_from_nodes(
    pairs: Sequence[tuple],
    output_folder,
    *,
    options=None,
    device: str = "cpu",
    resume: bool = False,
    progress=None,
) -> dict:
    """Train the built-in DynUNet on (volume node, mask node[, segment]) tuples from a scene.

    The mask node is a labelmap volume or a segmentation node (``segment``: an ID or a name;
    all segments together when omitted); it is carried onto the volume's grid. Returns the
    model's config (``config.json``); the model folder is what ``predict`` accepts.
    """
    from primage.mrml.segmentations import mask_from_node
    from primage.segmentation.deep import train

    if not pairs:
        raise PrimageInputError("give at least one (volume, mask) pair")
    images = []
    for item in pairs:
        if len(item) not in (2, 3):
            raise PrimageInputError("each pair is (volume node, mask node[, segment])")
        volume, mask_node = item[0], item[1]
        segment = item[2] if len(item) == 3 else None
        image = sitk_from_volume_node(volume, role=f"training volume {node_label(volume)}")
        images.append((image, mask_from_node(mask_node, volume, segment)))
    return train(images, output_folder, options, device=device, resume=resume, progress=progress)
