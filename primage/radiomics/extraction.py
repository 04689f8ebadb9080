"""Feature extraction with pyradiomics: one task per (image, region), run in parallel.

A :class:`Task` is one pyradiomics ``execute(image, mask, label=N)`` call. Tasks run in
worker processes (``concurrent.futures``; see :func:`_pool_context` for the start
method); a single task, or ``workers=1``, runs in this
process with no pool at all, so one (image, segment) costs what plain pyradiomics costs.
Several tasks are shared between this process and the pool, largest first
(:func:`estimated_cost`), one at a time to whoever is free; results keep the tasks' order
and equal plain pyradiomics' values.

Inputs are checked before the run where a mistake spoils everything (a 4D image, a mask
with fractional values, a bad parameter file: :class:`PrimageInputError`) and per task
where only that row is affected (an absent label, an empty or single-voxel region, NaN
voxels inside the region, a region outside the image): such a row gets an ``error`` and
the others are still computed.

A mask on another voxel grid than its image is resampled onto the image grid with
nearest-neighbour interpolation (labels are kept, never blended) and the row records it
(``diagnostics_primage_mask_resampled``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from primage import __version__
from primage.errors import PrimageInputError
from primage.io import GeometryWarning, read_image, same_geometry
from primage.progress import ProgressCallback
from primage.radiomics.params import ParameterSet, load_params, params_hash

ImageSource = sitk.Image | str | os.PathLike

#: Perturbations a task can apply before extraction (see :func:`perturb`).
PERTURBATIONS = ("erode", "dilate", "translate", "noise")


class ExtractionCancelled(Exception):
    """The run was cancelled before every task finished."""


@dataclass(frozen=True)
class Region:
    """A region of interest: the voxels of ``mask`` equal to ``label``, called ``name``."""

    name: str
    mask: ImageSource
    label: int = 1


@dataclass
class Task:
    """One (image, region) extraction: pyradiomics ``execute(image, mask, label)``.

    ``params`` is the pyradiomics parameter dictionary; ``perturbation`` (one of
    :data:`PERTURBATIONS`, or None) is applied to the mask or image first, with ``seed``
    for the noise; ``binarize`` makes every non-zero mask voxel part of the region (then
    ``label`` must be 1); ``meta`` is carried unchanged to the result (e.g. case,
    repetition).
    """

    image_name: str
    region_name: str
    label: int
    image: ImageSource
    mask: ImageSource
    params: dict[str, Any]
    parameters_source: str = ""
    modality: str | None = None
    perturbation: str | None = None
    seed: int = 0
    binarize: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What one task gave: features (name -> float) or an error, plus diagnostics."""

    task: Task
    features: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


# --- input checks (in the main process, before any work) -------------------------------


def read_mask(path: ImageSource, *, role: str = "mask") -> sitk.Image:
    """Read a label map and check that it is integer-valued; returns the image unchanged."""
    mask = path if isinstance(path, sitk.Image) else read_image(path, role=role)
    check_label_map(mask, role=role)
    return mask


def check_label_map(mask: sitk.Image, *, role: str = "mask") -> list[int]:
    """Refuse a mask with fractional, negative or non-finite values; returns its labels.

    pyradiomics casts masks to unsigned integers, so a probability map or a resampled
    (blended) mask would silently become another region: refuse it instead.
    """
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise PrimageInputError(f"{role} has several components per voxel; a label map is expected")
    array = sitk.GetArrayFromImage(mask)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            raise PrimageInputError(f"{role} has NaN or infinite values; a label map is expected")
        fractional = array[array != np.round(array)]
        if fractional.size:
            raise PrimageInputError(
                f"{role} is not integer-valued (e.g. {float(fractional[0]):.4g}); give a label "
                "map with whole-number labels, not a probability or blended mask"
            )
    if array.size and array.min() < 0:
        raise PrimageInputError(f"{role} has negative values; labels must be 0 (background) or > 0")
    return [int(v) for v in np.unique(array) if v != 0]


def mask_on_grid(mask: sitk.Image, image: sitk.Image) -> tuple[sitk.Image, bool]:
    """``mask`` on the voxel grid of ``image`` (nearest neighbour); ``True`` if resampled."""
    if mask.GetDimension() != image.GetDimension():
        raise PrimageInputError(
            f"the mask is {mask.GetDimension()}D but the image is {image.GetDimension()}D"
        )
    if same_geometry(mask, image):
        return mask, False
    resampled = sitk.Resample(
        mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID()
    )
    return resampled, True


# --- perturbations -----------------------------------------------------------------------


def perturb(image: sitk.Image, mask: sitk.Image, label: int, kind: str, seed: int = 0):
    """Apply a robustness perturbation; returns ``(image, mask)`` (label ``label`` kept).

    ``erode`` / ``dilate``: the region shrinks or grows by one voxel (3D cross-shaped
    structuring element, so only face neighbours count); ``translate``: the region moves
    by one voxel along the first and second image axes (in-plane); ``noise``: Gaussian
    noise with SD 10 % of the intensity SD inside the region is added to the image
    (seeded, so a run is reproducible). Other labels of the mask are dropped.
    """
    region = sitk.Cast(sitk.Equal(mask, int(label)), sitk.sitkUInt8)
    if kind in ("erode", "dilate"):
        radius = [1] * region.GetDimension()
        operation = sitk.BinaryErode if kind == "erode" else sitk.BinaryDilate
        region = operation(region, radius, sitk.sitkCross, 0, 1)
    elif kind == "translate":
        array = sitk.GetArrayFromImage(region)
        shifted = np.zeros_like(array)
        # Array axes are (k, j, i): move +1 along i and j, dropping what leaves the grid.
        shifted[..., 1:, 1:] = array[..., :-1, :-1]
        moved = sitk.GetImageFromArray(shifted)
        moved.CopyInformation(region)
        region = moved
    elif kind == "noise":
        values = sitk.GetArrayFromImage(image).astype(np.float64)
        inside = sitk.GetArrayFromImage(region).astype(bool)
        sd = float(values[inside].std()) if inside.any() else 0.0
        rng = np.random.default_rng(seed)
        noisy = sitk.GetImageFromArray(values + rng.normal(0.0, 0.1 * sd, values.shape))
        noisy.CopyInformation(image)
        image = sitk.Cast(noisy, sitk.sitkFloat64)
    elif kind is not None:
        raise PrimageInputError(
            f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)}"
        )
    result = sitk.Cast(region, sitk.sitkUInt32) * int(label)
    result.CopyInformation(mask)
    return image, result


# --- one task ----------------------------------------------------------------------------

_EXTRACTORS: dict[str, Any] = {}


class _LogCollector(logging.Handler):
    """Keeps pyradiomics' warnings and errors of one task (they go into the row)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip().splitlines()
        if message:
            self.messages.append(message[0][:200])


def _quiet_radiomics() -> None:
    import radiomics

    # pyradiomics prints warnings to stderr by itself; rows carry them instead.
    radiomics.setVerbosity(logging.CRITICAL + 1)


def _extractor(params: dict[str, Any]):
    key = params_hash(params)
    if key not in _EXTRACTORS:
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        if len(_EXTRACTORS) >= 8:
            # A few parameter sets (one per modality) are in use at once, tasks of several
            # interleave when sorted by size: keep them, but never let the cache grow.
            _EXTRACTORS.pop(next(iter(_EXTRACTORS)))
        with warnings.catch_warnings():
            # pykwalify loads pyradiomics' schema functions with a deprecated importlib API.
            warnings.simplefilter("ignore", DeprecationWarning)
            _EXTRACTORS[key] = RadiomicsFeatureExtractor(params)
    return _EXTRACTORS[key]


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, np.ndarray):
        return str(value.tolist())
    if isinstance(value, (tuple, list)):
        return str(tuple(v.item() if isinstance(v, np.generic) else v for v in value))
    return str(value)


def _load(source: ImageSource, role: str) -> sitk.Image:
    return source if isinstance(source, sitk.Image) else read_image(source, role=role)


def run_task(task: Task) -> Result:
    """Run one task in this process; never raises for bad data (the row gets an error)."""
    result = Result(task)
    started = time.perf_counter()
    diagnostics = result.diagnostics
    diagnostics["diagnostics_primage_version"] = __version__
    diagnostics["diagnostics_primage_parameters"] = task.parameters_source
    diagnostics["diagnostics_primage_settings_hash"] = params_hash(task.params)
    diagnostics["diagnostics_primage_modality"] = task.modality or ""
    if task.perturbation:
        diagnostics["diagnostics_primage_perturbation"] = task.perturbation
    try:
        image = _load(task.image, f"image {task.image_name}")
        mask = _load(task.mask, "mask")
        if task.binarize:
            mask = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt32)
        mask, resampled = mask_on_grid(mask, image)
        diagnostics["diagnostics_primage_mask_resampled"] = "yes" if resampled else "no"
        diagnostics["diagnostics_primage_spacing_mm"] = str(tuple(image.GetSpacing()))
        if task.perturbation:
            image, mask = perturb(image, mask, task.label, task.perturbation, task.seed)
        result.error = _region_problem(image, mask, task, resampled, diagnostics)
        if result.error:
            return result
        _quiet_radiomics()
        collector = _LogCollector()
        logger = logging.getLogger("radiomics")
        logger.addHandler(collector)
        try:
            values = _extractor(task.params).execute(image, mask, label=int(task.label))
        finally:
            logger.removeHandler(collector)
        for name, value in values.items():
            if name.startswith("diagnostics_"):
                diagnostics[name] = _text(value)
            else:
                result.features[name] = float(value)
        if collector.messages:
            diagnostics["diagnostics_primage_log"] = " | ".join(dict.fromkeys(collector.messages))
    except PrimageInputError as error:
        result.error = str(error)
    except (ValueError, RuntimeError, AssertionError, TypeError, IndexError) as error:
        # pyradiomics refuses some regions with these (e.g. too few dimensions after
        # resampling); ITK raises RuntimeError. Either way only this row is affected.
        text = str(error).strip().splitlines()
        result.error = f"pyradiomics failed: {text[-1] if text else type(error).__name__}"[:300]
    finally:
        diagnostics["diagnostics_primage_seconds"] = f"{time.perf_counter() - started:.3f}"
    return result


def _region_problem(
    image: sitk.Image, mask: sitk.Image, task: Task, resampled: bool, diagnostics: dict
) -> str:
    """Why this region cannot be measured ('' when it can)."""
    region = sitk.GetArrayFromImage(mask) == int(task.label)
    count = int(region.sum())
    diagnostics["diagnostics_primage_voxels"] = str(count)
    task_name = f"{task.region_name!r} on image {task.image_name!r}"
    if count == 0:
        if resampled and np.any(sitk.GetArrayViewFromImage(mask)):
            return f"region {task_name} has no voxel on the image grid (label {task.label})"
        if resampled:
            return (
                f"the mask does not overlap image {task.image_name!r} (region {task.region_name!r})"
            )
        if task.perturbation:
            return f"region {task_name} is empty after the {task.perturbation} perturbation"
        return f"region {task_name} is empty: label {task.label} has no voxel in the mask"
    if count == 1:
        return f"region {task_name} has a single voxel; shape and texture need at least two voxels"
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(values[region])))
        if bad:
            return (
                f"region {task_name} has {bad} NaN or infinite voxels in the image; fix the "
                "image or leave them out of the mask"
            )
    return ""


# --- running many tasks ------------------------------------------------------------------


def available_cpus() -> int:
    """CPUs this process may use (the affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _init_worker(params: dict[str, Any] | None = None) -> None:
    # ITK keeps its default thread count in workers: reductions such as the image
    # statistics of pyradiomics' normalisation sum in an order that depends on the thread
    # count, and the same count keeps every value equal, to the last bit, to plain
    # pyradiomics in one process. (pyradiomics' texture matrices are single-threaded C.)
    warnings.simplefilter("ignore", GeometryWarning)
    _quiet_radiomics()
    if params is not None:
        # Build the extractor (pyradiomics' imports, schema validation) while the calling
        # process already computes its first task, not when the first task arrives here.
        _extractor(params)


def _ready() -> bool:
    """A no-op task: submitting it starts the worker process before the tasks are sorted."""
    return True


def _derived_images(params: Mapping[str, Any]) -> int:
    """How many images pyradiomics computes features on: the original and each filter's."""
    count = 0
    settings = params.get("setting") or {}
    for name, options in (params.get("imageType") or {"Original": {}}).items():
        options = options or {}
        if name == "Wavelet":
            count += 8  # one level of a 3D decomposition: 8 sub-bands
        elif name == "LoG":
            count += max(1, len(options.get("sigma") or settings.get("sigma") or [1]))
        else:
            count += 1
    return max(count, 1)


def estimated_cost(task: Task, masks: dict | None = None) -> float:
    """Relative cost of a task (no unit): voxels of the grid pyradiomics computes on x images.

    The grid is the region's bounding box (its physical extent over
    ``resampledPixelSpacing`` when resampling, plus ``padDistance`` voxels on each side)
    and the images are the original and every filtered one, so larger regions and richer
    presets count more. ``masks`` caches the masks read (by path) and their bounding boxes
    between calls. A mask that cannot be read costs 0: the task reports why when it runs.
    """
    masks = {} if masks is None else masks
    source = id(task.mask) if isinstance(task.mask, sitk.Image) else str(task.mask)
    cache_key = (source, task.binarize)
    try:
        if cache_key not in masks:
            mask = _load(task.mask, "mask")
            region_map = (
                sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8) if task.binarize else mask
            )
            if region_map.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32):
                region_map = sitk.Cast(region_map, sitk.sitkUInt32)
            shapes = sitk.LabelShapeStatisticsImageFilter()
            shapes.Execute(region_map)
            boxes = {int(v): shapes.GetBoundingBox(v) for v in shapes.GetLabels()}
            masks[cache_key] = (mask, boxes, np.array(mask.GetSpacing(), dtype=float))
        _, boxes, spacing = masks[cache_key]
    except (PrimageInputError, RuntimeError, ValueError, OSError):
        return 0.0
    box = boxes.get(int(task.label))
    if box is None:
        return 0.0
    dimension = len(spacing)
    size = np.array(box[dimension:], dtype=float)
    settings = task.params.get("setting") or {}
    resampled = settings.get("resampledPixelSpacing")
    if resampled and settings.get("interpolator") is not None and len(resampled) == dimension:
        target = np.where(np.asarray(resampled, dtype=float) > 0, resampled, spacing)
        size = size * spacing / target + 2 * float(settings.get("padDistance", 5))
    return float(np.prod(size)) * _derived_images(task.params)


def _pool_context():
    """The multiprocessing context for worker pools: "spawn" on every platform.

    Workers start from a fresh interpreter, so no ITK thread state is inherited (as it
    would be with "fork") and a run behaves the same on Linux, macOS and Windows. Like
    any spawn pool it needs an importable ``__main__`` (a script file, ``-m``, ``-c`` or
    Slicer; not a script piped through stdin). Inside the Slicer application
    ``sys.executable`` may not be a Python interpreter: Slicer's own (PythonSlicer) is
    used then.
    """
    from primage.jobs import python_executable

    context = multiprocessing.get_context("spawn")
    if python_executable() != sys.executable:
        context.set_executable(python_executable())
    return context


def _describe(task: Task) -> str:
    extra = f" ({task.perturbation})" if task.perturbation else ""
    return f"{task.image_name} x {task.region_name}{extra}"


def run_tasks(
    tasks: Sequence[Task],
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[Result]:
    """Run every task; results in the order of ``tasks``.

    ``workers``: how many tasks run at the same time (default: one per available CPU, at
    most one per task). This process computes too, so ``workers=N`` starts ``N - 1``
    worker processes: one fewer interpreter to start, and work begins at once. 1 runs
    everything here. ``progress(fraction, message)`` is called once per finished (image,
    region); ``cancel()`` is polled between tasks and, when it returns True, pending tasks
    are dropped and :class:`ExtractionCancelled` is raised.
    """
    tasks = list(tasks)
    total = len(tasks)
    report = progress or (lambda fraction, message: None)
    if total == 0:
        report(1.0, "nothing to extract")
        return []
    count = available_cpus() if workers is None else int(workers)
    count = max(1, min(count, total))
    report(0.0, f"extracting {total} (image, region) pair{'s' if total > 1 else ''}")
    _quiet_radiomics()
    if count == 1:
        results = []
        for index, task in enumerate(tasks):
            if cancel is not None and cancel():
                raise ExtractionCancelled(f"cancelled after {index} of {total}")
            results.append(run_task(task))
            report((index + 1) / total, f"{index + 1}/{total} {_describe(task)}")
        return results
    return _Scheduler(tasks, count - 1, report, cancel).run()


class _Scheduler:
    """Shares tasks between this process (the calling thread) and a pool of processes.

    The pool's processes start first (they take about half a second each to import
    pyradiomics and build the extractor); meanwhile this process estimates each task's
    cost (:func:`estimated_cost`) and starts computing. Tasks are handed out largest
    first, one at a time, to whoever is free: a feeder thread keeps each pool process
    busy with exactly one task (none queued behind it, so no one waits at the end for a
    task another has reserved) and collects the results; the calling thread takes the
    next task whenever it is free. Results keep the order of ``tasks``.
    """

    def __init__(self, tasks, pool_size, report, cancel) -> None:
        self.tasks = tasks
        self.pool_size = pool_size
        self.report = report
        self.cancel = cancel
        self.results: list[Result | None] = [None] * len(tasks)
        self.lock = threading.Lock()
        self.order: list[int] = list(range(len(tasks)))
        self.next_index = 0
        self.done = 0
        self.stopped = False
        self.failure: BaseException | None = None
        self.masks: dict = {}

    def take(self) -> int | None:
        with self.lock:
            if self.stopped or self.next_index >= len(self.order):
                return None
            self.next_index += 1
            return self.order[self.next_index - 1]

    def record(self, index: int, result: Result) -> None:
        with self.lock:
            self.results[index] = result
            self.done += 1
            done = self.done
            # Reported under the lock: the two threads never interleave their messages.
            total = len(self.tasks)
            self.report(done / total, f"{done}/{total} {_describe(self.tasks[index])}")

    def _sort(self) -> None:
        """Largest first (longest-processing-time order); ties keep the given order."""
        costs = [estimated_cost(task, self.masks) for task in self.tasks]
        self.order = sorted(range(len(self.tasks)), key=lambda i: -costs[i])

    def _run_here(self, index: int) -> Result:
        """Run a task in this process, reusing the mask already read to sort the tasks."""
        task = self.tasks[index]
        cached = self.masks.get((str(task.mask), task.binarize))
        if cached is None or isinstance(task.mask, sitk.Image):
            return run_task(task)
        result = run_task(dataclasses.replace(task, mask=cached[0]))
        result.task = task
        return result

    def _feed(self, pool) -> None:
        pending: dict = {}
        try:
            while True:
                while len(pending) < self.pool_size:
                    index = self.take()
                    if index is None:
                        break
                    pending[pool.submit(run_task, self.tasks[index])] = index
                if not pending:
                    return
                finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    self.record(pending.pop(future), future.result())
                if self.stopped:
                    for future in pending:
                        future.cancel()
                    return
        except BaseException as error:  # a worker died: report it from the calling thread
            self.failure = error
            self.stopped = True

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            self.stopped = True
            raise ExtractionCancelled(f"cancelled after {self.done} of {len(self.tasks)}")

    def run(self) -> list[Result]:
        pool = ProcessPoolExecutor(
            self.pool_size,
            mp_context=_pool_context(),
            initializer=_init_worker,
            initargs=(self.tasks[0].params,),
        )
        feeder = threading.Thread(target=self._feed, args=(pool,), daemon=True)
        try:
            for _ in range(self.pool_size):
                pool.submit(_ready)  # starts the processes now, while the tasks are sorted
            self._sort()
            feeder.start()
            while True:
                self._check_cancel()
                index = self.take()
                if index is None:
                    break
                self.record(index, self._run_here(index))
            while feeder.is_alive():
                feeder.join(0.2)
                self._check_cancel()
            if self.failure is not None:
                raise self.failure
        finally:
            self.stopped = True
            if feeder.ident is not None:  # started
                feeder.join()
            pool.shutdown(wait=True, cancel_futures=True)
        return self.results  # type: ignore[return-value]


# --- the usual case: images x labels of one mask -----------------------------------------


def build_tasks(
    images: Mapping[str, ImageSource],
    regions: Sequence[Region],
    parameters: ParameterSet,
    *,
    modalities: Mapping[str, str] | None = None,
) -> list[Task]:
    """One task per (image, region), image-major; per-image modality settings applied."""
    modalities = dict(modalities or {})
    unknown = sorted(set(modalities) - set(images))
    if unknown:
        raise PrimageInputError(f"a modality was given for an unknown image: {', '.join(unknown)}")
    tasks = []
    for image_name, image in images.items():
        modality = parameters.modality_of(image_name, modalities.get(image_name))
        params = parameters.for_modality(modality)
        for region in regions:
            tasks.append(
                Task(
                    image_name=image_name,
                    region_name=region.name,
                    label=int(region.label),
                    image=image,
                    mask=region.mask,
                    params=params,
                    parameters_source=parameters.source,
                    modality=modality,
                )
            )
    return tasks


def extract(
    images: Mapping[str, ImageSource],
    mask: ImageSource,
    *,
    labels: Sequence[int] | None = None,
    parameters: ParameterSet | None = None,
    modalities: Mapping[str, str] | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[Result]:
    """Features of every (image, label) pair of one label map; one :class:`Result` each.

    ``images`` maps names to images or image paths (3D); ``mask`` is a label map (or a
    path); ``labels`` default to every non-zero label of the mask. Refuses (before any
    work) 4D images, a fractional or empty mask and labels <= 0; an absent label gives a
    row error.
    """
    if not images:
        raise PrimageInputError("no image given")
    parameters = parameters or load_params("primage")
    mask_image = read_mask(mask)
    present = check_label_map(mask_image)
    if labels is None:
        if not present:
            raise PrimageInputError("the mask is empty (no non-zero voxel)")
        labels = present
    labels = [int(label) for label in labels]
    bad = [label for label in labels if label <= 0]
    if bad:
        raise PrimageInputError(f"labels must be > 0 (0 is background), got {bad[0]}")
    loaded = {}
    for name, source in images.items():
        image = (
            source if isinstance(source, sitk.Image) else read_image(source, role=f"image {name}")
        )
        if image.GetDimension() != 3:
            raise PrimageInputError(
                f"image {name} is {image.GetDimension()}D; a 3D image is expected"
            )
        # Workers read files themselves (cheaper than sending voxels); in-process runs
        # reuse what was read here.
        loaded[name] = source if not isinstance(source, sitk.Image) else image
        if not same_geometry(mask_image, image):
            warnings.warn(
                f"the mask is on another voxel grid than image {name}; resampled to the "
                "image grid with nearest-neighbour interpolation",
                GeometryWarning,
                stacklevel=2,
            )
    regions = [
        Region(str(label), mask if not isinstance(mask, sitk.Image) else mask_image, label)
        for label in labels
    ]
    tasks = build_tasks(loaded, regions, parameters, modalities=modalities)
    if (workers == 1 or len(tasks) == 1) and not isinstance(mask, sitk.Image):
        # In-process: hand over the images already read instead of reading them again.
        for task in tasks:
            task.mask = mask_image
            if not isinstance(task.image, sitk.Image):
                task.image = read_image(task.image, role=f"image {task.image_name}")
    return run_tasks(tasks, workers=workers, progress=progress, cancel=cancel)


# --- rows ---------------------------------------------------------------------------------


def result_rows(
    results: Sequence[Result],
    *,
    region_column: str = "label",
    diagnostics: str = "separate",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for a table: ``image``, ``<region_column>``, features, ``error``.

    ``diagnostics``: ``"columns"`` appends the diagnostics to each row, ``"separate"``
    returns them as a second list of rows (``image``, region, diagnostics...), ``"none"``
    drops them. Features missing from a row (an error) are left out of that row.
    """
    if diagnostics not in ("columns", "separate", "none"):
        raise PrimageInputError(
            f"diagnostics must be columns, separate or none, not {diagnostics!r}"
        )
    feature_names: list[str] = []
    for result in results:
        for name in result.features:
            if name not in feature_names:
                feature_names.append(name)
    rows, side = [], []
    for result in results:
        key = {"image": result.task.image_name, region_column: result.task.region_name}
        key.update(result.task.meta)
        row = dict(key)
        for name in feature_names:
            if name in result.features:
                row[name] = result.features[name]
        row["error"] = result.error
        if diagnostics == "columns":
            row.update(result.diagnostics)
        elif diagnostics == "separate":
            side.append({**key, **result.diagnostics})
        rows.append(row)
    return rows, side


def describe_failures(results: Sequence[Result]) -> str:
    """One line summarising failed rows ('' when none failed)."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return ""
    first = failed[0].error
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return f"{len(failed)} of {len(results)} (image, region) rows failed: {first}{more}"
