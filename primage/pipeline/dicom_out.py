"""Where a case's results go back to DICOM: its source series and what lies on its grid.

The pipeline's ``dicom`` step (``export.dicom: true``) writes the results with
:func:`primage.dicom.export.export_results`. It has to find the source series without any
UID in the case folder: ``case.json`` (written by ``primage dicom assemble``) names the
series ids of each file (``"series_ids": ["s01-002"]``), the inventory of ``primage dicom
scan`` maps series ids to SeriesInstanceUIDs, and the series' files are the files of the
DICOM folder with that SeriesInstanceUID. Results are exported only when they lie on that
series' voxel grid (nothing is interpolated); the others are reported with the reason.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from primage.errors import PrimageInputError
from primage.pipeline.cohort import Case


@dataclass
class SourceFiles:
    """The source DICOM series of one role: its series UID and files (sorted)."""

    role: str
    series_uid: str
    files: list[Path]


def series_ids(case: Case, role: str) -> list[str]:
    """The inventory series ids of ``role``'s file, from the case's ``case.json``."""
    path = case.series.get(role)
    if path is None:
        raise PrimageInputError(f"the case has no {role} series to export DICOM for")
    try:
        files = json.loads((case.folder / "case.json").read_text(encoding="utf-8"))["files"]
        ids = files[path.name]["series_ids"]
    except (OSError, ValueError, KeyError, TypeError):
        ids = None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise PrimageInputError(
            f"case.json does not name the DICOM series of {path.name} (export.dicom needs a case "
            "folder written by `primage dicom assemble`)"
        )
    return ids


def inventory_uids(inventory: str | os.PathLike) -> dict[str, str]:
    """``series_id -> SeriesInstanceUID`` of an inventory CSV (``primage dicom scan``)."""
    path = Path(inventory)
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError) as error:
        raise PrimageInputError(f"inventory {path} cannot be read: {error}") from None
    if not rows or not {"series_id", "series_uid"} <= set(rows[0]):
        raise PrimageInputError(f"inventory {path} has no 'series_id' and 'series_uid' columns")
    return {
        row["series_id"].strip(): row["series_uid"].strip()
        for row in rows
        if (row.get("series_id") or "").strip() and (row.get("series_uid") or "").strip()
    }


def series_files(folder: str | os.PathLike, series_uid: str) -> list[Path]:
    """Files under ``folder`` whose SeriesInstanceUID is ``series_uid`` (only that tag is
    read from each file)."""
    import pydicom

    from primage.dicom.scan import find_files

    found = []
    for path in find_files(folder):
        try:
            header = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]
            )
        except Exception:  # noqa: BLE001 - not DICOM (notes, thumbnails, DICOMDIR backups)
            continue
        if str(header.get("SeriesInstanceUID", "")) == series_uid:
            found.append(path)
    return found


def find_source(case: Case, role: str, export: dict) -> SourceFiles:
    """The source series of ``role``: case.json series id -> inventory UID -> DICOM files."""
    ids = series_ids(case, role)
    uids = inventory_uids(export["inventory"])
    if ids[0] not in uids:
        raise PrimageInputError(
            f"the inventory {Path(export['inventory']).name} does not list series {ids[0]} of "
            f"{role} (give the inventory assemble used)"
        )
    uid = uids[ids[0]]
    files = series_files(export["dicom_source"], uid)
    if not files:
        raise PrimageInputError(
            f"series {ids[0]} of {role} (from the inventory) is not in export.dicom_source"
        )
    return SourceFiles(role, uid, sorted(files))


def staged_source(files: list[Path], folder: Path) -> Path:
    """A folder holding links to ``files`` only, so the exporter reads this series' headers
    instead of walking the whole DICOM folder (copies where links are not possible)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(files):
        target = folder / f"{number:06d}.dcm"
        try:
            target.symlink_to(Path(path).resolve())
        except OSError:
            shutil.copyfile(path, target)
    return folder


def on_grid(results: dict[str, Path], reference) -> tuple[dict[str, Path], list[str]]:
    """The results (name -> image file) on ``reference``'s voxel grid, and a reason for each
    other one (``"adc: not on the source series' grid (...)"``)."""
    from primage.dicom.export import onto_series_grid
    from primage.io import read_image

    kept, refused = {}, []
    for name, path in results.items():
        try:
            onto_series_grid(read_image(path, role=name), reference, role=name)
        except PrimageInputError as error:
            refused.append(str(error).split("; resample it")[0])
            continue
        kept[name] = path
    return kept, refused
