"""The inventory CSV: one row per series (and one per unusable file), editable roles.

The user may change the ``role`` column (to another role, or ``skip``) before
``primage dicom assemble``; ``proposed_role`` and ``rule`` keep what the rules said.
Series are matched by ``series_uid``. The inventory holds no patient name, ID, birth date
or accession number; it does hold the study and series UIDs (needed to match series) and
relative paths of unusable files, so keep it with the source data, not the cohort.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from primage.dicom.masks import MASK_ROLES
from primage.dicom.rules import load_rules
from primage.dicom.scan import ASSEMBLED_ROLES, NOT_ASSEMBLED_ROLES, ScanResult
from primage.errors import PrimageInputError
from primage.io import write_text

COLUMNS = (
    "series_id",
    "study",
    "series_number",
    "modality",
    "manufacturer",
    "description",
    "protocol",
    "image_type",
    "orientation",
    "rows",
    "columns",
    "slices",
    "frames",
    "frames_per_position",
    "pixel_spacing_mm",
    "slice_spacing_mm",
    "slice_check",
    "acquisition_time",
    "time_points",
    "times_s",
    "time_source",
    "b_values",
    "b_value_source",
    "files",
    "proposed_role",
    "rule",
    "role",
    "output",
    "status",
    "reason",
    "study_uid",
    "series_uid",
    "file",
)


def inventory_rows(result: ScanResult) -> list[dict]:
    """Rows of the inventory: every series, then every file that could not be used."""
    rows = []
    for study_uid, infos in result.studies.items():
        for info in infos:
            row = dict.fromkeys(COLUMNS, "")
            row.update(info.summary)
            row.update(
                series_id=info.series_id,
                study=f"study-{info.study_index:02d}",
                proposed_role=info.proposed_role,
                rule=info.rule,
                role=info.role,
                output=info.output,
                status=info.status,
                reason=info.reason,
                study_uid=study_uid,
                series_uid=info.uid,
            )
            rows.append(row)
    for path, reason in result.skipped_files:
        row = dict.fromkeys(COLUMNS, "")
        row.update(status="skipped", reason=reason, file=path)
        rows.append(row)
    return rows


def inventory_text(result: ScanResult) -> str:
    """The inventory as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in inventory_rows(result):
        writer.writerow(row)
    return buffer.getvalue()


def write_inventory(result: ScanResult, path: str | Path) -> Path:
    """Write the inventory CSV atomically."""
    return write_text(inventory_text(result), path)


def valid_roles() -> tuple[str, ...]:
    """Roles a user may put in the ``role`` column."""
    roles = list(load_rules()["roles"])
    return tuple(dict.fromkeys([*roles, *ASSEMBLED_ROLES, *MASK_ROLES, *NOT_ASSEMBLED_ROLES]))


def read_roles(path: str | Path) -> dict[str, str]:
    """``series_uid -> role`` from an inventory CSV (possibly edited by the user).

    Refuses a missing or malformed file, unknown roles and a series listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"inventory file does not exist: {path}")
    try:
        text = path.read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise PrimageInputError(f"inventory {path} cannot be read as UTF-8 text: {error}") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = set(reader.fieldnames or [])
    if not {"series_uid", "role"} <= fields:
        raise PrimageInputError(
            f"inventory {path} has no 'series_uid' and 'role' columns; write one with "
            "'primage dicom scan'"
        )
    roles: dict[str, str] = {}
    allowed = valid_roles()
    for line, row in enumerate(reader, start=2):
        uid = (row.get("series_uid") or "").strip()
        if not uid:
            continue  # rows of unusable files
        role = (row.get("role") or "").strip().lower() or "skip"
        if role not in allowed:
            raise PrimageInputError(
                f"inventory {path} line {line}: unknown role {role!r}; use one of "
                + ", ".join(allowed)
            )
        if uid in roles:
            raise PrimageInputError(f"inventory {path} line {line}: series listed twice")
        roles[uid] = role
    if not roles:
        raise PrimageInputError(f"inventory {path} lists no series")
    return roles
