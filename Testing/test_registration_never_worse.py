"""Registration never returns something worse than where it started.

* The candidate starts (headers' alignment, centres of mass, a user's initial transform)
  are compared by the metric and the best one is used; checked against an independent
  measure (the QC's numpy mutual information) and the known truth.
* An optimisation forced to fail (a deliberately bad preset) returns the start, and the
  QC says so.
* On real PET/CT that is already aligned (IBSI soft-tissue sarcoma cases, one DICOM frame
  of reference, the reference NIfTI), the result is never worse than the start by the
  metric on fresh samples nor by the QC's independent mutual information.
"""

import pytest
import SimpleITK as sitk
from _shared_data import IBSI_STS_CASES, ibsi_sts_nifti

from primage.registration import register_images, settings_for, stages_from_names
from primage.registration.qc import quality_control, similarity
from primage.registration.truth import (
    known_affine,
    move_geometry,
    synthetic_registration_pair,
    transform_error,
)

RIGID = {"stages": stages_from_names("rigid")}


@pytest.fixture(scope="module")
def pair():
    return synthetic_registration_pair()


def _centre(image):
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])


def _candidate_costs(result):
    return {c["method"]: c["cost"] for c in result.initialisation["candidates"]}


def test_a_bad_initial_transform_loses_to_the_headers(pair):
    fixed, moving, _, _, truth = pair
    wrong = known_affine(_centre(fixed), (0.0, 0.0, 25.0), (18.0, -15.0, 10.0))
    result = register_images(fixed, moving, RIGID, initial_transform=wrong)
    costs = _candidate_costs(result)
    assert set(costs) == {"initial transform", "headers"}
    assert result.initialisation["method"] == "headers"
    assert costs["headers"] < costs["initial transform"]
    # Independently: the QC's histogram MI agrees that the headers are the better start.
    mi = {
        name: similarity(fixed, moving, tx)["mutual_information"]
        for name, tx in (("headers", sitk.Transform()), ("initial", wrong))
    }
    assert mi["headers"] > mi["initial"], mi
    assert transform_error(result.transform, truth, fixed)["mean_mm"] < 1.0


def test_centres_of_mass_win_when_the_headers_are_far_off(pair):
    fixed, moving, fixed_mask, _, truth = pair
    shift = sitk.TranslationTransform(3, (30.0, -20.0, 12.0))
    far = move_geometry(moving, shift)
    far_truth = sitk.CompositeTransform([shift, truth])
    settings = {**RIGID, "initialisation": "moments"}
    result = register_images(fixed, far, settings)
    costs = _candidate_costs(result)
    assert result.initialisation["method"] == "moments"
    assert costs["moments"] < costs["headers"]
    assert transform_error(result.transform, far_truth, fixed, fixed_mask)["mean_mm"] < 1.0
    # The same pair with the headers right: the headers are chosen over the moments.
    near = register_images(fixed, moving, settings)
    near_costs = _candidate_costs(near)
    assert near.initialisation["method"] == min(near_costs, key=near_costs.get)
    assert transform_error(near.transform, truth, fixed, fixed_mask)["mean_mm"] < 1.0


def test_a_failed_optimisation_returns_the_start_and_qc_says_so(pair):
    fixed, moving, fixed_mask, moving_mask, truth = pair
    # Deliberately bad: 40 mm first steps that never shrink much, two iterations only.
    bad = {
        "stages": [
            {
                "stage": "rigid",
                "shrink_factors": [1],
                "smoothing_sigmas_voxels": [0.0],
                "samples": [500],
                "iterations": [2],
                "rounds": [1],
                "learning_rate": 40.0,
                "relaxation": 0.99,
            }
        ]
    }
    result = register_images(fixed, moving, bad)
    assert result.kept_start, result.acceptance
    assert (
        result.acceptance["cost_optimised"]
        >= result.acceptance["cost_start"] - (result.acceptance["needed"])
    )
    # The start is the headers' alignment here: the identity, exactly.
    assert transform_error(result.transform, sitk.Transform(), fixed)["max_mm"] < 1e-9
    assert result.stages[0]["levels"][0]["iterations"] >= 1  # it did run
    qc = quality_control(
        fixed,
        moving,
        result.transform,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        acceptance=result.acceptance,
    )
    assert qc["start_returned"] is True
    assert "optimisation not kept" in qc["reason"] and qc["advice"]
    # A good preset on the same pair keeps its optimisation.
    good = register_images(fixed, moving, RIGID)
    assert not good.kept_start and good.acceptance["improvement"] > good.acceptance["needed"]
    assert transform_error(good.transform, truth, fixed, fixed_mask)["mean_mm"] < 0.8


@pytest.mark.parametrize("case", IBSI_STS_CASES)
def test_aligned_real_pet_ct_is_never_made_worse(case):
    ct = sitk.ReadImage(str(ibsi_sts_nifti(case, "CT")), sitk.sitkFloat32)
    pet = sitk.ReadImage(str(ibsi_sts_nifti(case, "PET")), sitk.sitkFloat32)
    tumour = sitk.ReadImage(str(ibsi_sts_nifti(case, "CT", "mask")))
    result = register_images(ct, pet, settings_for("pet-ct"))
    # The scanner's alignment beats the centres of mass (PET uptake is not CT density).
    assert result.initialisation["method"] == "headers", result.initialisation
    moved = transform_error(result.transform, sitk.Transform(), ct, tumour)["mean_mm"]
    mi_start = similarity(ct, pet, sitk.Transform())["mutual_information"]
    mi_result = similarity(ct, pet, result.transform)["mutual_information"]
    if result.kept_start:
        assert moved < 1e-6  # the start itself, exactly
    else:
        # Kept only when better on fresh samples, and the QC's own MI agrees.
        assert result.acceptance["improvement"] > result.acceptance["needed"]
        assert mi_result > mi_start, (mi_start, mi_result, moved)
    assert mi_result >= mi_start - 1e-4
