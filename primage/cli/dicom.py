"""``primage dicom``: scan a DICOM folder into an inventory, assemble it into a cohort.

* ``scan``: every series with its features, proposed role, the rule that decided it and
  whether it can be assembled (``status``, ``reason``); unusable files too. Edit the
  ``role`` column to override (any role, or ``skip``).
* ``assemble``: one pseudonymised case folder per study in the cohort layout
  (``t2w.nii.gz``, ``dwi.nii.gz`` + ``dwi.bval``, ``dce.nii.gz`` + ``dce.times``,
  ``pet.nii.gz`` in SUVbw, ``tumour_<image>.nii.gz`` from RT Structure Sets and SEG,
  ``case.json``), and ``dicom_assembly.csv`` listing what happened to every series.
  Series that cannot be assembled correctly are skipped with a warning and exit code 1;
  everything else is still written.
* ``example``: write the synthetic multi-vendor example cohort (invented patients).

No patient name, ID, birth date or accession number is printed or written.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

from primage.errors import PrimageInputError
from primage.io import write_text
from primage.progress import ConsoleProgress


def register(subparsers) -> None:
    """Add the ``dicom`` commands."""
    parser = subparsers.add_parser(
        "dicom",
        help="scan DICOM folders, classify series by role, assemble pseudonymised cases",
        description="DICOM in: scan a folder into an editable inventory of series and roles, "
        "then assemble each study into a pseudonymised case folder of the cohort layout.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    actions.required = True

    scan = actions.add_parser(
        "scan",
        help="list every series with its proposed role (inventory CSV)",
        description="Walk DICOM_DIR (any nesting, any file names), group files by study and "
        "series, and write one inventory row per series: modality, description, orientation, "
        "grid, frames, times, b-values, proposed role and the rule that decided it, and whether "
        "it can be assembled. Files that are not usable DICOM get a row with the reason. Edit "
        "the 'role' column to override a role (or write 'skip').",
    )
    scan.add_argument(
        "--input", "-i", required=True, metavar="DICOM_DIR", help="folder of DICOM files"
    )
    scan.add_argument(
        "--output", "-o", required=True, metavar="INVENTORY.csv", help="inventory to write"
    )
    scan.add_argument("--rules", help="role rule table (JSON, as primage/presets/dicom/roles.json)")
    scan.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    scan.set_defaults(handler=run_scan)

    assemble = actions.add_parser(
        "assemble",
        help="write each study as a pseudonymised case folder",
        description="Assemble the series of DICOM_DIR with the roles of INVENTORY.csv into case "
        "folders under COHORT_DIR, named by pseudonym: from --pseudonym-map (CSV with columns "
        "patient_id,pseudonym) or a keyed hash (HMAC-SHA256) of the patient ID with the secret "
        "in --secret-file or the PRIMAGE_PSEUDONYM_SECRET environment variable. A patient with "
        "several studies gets <pseudonym>_1, _2, ... in study order.",
    )
    assemble.add_argument(
        "--input", "-i", required=True, metavar="DICOM_DIR", help="folder of DICOM files"
    )
    assemble.add_argument(
        "--inventory", required=True, metavar="INVENTORY.csv", help="from 'primage dicom scan'"
    )
    assemble.add_argument(
        "--output", "-o", required=True, metavar="COHORT_DIR", help="cohort folder"
    )
    assemble.add_argument("--pseudonym-map", metavar="MAP.csv", help="patient_id,pseudonym CSV")
    assemble.add_argument(
        "--secret-file", metavar="FILE", help="secret for the keyed-hash pseudonyms"
    )
    assemble.add_argument(
        "--tumour-roi",
        metavar="REGEX",
        help="ROI / segment names of RT Structure Sets and SEG taken as tumour (case-insensitive "
        "regular expression, searched; default 'gtv|tumou?r|lesion'); each match gets its own "
        "label in tumour_<image>.nii.gz",
    )
    assemble.add_argument(
        "--report",
        metavar="REPORT.csv",
        help="what happened to each series (default: COHORT_DIR/dicom_assembly.csv)",
    )
    assemble.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    assemble.set_defaults(handler=run_assemble)

    example = actions.add_parser(
        "example",
        help="write a synthetic multi-vendor DICOM example cohort",
        description="Write the synthetic example cohort (4 invented patients, 5 studies: "
        "Siemens, GE and Philips MR, PET/CT) to try scan and assemble.",
    )
    example.add_argument("--output", "-o", required=True, metavar="DIR", help="new or empty folder")
    example.add_argument("--seed", type=int, default=0, help="digital patient seed (default 0)")
    example.set_defaults(handler=run_example)

    from primage.cli.dicom_export import add_export_action

    add_export_action(actions)


def _input_folder(path: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise PrimageInputError(f"input folder does not exist: {folder}")
    if not folder.is_dir():
        raise PrimageInputError(f"input is not a folder: {folder}")
    return folder


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def run_scan(args: argparse.Namespace) -> int:
    """Handler of ``primage dicom scan``."""
    from primage.dicom.inventory import write_inventory
    from primage.dicom.rules import load_rules
    from primage.dicom.scan import scan_folder

    folder = _input_folder(args.input)
    output = Path(args.output)
    if output.suffix.lower() != ".csv":
        raise PrimageInputError(f"inventory {output} must be a .csv file")
    if _inside(output, folder):
        raise PrimageInputError(
            "write the inventory outside the DICOM folder (it would be scanned)"
        )
    if output.is_dir():
        raise PrimageInputError(f"inventory path is a folder: {output}")
    rules = load_rules(args.rules)
    start = time.perf_counter()
    progress = None if args.quiet else ConsoleProgress()
    result = scan_folder(folder, rules=rules, progress=progress)
    write_inventory(result, output)
    series = result.series
    errors = sum(info.status == "error" for info in series)
    planned = [info for info in series if info.output]
    masks = sum(info.output.startswith("tumour") for info in planned)
    if not args.quiet:
        sys.stderr.write(
            f"primage: {len(series)} series in {len(result.studies)} studies: {len(planned)} to "
            f"assemble ({masks} of them tumour masks), {len(series) - len(planned) - errors} not "
            f"used, {errors} cannot be assembled; {len(result.skipped_files)} unusable files; "
            f"wrote {output} ({time.perf_counter() - start:.1f} s)\n"
        )
    if not series:
        sys.stderr.write(f"primage: warning: no DICOM image series found in {folder}\n")
    return 0


def run_assemble(args: argparse.Namespace) -> int:
    """Handler of ``primage dicom assemble``."""
    from primage.dicom.assemble import REPORT_COLUMNS, apply_roles, assemble
    from primage.dicom.inventory import read_roles
    from primage.dicom.masks import tumour_pattern
    from primage.dicom.pseudonym import pseudonymiser
    from primage.dicom.scan import scan_folder

    # Everything the user gave is checked before anything is written.
    folder = _input_folder(args.input)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise PrimageInputError(f"cohort output is a file, not a folder: {output}")
    if _inside(output, folder) or _inside(folder, output):
        raise PrimageInputError(
            "the cohort folder and the DICOM folder must not contain each other"
        )
    report = Path(args.report) if args.report else output / "dicom_assembly.csv"
    if report.suffix.lower() != ".csv":
        raise PrimageInputError(f"report {report} must be a .csv file")
    if _inside(report, folder) or Path(args.inventory).resolve() == report.resolve():
        raise PrimageInputError(
            "the report must not be written into the DICOM folder or over the inventory"
        )
    roles = read_roles(args.inventory)
    pseudonymise = pseudonymiser(args.pseudonym_map, args.secret_file)
    tumour_pattern(args.tumour_roi)  # a bad pattern is refused before anything is read

    start = time.perf_counter()
    progress = None if args.quiet else ConsoleProgress()
    result = scan_folder(folder, progress=progress)
    if not any(info.uid in roles for info in result.series):
        raise PrimageInputError(
            f"none of the inventory's series is in {folder}; scan this folder first"
        )
    for message in apply_roles(result, roles):
        sys.stderr.write(f"primage: warning: {message}\n")
    assembly = assemble(
        result, output, pseudonymise, tumour_pattern=args.tumour_roi, progress=progress
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(assembly.rows)
    write_text(buffer.getvalue(), report)
    for row in assembly.skipped:
        sys.stderr.write(
            f"primage: warning: {row['series_id']} ({row['role']}) skipped: {row['reason']}\n"
        )
    written = sum(bool(case.written) for case in assembly.cases)
    if not args.quiet:
        sys.stderr.write(
            f"primage: wrote {written} case folders to {output}: {assembly.summary()}; "
            f"report {report} ({time.perf_counter() - start:.1f} s)\n"
        )
    return 1 if assembly.skipped else 0


def run_example(args: argparse.Namespace) -> int:
    """Handler of ``primage dicom example``."""
    from primage.dicom.synthetic import write_example_cohort

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise PrimageInputError(f"example output must be a new or empty folder: {output}")
    truth = write_example_cohort(output, seed=args.seed)
    files = sum(len(series.files) for series in truth.values())
    sys.stderr.write(f"primage: wrote {files} DICOM files ({len(truth)} series) to {output}\n")
    return 0
