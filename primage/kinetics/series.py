"""4D series as voxel-by-frame arrays, processed in chunks, and maps back to images.

A 4D image (volumes along the 4th axis: b-values or time points) is read once as a
``(frames, voxels)`` array view; fits take chunks of voxels as ``(voxels, frames)``
float64 copies, so the memory used on top of the series is bounded by the chunk size,
whatever the volume size. Parameter maps come back as Float32 images on the series grid.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import mask_on_image_grid

#: Voxels per chunk: 32768 voxels x 60 frames x 8 bytes = 16 MB per working array.
CHUNK_VOXELS = 32768


class KineticsCancelled(Exception):
    """Raised by a progress callback to stop a long fit; nothing is written or created."""


class KineticsWarning(UserWarning):
    """Voxels left out of a fit (non-positive or non-finite signal, windows past the end)."""


def reference_volume(series: sitk.Image) -> sitk.Image:
    """First 3D volume of a 4D image: the voxel grid (spacing, origin, direction) of the maps."""
    size = list(series.GetSize())
    size[3] = 0
    return sitk.Extract(
        series, size, [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
    )


@dataclass
class VoxelSeries:
    """The voxels of a 4D series to fit.

    ``frames_by_voxel`` is a ``(frames, all voxels)`` view of the image's buffer (the image
    is kept referenced here, so the view stays valid); ``index`` holds the flat indices of
    the voxels to fit (inside the mask, all frames finite); ``reference`` the 3D grid.
    """

    image: sitk.Image
    frames_by_voxel: np.ndarray
    index: np.ndarray
    reference: sitk.Image
    mask: np.ndarray | None = None  # (z, y, x) bool, when a mask was given
    excluded_nonfinite: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return self.frames_by_voxel.shape[0]

    @property
    def voxels(self) -> int:
        return self.index.size

    @property
    def shape(self) -> tuple[int, int, int]:
        size = self.reference.GetSize()
        return (size[2], size[1], size[0])

    def _columns(self, start: int, stop: int) -> np.ndarray:
        """``frames_by_voxel`` at voxels ``index[start:stop]``: a view (no gather) when those
        voxels are consecutive, as they are without a mask."""
        index = self.index[start:stop]
        if index.size and index[-1] - index[0] == index.size - 1:  # sorted and unique
            return self.frames_by_voxel[:, index[0] : index[-1] + 1]
        return self.frames_by_voxel[:, index]

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Signals of voxels ``index[start:stop]`` as a (voxels, frames) float64 array."""
        return np.ascontiguousarray(self._columns(start, stop).T, dtype=float)

    def chunks(self, size: int = CHUNK_VOXELS):
        """Yield ``(start, stop)`` bounds of consecutive voxel chunks."""
        for start in range(0, self.voxels, size):
            yield start, min(start + size, self.voxels)

    def mean_signal(self, selection: np.ndarray | None = None) -> np.ndarray:
        """Mean signal per frame over the fitted voxels (or ``index[selection]``)."""
        index = self.index if selection is None else self.index[selection]
        total = np.zeros(self.frames)
        for start in range(0, index.size, CHUNK_VOXELS):
            if selection is None:
                part = self._columns(start, start + CHUNK_VOXELS)
            else:
                part = self.frames_by_voxel[:, index[start : start + CHUNK_VOXELS]]
            total += part.sum(axis=1, dtype=float)
        return total / max(index.size, 1)

    def count_positive(self, frames: np.ndarray | None = None) -> int:
        """Voxels whose signal is > 0 in every frame (or in the selected ``frames``)."""
        count = 0
        for start, stop in self.chunks():
            signal = self.chunk(start, stop)
            if frames is not None:
                signal = signal[:, frames]
            count += int(np.count_nonzero(np.all(signal > 0, axis=1)))
        return count

    def to_image(self, values: np.ndarray, *, fill: float = 0.0, pixel=sitk.sitkFloat32):
        """A 3D image on the series grid: ``values`` at the fitted voxels, ``fill`` elsewhere
        and wherever a value is NaN (no fit possible)."""
        values = np.asarray(values, dtype=float)
        # Float32 maps are filled as float32 directly: no float64 volume and no Cast copy.
        dtype = np.float32 if pixel == sitk.sitkFloat32 else float
        array = np.full(int(np.prod(self.shape)), fill, dtype=dtype)
        array[self.index] = np.where(np.isfinite(values), values, fill)
        image = sitk.GetImageFromArray(array.reshape(self.shape))
        if image.GetPixelID() != pixel:
            image = sitk.Cast(image, pixel)
        image.CopyInformation(self.reference)
        return image


def load_series(
    series: sitk.Image,
    mask: sitk.Image | None = None,
    *,
    role: str = "series",
    allow_zero_frames: bool = False,
) -> VoxelSeries:
    """Check a 4D series (and optional mask) and select the voxels to fit.

    Refused: an image that is not 4D, a frame whose voxels are all NaN/inf or (for MR
    signal, unless ``allow_zero_frames``, e.g. for concentrations) all zero, an empty mask.
    A mask on another grid is resampled (nearest neighbour, with a warning). Voxels with a
    non-finite value in any frame are left out with a :class:`KineticsWarning`.
    """
    if series.GetDimension() != 4:
        raise PrimageInputError(
            f"{role} is a {series.GetDimension()}D image; a 4D series (volumes along the 4th "
            "axis) is expected"
        )
    if series.GetNumberOfComponentsPerPixel() != 1:
        raise PrimageInputError(f"{role} must have one value per voxel")
    reference = reference_volume(series)
    # A view of the buffer: no copy of a series that may be gigabytes. ``series`` stays
    # referenced in the VoxelSeries, so the view never outlives its image.
    array = sitk.GetArrayViewFromImage(series)
    frames = array.shape[0]
    flat = array.reshape(frames, -1)
    bad = np.zeros(flat.shape[1], dtype=bool)
    floating = np.issubdtype(flat.dtype, np.floating)
    nonfinite_frames, zero_frames = [], []
    for frame in range(frames):
        values = flat[frame]
        if floating:
            finite = np.isfinite(values)
            if not finite.any():
                nonfinite_frames.append(frame)
                continue
            bad |= ~finite
        # ITK's NIfTI reader returns NaN voxels as 0, so a lost (NaN) frame read from a
        # .nii file arrives all zero: refuse that too rather than fit a wrong decay.
        if not allow_zero_frames and not np.any(values):
            zero_frames.append(frame)
    if nonfinite_frames:
        raise PrimageInputError(
            f"{role} frame(s) {nonfinite_frames} contain only NaN/inf values; remove or "
            "replace those volumes (and their b-values/times)"
        )
    if zero_frames:
        raise PrimageInputError(
            f"{role} frame(s) {zero_frames} are entirely zero (missing or NaN data: NIfTI "
            "files store NaN as 0 when read); remove those volumes (and their b-values/times)"
        )
    selected = np.ones(flat.shape[1], dtype=bool)
    mask_array = None
    if mask is not None:
        # Hold back the resampling warning until the mask is known to be usable, so a bad
        # mask gives one error line, not a warning and an error.
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always")
            binary = mask_on_image_grid(mask, reference, role="mask")
        for warning in held:
            warnings.warn(warning.message, warning.category, stacklevel=2)
        mask_array = sitk.GetArrayFromImage(binary).astype(bool)
        selected &= mask_array.ravel()
    excluded = int(np.count_nonzero(bad & selected))
    selected &= ~bad
    index = np.flatnonzero(selected)
    if index.size == 0:
        raise PrimageInputError(f"{role} has no voxel with finite values in every frame")
    result = VoxelSeries(series, flat, index, reference, mask_array, excluded)
    if excluded:
        warnings.warn(
            f"{excluded} voxel(s) of the {role} have NaN/inf values and are left out of the fit",
            KineticsWarning,
            stacklevel=2,
        )
    return result


def report(progress, fraction: float, message: str) -> None:
    """Call a progress callback if given (it may raise :class:`KineticsCancelled`)."""
    if progress is not None:
        progress(fraction, message)


#: Set by :func:`fit_threads`: the most threads chunked fits may use (None: no limit).
_thread_limit: int | None = None


def default_workers() -> int:
    """Threads for chunked fits: the CPUs available to this process, at most 8, and at
    most the limit of an enclosing :func:`fit_threads`."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    count = max(1, min(8, available))
    return count if _thread_limit is None else max(1, min(count, _thread_limit))


@contextmanager
def fit_threads(count: int) -> Iterator[None]:
    """Within the block, chunked fits use at most ``count`` threads. A cohort worker runs
    one case per core: more threads there only add CPU time, and each allocates its
    arrays from a malloc arena of its own, fresh memory every time (a clinical case's
    kinetics step: 8-10 -> 7-8 CPU-s with one thread, peak 0.65 -> 0.44 GB)."""
    global _thread_limit
    previous, _thread_limit = _thread_limit, max(1, int(count))
    try:
        yield
    finally:
        _thread_limit = previous


def map_chunks(
    voxels: VoxelSeries,
    work: Callable[[int, int], object],
    *,
    size: int = CHUNK_VOXELS,
    progress=None,
    label: str = "fitting",
    start: float = 0.0,
    span: float = 0.95,
    workers: int | None = None,
) -> Iterator[tuple[int, int, object]]:
    """Run ``work(start, stop)`` on every chunk of voxels; yield ``(start, stop, result)``
    in order, reporting progress after each chunk.

    Chunks are independent, so they run in a pool of threads: numpy releases the GIL in
    its array operations, so this uses several cores, and the result does not depend on
    the number of threads. A progress callback that raises (e.g. :class:`KineticsCancelled`)
    stops the run: chunks not started yet are dropped. BLAS runs one thread meanwhile: the
    chunks' matrix products are small, and OpenBLAS threads spinning against the pool
    doubled the CPU time of a Tofts fit.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield from _map_chunks(voxels, work, size, progress, label, start, span, workers)


def _map_chunks(voxels, work, size, progress, label, start, span, workers):
    workers = default_workers() if workers is None else workers
    bounds = list(voxels.chunks(size))
    total = voxels.voxels
    if workers <= 1 or len(bounds) <= 1:
        for first, last in bounds:
            result = work(first, last)
            yield first, last, result
            report(progress, start + span * last / total, f"{label}: {last} of {total} voxels")
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, first, last) for first, last in bounds]
        try:
            for (first, last), future in zip(bounds, futures, strict=True):
                yield first, last, future.result()
                report(progress, start + span * last / total, f"{label}: {last} of {total} voxels")
        finally:
            for future in futures:
                future.cancel()
