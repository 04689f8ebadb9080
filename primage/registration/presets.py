"""Registration presets: JSON data files in ``primage/presets/registration/``.

A preset is ``{"name", "description", "reference", "initialisation", "stages": [...],
"mask_dilation_mm", "seed", "qc"}``; only ``stages`` is required in a user file. The
settings are validated with :func:`primage.registration.stages.validate_settings`.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError
from primage.registration.stages import SETTINGS_DEFAULTS, validate_settings

TEXT_KEYS = ("name", "description", "reference")


def _preset_folder():
    return resources.files("primage").joinpath("presets", "registration")


def list_presets() -> list[str]:
    """Names of the built-in presets, sorted (``dce-to-t2``, ``dwi-to-t2``, ``mr-ct``, ...)."""
    return sorted(
        entry.name[: -len(".json")]
        for entry in _preset_folder().iterdir()
        if entry.name.endswith(".json")
    )


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


def _parse(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PrimageInputError(
            f"preset {source} is not valid JSON (line {error.lineno}: {error.msg})"
        ) from None


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Load a built-in preset by name (``"mr-ct"``) or a user JSON file by path.

    Returns the validated settings plus ``name``, ``description``, ``reference`` and
    ``source`` (``builtin:<name>`` or the file's absolute path).
    """
    text_name = str(name_or_path)
    if text_name in list_presets():
        entry = _preset_folder().joinpath(f"{text_name}.json")
        preset = validate_preset(
            _parse(entry.read_text("utf-8"), text_name), text_name, builtin=True
        )
        preset["source"] = f"builtin:{text_name}"
        return preset
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise PrimageInputError(f"preset file does not exist: {path}")
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise PrimageInputError(f"cannot read preset file {path}: {error}") from None
        preset = validate_preset(_parse(text, str(path)), str(path))
        preset["name"] = preset["name"] or path.stem
        preset["source"] = str(path.resolve())
        return preset
    raise PrimageInputError(
        f"unknown registration preset {text_name!r}; built-in presets: "
        f"{', '.join(list_presets())} (or give the path of a .json file)"
    )
