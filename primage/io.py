"""Reading and writing images safely.

Every image the engine reads goes through :func:`read_image` (clear errors for missing
files, non-images, wrong dimension, zero spacing), and every file it writes goes through
an atomic write (temporary file in the same folder, then rename), so a crash never leaves
a half-written output and an input is never overwritten.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import tempfile
import warnings
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError

#: File name endings SimpleITK recognises, longest first so ".nii.gz" wins over ".gz".
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff")


class GeometryWarning(UserWarning):
    """A mask or image was resampled to match another grid."""


def image_suffix(path: str | os.PathLike) -> str:
    """Return the image file ending of ``path`` (e.g. ``.nii.gz``), or its last suffix."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def image_stem(path: str | os.PathLike) -> str:
    """Return the file name of ``path`` without its image ending (``t2w.nii.gz`` -> ``t2w``)."""
    name = Path(path).name
    return name[: len(name) - len(image_suffix(path))] if image_suffix(path) else name


def read_image(path: str | os.PathLike, *, dimension: int = 3, role: str = "image") -> sitk.Image:
    """Read a scalar image of the given dimension (3: a volume, 4: a series of volumes).

    A 4D file with a single volume is accepted where 3D is expected. Raises
    :class:`PrimageInputError` with one clear sentence for every user mistake.
    ``role`` names the input in messages ("mask", "reference", ...).
    """
    path = Path(path)
    if not path.exists():
        raise PrimageInputError(f"{role} file does not exist: {path}")
    if path.is_dir():
        raise PrimageInputError(f"{role} path is a folder, not an image file: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        if "spacing" in str(error).lower():
            # ITK itself refuses zero spacing while reading; say so instead of "not an image".
            raise PrimageInputError(
                f"{role} {path} has an invalid voxel spacing in its header; every spacing "
                f"must be > 0 ({first_line[:160]})"
            ) from None
        raise _unreadable(role, path, first_line) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise _not_scalar(role, path, image.GetNumberOfComponentsPerPixel())
    image = _match_dimension(image, dimension, role, path)
    check_spacing(image, role=f"{role} {path}")
    return image


def _unreadable(role: str, path: Path, detail: str) -> PrimageInputError:
    return PrimageInputError(
        f"{role} file is not an image SimpleITK can read: {path}"
        + (f" ({detail[:160]})" if detail else "")
    )


def _not_scalar(role: str, path: Path, components: int) -> PrimageInputError:
    return PrimageInputError(
        f"{role} {path} has {components} components per voxel; a scalar image is expected"
    )


def _header(path: str | os.PathLike, dimension: int, role: str) -> sitk.ImageFileReader:
    """A reader of ``path`` with its header read and checked like :func:`read_image`."""
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"{role} file does not exist: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise _unreadable(role, path, last) from None
    if reader.GetNumberOfComponents() != 1:
        raise _not_scalar(role, path, reader.GetNumberOfComponents())
    if reader.GetDimension() != dimension:
        raise PrimageInputError(
            f"{role} {path} is {reader.GetDimension()}D; a {dimension}D image is expected"
        )
    spacing = np.asarray(reader.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise PrimageInputError(
            f"{role} {path} has invalid voxel spacing {tuple(spacing.tolist())} mm; every spacing must be > 0"
        )
    return reader


def read_volume_grid(path: str | os.PathLike, *, role: str = "series") -> sitk.Image:
    """The 3D voxel grid (size, spacing, origin, direction) of a 4D series file, read from
    its header only: a UInt8 image of zeros, as the first volume's geometry."""
    reader = _header(path, 4, role)
    grid = sitk.Image([int(n) for n in reader.GetSize()[:3]], sitk.sitkUInt8)
    grid.SetSpacing(reader.GetSpacing()[:3])
    grid.SetOrigin(reader.GetOrigin()[:3])
    grid.SetDirection(np.asarray(reader.GetDirection()).reshape(4, 4)[:3, :3].ravel().tolist())
    return grid


def read_series_box(
    path: str | os.PathLike, low: Sequence[int], size: Sequence[int], *, role: str = "series"
) -> sitk.Image:
    """Every volume of a 4D series file inside the box of (x, y, z) voxel index ``low`` and
    ``size``: ITK streams only the box from uncompressed NIfTI, NRRD and MetaImage (a
    60-frame DCE box in milliseconds instead of seconds), and reads other files whole."""
    reader = _header(path, 4, role)
    frames = int(reader.GetSize()[3])
    index = [*[int(v) for v in low], 0]
    return _read_extract(reader, index, [*[int(v) for v in size], frames], role)


def _read_extract(
    reader: sitk.ImageFileReader, index: list[int], size: list[int], role: str
) -> sitk.Image:
    """The ``index``/``size`` region of a reader from :func:`_header` (ITK streams it where
    the format allows; a 0 in ``size`` collapses that axis)."""
    reader.SetExtractIndex(index)
    reader.SetExtractSize(size)
    try:
        return reader.Execute()
    except RuntimeError as error:
        last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise PrimageInputError(
            f"{role} {reader.GetFileName()} could not be read ({last[:160]})"
        ) from None


class SeriesFile:
    """A 4D series file read volume by volume: an uncompressed NIfTI (``.nii``, what the
    pipeline writes) is streamed, ITK reading only that volume (a 60-frame clinical DCE
    never whole in memory: 0.5 CPU-s instead of 1.4-2.5 for its 470 MB); other files,
    which may be compressed, are read whole once.

    ``count``, ``time_origin`` and ``time_spacing`` come from the header; ``volume(i)``
    equals :func:`series_volume` of the whole series, geometry included.
    """

    def __init__(self, path: str | os.PathLike, *, role: str = "series") -> None:
        self._role = role
        self._reader = _header(path, 4, role)  # its header read once, for every volume
        self.count = int(self._reader.GetSize()[3])
        self.time_origin = float(self._reader.GetOrigin()[3])
        self.time_spacing = float(self._reader.GetSpacing()[3])
        self._whole = (
            None if image_suffix(path) == ".nii" else read_image(path, dimension=4, role=role)
        )

    def volume(self, index: int) -> sitk.Image:
        """Volume ``index`` (0-based) as a 3D image."""
        if not 0 <= index < self.count:
            raise IndexError(f"volume {index} of {self.count}")
        if self._whole is not None:
            return series_volume(self._whole, index)
        size = [int(n) for n in self._reader.GetSize()[:3]]
        return _read_extract(self._reader, [0, 0, 0, int(index)], [*size, 0], self._role)

    def volumes(self) -> Iterator[sitk.Image]:
        """Every volume in order, one at a time."""
        for index in range(self.count):
            yield self.volume(index)


def read_frame_means(path: str | os.PathLike, *, role: str = "series") -> np.ndarray:
    """Mean over all voxels of each volume of a 4D series file (float64), read volume by
    volume (:class:`SeriesFile`: an uncompressed NIfTI is never whole in memory)."""
    series = SeriesFile(path, role=role)
    means = np.empty(series.count)
    for index in range(series.count):
        volume = series.volume(index)  # referenced: the view does not keep it alive
        means[index] = sitk.GetArrayViewFromImage(volume).mean(dtype=np.float64)
    return means


def _match_dimension(image: sitk.Image, dimension: int, role: str, path: Path) -> sitk.Image:
    found = image.GetDimension()
    if found == dimension:
        return image
    if found == 4 and dimension == 3 and image.GetSize()[3] == 1:
        return series_to_volumes(image)[0]
    if dimension == 3 and found == 4:
        raise PrimageInputError(
            f"{role} {path} is a 4D series of {image.GetSize()[3]} volumes; a 3D volume is "
            "expected (extract one volume first, or use a command that takes a series)"
        )
    if dimension == 4 and found == 3:
        raise PrimageInputError(
            f"{role} {path} is a single 3D volume; a 4D series (b-values or time points "
            "along the 4th axis) is expected"
        )
    raise PrimageInputError(f"{role} {path} is {found}D; a {dimension}D image is expected")


def check_spacing(image: sitk.Image, *, role: str = "image") -> None:
    """Refuse zero, negative or non-finite voxel spacing (mm)."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise PrimageInputError(
            f"{role} has invalid voxel spacing {tuple(spacing.tolist())} mm; every spacing must be > 0"
        )


def count_nonfinite(image: sitk.Image) -> int:
    """Number of NaN or infinite voxels (0 for integer images)."""
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def replace_nonfinite(image: sitk.Image, value: float = 0.0) -> sitk.Image:
    """Copy of ``image`` with NaN/inf voxels set to ``value`` (geometry kept)."""
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        array = np.where(np.isfinite(array), array, value).astype(array.dtype, copy=False)
    result = sitk.GetImageFromArray(array, isVector=False)
    result.CopyInformation(image)
    return result


def series_volume(series: sitk.Image, index: int) -> sitk.Image:
    """Volume ``index`` of a 4D series, keeping the spatial geometry (3x3 part)."""
    if series.GetDimension() != 4:
        raise PrimageInputError(f"expected a 4D series, got a {series.GetDimension()}D image")
    size = list(series.GetSize())
    size[3] = 0
    return sitk.Extract(
        series, size, [0, 0, 0, int(index)], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
    )


def series_to_volumes(series: sitk.Image) -> list[sitk.Image]:
    """Split a 4D image into its 3D volumes, keeping the spatial geometry (3x3 part)."""
    if series.GetDimension() != 4:
        raise PrimageInputError(f"expected a 4D series, got a {series.GetDimension()}D image")
    return [series_volume(series, index) for index in range(series.GetSize()[3])]


def volumes_to_series(volumes: Sequence[sitk.Image], *, time_spacing: float = 1.0) -> sitk.Image:
    """Join 3D volumes of one grid into a 4D image (4th axis spacing ``time_spacing``)."""
    if not volumes:
        raise PrimageInputError("a series needs at least one volume")
    first = volumes[0]
    for index, volume in enumerate(volumes[1:], start=1):
        if not same_geometry(first, volume):
            raise PrimageInputError(
                f"volume {index} of the series is on another grid than volume 0"
            )
    return sitk.JoinSeries(list(volumes), 0.0, float(time_spacing))


def same_geometry(a: sitk.Image, b: sitk.Image, *, tolerance: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tolerance``)."""
    return (
        a.GetDimension() == b.GetDimension()
        and a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance)
        and np.allclose(
            a.GetOrigin(),
            b.GetOrigin(),
            rtol=0,
            atol=tolerance * max(1.0, *map(abs, a.GetSpacing())),
        )
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tolerance)
    )


def mask_on_image_grid(mask: sitk.Image, image: sitk.Image, *, role: str = "mask") -> sitk.Image:
    """Return ``mask`` as a binary UInt8 image on the grid of ``image``.

    A mask on another grid is resampled with nearest-neighbour interpolation and a
    :class:`GeometryWarning` is issued. A mask that is empty (before or after
    resampling) is refused: every step that takes a mask needs at least one voxel.
    """
    if mask.GetDimension() != image.GetDimension():
        raise PrimageInputError(
            f"{role} is {mask.GetDimension()}D but the image is {image.GetDimension()}D"
        )
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise PrimageInputError(f"{role} is empty (no non-zero voxel)")
    if not same_geometry(binary, image):
        warnings.warn(
            f"{role} is on another voxel grid than the image; resampled to the image grid "
            "with nearest-neighbour interpolation",
            GeometryWarning,
            stacklevel=2,
        )
        binary = sitk.Resample(
            binary, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )
        if not np.any(sitk.GetArrayViewFromImage(binary)):
            raise PrimageInputError(
                f"{role} does not overlap the image: empty after resampling to the image grid"
            )
    return binary


def check_outputs_not_inputs(
    outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]
) -> None:
    """Refuse any output path that is also an input path (inputs are never overwritten)."""
    input_paths = {Path(p).resolve() for p in inputs if p is not None}
    for output in outputs:
        if output is not None and Path(output).resolve() in input_paths:
            raise PrimageInputError(f"output {output} is also an input; choose another output path")


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the image ending so SimpleITK picks the same writer for the temporary file.
    return tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".part{image_suffix(path)}", dir=path.parent
    )


def _file_mode() -> int:
    # mkstemp creates files readable by the owner only; give outputs the usual
    # permissions (0o666 minus the process umask), as a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: Formats whose header names a separate data file (written next to it).
DETACHED_HEADER_SUFFIXES = (".mhd", ".nhdr")


def _write_detached(image: sitk.Image, path: Path, compress: bool) -> Path:
    # The header stores the data file's name, so write both under their final names in
    # a temporary folder beside the target, then move the data file(s) first and the
    # header last: the header never points at a missing or temporary data file.
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        sitk.WriteImage(image, os.path.join(folder, path.name), useCompression=compress)
        for name in sorted(os.listdir(folder), key=lambda n: n == path.name):
            os.chmod(os.path.join(folder, name), _file_mode())
            os.replace(os.path.join(folder, name), path.parent / name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


#: zlib settings of written ``.nii.gz`` files: level 1 with run-length matching (Z_RLE).
#: On float maps it compresses as well as ITK's default gzip at about 3x the speed, on
#: Int16 MR series within ~5 % of its size (see the README, "Performance"); any gzip
#: reader (ITK/Slicer, nibabel, Python's gzip) decodes it.
GZIP_LEVEL = 1
GZIP_STRATEGY = zlib.Z_RLE
#: Uncompressed bytes per block deflated in parallel.
GZIP_BLOCK_BYTES = 1 << 22


def _io_threads() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def _deflate(block: bytes, last: bool) -> bytes:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15, 8, GZIP_STRATEGY)
    # A sync flush ends the block on a byte boundary, so raw deflate blocks made
    # independently concatenate into one valid stream (as pigz does).
    return compressor.compress(block) + compressor.flush(
        zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    )


def gzip_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Compress ``source`` into ``target`` as one gzip member, its blocks deflated in
    parallel threads (zlib releases the GIL) with :data:`GZIP_LEVEL` and
    :data:`GZIP_STRATEGY`; memory stays bounded by a few blocks."""
    threads = _io_threads()
    crc, size = 0, 0
    with open(source, "rb") as stream, open(target, "wb") as out:
        # gzip header: no name, no time stamp, "fastest" flag, unknown OS.
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff")
        with ThreadPoolExecutor(max_workers=threads) as pool:
            pending: deque = deque()
            block = stream.read(GZIP_BLOCK_BYTES)
            while True:
                following = stream.read(GZIP_BLOCK_BYTES)
                crc = zlib.crc32(block, crc)
                size += len(block)
                pending.append(pool.submit(_deflate, block, not following))
                while len(pending) > 2 * threads or (pending and not following):
                    out.write(pending.popleft().result())
                if not following:
                    break
                block = following
        out.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))


def _write_nifti_gz(image: sitk.Image, temporary: str, path: Path) -> None:
    # ITK writes the uncompressed NIfTI (fast); the gzip stream is made here, faster than
    # ITK's single-threaded default level and byte-for-byte the same file once unzipped.
    handle, raw = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part.nii", dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, raw, useCompression=False)
        gzip_file(raw, temporary)
    finally:
        os.unlink(raw)


def write_image(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``image`` atomically: to a temporary file in the same folder, then rename.

    Detached-header formats (``.mhd``, ``.nhdr``) are written in a temporary folder and
    moved data file first, header last. ``.nii.gz`` is always gzip (the ending says so),
    made by :func:`gzip_file`; ``compress`` applies to the formats where compression is
    optional (``.nrrd``, ``.mha``, ...).
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix in DETACHED_HEADER_SUFFIXES:
        return _write_detached(image, path, compress)
    handle, temporary = _atomic_target(path)
    os.close(handle)
    try:
        if suffix == ".nii.gz":
            _write_nifti_gz(image, temporary, path)
        else:
            sitk.WriteImage(image, temporary, useCompression=compress)
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_series(
    volumes: Iterable[sitk.Image],
    path: str | os.PathLike,
    *,
    time_origin: float = 0.0,
    time_spacing: float = 1.0,
) -> Path:
    """Write 3D volumes of one grid as a 4D series (4th axis ``time_origin``,
    ``time_spacing``), atomically, as ``write_image(sitk.JoinSeries(...))`` would.

    For uncompressed NIfTI the series is never joined in memory: ITK writes the header
    and first two frames, the other frames are appended as they are (NIfTI stores frame
    after frame) and the frame count is set in the header last, which for a registered
    60-frame DCE series saves a 1 GB copy and most of the writing time. ``volumes`` may
    be an iterator (e.g. frames resampled one by one): each frame is then written as it
    comes and may be freed, and one on another grid or of another pixel type than the
    first is refused. Other formats (``.nii.gz``, ``.nrrd``, ...) are joined and written
    by :func:`write_image`.
    """
    path = Path(path)
    iterator = iter(volumes)
    # A sequence is checked whole before writing; an iterator frame by frame.
    head = list(itertools.islice(iterator, None if isinstance(volumes, Sequence) else 2))
    if not head:
        raise PrimageInputError("a series needs at least one volume")
    first = head[0]

    def uniform(volume: sitk.Image) -> bool:
        return same_geometry(first, volume, tolerance=0.0) and (
            volume.GetPixelID() == first.GetPixelID()
        )

    def joined() -> Path:
        every = head + list(iterator)
        return write_image(sitk.JoinSeries(every, float(time_origin), float(time_spacing)), path)

    if image_suffix(path) != ".nii" or len(head) < 2 or not all(uniform(v) for v in head[1:]):
        return joined()
    handle, temporary = _atomic_target(path)
    os.close(handle)
    appending = False
    try:
        start = sitk.JoinSeries(head[:2], float(time_origin), float(time_spacing))
        sitk.WriteImage(start, temporary, useCompression=False)
        del start
        with open(temporary, "r+b") as stream:
            header = stream.read(348)
            order = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
            dims = struct.unpack(order + "8h", header[40:56])
            if struct.unpack(order + "i", header[:4])[0] != 348 or dims[0] != 4 or dims[4] != 2:
                raise ValueError("not the expected NIfTI-1 header")  # handled below
            count = 2
            stream.seek(0, os.SEEK_END)
            later = itertools.chain(head[2:], iterator)
            del head[1:]  # a streamed frame is freed once written
            appending = True
            for volume in later:
                if not uniform(volume):
                    raise PrimageInputError(
                        f"frame {count} of {path.name} is on another grid or of another "
                        "pixel type than frame 0"
                    )
                if count == 32767:  # dim[4] is a 16-bit integer
                    raise PrimageInputError(f"{path.name}: NIfTI-1 holds at most 32767 frames")
                stream.write(np.ascontiguousarray(sitk.GetArrayViewFromImage(volume)).data)
                count += 1
            stream.seek(40 + 2 * 4)  # dim[4]: the number of frames
            stream.write(struct.pack(order + "h", count))
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    except ValueError:
        os.unlink(temporary)
        if appending:
            raise
        return joined()
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write binary data (e.g. an encoded DICOM object) atomically."""
    path = Path(path)
    handle, temporary = _atomic_target(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (UTF-8) atomically (temporary file, then rename)."""
    return write_bytes(text.encode("utf-8"), path)


def write_json(data: object, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return write_text(json_text(data, indent=2) + "\n", path)


def json_text(data: object, *, indent: int | None = None) -> str:
    """JSON text of ``data``; numpy scalars and arrays, paths, tuples and sets included."""
    return json.dumps(data, indent=indent, sort_keys=False, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
