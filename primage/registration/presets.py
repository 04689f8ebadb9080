"""Registration presets: JSON data files in ``primage/presets/registration/``.

A preset is ``{"name", "description", "reference", "initialisation", "stages": [...],
"mask_dilation_mm", "seed", "qc"}``; only ``stages`` is required in a user file. The
settings are validated with :func:`primage.registration.stages.validate_settings`.
"""

from __future__ import annotations

import os
from typing import Any

from primage.errors import PrimageInputError
from primage.presetfiles import list_builtin, load_json_preset
from primage.registration.stages import SETTINGS_DEFAULTS, validate_settings

TEXT_KEYS = ("name", "description", "reference")


def list_presets() -> list[str]:
    """Names of the built-in presets, sorted (``dce-to-t2``, ``dwi-to-t2``, ``mr-ct``, ...)."""
    return list_builtin("registration")


def validate_preset(data: Any, source: str, *, builtin: bool = False) -> dict[str, Any]:
    """Check a preset object; returns the preset with every setting filled in."""
    if not isinstance(data, dict):
        raise PrimageInputError(f'preset {source} must be a JSON object with "stages"')
    allowed = {*TEXT_KEYS, "stages", "qc", *SETTINGS_DEFAULTS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise PrimageInputError(
            f"preset {source}: unknown key {', '.join(map(repr, unknown))}; allowed: "
            + ", ".join(sorted(allowed))
        )
    if builtin:
        missing = [k for k in (*TEXT_KEYS, "stages", "initialisation") if k not in data]
        if missing:
            raise PrimageInputError(f"preset {source}: missing {', '.join(map(repr, missing))}")
    for key in TEXT_KEYS:
        if key in data and not isinstance(data[key], str):
            raise PrimageInputError(f"preset {source}: {key!r} must be text")
    try:
        settings = validate_settings({k: v for k, v in data.items() if k not in TEXT_KEYS})
    except PrimageInputError as error:
        raise PrimageInputError(f"preset {source}: {error}") from None
    return {**{key: data.get(key, "") for key in TEXT_KEYS}, **settings}


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Load a built-in preset by name (``"mr-ct"``) or a user JSON file by path.

    Returns the validated settings plus ``name``, ``description``, ``reference`` and
    ``source`` (``builtin:<name>`` or the file's absolute path).
    """
    return load_json_preset(
        name_or_path, "registration", validate_preset, label="registration preset"
    )
