"""pyradiomics parameter files: the built-in presets, user files, validation, modalities.

A parameter set is the dictionary a pyradiomics parameter file holds (``setting``,
``imageType``, ``featureClass``, ``voxelSetting``). Built-in presets are pyradiomics YAML
files in ``primage/presets/radiomics/`` (``primage``, ``ibsi``, ``full``); a user may give
any pyradiomics parameter file (YAML or JSON). Every parameter set is validated against
pyradiomics' own schema before a run, and a problem is reported naming the bad key.

Fixed bin width per modality: for the ``primage`` and ``full`` presets, an image whose name
(or explicit modality) is one of ``overrides/modalities.yaml``'s entries gets that entry's
settings (e.g. CT: no normalisation, 25 HU bins). User files are used exactly as written.

YAML is parsed with the loader of pykwalify, the validator pyradiomics uses for its own
parameter files, so no other YAML package is needed.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError
from primage.presetfiles import preset_folder

#: Top-level sections of a pyradiomics parameter file.
SECTIONS = ("setting", "imageType", "featureClass", "voxelSetting")
#: Presets to which the per-modality overrides apply.
MODALITY_PRESETS = ("primage", "full")


def _preset_folder():
    return preset_folder("radiomics")


def list_presets() -> list[str]:
    """Names of the built-in presets, sorted (``["full", "ibsi", "primage"]``)."""
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in _preset_folder().iterdir()
        if entry.name.endswith(".yaml")
    )


def _parse_text(text: str, source: str, *, json_file: bool) -> Any:
    if json_file:
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise PrimageInputError(
                f"parameter file {source} is not valid JSON (line {error.lineno}: {error.msg})"
            ) from None
    from pykwalify.compat import yml

    try:
        return yml.load(text)
    except Exception as error:  # ruamel's YAMLError and its many subclasses
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PrimageInputError(
            f"parameter file {source} is not valid YAML{where}: {problem}"
        ) from None


def _plain(value: Any) -> Any:
    """ruamel's ordered maps and sequences as plain dicts and lists (picklable, hashable)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class ParameterSet:
    """A validated pyradiomics parameter set and where it came from.

    ``params`` is the dictionary given to ``RadiomicsFeatureExtractor(params)``; ``source``
    is the preset name or the file path; ``preset`` is the preset name (None for a user
    file); ``modalities`` are the per-modality overrides that may apply (presets
    ``primage`` and ``full`` only).
    """

    params: dict[str, Any]
    source: str
    preset: str | None = None
    modalities: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_modality(self, modality: str | None) -> dict[str, Any]:
        """The parameter set for an image of ``modality`` (None: the preset as it is)."""
        if modality is None or modality not in self.modalities:
            return self.params
        entry = self.modalities[modality]
        params = copy.deepcopy(self.params)
        params.setdefault("setting", {}).update(entry.get("setting", {}))
        if entry.get("featureClass") is not None:
            params["featureClass"] = copy.deepcopy(entry["featureClass"])
        return params

    def modality_of(self, image_name: str, explicit: str | None = None) -> str | None:
        """The modality whose overrides apply to an image (None: none applies).

        ``explicit`` wins (it must be a known modality); otherwise one word of the image
        name (split at anything but letters and digits) must be one of an entry's names.
        """
        if explicit is not None:
            key = explicit.strip().lower()
            known = load_modalities()
            if key not in known:
                raise PrimageInputError(
                    f"unknown modality {explicit!r}; known modalities: {', '.join(sorted(known))}"
                )
            return key if key in self.modalities else None
        words = {word for word in re.split(r"[^0-9a-z]+", image_name.lower()) if word}
        for key, entry in self.modalities.items():
            if words & {str(name).lower() for name in entry.get("names", [])}:
                return key
        return None


def params_hash(params: dict[str, Any]) -> str:
    """Short SHA-256 (16 hex digits) of a parameter set, independent of key order."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_UNKNOWN_KEY = re.compile(r"Key '(?P<key>[^']*)' was not defined\. Path: '(?P<path>[^']*)'")
_WRONG_TYPE = re.compile(
    r"Value '(?P<value>.*)' is not of type '(?P<type>\w+)'\. Path: '(?P<path>[^']*)'"
)
_ANY_PATH = re.compile(r"Path: '(?P<path>[^']*)'")


def _schema_keys(path: str) -> list[str]:
    """Keys the pyradiomics schema allows at a path like ``/setting`` ('' is the top)."""
    from pykwalify.compat import yml
    from radiomics import getParameterValidationFiles

    schema_file, _ = getParameterValidationFiles()
    with open(schema_file, encoding="utf-8") as stream:
        schema = yml.load(stream)
    node = schema
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "imageType":
        parts = ["setting"]  # image-type arguments are settings
    for part in parts:
        node = node.get("mapping", {}).get(part, {})
    return sorted(node.get("mapping", {}).keys())


def _explain(message: str, source: str) -> str:
    """One clear sentence from a pykwalify validation message."""
    unknown = _UNKNOWN_KEY.search(message)
    if unknown:
        key, path = unknown.group("key"), unknown.group("path")
        allowed = _schema_keys(path)
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = (
            f"; did you mean {close[0]!r}?"
            if close
            else (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        )
        where = f"in {path.strip('/') or 'the top level'}"
        return f"parameter file {source}: unknown key {key!r} {where}{hint}"
    wrong = _WRONG_TYPE.search(message)
    if wrong:
        parts = [p for p in wrong.group("path").split("/") if p]
        key = ".".join(parts)
        return (
            f"parameter file {source}: {key} = {wrong.group('value')!r} has the wrong type "
            f"(pyradiomics expects {wrong.group('type')})"
        )
    located = _ANY_PATH.search(message)
    if located:
        key = ".".join(p for p in located.group("path").split("/") if p)
        text = message[: located.start()].strip().rstrip(".")
        text = text.replace("Type 'scalar' has size of", "value").replace("size of", "value")
        return f"parameter file {source}: {key}: {text}"
    return f"parameter file {source}: {message}"


def validate_params(params: Any, source: str) -> dict[str, Any]:
    """Check a parameter set against pyradiomics' schema; returns it as plain dicts.

    Raises :class:`PrimageInputError` naming the first bad key (unknown setting, wrong
    type, unknown image type or feature class, out-of-range value).
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise PrimageInputError(
            f"parameter file {source} must be a mapping with the sections {', '.join(SECTIONS)}"
        )
    params = _plain(params)
    import pykwalify.core
    from radiomics import getParameterValidationFiles

    schema_file, schema_functions = getParameterValidationFiles()
    # pykwalify logs every problem at ERROR level on its own; the exception says it once.
    pykwalify_logger = logging.getLogger("pykwalify")
    level = pykwalify_logger.level
    pykwalify_logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            # pykwalify loads pyradiomics' schema functions with a deprecated importlib API.
            warnings.simplefilter("ignore", DeprecationWarning)
            core = pykwalify.core.Core(
                source_data=params, schema_files=[schema_file], extensions=[schema_functions]
            )
            core.validate(raise_exception=False)
        errors = list(core.validation_errors or [])
    except (ValueError, TypeError) as error:
        # pyradiomics' custom checks (image types, feature classes, wavelet, ...) raise.
        raise PrimageInputError(f"parameter file {source}: {error}") from None
    finally:
        pykwalify_logger.setLevel(level)
    if errors:
        raise PrimageInputError(_explain(str(errors[0]), source))
    problem = _unavailable_image_type(params.get("imageType") or {})
    if problem:
        raise PrimageInputError(f"parameter file {source}: {problem}")
    settings = params.get("setting") or {}
    if settings.get("binWidth") is not None and settings.get("binCount") is not None:
        raise PrimageInputError(
            f"parameter file {source}: give either setting binWidth or binCount, not both"
        )
    spacing = settings.get("resampledPixelSpacing")
    if spacing is not None and len(spacing) not in (2, 3):
        raise PrimageInputError(
            f"parameter file {source}: setting resampledPixelSpacing needs one spacing per "
            f"image axis (3 values in mm), got {spacing}"
        )
    return params


def _unavailable_image_type(image_types: dict) -> str:
    """Why an enabled image type cannot run here ('' when all can).

    pyradiomics only logs a warning and skips an image type whose optional package is
    missing; a run would then silently lack those features.
    """
    import importlib.util

    if "LBP2D" in image_types and importlib.util.find_spec("skimage") is None:
        return (
            "image type LBP2D needs scikit-image, which is not installed (pip install scikit-image)"
        )
    if "LBP3D" in image_types:
        import scipy.special

        if importlib.util.find_spec("trimesh") is None or not hasattr(scipy.special, "sph_harm"):
            return (
                "image type LBP3D needs trimesh and scipy.special.sph_harm (removed in SciPy "
                "1.17), which this environment lacks"
            )
    return ""


def load_modalities() -> dict[str, dict[str, Any]]:
    """The per-modality overrides (``overrides/modalities.yaml``), validated."""
    entry = _preset_folder().joinpath("overrides", "modalities.yaml")
    data = _plain(
        _parse_text(entry.read_text(encoding="utf-8"), "modalities.yaml", json_file=False)
    )
    for key, value in data.items():
        validate_params(
            {k: v for k, v in value.items() if k in SECTIONS}, f"modalities.yaml ({key})"
        )
    return data


def load_params(
    preset: str | None = None, params_file: str | os.PathLike | None = None
) -> ParameterSet:
    """Load and validate a built-in preset (by name) or a user parameter file (by path).

    Give exactly one of ``preset`` and ``params_file``; with neither, the ``primage``
    preset is used. A ``preset`` that ends in .yaml/.yml/.json is taken as a file.
    """
    if preset is not None and params_file is not None:
        raise PrimageInputError("give either a preset or a parameter file, not both")
    if preset is not None and str(preset).lower().endswith((".yaml", ".yml", ".json")):
        preset, params_file = None, preset
    if params_file is not None:
        path = Path(params_file)
        if not path.is_file():
            raise PrimageInputError(f"parameter file does not exist: {path}")
        text = path.read_text(encoding="utf-8")
        data = _parse_text(text, str(path), json_file=path.suffix.lower() == ".json")
        return ParameterSet(validate_params(data, str(path)), str(path.resolve()))
    name = (preset or "primage").strip().lower()
    available = list_presets()
    if name not in available:
        raise PrimageInputError(
            f"unknown radiomics preset {preset!r}; choose one of {', '.join(available)} or "
            "give a pyradiomics parameter file"
        )
    text = _preset_folder().joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    params = validate_params(_parse_text(text, f"{name}.yaml", json_file=False), f"{name}.yaml")
    modalities = load_modalities() if name in MODALITY_PRESETS else {}
    return ParameterSet(params, name, preset=name, modalities=modalities)


def enabled_feature_count(params: dict[str, Any]) -> int:
    """Number of feature values one (image, segment) gives with these parameters."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pykwalify, as above
        extractor = RadiomicsFeatureExtractor(params)
    classes = _feature_classes()
    per_class = {}
    for name, wanted in extractor.enabledFeatures.items():
        per_class[name] = len(wanted) if wanted else len(_default_features(classes[name]))
    image_types = 0
    for image_type, arguments in extractor.enabledImagetypes.items():
        if image_type == "Wavelet":
            image_types += 8  # one level of a 3D wavelet: LLL ... HHH
        elif image_type == "LoG":
            sigma = (arguments or {}).get("sigma", extractor.settings.get("sigma", []))
            image_types += len(sigma)
        else:
            image_types += 1
    shape = per_class.pop("shape", 0) + per_class.pop("shape2D", 0)
    return shape + image_types * sum(per_class.values())


def _feature_classes():
    from radiomics import getFeatureClasses

    return getFeatureClasses()


def _default_features(feature_class) -> list[str]:
    return [name for name, deprecated in feature_class.getFeatureNames().items() if not deprecated]
