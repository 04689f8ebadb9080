"""The kinetics section of the demo on a small digital patient."""

import json

from primage.kinetics.demo import run_demo
from primage.synthetic import make_digital_patient, write_case


def test_run_demo_writes_maps_and_report_lines(tmp_path):
    patient = make_digital_patient(0, size=(48, 48, 12), spacing=(3.0, 3.0, 10.0))
    write_case(patient, tmp_path / "case")
    reports = []
    lines = run_demo(
        tmp_path / "case", tmp_path / "kinetics", progress=lambda f, m: reports.append(f)
    )
    assert lines[0].startswith("## Kinetics")
    assert any(line.startswith("| ADC | 1 |") for line in lines)
    assert any(line.startswith("| iAUC60 | 2 |") for line in lines)
    summary = json.loads((tmp_path / "kinetics" / "kinetics_summary.json").read_text())
    viable = summary["adc"]["viable tumour"]
    assert abs(viable["median"] / viable["truth"] - 1) < 0.02
    for row in summary["fcf"]["adc"] + summary["fcf"]["iauc60"]:
        assert row["dice"] >= 0.9
    for name in ("adc.nii.gz", "iauc60.nii.gz", "fcf_adc_habitats.nii.gz", "fcf_iauc60.json"):
        assert (tmp_path / "kinetics" / name).is_file()
    assert reports and reports[-1] == 1.0
