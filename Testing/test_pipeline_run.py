"""The cohort pipeline end to end on generated cohorts: 2 Dask workers, a broken case and a
case missing a series, status/provenance/features/report, identity never copied, serial
equals parallel, and resumability (a killed run, a changed radiomics setting)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import pytest
from _pipeline_data import PLANTED_NAME, files_containing, plant_name_in_header, write_small_case

from primage.pipeline import run_cohort
from primage.pipeline.case import PipelineAborted
from primage.pipeline.units import HASH_STORE, FileHashes

# Fewer radiomics images than the default keeps the suite fast; every step still runs.
CONFIG = {
    "radiomics": {"images": ["t2w", "ct", "adc"]},
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    write_small_case(
        root / "case_a",
        0,
        metadata={
            "site": "A",
            "groups": {"histology": "neuroblastoma"},
            "patient_name": PLANTED_NAME,
        },
    )
    plant_name_in_header(root / "case_a" / "t2w.nii.gz")
    write_small_case(root / "case_b", 1, metadata={"site": "B"})
    # Missing a series: no DCE (its maps and FCF iAUC60 are skipped, the rest completes).
    write_small_case(root / "case_c_no_dce", 2, roles=("t1w", "ct", "dwi"))
    # Broken: the reference series is not an image.
    broken = write_small_case(root / "case_d_broken", 3, roles=("dwi",))
    (broken / "t2w.nii.gz").write_bytes(b"this is not an image")
    return root


@pytest.fixture(scope="module")
def parallel_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_parallel")
    result = run_cohort(cohort, CONFIG, out, workers=2)
    return result, out


def _status(out):
    with open(out / "status.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_broken_case_reported_and_the_others_complete(parallel_run):
    result, out = parallel_run
    by_case = {s["case_id"]: s for s in result.summaries}
    assert result.exit_code == 1
    assert result.failed == ["case_d_broken"]
    broken = by_case["case_d_broken"]
    assert broken["failed_step"] == "preprocess"
    assert "not an image" in broken["message"]
    log = (out / "case_d_broken" / "error.log").read_text()
    assert "step: preprocess" in log and "Traceback" in log
    for case in ("case_a", "case_b", "case_c_no_dce"):
        assert by_case[case]["status"] in ("ok", "review"), by_case[case]["message"]
        assert (out / case / "radiomics" / "adc.csv").is_file()
    # The case without DCE: DCE units skipped with a note, DWI results present.
    missing = by_case["case_c_no_dce"]
    assert any("no dce series" in note for note in missing["notes"])
    assert "dce" not in missing["kinetics"] and "adc" in missing["kinetics"]

    rows = _status(out)
    assert {(r["case"], r["step"]) for r in rows} == {
        (c, s)
        for c in by_case
        for s in ("preprocess", "register", "segment", "kinetics", "radiomics", "figures")
    }
    states = {(r["case"], r["step"]): r["state"] for r in rows}
    assert states[("case_d_broken", "preprocess")] == "failed"
    assert states[("case_d_broken", "kinetics")] == "blocked"
    assert all(states[("case_a", s)] == "done" for s in ("preprocess", "radiomics", "figures"))


def test_cohort_outputs(parallel_run, cohort):
    result, out = parallel_run
    with open(out / "features.csv", newline="", encoding="utf-8") as stream:
        rows = {r["case"]: r for r in csv.DictReader(stream)}
    assert set(rows) == {"case_a", "case_b", "case_c_no_dce", "case_d_broken"}
    a = rows["case_a"]
    assert a["site"] == "A" and a["group_histology"] == "neuroblastoma"
    assert a["qc_dwi_verdict"] in ("ok", "review") and a["qc_ct_verdict"] in ("ok", "review")
    # The synthetic viable tumour has ADC 0.8e-3 mm^2/s (necrosis 2.5e-3).
    assert 0.6e-3 < float(a["adc_tumour_median"]) < 1.0e-3
    assert float(a["fcf_adc_habitat1_value"]) < float(a["fcf_adc_habitat2_value"])
    assert float(a["t2w_original_shape_MeshVolume"]) > 0
    assert float(a["ct_original_firstorder_Mean"]) > 0  # tumour HU ~ 38 (CT settings: no z-score)
    assert rows["case_c_no_dce"]["iauc60_tumour_median"] == ""
    assert rows["case_d_broken"]["status"] == "failed"

    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") >= 3 * 6
    assert "<script" not in report and 'src="http' not in report  # self-contained
    # Failed and review cases come first in the QC table.
    order = [report.index(f'href="#case-{c}"') for c in ("case_d_broken", "case_b")]
    assert order[0] < order[1]

    provenance = json.loads((out / "case_a" / "provenance.json").read_text())
    assert provenance["versions"]["primage"] and provenance["versions"]["dask"]
    assert provenance["configuration"]["radiomics"]["images"] == ["t2w", "ct", "adc"]
    expected = hashlib.sha256((cohort / "case_a" / "dwi.nii.gz").read_bytes()).hexdigest()
    assert provenance["inputs_sha256"]["dwi.nii.gz"] == expected
    assert provenance["case_json_keys_not_copied"] == ["patient_name"]
    assert {s["step"] for s in provenance["steps"]} >= {"register", "radiomics"}
    assert provenance["host"]["itk_threads"] == 1


def test_patient_identity_never_reaches_the_outputs(parallel_run):
    _, out = parallel_run
    assert files_containing(out, PLANTED_NAME.split("^")[1]) == []


def test_serial_run_gives_the_same_results(parallel_run, cohort, tmp_path):
    result, _ = parallel_run
    from primage.pipeline import read_case

    serial = run_cohort([read_case(cohort / "case_b")], CONFIG, tmp_path, workers=0)
    parallel = next(s for s in result.summaries if s["case_id"] == "case_b")
    mine = serial.summaries[0]
    assert mine["kinetics"] == parallel["kinetics"]
    assert mine["registration"] == parallel["registration"]
    for image, features in parallel["radiomics"].items():
        for name, value in features.items():
            # Identical except the last bits of LAPACK eigenvalues (GLCM MCC), whose
            # thread count differs between this process and a Dask worker.
            assert math.isclose(mine["radiomics"][image][name], value, rel_tol=1e-12, abs_tol=1e-15)


# --- resumability -------------------------------------------------------------------------

FAST = {
    "preprocess": {"presets": {"t2w": "t2w", "dwi": "dwi"}},
    "kinetics": {"fcf": {"iauc60": False}},
    "radiomics": {"images": ["t2w", "adc"]},
}


def _units(out, case="case_r"):
    """(step, unit) -> finished timestamp, from every step manifest."""
    found = {}
    for manifest in (out / case).glob("*/step.json"):
        for unit, entry in json.loads(manifest.read_text())["units"].items():
            found[(manifest.parent.name, unit)] = entry["finished"]
    return found


def test_killed_run_resumes_and_a_changed_setting_reruns_only_its_step(tmp_path):
    cohort = tmp_path / "cohort"
    write_small_case(cohort / "case_r", 5, roles=("dwi",))
    out = tmp_path / "out"
    with pytest.raises(PipelineAborted):
        run_cohort(cohort, FAST, out, workers=0, abort_after="register")
    killed = _units(out)
    assert {step for step, _ in killed} == {"preprocess", "register"}

    result = run_cohort(cohort, FAST, out, workers=0)
    assert result.exit_code == 0
    resumed = _units(out)
    for key, finished in killed.items():
        assert resumed[key] == finished  # not recomputed
    new = set(resumed) - set(killed)
    assert {step for step, _ in new} == {"segment", "kinetics", "radiomics", "figures"}
    assert all(resumed[key] > max(killed.values()) for key in new)
    states = {r["step"]: r["state"] for r in _status(out)}
    assert states["preprocess"] == states["register"] == "up-to-date"
    assert states["radiomics"] == "done"

    # A changed radiomics setting reruns radiomics, and nothing else.
    changed = dict(FAST, radiomics={"images": ["t2w", "adc"], "setting": {"binWidth": 10}})
    run_cohort(cohort, changed, out, workers=0)
    after = _units(out)
    rerun = {key for key in after if after[key] != resumed[key]}
    assert rerun == {("radiomics", "t2w"), ("radiomics", "adc")}
    states = {r["step"]: r["state"] for r in _status(out)}
    assert states == {
        "preprocess": "up-to-date",
        "register": "up-to-date",
        "segment": "up-to-date",
        "kinetics": "up-to-date",
        "radiomics": "done",
        "figures": "up-to-date",
    }

    # A lost output is recomputed; its bytes are the same, so nothing downstream reruns.
    (out / "case_r" / "kinetics" / "adc.nii.gz").unlink()
    run_cohort(cohort, changed, out, workers=0)
    again = _units(out)
    assert {key for key in again if again[key] != after[key]} == {("kinetics", "adc")}


def test_file_digests_outlive_the_process_and_a_rewritten_file_is_hashed_again(
    tmp_path, monkeypatch
):
    image = tmp_path / "Smith_Joan" / "t2w.nii"
    image.parent.mkdir()
    image.write_bytes(b"a" * 4096)
    store = tmp_path / HASH_STORE
    first = FileHashes(store)
    assert first(image) == hashlib.sha256(b"a" * 4096).hexdigest()
    first.save()
    assert "Smith" not in store.read_text()  # paths can identify a patient

    opened = []
    real_open = Path.open

    def spy(self, *args, **kwargs):
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    # Another process (a new FileHashes on the store) does not read an unchanged file.
    assert FileHashes(store)(image) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert image not in opened
    # Rewritten with the same size: a new mtime, so it is read and hashed again.
    image.write_bytes(b"b" * 4096)
    assert FileHashes(store)(image) == hashlib.sha256(b"b" * 4096).hexdigest()
    assert image in opened
    # A damaged store is ignored, not trusted.
    store.write_text("{not json")
    assert FileHashes(store)(image) == hashlib.sha256(b"b" * 4096).hexdigest()
