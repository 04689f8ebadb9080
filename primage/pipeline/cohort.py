"""Cases and cohorts: what a case folder holds and how a cohort lists its cases.

A case is a folder ``<case_id>/`` holding any of ``t2w``, ``t1w``, ``dwi`` (with
``dwi.bval``), ``dce`` (with ``dce.times``), ``ct``, ``pet`` in any format SimpleITK reads
(``t2w.nii.gz``, ``t2w.nrrd``, ...), tumour masks ``tumour.*`` (on the reference series) or
``tumour_<role>.*`` (on that series), and an optional ``case.json``::

    {"site": "Valencia", "scanner": "Philips Achieva 1.5T",
     "groups": {"histology": "neuroblastoma"},
     "series": {"flair": "flair.nii.gz"},
     "dce": {"flip_angle_deg": 15, "repetition_time_s": 0.004}}

``series`` adds extra 3D series under their role; ``dce`` gives acquisition values for
the Tofts model; ``files`` (written by ``primage dicom assemble``) describes each file, and
its ``frame_of_reference`` entry (an opaque token: equal tokens mean the same DICOM
FrameOfReferenceUID, i.e. the same scanner coordinates) tells the pipeline which series
are already aligned::

    {"files": {"ct.nii.gz": {"frame_of_reference": "FoR-1"},
               "pet.nii.gz": {"frame_of_reference": "FoR-1"}}}

Every other scalar key (and each ``groups`` entry) becomes a column of
``features.csv``. Keys that could identify a patient (names, birth dates, patient IDs,
...) are never copied: the case folder name is the only identifier.

A cohort is a folder of case folders or a CSV file listing case folders (column
``folder``, relative to the CSV's folder, and optionally ``case_id``).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError
from primage.io import IMAGE_SUFFIXES, image_stem, image_suffix
from primage.pipeline.config import SERIES_4D, SERIES_ROLES

#: Words in a case.json key that may name a person or a record: such keys are dropped.
IDENTIFYING_WORDS = (
    "name", "birth", "dob", "patient", "mrn", "accession", "address", "phone", "email",
    "ssn", "nhs", "insurance",
)  # fmt: skip
#: Bookkeeping keys of ``primage dicom assemble``'s case.json: not features.csv columns
#: (the folder name is the case identifier; "files" is read for the frames of reference).
ASSEMBLY_KEYS = ("case", "created_by", "pseudonym", "skipped")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Case:
    """One case: its identifier (the folder name), files by role and metadata.

    ``series``: role -> image file; ``values``: 4D role -> b-value / frame-time file;
    ``masks``: ``"reference"`` (``tumour.*``) or role -> mask file; ``metadata``: the
    safe scalar entries of ``case.json`` (``group_<name>`` for groups); ``acquisition``:
    ``case.json``'s ``dce`` entry; ``frames_of_reference``: series role -> frame-of-reference
    token and ``mask_frames_of_reference``: mask key -> token (from ``case.json``'s
    ``files``; files without a token are absent); ``problems``: what is wrong with the
    folder itself (the case then fails at its first step, the cohort goes on).
    """

    case_id: str
    folder: Path
    series: dict[str, Path] = field(default_factory=dict)
    values: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    acquisition: dict[str, Any] = field(default_factory=dict)
    frames_of_reference: dict[str, str] = field(default_factory=dict)
    mask_frames_of_reference: dict[str, str] = field(default_factory=dict)
    dropped_keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def input_files(self) -> dict[str, Path]:
        """Every input file by its name relative to the case folder (for checksums)."""
        files = [*self.series.values(), *self.values.values(), *self.masks.values()]
        if (self.folder / "case.json").is_file():
            files.append(self.folder / "case.json")
        return {_relative(p, self.folder): p for p in sorted(set(files))}

    def same_frame_of_reference(self, role: str, other: str) -> bool | None:
        """Whether series ``role`` shares ``other``'s frame of reference (None: unknown)."""
        a, b = self.frames_of_reference.get(role), self.frames_of_reference.get(other)
        return None if a is None or b is None else a == b


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return path.name


def _is_identifying(key: str) -> bool:
    words = re.split(r"[^a-z]+", key.lower())
    text = key.lower()
    return any(word in words or word in text for word in IDENTIFYING_WORDS)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _file_frames(case: Case, files: Any) -> dict[str, str]:
    """File name -> frame-of-reference token, from case.json's ``files`` entry."""
    if not isinstance(files, dict):
        case.problems.append('case.json "files" must map file names to descriptions')
        return {}
    frames = {}
    for name, entry in files.items():
        if not isinstance(entry, dict) or entry.get("frame_of_reference") is None:
            continue
        token = entry["frame_of_reference"]
        if isinstance(token, bool) or not isinstance(token, (str, int)) or str(token) == "":
            case.problems.append(
                f'case.json "files" {name!r}: "frame_of_reference" must be a non-empty text, '
                f"got {token!r}"
            )
            continue
        frames[str(name)] = str(token)
    return frames


def _assign_frames(case: Case, frames: dict[str, str]) -> None:
    for table, target in ((case.series, case.frames_of_reference),
                          (case.masks, case.mask_frames_of_reference)):  # fmt: skip
        for role, path in table.items():
            token = frames.get(_relative(path, case.folder))
            if token is not None:
                target[role] = token


def _read_case_json(case: Case) -> dict[str, str]:
    """Read case.json into ``case``; returns its file name -> frame-of-reference tokens."""
    path = case.folder / "case.json"
    frames: dict[str, str] = {}
    if not path.is_file():
        return frames
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        case.problems.append(f"case.json cannot be read: {error}")
        return frames
    if not isinstance(data, dict):
        case.problems.append("case.json must hold a JSON object")
        return frames
    for key, value in data.items():
        if _is_identifying(key):
            case.dropped_keys.append(key)
        elif key in ASSEMBLY_KEYS:
            continue
        elif key == "files":
            frames = _file_frames(case, value)
        elif key == "series":
            if not isinstance(value, dict):
                case.problems.append('case.json "series" must map roles to file names')
                continue
            for role, name in value.items():
                file = case.folder / str(name)
                if not file.is_file():
                    case.problems.append(f"case.json names series {role!r}: {name} does not exist")
                else:
                    case.series[str(role).lower()] = file
        elif key == "groups":
            if not isinstance(value, dict):
                case.problems.append('case.json "groups" must map group names to labels')
                continue
            for group, label in value.items():
                if _is_identifying(group):
                    case.dropped_keys.append(f"groups.{group}")
                elif _scalar(label):
                    case.metadata[f"group_{group}"] = label
        elif key == "dce":
            if isinstance(value, dict):
                case.acquisition = {k: v for k, v in value.items() if _scalar(v)}
        elif _scalar(value):
            case.metadata[key] = value
    return frames


def check_case_id(case_id: str) -> str:
    """The case identifier, refused unless it is a safe folder name."""
    if not _CASE_ID.match(case_id):
        raise PrimageInputError(
            f"case identifier {case_id!r} must be letters, digits, '.', '_' or '-' (it names "
            "the output folder)"
        )
    return case_id


def read_case(folder: str | os.PathLike, case_id: str | None = None) -> Case:
    """Collect a case folder's files by role (no image is read here)."""
    folder = Path(folder)
    case_id = check_case_id(case_id or folder.name)
    case = Case(case_id, folder)
    if not folder.is_dir():
        case.problems.append(f"case folder does not exist: {folder}")
        return case
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        suffix = image_suffix(entry)
        if suffix not in IMAGE_SUFFIXES or suffix == ".seg.nrrd":
            continue
        stem = image_stem(entry).lower()
        if stem in SERIES_ROLES:
            _add(case, case.series, stem, entry)
        elif stem == "tumour":
            _add(case, case.masks, "reference", entry)
        elif stem.startswith("tumour_"):
            _add(case, case.masks, stem[len("tumour_") :], entry)
    for role, name in SERIES_4D.items():
        if (folder / name).is_file():
            case.values[role] = folder / name
    _assign_frames(case, _read_case_json(case))
    if not case.series:
        case.problems.append(
            f"no series found in {folder.name} (expected e.g. t2w.nii.gz, dwi.nii.gz)"
        )
    return case


def _add(case: Case, table: dict, role: str, path: Path) -> None:
    if role in table:
        case.problems.append(f"two files for {role}: {table[role].name} and {path.name}")
    else:
        table[role] = path


def _looks_like_case(folder: Path) -> bool:
    if (folder / "case.json").is_file():
        return True
    return any(
        image_suffix(p) in IMAGE_SUFFIXES for p in folder.iterdir() if not p.name.startswith(".")
    )


def discover_cohort(cohort: str | os.PathLike) -> list[Case]:
    """The cases of a cohort folder or CSV file, in a stable order (folder: by name)."""
    cohort = Path(cohort)
    if not cohort.exists():
        raise PrimageInputError(f"cohort does not exist: {cohort}")
    if cohort.is_dir():
        folders = [p for p in sorted(cohort.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        cases = [read_case(p) for p in folders if _looks_like_case(p)]
    else:
        cases = _cases_from_csv(cohort)
    if not cases:
        raise PrimageInputError(
            f"cohort {cohort} holds no case folder (a case folder holds e.g. t2w.nii.gz)"
        )
    seen: dict[str, Path] = {}
    for case in cases:
        if case.case_id in seen:
            raise PrimageInputError(
                f"case identifier {case.case_id!r} is used twice ({seen[case.case_id]} and "
                f"{case.folder}); give distinct folder names or a case_id column"
            )
        seen[case.case_id] = case.folder
    return cases


def _cases_from_csv(path: Path) -> list[Case]:
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as error:
        raise PrimageInputError(f"cannot read cohort CSV {path}: {error}") from None
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    if not rows:
        raise PrimageInputError(f"cohort CSV {path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    if "folder" in header:
        column, id_column = (
            header.index("folder"),
            header.index("case_id") if "case_id" in header else None,
        )
        rows = rows[1:]
    else:
        column, id_column = 0, None
    cases = []
    for number, row in enumerate(rows, start=2 if "folder" in header else 1):
        if column >= len(row) or not row[column].strip():
            raise PrimageInputError(f"cohort CSV {path}, line {number}: no folder given")
        folder = Path(row[column].strip())
        if not folder.is_absolute():
            folder = path.parent / folder
        case_id = row[id_column].strip() if id_column is not None and id_column < len(row) else None
        cases.append(read_case(folder, case_id or None))
    return cases
