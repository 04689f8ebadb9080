"""Automatic segmentation and training through MRML.

Thin bridge over :mod:`primage.segmentation.models` (primage DynUNet or nnU-Net v2 folders):
volume nodes become SimpleITK images (their IJK-to-RAS geometry kept), the model predicts
on the first node's grid, and the labels become a segmentation node with one segment per
model label, named as in the model's ``config.json`` or ``dataset.json``. The model's
provenance (weights checksum, version) is stored as node attributes ``primage.model.*``.

Two ways to run each: in this process (:func:`segment_volume_nodes`,
:func:`train_from_nodes`: scripts, tests) or in a separate process that a GUI polls and
can cancel (:func:`start_segmentation_job`, :func:`start_training_job`, built on
:mod:`primage.mrml.jobs`). A training job's epochs (loss, validation Dice) feed a live
plot chart node (:meth:`TrainingJob.update_chart`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from primage.errors import PrimageInputError
from primage.io import json_text, read_image
from primage.mrml.jobs import BackgroundJob, new_job_folder, write_job_image
from primage.mrml.plots import plot_chart_from_curves
from primage.mrml.segmentations import segmentation_from_label_image
from primage.mrml.volumes import check_scalar_volume_node, node_label, sitk_from_volume_node

#: Title and axis labels of the training chart.
TRAINING_CHART_TITLE = "PRIMAGE training"


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
    return _segmentation_node(
        labels, model.labels, model.provenance(), volume_nodes[0], scene, name
    )


def _segmentation_node(labels, label_values: dict, provenance: dict, volume_node, scene, name):
    """The segmentation node of a model's label image (segments named as the model's labels)."""
    names = {int(value): key for key, value in label_values.items() if int(value) != 0}
    node = segmentation_from_label_image(
        labels,
        scene,
        names,
        reference_volume_node=volume_node,
        name=name or f"{volume_node.GetName()} auto-segmentation",
    )
    for key, value in provenance.items():
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
    from primage.segmentation.deep import train

    images = _training_images(pairs)
    return train(images, output_folder, options, device=device, resume=resume, progress=progress)


def export_nnunet_from_nodes(
    pairs: Sequence[tuple], dataset_id: int, name: str, output_folder, *, channel_name="MR"
):
    """Write (volume node, mask node[, segment]) tuples as an nnU-Net v2 raw data set
    (``imagesTr``, ``labelsTr``, ``dataset.json``) under ``output_folder``; returns its folder."""
    from primage.segmentation.nnunet_export import export_nnunet

    return export_nnunet(
        _training_images(pairs), dataset_id, name, output_folder, channel_name=channel_name
    )


def deep_features_from_nodes(
    model_folder,
    cases: Sequence[tuple],
    scene,
    *,
    device: str = "cpu",
    fold: int | None = None,
    table_node=None,
):
    """Deep features (bottleneck mean and max inside the mask) into a table node, one row per
    case. A case is (volume node or list of volume nodes, one per model channel; mask node[,
    segment]); the mask is carried onto the first volume's grid. Columns: ``case`` (the first
    volume's name), ``model_weights_sha256``, then the feature columns."""
    from primage.mrml.segmentations import mask_from_node
    from primage.mrml.tables import table_node_from_rows
    from primage.segmentation.models import load_feature_model

    if not cases:
        raise PrimageInputError("give at least one (volume, mask) case")
    inputs = []
    for item in cases:
        if len(item) not in (2, 3):
            raise PrimageInputError("each case is (volume node(s), mask node[, segment])")
        volumes = list(item[0]) if isinstance(item[0], list | tuple) else [item[0]]
        images = [sitk_from_volume_node(v, role=f"volume {node_label(v)}") for v in volumes]
        mask = mask_from_node(item[1], volumes[0], item[2] if len(item) == 3 else None)
        inputs.append((volumes[0].GetName(), images, mask))
    model = load_feature_model(model_folder, device=device, fold=fold)
    rows = [
        {
            "case": case,
            "model_weights_sha256": model.feature_weights_sha256,
            **model.deep_features(images, mask),
        }
        for case, images, mask in inputs
    ]
    return table_node_from_rows(rows, scene, name="Deep features", node=table_node)


def _training_images(pairs: Sequence[tuple]) -> list[tuple]:
    """(image, mask) SimpleITK pairs of (volume node, mask node[, segment]) tuples."""
    from primage.mrml.segmentations import mask_from_node

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
    return images


# --- background jobs --------------------------------------------------------------------------


class SegmentationJob(BackgroundJob):
    """Model inference in a separate process; :meth:`finish` makes the segmentation node."""

    label = "segmentation"

    def __init__(self, folder, spec, volume_node, name):
        super().__init__("segment", folder, spec, volume_node.GetScene())
        self.volume_node = volume_node
        self.name = name

    def finish(self, name: str | None = None):
        """The new segmentation node of a finished job (raises with the job's message when it
        failed); the job's files are removed."""
        try:
            self.finished_status()
            labels = read_image(self.spec["output"], role="job output")
            info = json.loads(Path(self.spec["info_output"]).read_text(encoding="utf-8"))
            return _segmentation_node(
                labels,
                info["labels"],
                info["model"],
                self.volume_node,
                self.scene,
                name or self.name,
            )
        finally:
            self.cleanup()


def start_segmentation_job(
    model_folder,
    volume_nodes: Sequence,
    *,
    device: str = "cpu",
    folds=None,
    postprocess: str | None = None,
    name: str | None = None,
) -> SegmentationJob:
    """Start a model folder on volume nodes (one per input channel) in a separate process.

    The model folder, the channel count and the post-processing steps are checked here, so
    bad input is refused at once; the result comes from :meth:`SegmentationJob.finish`.
    """
    from primage.segmentation.models import model_channel_names
    from primage.segmentation.postprocess import parse_steps

    volume_nodes = [node for node in (volume_nodes or []) if node is not None]
    if not volume_nodes:
        raise PrimageInputError("give at least one input volume node")
    channels = model_channel_names(model_folder, folds)
    if len(channels) != len(volume_nodes):
        raise PrimageInputError(
            f"the model expects {len(channels)} input volume(s) ({', '.join(channels)}), "
            f"{len(volume_nodes)} given"
        )
    if postprocess:
        parse_steps(postprocess)
    for node in volume_nodes:
        check_scalar_volume_node(node, role="input volume")
    with new_job_folder("segment") as folder:
        inputs = [
            write_job_image(sitk_from_volume_node(node), folder / f"input{i}.nrrd")
            for i, node in enumerate(volume_nodes)
        ]
        spec = {
            "model": str(Path(model_folder).resolve()),
            "inputs": inputs,
            "device": device,
            "folds": list(folds) if folds else None,
            "postprocess": postprocess or None,
            "output": str(folder / "labels.nrrd"),
            "info_output": str(folder / "info.json"),
        }
        return SegmentationJob(folder, spec, volume_nodes[0], name)


def training_chart(log_rows: Sequence[dict], scene, chart_node=None):
    """Plot chart of training loss and validation Dice against the epoch (refills
    ``chart_node`` when given). ``log_rows``: a model folder's ``training_log.json`` rows or a
    training job's epoch events."""
    rows = [row for row in log_rows if "epoch" in row]
    if not rows:
        raise PrimageInputError("no finished epoch to plot yet")
    epochs = [float(row["epoch"]) for row in rows]
    curves = {
        "loss (Dice + CE)": (epochs, [float(row["loss"]) for row in rows]),
        "validation Dice": (epochs, [float(row["validation_dice"]) for row in rows]),
    }
    return plot_chart_from_curves(
        curves, scene, TRAINING_CHART_TITLE, "epoch", "loss / Dice", chart_node
    )


class TrainingJob(BackgroundJob):
    """DynUNet training in a separate process; :meth:`update_chart` plots its epochs so far."""

    label = "training"

    def __init__(self, folder, spec, scene):
        super().__init__("train", folder, spec, scene)
        self.chart_node = None
        self._plotted = 0

    def update_chart(self, chart_node=None):
        """Refresh the loss/Dice chart when new epochs arrived; returns the chart node (None
        before the first epoch)."""
        self.poll()
        epochs = [event for event in self.events if event.get("type") == "epoch"]
        chart_node = chart_node or self.chart_node
        if epochs and (len(epochs) != self._plotted or chart_node is not self.chart_node):
            self.chart_node = training_chart(epochs, self.scene, chart_node)
            self._plotted = len(epochs)
        return self.chart_node

    def finish(self) -> dict:
        """The trained model's config (``config.json``) of a finished job; the job's own
        temporary files are removed (the model folder stays)."""
        from primage.segmentation.deep import CONFIG_FILE

        try:
            self.finished_status()
            self.update_chart()
            path = Path(self.spec["output"]) / CONFIG_FILE
            return json.loads(path.read_text(encoding="utf-8"))
        finally:
            self.cleanup()


def training_options(**values):
    """:class:`~primage.segmentation.deep.TrainOptions` with the given fields (for the module;
    no torch needed)."""
    from primage.segmentation.deep import TrainOptions

    return TrainOptions(**values)


def training_pairs_from_volumes(volume_nodes: Sequence, segment_name: str | None = None):
    """Training pairs from the scene: for each volume, the segmentation made on it (its
    reference geometry, as the Segment Editor sets it; the first by name when several) and
    its segment called ``segment_name`` (default: the first). Returns ``(volume node,
    segmentation node, segment ID)`` tuples; a volume without a segmentation is refused."""
    from primage.mrml.segmentations import segment_id_by_name, segmentations_made_on

    volume_nodes = [node for node in (volume_nodes or []) if node is not None]
    if not volume_nodes:
        raise PrimageInputError("check at least one volume to train on")
    pairs = []
    for volume_node in volume_nodes:
        check_scalar_volume_node(volume_node, role="training volume")
        made_on = segmentations_made_on(volume_node)
        if not made_on:
            raise PrimageInputError(
                f"no segmentation was made on volume {node_label(volume_node)}: segment it in "
                "the Segment Editor (with this volume as the source volume) first"
            )
        pairs.append((volume_node, made_on[0], segment_id_by_name(made_on[0], segment_name)))
    return pairs


def _start_training(spec_pairs, folder: Path, output_folder: Path, scene, options, device, resume):
    from dataclasses import asdict

    from primage.segmentation.deep import TrainOptions

    spec = {
        "pairs": spec_pairs,
        "output": str(output_folder),
        "device": device,
        "resume": resume,
        "options": asdict(options or TrainOptions()),
    }
    return TrainingJob(folder, spec, scene)


def start_training_job(
    pairs: Sequence[tuple],
    output_folder,
    *,
    options=None,
    device: str = "cpu",
    resume: bool = False,
) -> TrainingJob:
    """Start training the built-in DynUNet on (volume node, mask node[, segment]) tuples in a
    separate process; the model folder is written to ``output_folder``.

    The pairs and the output folder are checked here, so bad input is refused at once.
    """
    from primage.segmentation.deep import check_model_output

    output_folder = Path(output_folder).resolve()
    check_model_output(output_folder, resume)
    images = _training_images(pairs)
    scene = pairs[0][0].GetScene()
    with new_job_folder("train") as folder:
        spec_pairs = [
            [
                write_job_image(image, folder / f"image{i}.nrrd"),
                write_job_image(mask, folder / f"mask{i}.nrrd"),
            ]
            for i, (image, mask) in enumerate(images)
        ]
        return _start_training(spec_pairs, folder, output_folder, scene, options, device, resume)


def start_training_job_from_file(
    pairs_csv,
    output_folder,
    scene,
    *,
    options=None,
    device: str = "cpu",
    resume: bool = False,
) -> TrainingJob:
    """Start training on the (image, mask) files listed in a pairs CSV (``image,mask`` header;
    paths relative to the CSV) in a separate process; epochs are plotted in ``scene``."""
    from primage.segmentation.deep import check_model_output, read_pairs

    output_folder = Path(output_folder).resolve()
    check_model_output(output_folder, resume)
    spec_pairs = [
        [str(image.resolve()), str(mask.resolve())] for image, mask in read_pairs(pairs_csv)
    ]
    missing = [path for pair in spec_pairs for path in pair if not Path(path).is_file()]
    if missing:
        raise PrimageInputError(f"pairs file {pairs_csv} lists a missing file: {missing[0]}")
    with new_job_folder("train") as folder:
        return _start_training(spec_pairs, folder, output_folder, scene, options, device, resume)
