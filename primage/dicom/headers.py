"""Reading DICOM headers into per-frame records (no pixel data).

A *frame* is one 2D image plane: a single-frame file, or one frame of a multi-frame
(enhanced) file. Per-frame attributes of enhanced objects are looked up in the per-frame
functional group of the frame, then in the shared functional group, then at the top level
of the dataset, so classic and enhanced files give the same records.

Where b-values and frame times are found is data (``primage/presets/dicom/tags.json``).
Patient identity (name, ID, birth date, accession number) is read only into
:attr:`FileHeader.patient_id` for pseudonymisation and never copied anywhere else.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from primage.presetfiles import preset_folder

#: Modalities of objects without an image volume (reports, structure sets, plans,
#: segmentations, ...): their pixel data, if any, is not read as an image.
NON_IMAGE_MODALITIES = {
    "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "REG", "DOC", "RWV", "SEG",
}  # fmt: skip

#: Attributes read from the top level of every file (everything a series summary uses).
SERIES_KEYWORDS = (
    "Modality",
    "Manufacturer",
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "ScanningSequence",
    "SequenceVariant",
    "SeriesNumber",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "ContrastBolusAgent",
    "Units",
    "DecayCorrection",
    "CorrectedImage",
    "SpacingBetweenSlices",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "ConversionType",
    "BurnedInAnnotation",
)


@lru_cache(maxsize=1)
def tag_sources() -> dict:
    """The b-value and time source table (``primage/presets/dicom/tags.json``)."""
    text = preset_folder("dicom").joinpath("tags.json").read_text("utf-8")
    return json.loads(text)


@dataclass
class Frame:
    """One 2D image plane and what places it in a volume.

    ``position`` is ImagePositionPatient (LPS, mm, centre of the first voxel),
    ``orientation`` the row and column direction cosines, ``pixel_spacing`` the
    (row, column) spacing in mm. ``b_value`` in s/mm^2; ``times`` maps a time source name
    to microseconds (absolute, a common origin per source); ``b_conflict`` describes
    disagreeing b-value sources.
    """

    path: str
    index: int | None  # frame number in a multi-frame file (0-based), None when single-frame
    sop_uid: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    instance_number: int
    slice_thickness: float | None = None
    b_value: float | None = None
    b_source: str | None = None
    b_conflict: str | None = None
    gradient: tuple[float, ...] | None = None
    temporal_index: int | None = None
    times: dict[str, int] = field(default_factory=dict)
    slope: float = 1.0
    intercept: float = 0.0


@dataclass
class FileHeader:
    """Header of one DICOM file: series-level attributes and its frames.

    ``attributes`` holds the :data:`SERIES_KEYWORDS` (as plain Python values),
    ``image_type`` the ImageType values (upper case). ``pet`` holds the PET tags SUV needs
    (see :func:`primage.dicom.pet.pet_parameters`). ``patient_id`` is used only to derive
    the pseudonym. ``frame_of_reference`` is the FrameOfReferenceUID (never written
    out: assembly replaces it by a per-case token). ``references`` holds, for structure
    sets and segmentations, the series and instances they were drawn on and their ROI /
    segment names (see :func:`object_references`).
    """

    path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    patient_id: str
    study_datetime: str
    attributes: dict
    image_type: tuple[str, ...]
    has_pixels: bool
    frames: list[Frame]
    pet: dict = field(default_factory=dict)
    multi_frame: bool = False
    problem: str | None = None  # set when the file's pixel data cannot be used
    frame_of_reference: str = ""
    references: dict = field(default_factory=dict)


class DicomFileProblem(Exception):
    """A file that is not DICOM, is truncated or lacks what a series needs (with reason)."""


def read_header(path: str | Path) -> FileHeader:
    """Read the header of one file; raises :class:`DicomFileProblem` with a reason."""
    path = str(path)
    try:
        dataset = pydicom.dcmread(path, defer_size="64 KB")
    except InvalidDicomError:
        dataset = _read_forced(path)
    except (OSError, EOFError) as error:
        raise DicomFileProblem(f"cannot be read: {error}") from None
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise DicomFileProblem(f"corrupt DICOM ({type(error).__name__}: {_short(error)})") from None
    try:
        return _header_from_dataset(path, dataset)
    except DicomFileProblem:
        raise
    except Exception as error:  # noqa: BLE001 - malformed values anywhere in the header
        raise DicomFileProblem(
            f"unreadable header ({type(error).__name__}: {_short(error)})"
        ) from None


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text[:120]


def _read_forced(path: str):
    # Old files lack the 128-byte preamble and "DICM"; read them only if they then look
    # like an image object (a random file read with force=True gives garbage elements).
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except OSError as error:
        raise DicomFileProblem(f"cannot be read: {error}") from None
    # Implicit/explicit little endian files start with a group 0x0008 (or 0x0002) element.
    if len(head) < 8 or head[1] != 0 or head[0] not in (0x02, 0x08) or head[3] != 0:
        raise DicomFileProblem("not a DICOM file")
    try:
        dataset = pydicom.dcmread(path, force=True, defer_size="64 KB")
        if "SOPClassUID" not in dataset or "SeriesInstanceUID" not in dataset:
            raise DicomFileProblem("not a DICOM file")
        return dataset
    except DicomFileProblem:
        raise
    except Exception:  # noqa: BLE001
        raise DicomFileProblem("not a DICOM file") from None


def _text(value) -> str:
    if value is None:
        return ""
    return str(value).strip()


def _plain(value):
    """A pydicom value as plain Python (str, float, int, list)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value).strip()


def _header_from_dataset(path: str, dataset) -> FileHeader:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not _text(dataset.get(keyword)):
            raise DicomFileProblem(f"DICOM file without {keyword}")
    modality = _text(dataset.get("Modality")).upper()
    has_pixels = "PixelData" in dataset or "FloatPixelData" in dataset
    attributes = {keyword: _plain(dataset.get(keyword)) for keyword in SERIES_KEYWORDS}
    attributes["Modality"] = modality
    image_type = tuple(_text(v).upper() for v in (_as_list(dataset.get("ImageType")) or []))
    header = FileHeader(
        path=path,
        study_uid=_text(dataset.StudyInstanceUID),
        series_uid=_text(dataset.SeriesInstanceUID),
        sop_uid=_text(dataset.get("SOPInstanceUID")) or path,
        sop_class=_text(dataset.get("SOPClassUID")),
        patient_id=_text(dataset.get("PatientID")),
        study_datetime=_text(dataset.get("StudyDate")) + _text(dataset.get("StudyTime")),
        attributes=attributes,
        image_type=image_type,
        has_pixels=has_pixels and modality not in NON_IMAGE_MODALITIES,
        frames=[],
        frame_of_reference=_text(dataset.get("FrameOfReferenceUID")),
    )
    if modality in ("RTSTRUCT", "SEG"):
        header.references = object_references(dataset)
        header.frame_of_reference = header.frame_of_reference or header.references.get(
            "frame_of_reference", ""
        )
    if not header.has_pixels:
        return header
    header.problem = _pixel_data_problem(dataset)
    frame_count = int(dataset.get("NumberOfFrames") or 1)
    header.multi_frame = frame_count > 1 or "PerFrameFunctionalGroupsSequence" in dataset
    if header.multi_frame and "PerFrameFunctionalGroupsSequence" not in dataset:
        header.problem = header.problem or (
            f"multi-frame object ({frame_count} frames) without per-frame functional groups: "
            "frame positions unknown"
        )
        return header
    for index in range(frame_count):
        header.frames.append(_frame(dataset, path, index if header.multi_frame else None))
    if modality == "PT":
        from primage.dicom.pet import pet_tags

        header.pet = pet_tags(dataset)
    return header


def object_references(dataset) -> dict:
    """What an RT Structure Set or a SEG refers to, from its header (no contours, no pixels).

    ``series``: referenced SeriesInstanceUIDs; ``instances``: referenced SOPInstanceUIDs;
    ``names``: ROI names (RTSTRUCT) or segment labels (SEG), in ROI / segment number
    order; ``frame_of_reference``: the referenced FrameOfReferenceUID (RTSTRUCT).
    """
    series, instances, names, frame = [], [], [], ""
    modality = _text(dataset.get("Modality")).upper()
    if modality == "RTSTRUCT":
        for reference in dataset.get("ReferencedFrameOfReferenceSequence") or []:
            frame = frame or _text(reference.get("FrameOfReferenceUID"))
            for study in reference.get("RTReferencedStudySequence") or []:
                for item in study.get("RTReferencedSeriesSequence") or []:
                    series.append(_text(item.get("SeriesInstanceUID")))
                    for image in item.get("ContourImageSequence") or []:
                        instances.append(_text(image.get("ReferencedSOPInstanceUID")))
        rois = sorted(
            (int(roi.get("ROINumber") or 0), _text(roi.get("ROIName")))
            for roi in dataset.get("StructureSetROISequence") or []
        )
        names = [name for _, name in rois]
    else:
        for item in dataset.get("ReferencedSeriesSequence") or []:
            series.append(_text(item.get("SeriesInstanceUID")))
            for image in item.get("ReferencedInstanceSequence") or []:
                instances.append(_text(image.get("ReferencedSOPInstanceUID")))
        if not series:  # older SEGs: the source images of each frame
            for frame in dataset.get("PerFrameFunctionalGroupsSequence") or []:
                for derivation in frame.get("DerivationImageSequence") or []:
                    for image in derivation.get("SourceImageSequence") or []:
                        instances.append(_text(image.get("ReferencedSOPInstanceUID")))
        segments = sorted(
            (int(item.get("SegmentNumber") or 0), _text(item.get("SegmentLabel")))
            for item in dataset.get("SegmentSequence") or []
        )
        names = [name for _, name in segments]
    return {
        "series": [uid for uid in dict.fromkeys(series) if uid],
        "instances": [uid for uid in dict.fromkeys(instances) if uid],
        "names": names,
        "frame_of_reference": frame,
    }


def _pixel_data_problem(dataset) -> str | None:
    """Reason why the pixel data cannot be complete (truncated file), or None."""
    element = dataset.get("PixelData")
    if element is None:
        return None
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    try:
        length = len(dataset.PixelData)
    except Exception as error:  # noqa: BLE001 - deferred read of a truncated file
        return f"pixel data cannot be read ({_short(error)})"
    if syntax is not None and syntax.is_compressed:
        return None  # encapsulated: the decoder checks its own length
    expected = (
        int(dataset.get("Rows") or 0)
        * int(dataset.get("Columns") or 0)
        * int(dataset.get("NumberOfFrames") or 1)
        * int(dataset.get("SamplesPerPixel") or 1)
        * int(dataset.get("BitsAllocated") or 16)
        // 8
    )
    if length < expected:
        return f"truncated file: {length} of {expected} bytes of pixel data"
    return None


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def functional_value(dataset, frame: int | None, keyword: str, group: str | None = None):
    """Attribute ``keyword`` for one frame: per-frame group, shared group, then top level."""
    if frame is not None and group:
        for sequence_keyword, index in (
            ("PerFrameFunctionalGroupsSequence", frame),
            ("SharedFunctionalGroupsSequence", 0),
        ):
            sequence = dataset.get(sequence_keyword)
            if sequence is None or len(sequence) <= index:
                continue
            item = sequence[index]
            inner = item.get(group)
            if inner is not None and len(inner) and keyword in inner[0]:
                return inner[0].get(keyword)
    return dataset.get(keyword)


def _floats(value, count: int) -> tuple[float, ...] | None:
    values = _as_list(value)
    if len(values) != count:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def _float(value) -> float | None:
    values = _as_list(value)
    if not values:
        return None
    try:
        return float(values[0])
    except (TypeError, ValueError):
        return None


def _frame(dataset, path: str, index: int | None) -> Frame:
    position = _floats(
        functional_value(dataset, index, "ImagePositionPatient", "PlanePositionSequence"), 3
    )
    orientation = _floats(
        functional_value(dataset, index, "ImageOrientationPatient", "PlaneOrientationSequence"), 6
    )
    spacing = _floats(functional_value(dataset, index, "PixelSpacing", "PixelMeasuresSequence"), 2)
    thickness = _float(functional_value(dataset, index, "SliceThickness", "PixelMeasuresSequence"))
    slope = _float(
        functional_value(dataset, index, "RescaleSlope", "PixelValueTransformationSequence")
    )
    intercept = _float(
        functional_value(dataset, index, "RescaleIntercept", "PixelValueTransformationSequence")
    )
    temporal = functional_value(dataset, index, "TemporalPositionIndex", "FrameContentSequence")
    if temporal is None:
        temporal = dataset.get("TemporalPositionIdentifier")
    instance = _float(dataset.get("InstanceNumber"))
    frame = Frame(
        path=path,
        index=index,
        sop_uid=_text(dataset.get("SOPInstanceUID")) or path,
        position=position,
        orientation=orientation,
        pixel_spacing=spacing,
        rows=int(dataset.get("Rows") or 0),
        columns=int(dataset.get("Columns") or 0),
        instance_number=int(instance) * 100000 + (index or 0)
        if instance is not None
        else (index or 0),
        slice_thickness=thickness,
        temporal_index=int(_float(temporal)) if _float(temporal) is not None else None,
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        gradient=_floats(
            functional_value(dataset, index, "DiffusionGradientOrientation", "MRDiffusionSequence"),
            3,
        ),
    )
    frame.b_value, frame.b_source, frame.b_conflict = b_value(dataset, index)
    frame.times = frame_times(dataset, index)
    return frame


# --- b-values -----------------------------------------------------------------------------


def _private_value(dataset, source: dict):
    group = int(source["group"], 16)
    element = int(source["element"], 16)
    try:
        block = dataset.private_block(group, source["creator"])
        if element in block:
            return block[element].value
    except KeyError:
        pass
    return None


def _number(value, source: dict) -> float | None:
    if isinstance(value, bytes):  # VR UN (private tag without a dictionary entry)
        value = value.decode("latin-1").strip("\x00 ").split("\\")
    values = _as_list(value)
    position = int(source.get("value_index", 0))
    if len(values) <= position:
        return None
    try:
        number = float(values[position])
    except (TypeError, ValueError):
        return None
    if source.get("modulo"):
        # GE adds 1e9 to the b-value as a flag on some software versions.
        number = number % float(source["modulo"])
    return number


def b_value(dataset, frame: int | None) -> tuple[float | None, str | None, str | None]:
    """b-value (s/mm^2) of a frame, its source, and a conflict description (or None).

    Every source of ``tags.json`` is read; the first that gives a value is the source.
    Sources that disagree by more than the table's tolerance give a conflict.
    """
    table = tag_sources()
    found: list[tuple[str, float]] = []
    for source in table["b_value_sources"]:
        if "creator" in source:
            raw = _private_value(dataset, source)
        elif "regex" in source:
            match = re.search(source["regex"], _text(dataset.get(source["keyword"])))
            raw = match.group(1) if match else None
        else:
            raw = functional_value(
                dataset, frame, source["keyword"], source.get("functional_group")
            )
        if raw is None or raw == "":
            continue
        number = _number(raw, source)
        if number is not None:
            found.append((source["name"], number))
    if not found:
        return None, None, None
    name, value = found[0]
    tolerance = float(table["b_value_tolerance_s_per_mm2"])
    disagreeing = [(n, v) for n, v in found if abs(v - value) > tolerance]
    conflict = None
    if disagreeing:
        conflict = "conflicting b-value sources: " + ", ".join(
            f"{n} = {v:g}" for n, v in [(name, value), *disagreeing]
        )
    sources = " = ".join(n for n, v in found if abs(v - value) <= tolerance)
    return value, sources, conflict


# --- times --------------------------------------------------------------------------------

_EPOCH = _dt.datetime(1900, 1, 1)


def parse_time(text: str) -> int | None:
    """DICOM TM (``HHMMSS.FFFFFF``, also ``HH:MM:SS``) as microseconds since midnight."""
    text = _text(text).replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", text)
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    micro = int((fraction or "0").ljust(6, "0"))
    total = (int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)) * 1_000_000
    return total + micro


def parse_date(text: str) -> int | None:
    """DICOM DA (``YYYYMMDD``) as microseconds since 1900-01-01."""
    text = _text(text).replace(".", "").replace("-", "")
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        day = _dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return None
    return (day - _EPOCH).days * 86_400_000_000


def parse_datetime(text: str) -> int | None:
    """DICOM DT (``YYYYMMDDHHMMSS.FFFFFF``, time zone offsets ignored) in microseconds."""
    text = re.sub(r"[+-]\d{4}$", "", _text(text))
    if len(text) < 8:
        return None
    date = parse_date(text[:8])
    if date is None:
        return None
    time = parse_time(text[8:]) if len(text) > 8 else 0
    return None if time is None else date + time


def date_time(date_text, time_text) -> int | None:
    """Microseconds of a DA + TM pair; a missing date counts as day 0 (same-day series)."""
    time = parse_time(time_text) if _text(time_text) else None
    if time is None:
        return None
    date = parse_date(date_text) if _text(date_text) else None
    return (date or 0) + time


def frame_times(dataset, frame: int | None) -> dict[str, int]:
    """Every time source of ``tags.json`` present for a frame, in microseconds."""
    times = {}
    for source in tag_sources()["time_sources"]:
        kind = source["kind"]
        value = None
        if kind == "datetime":
            raw = functional_value(
                dataset, frame, source["keyword"], source.get("functional_group")
            )
            value = parse_datetime(raw) if raw else None
        elif kind == "date_time":
            value = date_time(dataset.get(source["date"]), dataset.get(source["time"]))
        elif kind == "milliseconds":
            number = _float(dataset.get(source["keyword"]))
            value = None if number is None else int(round(number * 1000))
        if value is not None:
            times[source["name"]] = value
    return times
