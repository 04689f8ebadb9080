"""Modality presets: JSON data files in ``primage/presets/preprocessing/``.

A preset is ``{"name", "modality", "description", "reference", "steps": [...]}``; the
steps are validated with the same rules as :func:`primage.preprocessing.run_steps`.
A user file may hold such an object (only ``"steps"`` is required) or a bare list of
steps.
"""

from __future__ import annotations

import os
from typing import Any

from primage.errors import PrimageInputError
from primage.preprocessing.steps import validate_steps
from primage.presetfiles import list_builtin, load_json_preset

PRESET_KEYS = ("name", "modality", "description", "reference", "steps")


def list_presets() -> list[str]:
    """Names of the built-in presets, sorted (e.g. ``["ct", "dce", "dwi", "t1w", "t2w"]``)."""
    return list_builtin("preprocessing")


def validate_preset(data: Any, source: str, *, builtin: bool = False) -> dict[str, Any]:
    """Check a preset object (or bare step list); returns a preset dict."""
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict):
        raise PrimageInputError(
            f'preset {source} must be a JSON object with "steps" (or a list of steps)'
        )
    unknown = [key for key in data if key not in PRESET_KEYS]
    if unknown:
        raise PrimageInputError(
            f"preset {source}: unknown key {', '.join(repr(k) for k in unknown)}; allowed: "
            + ", ".join(PRESET_KEYS)
        )
    required = PRESET_KEYS if builtin else ("steps",)
    missing = [key for key in required if key not in data]
    if missing:
        raise PrimageInputError(f"preset {source}: missing {', '.join(repr(k) for k in missing)}")
    for key in ("name", "modality", "description", "reference"):
        if key in data and not isinstance(data[key], str):
            raise PrimageInputError(f"preset {source}: {key!r} must be text")
    try:
        validate_steps(data["steps"])
    except PrimageInputError as error:
        raise PrimageInputError(f"preset {source}: {error}") from None
    preset = {key: data.get(key, "") for key in PRESET_KEYS}
    preset["steps"] = [dict(step) for step in data["steps"]]
    return preset


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Load a built-in preset by name (``"t2w"``) or a user JSON file by path.

    Returns ``{"name", "modality", "description", "reference", "steps", "source"}``; the
    steps are as written in the file (validated; :func:`run_steps` fills the defaults).
    """
    return load_json_preset(name_or_path, "preprocessing", validate_preset, label="preset")
