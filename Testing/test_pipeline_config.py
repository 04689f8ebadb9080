"""The pipeline configuration (validated up front, naming the bad key), cohort discovery and
the `primage pipeline` command line (init, check, run: exit codes and bad input)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import yaml
from _pipeline_data import write_small_case

from primage.cli import main
from primage.errors import PrimageInputError
from primage.pipeline import discover_cohort, load_config, read_case, validate_config
from primage.pipeline.config import DEFAULT_CONFIG, DEFAULT_CONFIG_TEXT

REPO = Path(__file__).resolve().parents[1]


def test_default_text_is_the_default_configuration():
    assert yaml.safe_load(DEFAULT_CONFIG_TEXT) == DEFAULT_CONFIG
    assert validate_config(yaml.safe_load(DEFAULT_CONFIG_TEXT)) == load_config(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("radiomcs: {}", "unknown config key 'radiomcs' (did you mean 'radiomics'?)"),
        ("kinetics: {fcf: {clusters: two}}", "'kinetics.fcf.clusters' must be an integer"),
        ("kinetics: {adc: {methd: nlls}}", "unknown config key 'kinetics.adc.methd'"),
        ("steps: [preprocess, segmentation]", "'steps' must be one of"),
        ("steps: []", "'steps' must be a non-empty list"),
        ("preprocess: {presets: {t2w: t3w}}", "'preprocess.presets.t2w': unknown preset 't3w'"),
        ("register: {presets: {ct: mr-cat}}", "'register.presets.ct': unknown registration"),
        ('register: {stages: {ct: "rigid,warp"}}', "'register.stages.ct'"),
        ("register: {dwi_volume: median}", "'register.dwi_volume' must be one of"),
        (
            "register: {same_frame_of_reference: resampel}",
            "got 'resampel' (did you mean 'resample'?)",
        ),
        ("segment: {method: unet}", "'segment.method' must be one of given"),
        ("radiomics: {setting: {binWidht: 3}}", "'radiomics.setting': unknown key 'binWidht'"),
        ("radiomics: {preset: nope}", "'radiomics.preset': unknown radiomics preset"),
        ("kinetics: {tofts: {enabled: yes please}}", "'kinetics.tofts.enabled' must be true"),
        ("reference: 't 2'", "'reference': role names"),
        ("steps: [preprocess", "not valid YAML (line 2"),
        ("- a list", "'(top level)' must be a mapping"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text + "\n")
    with pytest.raises(PrimageInputError) as error:
        load_config(path)
    assert message in str(error.value)


def test_configuration_is_completed_and_ordered(tmp_path):
    preset = tmp_path / "my_t2.json"
    preset.write_text(json.dumps({"name": "mine", "steps": [{"step": "zscore"}]}))
    path = tmp_path / "c.yaml"
    path.write_text("steps: [radiomics, preprocess]\npreprocess: {presets: {t2w: my_t2.json}}\n")
    config = load_config(path)
    assert config["steps"] == ["preprocess", "radiomics"]  # always in chain order
    assert config["preprocess"]["presets"] == {"t2w": str(preset.resolve())}  # relative to the file
    assert config["kinetics"]["fcf"]["clusters"] == 2  # defaults filled in


def test_cohort_folder_csv_and_case_json(tmp_path):
    root = tmp_path / "cohort"
    case = write_small_case(
        root / "p1",
        0,
        roles=("dwi",),
        metadata={
            "site": "V",
            "PatientName": "X",
            "groups": {"histology": "NB"},
            "dce": {"flip_angle_deg": 12},
        },
    )
    # Other SimpleITK formats with the same stems.
    sitk.WriteImage(sitk.ReadImage(str(case / "t2w.nii.gz")), str(case / "t1w.nrrd"))
    (root / "notes").mkdir()  # no image: not a case
    cases = discover_cohort(root)
    assert [c.case_id for c in cases] == ["p1"]
    p1 = cases[0]
    assert sorted(p1.series) == ["dwi", "t1w", "t2w"] and p1.values["dwi"].name == "dwi.bval"
    assert p1.masks == {"reference": case / "tumour.nii.gz"}
    assert p1.metadata == {"site": "V", "group_histology": "NB"}
    assert p1.dropped_keys == ["PatientName"] and p1.acquisition == {"flip_angle_deg": 12}

    listing = tmp_path / "cohort.csv"
    listing.write_text("folder,case_id\ncohort/p1,first\ncohort/p1,second\n")
    assert [c.case_id for c in discover_cohort(listing)] == ["first", "second"]
    listing.write_text("folder\ncohort/p1\ncohort/p1\n")
    with pytest.raises(PrimageInputError, match="used twice"):
        discover_cohort(listing)
    with pytest.raises(PrimageInputError, match="holds no case folder"):
        discover_cohort(root / "notes")
    assert read_case(tmp_path / "absent").problems


SMALL_STEPS = {
    "steps": ["preprocess", "segment"],
    "preprocess": {"presets": {"t2w": "t2w"}},
}


def test_cli_pipeline_init_check_and_run(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    assert main(["pipeline", "init", str(config)]) == 0
    assert config.read_text() == DEFAULT_CONFIG_TEXT
    assert main(["pipeline", "init", str(config)]) == 2  # exists: --force needed
    assert "use --force" in capsys.readouterr().err

    root = tmp_path / "cohort"
    write_small_case(root / "ok", 0, roles=())
    broken = write_small_case(root / "broken", 1, roles=())
    (broken / "tumour.nii.gz").unlink()  # no mask: the segment step fails
    config.write_text(yaml.safe_dump(SMALL_STEPS))
    assert main(["pipeline", "check", "--config", str(config), "--cohort", str(root)]) == 0
    assert "2 case(s)" in capsys.readouterr().out

    out = tmp_path / "out"
    code = main(["pipeline", "run", "--cohort", str(root), "--config", str(config),
                 "--output-dir", str(out), "--workers", "0", "--quiet"])  # fmt: skip
    assert code == 1  # one case failed, the other completed
    err = capsys.readouterr().err
    assert "1 of 2 case(s) failed: broken" in err
    assert (out / "ok" / "segment" / "tumour.nii.gz").is_file()
    assert (out / "report.html").is_file() and (out / "features.csv").is_file()
    assert "no tumour mask" in (out / "broken" / "error.log").read_text()

    # Bad input: exit 2, one line, before any work.
    bad = tmp_path / "bad.yaml"
    bad.write_text("kinetics: {margin_mm: -1}\n")
    code = main(["pipeline", "run", "--cohort", str(root), "--config", str(bad),
                 "--output-dir", str(tmp_path / "out2"), "--workers", "0"])  # fmt: skip
    assert code == 2 and not (tmp_path / "out2").exists()
    assert capsys.readouterr().err.strip().count("\n") == 0
    code = main(["pipeline", "run", "--cohort", str(root), "--config", str(config),
                 "--output-dir", str(root / "ok" / "out"), "--workers", "0"])  # fmt: skip
    assert code == 2 and "inside) the input folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # --workers and --scheduler exclude each other
        main(["pipeline", "run", "--cohort", str(root), "--output-dir", str(out),
              "--workers", "1", "--scheduler", "tcp://x:1"])  # fmt: skip
    assert usage.value.code == 2


def test_headless_slicer_script_runs_the_pipeline_command(tmp_path):
    # The same script Slicer runs (--python-script), here under plain Python.
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "primage_slicer.py"), "--", "pipeline", "check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "configuration ok" in completed.stdout
