"""Registration settings: stages (rigid, affine, B-spline) and their validation.

A registration is ``{"initialisation": ..., "stages": [...], "mask_dilation_mm": ...,
"seed": ..., "qc": {...}}``; every stage is a dict such as ``{"stage": "rigid",
"metric": "mattes"}``. Parameters not given take the defaults of :data:`STAGE_DEFAULTS`,
so a preset file only states what it changes. Everything is validated before any
registration runs, and :func:`validate_settings` returns the settings as applied (all
parameters filled in), which is what the CLI and the QC JSON record.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from primage.errors import PrimageInputError

STAGE_KINDS = ("rigid", "affine", "bspline")
METRICS = ("mattes", "correlation", "mean_squares")
SAMPLING = ("random", "regular", "none")
INITIALISATIONS = ("none", "geometry", "moments")

#: Parameters shared by every stage (units in the names; "samples" per resolution level).
COMMON_DEFAULTS: dict[str, Any] = {
    "metric": "mattes",
    "histogram_bins": 32,
    "sampling": "random",
    "samples": [2000, 5000, 10000],
    "shrink_factors": [4, 2, 1],
    "smoothing_sigmas_voxels": [2.0, 1.0, 0.0],
}

_LINEAR_DEFAULTS: dict[str, Any] = {
    "iterations": [60, 60, 15],
    "rounds": [1, 1, 6],
    "learning_rate": 1.0,
    "round_decay": 0.6,
    "minimum_step": 0.001,
    "relaxation": 0.7,
}

#: Defaults per stage kind (on top of :data:`COMMON_DEFAULTS`). Linear stages use regular
#: step gradient descent with scales from the physical shift of each parameter:
#: ``learning_rate`` is the first step (about mm of the largest voxel shift), multiplied by
#: ``relaxation`` whenever the direction turns; a level runs ``rounds`` times on fresh
#: random samples, each round starting with a step ``round_decay`` times the last one and
#: ending after ``iterations`` (per round) or when its step fell 20-fold. The B-spline
#: stage uses L-BFGS-B (``iterations`` per level) on one control-point grid of
#: ``control_point_spacing_mm`` for every level.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "rigid": dict(_LINEAR_DEFAULTS),
    "affine": dict(_LINEAR_DEFAULTS),
    "bspline": {
        "control_point_spacing_mm": 50.0,
        "iterations": [20, 20, 20],
    },
}

SETTINGS_DEFAULTS: dict[str, Any] = {
    "initialisation": "none",
    "mask_dilation_mm": 5.0,
    "seed": 1,
}

#: QC thresholds (verdict ``review`` when missed).
QC_DEFAULTS: dict[str, Any] = {
    "dice_min": 0.7,
    "mutual_information_tolerance": 0.02,
    "tre_max_mm": None,
}


def _number(value: Any, where: str, *, integer: bool = False, minimum=None, exclusive=False):
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PrimageInputError(f"{where} must be {kind}, got {value!r}")
    if integer and not float(value).is_integer():
        raise PrimageInputError(f"{where} must be {kind}, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise PrimageInputError(f"{where} must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        relation = ">" if exclusive else ">="
        raise PrimageInputError(f"{where} must be {relation} {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def _choice(value: Any, choices: Sequence[str], where: str) -> str:
    if value not in choices:
        raise PrimageInputError(f"{where} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _per_level(value: Any, levels: int, where: str, *, integer: bool, minimum: float) -> list:
    values = list(value) if isinstance(value, list | tuple) else [value] * levels
    if len(values) != levels:
        raise PrimageInputError(
            f"{where} needs one value per resolution level ({levels}), got {len(values)}"
        )
    return [
        _number(v, f"{where}[{i}]", integer=integer, minimum=minimum) for i, v in enumerate(values)
    ]


def validate_stage(stage: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """Check one stage dict and return it with every parameter filled in."""
    if not isinstance(stage, Mapping):
        raise PrimageInputError(f"stage {index} must be an object like {{'stage': 'rigid'}}")
    kind = stage.get("stage")
    where = f"stage {index} ({kind})"
    _choice(kind, STAGE_KINDS, f"stage {index}: 'stage'")
    defaults = {**COMMON_DEFAULTS, **STAGE_DEFAULTS[kind]}
    unknown = sorted(set(stage) - set(defaults) - {"stage", "note"})
    if unknown:
        raise PrimageInputError(
            f"{where}: unknown parameter {', '.join(map(repr, unknown))}; allowed: "
            + ", ".join(sorted(defaults))
        )
    result: dict[str, Any] = {"stage": kind, **copy.deepcopy(defaults)}
    result.update({k: copy.deepcopy(v) for k, v in stage.items() if k != "note"})
    result["metric"] = _choice(result["metric"], METRICS, f"{where}: metric")
    result["sampling"] = _choice(result["sampling"], SAMPLING, f"{where}: sampling")
    result["histogram_bins"] = _number(
        result["histogram_bins"], f"{where}: histogram_bins", integer=True, minimum=4
    )
    shrink = result["shrink_factors"]
    if not isinstance(shrink, list | tuple) or not shrink:
        raise PrimageInputError(f"{where}: shrink_factors must be a non-empty list")
    result["shrink_factors"] = [
        _number(s, f"{where}: shrink_factors[{i}]", integer=True, minimum=1)
        for i, s in enumerate(shrink)
    ]
    levels = len(result["shrink_factors"])
    result["smoothing_sigmas_voxels"] = _per_level(
        result["smoothing_sigmas_voxels"],
        levels,
        f"{where}: smoothing_sigmas_voxels",
        integer=False,
        minimum=0,
    )
    result["samples"] = _per_level(
        result["samples"], levels, f"{where}: samples", integer=True, minimum=100
    )
    result["iterations"] = _per_level(
        result["iterations"], levels, f"{where}: iterations", integer=True, minimum=1
    )
    if kind == "bspline":
        result["control_point_spacing_mm"] = _number(
            result["control_point_spacing_mm"],
            f"{where}: control_point_spacing_mm",
            minimum=0,
            exclusive=True,
        )
    else:
        for key in ("learning_rate", "minimum_step"):
            result[key] = _number(result[key], f"{where}: {key}", minimum=0, exclusive=True)
        for key in ("relaxation", "round_decay"):
            result[key] = _number(result[key], f"{where}: {key}", minimum=0, exclusive=True)
            if result[key] >= 1:
                raise PrimageInputError(f"{where}: {key} must be between 0 and 1")
        result["rounds"] = _per_level(
            result["rounds"], levels, f"{where}: rounds", integer=True, minimum=1
        )
    return result


def validate_stages(stages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check a list of stages (rigid, affine, B-spline, in that order, each at most once)."""
    if isinstance(stages, str | bytes) or not isinstance(stages, Sequence):
        raise PrimageInputError("stages must be a list like [{'stage': 'rigid'}]")
    if not stages:
        raise PrimageInputError("no registration stage given (rigid, affine or bspline)")
    result = [validate_stage(stage, index) for index, stage in enumerate(stages)]
    kinds = [stage["stage"] for stage in result]
    if len(set(kinds)) != len(kinds) or kinds != sorted(kinds, key=STAGE_KINDS.index):
        raise PrimageInputError(
            f"stages must come in the order rigid, affine, bspline, each at most once; got "
            f"{', '.join(kinds)}"
        )
    return result


def stages_from_names(text: str | Sequence[str]) -> list[dict[str, Any]]:
    """``"rigid,affine,bspline"`` (or a list of names) -> stage dicts with defaults."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    for name in names:
        _choice(name, STAGE_KINDS, "a stage name")
    return validate_stages([{"stage": name} for name in names])


def validate_qc(qc: Mapping[str, Any] | None) -> dict[str, Any]:
    """QC thresholds with defaults filled in (``dice_min`` 0..1, tolerances >= 0)."""
    qc = dict(qc or {})
    unknown = sorted(set(qc) - set(QC_DEFAULTS) - {"note"})
    if unknown:
        raise PrimageInputError(
            f"qc: unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(QC_DEFAULTS)}"
        )
    result = {**QC_DEFAULTS, **{k: v for k, v in qc.items() if k != "note"}}
    result["dice_min"] = _number(result["dice_min"], "qc: dice_min", minimum=0)
    if result["dice_min"] > 1:
        raise PrimageInputError("qc: dice_min must be between 0 and 1")
    result["mutual_information_tolerance"] = _number(
        result["mutual_information_tolerance"], "qc: mutual_information_tolerance", minimum=0
    )
    if result["tre_max_mm"] is not None:
        result["tre_max_mm"] = _number(
            result["tre_max_mm"], "qc: tre_max_mm", minimum=0, exclusive=True
        )
    return result


def validate_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check registration settings (``stages`` required) and fill every default."""
    if not isinstance(settings, Mapping):
        raise PrimageInputError("registration settings must be an object with 'stages'")
    allowed = {"stages", "qc", "preset", *SETTINGS_DEFAULTS}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise PrimageInputError(
            f"unknown registration setting {', '.join(map(repr, unknown))}; allowed: "
            + ", ".join(sorted(allowed))
        )
    if "stages" not in settings:
        raise PrimageInputError("registration settings need 'stages'")
    result = {**SETTINGS_DEFAULTS, **{k: v for k, v in settings.items() if k in SETTINGS_DEFAULTS}}
    result["initialisation"] = _choice(result["initialisation"], INITIALISATIONS, "initialisation")
    result["mask_dilation_mm"] = _number(result["mask_dilation_mm"], "mask_dilation_mm", minimum=0)
    result["seed"] = _number(result["seed"], "seed", integer=True, minimum=0)
    result["stages"] = validate_stages(settings["stages"])
    result["qc"] = validate_qc(settings.get("qc"))
    if "preset" in settings:
        result["preset"] = settings["preset"]
    return result
