"""The registration part of ``make demo`` recovers its known misalignments."""

import json

import pytest

from primage.errors import PrimageInputError
from primage.registration.demo import run_demo
from primage.synthetic import make_digital_patient, write_case


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("registration-demo")
    write_case(make_digital_patient(0), folder / "case")
    fractions = []
    lines = run_demo(
        folder / "case", folder / "registration", progress=lambda f, m: fractions.append(f)
    )
    return folder, lines, fractions


def test_demo_recovers_the_known_misalignments(demo):
    folder, lines, fractions = demo
    summary = json.loads((folder / "registration" / "summary.json").read_text())
    for name in ("ct", "t1w", "dwi_b0"):
        series = summary["series"][name]
        assert series["tre_before_mm"]["mean"] > 5.0
        assert series["tre_after_mm"]["mean"] < 0.5 and series["tre_after_mm"]["max"] < 1.0, name
        assert series["dice_tumour_after"] > series["dice_tumour_before"]
        assert series["verdict"] == "ok"
        for suffix in ("_to_t2w.h5", "_registered.nii.gz", "_qc.json", "_qc_fusion_after.png"):
            assert (folder / "registration" / f"{name}{suffix}").is_file()
    motion = summary["motion"]
    assert motion["max_translation_error_mm"] < 0.5
    assert motion["max_translation_found_in_still_frames_mm"] < 0.3
    assert (folder / "registration" / "dce_motion.csv").is_file()
    assert lines[0] == "## Registration (known misalignments recovered)"
    assert any(line.startswith("| ct | mr-ct") for line in lines)
    assert fractions[-1] == 1.0


def test_demo_refuses_a_folder_that_is_not_a_case(tmp_path):
    with pytest.raises(PrimageInputError, match="not a case folder"):
        run_demo(tmp_path, tmp_path / "out")
