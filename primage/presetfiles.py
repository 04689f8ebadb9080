"""Built-in and user preset files (JSON), shared by every capability that has presets.

Built-in presets are data files in ``primage/presets/<kind>/<name>.json``; a user may give
the path of a JSON file instead. Each capability validates the content itself; this
module finds, reads and parses the files with clear errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError


def preset_folder(kind: str):
    """The package folder of the built-in presets of ``kind`` (e.g. ``"registration"``)."""
    return resources.files("primage").joinpath("presets", kind)


def list_builtin(kind: str) -> list[str]:
    """Sorted names of the built-in JSON presets of ``kind``."""
    return sorted(
        entry.name[: -len(".json")]
        for entry in preset_folder(kind).iterdir()
        if entry.name.endswith(".json")
    )


def parse_json(text: str, source: str) -> Any:
    """Parse preset JSON text; a syntax error names the source and the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PrimageInputError(
            f"preset {source} is not valid JSON (line {error.lineno}: {error.msg})"
        ) from None


def load_json_preset(
    name_or_path: str | os.PathLike,
    kind: str,
    validate: Callable[..., dict[str, Any]],
    *,
    label: str = "preset",
) -> dict[str, Any]:
    """Load a built-in preset of ``kind`` by name, or a user JSON file by path.

    ``validate(data, source, builtin=...)`` checks the parsed content and returns the preset
    dict; built-in files are validated strictly (``builtin=True``). The result gets
    ``source`` (``builtin:<name>`` or the file's absolute path) and, for a user file without
    a name, ``name`` = the file stem.
    """
    text_name = str(name_or_path)
    if text_name in list_builtin(kind):
        entry = preset_folder(kind).joinpath(f"{text_name}.json")
        preset = validate(parse_json(entry.read_text("utf-8"), text_name), text_name, builtin=True)
        preset["source"] = f"builtin:{text_name}"
        return preset
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise PrimageInputError(f"{label} file does not exist: {path}")
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise PrimageInputError(f"cannot read {label} file {path}: {error}") from None
        preset = validate(parse_json(text, str(path)), str(path))
        preset["name"] = preset.get("name") or path.stem
        preset["source"] = str(path.resolve())
        return preset
    raise PrimageInputError(
        f"unknown {label} {text_name!r}; built-in presets: {', '.join(list_builtin(kind))} "
        "(or give the path of a .json file)"
    )
