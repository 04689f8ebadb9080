"""primage dicom on bad input: every problem reported with a reason, nothing crashes; usage
errors exit 2 with one line on stderr and write nothing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _dicom_data import SECRET, leaks, write_bad_folder

from primage.cli import main
from primage.dicom.synthetic import IDENTITIES

REPO = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_bad")
    uids = write_bad_folder(root / "in")
    inventory = root / "inventory.csv"
    assert main(["dicom", "scan", "-i", str(root / "in"), "-o", str(inventory), "-q"]) == 0
    (root / "secret").write_text(SECRET)
    completed = subprocess.run(
        [sys.executable, "-m", "primage", "dicom", "assemble", "-i", str(root / "in"),
         "--inventory", str(inventory), "-o", str(root / "cohort"), "--secret-file",
         str(root / "secret"), "-q"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    rows = _rows(inventory)
    return {
        "root": root,
        "uids": uids,
        "rows": rows,
        "series": {r["series_uid"]: r for r in rows if r["series_uid"]},
        "files": {r["file"]: r["reason"] for r in rows if r["status"] == "skipped"},
        "assemble": completed,
        "report": _rows(root / "cohort" / "dicom_assembly.csv"),
    }


def _reported(bad, name: str) -> tuple[dict, list[dict]]:
    """The inventory row of a bad series and its rows of the assembly report."""
    row = bad["series"][bad["uids"][name]]
    report = [r for r in bad["report"] if r["series_id"] == row["series_id"]]
    return row, report


def _skipped(bad, name: str, reason: str) -> None:
    row, report = _reported(bad, name)
    assert row["status"] == "error" and reason in row["reason"], row["reason"]
    assert report and all(r["status"] == "skipped" and reason in r["reason"] for r in report)
    assert f"{row['series_id']} ({row['role']}) skipped: " in bad["assemble"].stderr


def test_assembly_goes_on_and_says_what_it_skipped(bad):
    completed = bad["assemble"]
    assert completed.returncode == 1, completed.stderr  # some series skipped
    assert "Traceback" not in completed.stderr
    assert all(line.startswith("primage: warning: ") for line in completed.stderr.splitlines())
    case = next(p for p in (bad["root"] / "cohort").iterdir() if p.is_dir())
    # What can be assembled is: the good T2w and the CT of the PET/CT study.
    written = {p.name for p in (bad["root"] / "cohort").rglob("*.nii.gz")}
    assert {"t2w.nii.gz", "ct.nii.gz"} <= written
    assert not {"dwi.nii.gz", "dce.nii.gz", "pet.nii.gz"} & written
    record = json.loads((case / "case.json").read_text())
    assert record["skipped"] and all(item["reason"] for item in record["skipped"])
    assert leaks(list((bad["root"] / "cohort").rglob("*.*")), completed.stderr) == []


def test_non_dicom_files_are_listed_with_a_reason(bad):
    files = bad["files"]
    assert files["notes.txt"] == "not a DICOM file"
    assert files["good/thumbnail.png"] == "not a DICOM file"
    assert files["DICOMDIR.bak"] == "not a DICOM file"
    assert "empty.dcm" in files


def test_truncated_files(bad):
    assert "cut_header.dcm" in bad["files"]  # header cut: not readable as DICOM
    _skipped(bad, "truncated_pixels", "truncated file")


def test_missing_slice_is_reported_not_interpolated(bad):
    _skipped(bad, "missing_slice", "missing slice")
    row, _ = _reported(bad, "missing_slice")
    assert "1 slice(s) missing" in row["slice_check"]


def test_two_series_sharing_a_uid(bad):
    _skipped(bad, "shared_uid", "series UID shared by 2 different series")


def test_conflicting_b_value_sources(bad):
    _skipped(bad, "conflicting_b", "conflicting b-value sources")
    row, _ = _reported(bad, "conflicting_b")
    assert "standard (0018,9087) = 1100" in row["b_value_source"]
    assert "Siemens private (0019,100C) = 1000" in row["b_value_source"]


def test_dce_without_usable_times(bad):
    row, _ = _reported(bad, "dce_no_times")
    assert row["proposed_role"] == "dce"
    _skipped(bad, "dce_no_times", "DCE without usable times")


def test_pet_without_decay_information(bad):
    _skipped(bad, "pet_no_decay", "SUV refused: PET series has no decay information")
    assert bad["series"][bad["uids"]["ct"]]["status"] == "ok"


# --- usage errors: exit 2, one line, no traceback, nothing written -------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small valid folder and its inventory."""
    from _dicom_data import MR_T2

    from primage.dicom.synthetic import Study, write_series
    from primage.synthetic import make_digital_patient

    root = tmp_path_factory.mktemp("dicom_small")
    patient = make_digital_patient(
        5, size=(8, 8, 3), spacing=(10.0, 10.0, 10.0), frame_times_s=(0, 10)
    )
    write_series(
        root / "in",
        Study(IDENTITIES["ge"], "GE"),
        [patient.t2w],
        description="T2 FSE",
        series_number=1,
        attributes=MR_T2,
    )
    assert (
        main(["dicom", "scan", "-i", str(root / "in"), "-o", str(root / "inventory.csv"), "-q"])
        == 0
    )
    (root / "secret").write_text(SECRET)
    (root / "short").write_text("abc")
    return root


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if k != "PRIMAGE_PSEUDONYM_SECRET"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "primage", *args], capture_output=True, text=True, cwd=REPO,
        timeout=120, env=environment,
    )  # fmt: skip


def _inventory(small, text: str) -> Path:
    path = small / f"inv{abs(hash(text))}.csv"
    path.write_text(text)
    return path


def _edited_inventory(small, **changes) -> Path:
    rows = _rows(small / "inventory.csv")
    rows[0].update(changes)
    path = small / f"edited_{'_'.join(changes)}.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


CASES = {
    "input missing": (lambda s: ["dicom", "scan", "-i", str(s / "nope"), "-o", str(s / "o.csv")], "input folder does not exist"),
    "input is a file": (lambda s: ["dicom", "scan", "-i", str(s / "secret"), "-o", str(s / "o.csv")], "input is not a folder"),
    "inventory not csv": (lambda s: ["dicom", "scan", "-i", str(s / "in"), "-o", str(s / "o.txt")], "must be a .csv file"),
    "inventory inside input": (lambda s: ["dicom", "scan", "-i", str(s / "in"), "-o", str(s / "in" / "o.csv")], "outside the DICOM folder"),
    "bad rules file": (lambda s: ["dicom", "scan", "-i", str(s / "in"), "-o", str(s / "o.csv"), "--rules", str(s / "secret")], "not valid JSON"),
    "no secret": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "inventory.csv"), "-o", str(s / "cohort")], "needs a pseudonym map"),
    "short secret": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "inventory.csv"), "-o", str(s / "cohort"), "--secret-file", str(s / "short")], "secret is too short"),
    "map and secret": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "inventory.csv"), "-o", str(s / "cohort"), "--secret-file", str(s / "secret"), "--pseudonym-map", str(s / "secret")], "not both"),
    "cohort inside input": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "inventory.csv"), "-o", str(s / "in" / "cohort"), "--secret-file", str(s / "secret")], "must not contain each other"),
    "inventory missing": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "none.csv"), "-o", str(s / "cohort"), "--secret-file", str(s / "secret")], "inventory file does not exist"),
    "inventory without columns": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(_inventory(s, "a,b\n1,2\n")), "-o", str(s / "cohort"), "--secret-file", str(s / "secret")], "no 'series_uid' and 'role' columns"),
    "unknown role": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(_edited_inventory(s, role="t3w")), "-o", str(s / "cohort"), "--secret-file", str(s / "secret")], "unknown role 't3w'"),
    "series twice": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(_inventory(s, (s / "inventory.csv").read_text() + (s / "inventory.csv").read_text().splitlines()[1] + "\n")), "-o", str(s / "cohort"), "--secret-file", str(s / "secret")], "series listed twice"),
    "inventory of another folder": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(_edited_inventory(s, series_uid="1.2.3.4")), "-o", str(s / "cohort"), "--secret-file", str(s / "secret"), "-q"], "none of the inventory's series"),  # found after reading the headers: -q keeps their progress off stderr
    "map without columns": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "inventory.csv"), "-o", str(s / "cohort"), "--pseudonym-map", str(_inventory(s, "id,name\nx,y\n"))], "needs the columns"),
    "map with unsafe name": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "inventory.csv"), "-o", str(s / "cohort"), "--pseudonym-map", str(_inventory(s, "patient_id,pseudonym\nA,../x\n"))], "must be 1-64 letters"),
    "map reuses a pseudonym": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "inventory.csv"), "-o", str(s / "cohort"), "--pseudonym-map", str(_inventory(s, "patient_id,pseudonym\nA,c1\nB,c1\n"))], "used twice"),
    "map keeps the ID": (lambda s: ["dicom", "assemble", "-i", str(s / "in"), "--inventory", str(s / "inventory.csv"), "-o", str(s / "cohort"), "--pseudonym-map", str(_inventory(s, f"patient_id,pseudonym\n{IDENTITIES['ge']['PatientID']},{IDENTITIES['ge']['PatientID']}\n"))], "equals the patient ID"),
    "example into a full folder": (lambda s: ["dicom", "example", "-o", str(s / "in")], "new or empty folder"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_usage_errors_exit_2_with_one_line_and_write_nothing(small, name):
    make_args, message = CASES[name]
    before = sorted(p.relative_to(small) for p in small.rglob("*"))
    completed = _run(make_args(small))
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("primage: error: "), completed.stderr
    assert message in lines[0]
    assert IDENTITIES["ge"]["PatientID"] not in completed.stderr
    after = sorted(
        p.relative_to(small) for p in small.rglob("*") if not p.name.startswith(("inv", "edited"))
    )
    assert after == [p for p in before if not p.name.startswith(("inv", "edited"))]
    assert not (small / "cohort").exists() and not (small / "o.csv").exists()


def test_secret_from_the_environment(small, tmp_path):
    completed = _run(
        ["dicom", "assemble", "-i", str(small / "in"), "--inventory", str(small / "inventory.csv"), "-o", str(tmp_path / "c"), "-q"],
        env={"PRIMAGE_PSEUDONYM_SECRET": SECRET},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 1


def test_patient_missing_from_the_map_is_skipped(small, tmp_path):
    mapping = tmp_path / "map.csv"
    mapping.write_text("patient_id,pseudonym\nSOMEONE-ELSE,c1\n")
    completed = _run(
        [
            "dicom",
            "assemble",
            "-i",
            str(small / "in"),
            "--inventory",
            str(small / "inventory.csv"),
            "-o",
            str(tmp_path / "c"),
            "--pseudonym-map",
            str(mapping),
            "-q",
        ]
    )
    assert completed.returncode == 1
    assert "patient not in the pseudonym map" in completed.stderr
    assert IDENTITIES["ge"]["PatientID"] not in completed.stderr
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["dicom_assembly.csv"]
