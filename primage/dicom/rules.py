"""Role rules: a table of header conditions (data), evaluated in order, first match wins.

The table is ``primage/presets/dicom/roles.json`` (or a user's copy). A rule is
``{"name": ..., "role": ..., "when": CONDITION}`` with an optional ``"reason"`` (why a
series of a role that is not assembled is not used, shown in the inventory); a condition is ``{"all": [...]}``,
``{"any": [...]}``, ``{"not": CONDITION}`` or a test of one series feature
``{"field": NAME, OP: VALUE}`` with OP one of ``equals``, ``in``, ``contains_any``
(a list feature holds one of the values), ``matches`` (case-insensitive regular
expression, searched), ``min``, ``max`` (numbers) or ``present`` (true/false). A test of
a missing feature is false (``present: false`` is true).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from primage.errors import PrimageInputError
from primage.presetfiles import preset_folder

#: Series features a rule can test (see :func:`primage.dicom.scan.series_features`).
FEATURES = {
    "modality": "Modality (0008,0060), upper case",
    "manufacturer": "Manufacturer (0008,0070)",
    "description": "SeriesDescription (0008,103E)",
    "protocol": "ProtocolName (0018,1030)",
    "sequence_name": "SequenceName (0018,0024)",
    "text": "description, protocol and sequence name joined (for regular expressions)",
    "image_type": "ImageType (0008,0008) values, upper case",
    "image_type_value1": "first ImageType value (ORIGINAL / DERIVED)",
    "has_pixels": "the series holds image pixel data (false for SR, RTSTRUCT, SEG, ...)",
    "sop_class": "SOPClassUID (0008,0016)",
    "samples_per_pixel": "SamplesPerPixel (0028,0002): 1 grey, 3 colour",
    "photometric": "PhotometricInterpretation (0028,0004), upper case",
    "conversion_type": "ConversionType (0008,0064), secondary captures only",
    "burned_in_annotation": "BurnedInAnnotation (0028,0301), YES / NO",
    "units": "Units (0054,1001) of PET: BQML, GML, CNTS, 1/CM, ...",
    "rows": "Rows (0028,0010)",
    "columns": "Columns (0028,0011)",
    "echo_time_ms": "EchoTime (0018,0081), ms",
    "repetition_time_ms": "RepetitionTime (0018,0080), ms",
    "inversion_time_ms": "InversionTime (0018,0082), ms",
    "contrast_agent": "ContrastBolusAgent (0018,0010); present when not empty",
    "orientations": "number of distinct image orientations",
    "slices": "number of distinct slice positions",
    "frames_per_position": "image frames at each slice position",
    "b_value_count": "number of distinct b-values",
    "b_value_max": "largest b-value, s/mm^2",
    "time_points": "volumes separated by frame times (one series)",
    "dynamic_series": "series of the study with the same sequence and grid at distinct times",
    "dynamic_interval_s": "median time between those series, s",
}

OPERATORS = ("equals", "in", "contains_any", "matches", "min", "max", "present")


@lru_cache(maxsize=4)
def _load(path: str | None) -> dict:
    if path is None:
        text = preset_folder("dicom").joinpath("roles.json").read_text("utf-8")
        origin = "built-in rules"
    else:
        file = Path(path)
        if not file.is_file():
            raise PrimageInputError(f"rules file does not exist: {file}")
        text = file.read_text("utf-8")
        origin = f"rules file {file}"
    try:
        table = json.loads(text)
    except json.JSONDecodeError as error:
        raise PrimageInputError(f"{origin} is not valid JSON: {error}") from None
    validate_rules(table, origin)
    return table


def load_rules(path: str | Path | None = None) -> dict:
    """The role rule table (built-in, or a JSON file with the same structure)."""
    return _load(None if path is None else str(path))


def validate_rules(table: dict, origin: str = "rules") -> None:
    """Refuse a malformed rule table with a message naming the bad rule."""
    if not isinstance(table, dict) or not isinstance(table.get("rules"), list):
        raise PrimageInputError(f"{origin}: expected an object with a 'rules' list")
    roles = table.get("roles")
    if not isinstance(roles, list) or not roles:
        raise PrimageInputError(f"{origin}: expected a non-empty 'roles' list")
    for number, rule in enumerate(table["rules"], start=1):
        if not isinstance(rule, dict) or not {"name", "role", "when"} <= set(rule):
            raise PrimageInputError(f"{origin}: rule {number} needs 'name', 'role' and 'when'")
        if rule["role"] not in roles:
            raise PrimageInputError(
                f"{origin}: rule '{rule['name']}' has role {rule['role']!r}, not one of {roles}"
            )
        if not isinstance(rule.get("reason", ""), str):
            raise PrimageInputError(f"{origin}: rule '{rule['name']}': 'reason' must be text")
        _validate_condition(rule["when"], f"{origin}: rule '{rule['name']}'")


def _validate_condition(condition, where: str) -> None:
    if not isinstance(condition, dict):
        raise PrimageInputError(f"{where}: a condition must be an object")
    if "all" in condition or "any" in condition:
        items = condition.get("all", condition.get("any"))
        if not isinstance(items, list):
            raise PrimageInputError(f"{where}: 'all'/'any' takes a list")
        for item in items:
            _validate_condition(item, where)
        return
    if "not" in condition:
        _validate_condition(condition["not"], where)
        return
    field = condition.get("field")
    if field not in FEATURES:
        raise PrimageInputError(f"{where}: unknown field {field!r}; known: {', '.join(FEATURES)}")
    operators = [key for key in condition if key != "field"]
    if len(operators) != 1 or operators[0] not in OPERATORS:
        raise PrimageInputError(f"{where}: field {field!r} needs one of {', '.join(OPERATORS)}")
    if operators[0] == "matches":
        try:
            re.compile(condition["matches"])
        except re.error as error:
            raise PrimageInputError(f"{where}: bad regular expression: {error}") from None


def holds(condition: dict, features: dict) -> bool:
    """Whether ``condition`` holds for a series with ``features``."""
    if "all" in condition:
        return all(holds(item, features) for item in condition["all"])
    if "any" in condition:
        return any(holds(item, features) for item in condition["any"])
    if "not" in condition:
        return not holds(condition["not"], features)
    value = features.get(condition["field"])
    if "present" in condition:
        present = value is not None and value != "" and value != [] and value != ()
        return present == bool(condition["present"])
    if value is None or value == "":
        return False
    if "equals" in condition:
        expected = condition["equals"]
        if isinstance(value, str) and isinstance(expected, str):
            return value.upper() == expected.upper()
        return value == expected
    if "in" in condition:
        return value in condition["in"] or (
            isinstance(value, str) and value.upper() in [str(v).upper() for v in condition["in"]]
        )
    if "contains_any" in condition:
        values = {str(v).upper() for v in (value if isinstance(value, (list, tuple)) else [value])}
        return any(str(v).upper() in values for v in condition["contains_any"])
    if "matches" in condition:
        return re.search(condition["matches"], str(value), re.IGNORECASE) is not None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    if "min" in condition:
        return number >= float(condition["min"])
    if "max" in condition:
        return number <= float(condition["max"])
    return False


def classify(features: dict, table: dict | None = None) -> tuple[str, str]:
    """``(role, rule name)`` of the first rule whose condition holds."""
    table = table or load_rules()
    for rule in table["rules"]:
        if holds(rule["when"], features):
            return rule["role"], rule["name"]
    return "unknown", "no-rule-matched"


def rule_reason(name: str, table: dict | None = None) -> str:
    """The ``reason`` text of rule ``name`` (empty when it has none)."""
    table = table or load_rules()
    for rule in table["rules"]:
        if rule["name"] == name:
            return rule.get("reason", "")
    return ""
