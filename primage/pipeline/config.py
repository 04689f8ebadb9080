"""The cohort pipeline's YAML configuration: defaults, the commented default file, validation.

:func:`load_config` reads a YAML file, fills in every default and validates the whole
configuration before any case is touched: an unknown key, a wrong type, an unknown preset
or role gives one :class:`~primage.errors.PrimageInputError` naming the key (e.g.
``config key 'kinetics.fcf.clusters': must be an integer between 2 and 10, got 'two'``).
Presets are loaded here too, so a misspelt preset name fails up front, not in case 300.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError

#: Steps of the chain, in the order they run.
STEP_ORDER = ("preprocess", "register", "segment", "kinetics", "radiomics")
#: Series roles of the case layout (``<role>.nii.gz``); 4D roles carry their index values.
SERIES_ROLES = ("t2w", "t1w", "dwi", "dce", "ct", "pet")
SERIES_4D = {"dwi": "dwi.bval", "dce": "dce.times"}


def step_image_name(role: str) -> str:
    """File name of the image the preprocess and register steps write for ``role``:
    uncompressed ``<role>.nii``. Their float intensities deflate by only 10-30 % (the 1 mm
    CT of a clinical case: 336 -> 229 MB), while gzip cost it 6 CPU-s to write and 0.9 to
    read again; the 4D DCE ~20 s and ~8 s. Masks and kinetic maps stay ``.nii.gz``."""
    return f"{role}.nii"


def find_step_image(folder: Path, role: str) -> Path | None:
    """The image of ``role`` in a step folder under either name (earlier versions wrote
    ``.nii.gz``), or None."""
    for name in (step_image_name(role), f"{role}.nii.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


#: What the register step does with a series in the reference's frame of reference.
SAME_FRAME_MODES = ("resample", "refine", "register")
#: Kinetic maps the radiomics step can measure (written by the kinetics step).
MAP_NAMES = ("adc", "iauc60", "ktrans", "ve", "kep")

DEFAULT_CONFIG: dict[str, Any] = {
    "version": 1,
    "reference": "t2w",
    "steps": list(STEP_ORDER),
    # No CT preset: registration puts the CT on the reference grid (one B-spline
    # interpolation) and radiomics resamples it to 1 mm; the ct preset's 1 mm resampling
    # before both would interpolate it once more and cost a clinical case ~7 CPU-s.
    "preprocess": {"presets": {"t2w": "t2w", "t1w": "t1w", "dwi": "dwi", "dce": "dce"}},
    "register": {
        "presets": {
            "t1w": "mr-mr",
            "dwi": "dwi-to-t2",
            "dce": "dce-to-t2",
            "ct": "mr-ct",
            "pet": "pet-ct",
        },
        "stages": {},
        "same_frame_of_reference": "resample",
        "refine_max_mm": 5.0,
        "follow_frame_of_reference": True,
        "dwi_volume": "lowest-b",
        "dce_baseline_frames": 3,
        "use_masks": False,
        "snapshots": True,
    },
    "segment": {"method": "given", "model": "", "device": "cpu", "postprocess": "largest,fill"},
    "kinetics": {
        "margin_mm": 10.0,
        "adc": {"enabled": True, "method": "nlls"},
        "dce": {"enabled": True},
        "fcf": {"adc": True, "iauc60": True, "clusters": 2, "confidence": 0.70},
        "tofts": {
            "enabled": False,
            "extended": False,
            "t10_s": 1.3,
            "flip_angle_deg": 15.0,
            "repetition_time_s": 0.004,
            "relaxivity": 4.5,
        },
    },
    "radiomics": {
        "preset": "primage",
        "setting": {},
        "images": ["t2w", "t1w", "ct", "adc", "iauc60"],
    },
    "export": {
        "dicom": False,
        "dicom_source": "",
        "inventory": "",
        "maps": "all",
        "deflate": False,
    },
}

DEFAULT_CONFIG_TEXT = """\
# PRIMAGE cohort pipeline configuration (written by `primage pipeline init`).
# Every key is optional: a key left out takes the value shown here. Run
#   primage pipeline run --cohort COHORT --config THIS.yaml --output-dir OUT
version: 1

# Role of the reference series. Every other series is registered onto it, and the
# tumour mask tumour.nii.gz of a case is drawn on it.
reference: t2w

# Steps to run, in this order. Leave a step out to skip it (a later step then reads the
# output of the last step before it, or the case's own files).
steps: [preprocess, register, segment, kinetics, radiomics]

preprocess:
  # Preprocessing preset per series role: a built-in name (primage preprocess
  # --list-presets) or a preset .json file. Roles not listed are used as they are.
  presets:
    t2w: t2w      # N4 (50 mm grid) + anisotropic diffusion (conductance 1, 2 iterations)
    t1w: t1w
    dwi: dwi      # per b-value volume; no N4 (it would bias the ADC)
    dce: dce      # per frame; no N4, no normalisation (they change the curves)
    # CT: none; registration resamples it onto the reference grid once (add "ct: ct"
    # for the ct preset's 1 mm isotropic resampling, e.g. when CT is the reference)

register:
  # Registration preset per moving role (primage register --list-presets), or "none"
  # when the series already shares the reference's scanner coordinates (it is then
  # only resampled onto the reference grid). Roles not listed are not used after this step.
  presets:
    t1w: mr-mr
    dwi: dwi-to-t2
    dce: dce-to-t2
    ct: mr-ct
    pet: pet-ct
  # Stages per role replacing the preset's, e.g. {ct: "rigid,affine,bspline"}.
  stages: {}
  # A series that shares the reference's DICOM frame of reference (the same
  # "frame_of_reference" token in case.json, as `primage dicom assemble` writes it, e.g.
  # the PET and CT of one PET/CT) is already aligned by the scanner:
  #   resample  only resample it onto the reference grid (identity transform);
  #   refine    a rigid refinement from that alignment, kept only when it improves mutual
  #             information (dense histogram) and moves the reference tumour (or image)
  #             by at most refine_max_mm on average; otherwise resampled only;
  #   register  register it with its preset like any other series.
  # Series in another or an unknown frame of reference are always registered. Per role
  # instead, e.g. {dwi: refine, dce: refine} (MR series of one session share a frame of
  # reference but the patient may move between them); roles not listed: resample.
  same_frame_of_reference: resample
  refine_max_mm: 5.0
  # A series in another frame of reference than the reference but in the same as a
  # series that is registered (the PET of a PET/CT onto an MR reference: the CT is
  # registered) takes that series' transform instead of a registration of its own.
  follow_frame_of_reference: true
  # Volume of a DWI series that is registered: "lowest-b" (the b = 0 image) or "mean".
  dwi_volume: lowest-b
  # DCE: the mean of the first N (pre-contrast) frames is registered.
  dce_baseline_frames: 3
  # Restrict the metric to the tumour masks (tumour.nii.gz and tumour_<role>.nii.gz,
  # dilated by the preset's margin): PRIMAGE's re-registration route for hard cases.
  use_masks: false
  # Write checkerboard / fusion PNGs (before and after) for the report.
  snapshots: true

segment:
  # "given": the case's tumour.nii.gz (reference space) or tumour_<role>.nii.gz (that
  # series' space, carried onto the reference by the registration); "model": a trained
  # model folder (primage DynUNet or nnU-Net v2, `primage segment train`) run on the
  # reference series (needs the `seg` extra; nnU-Net folders also `nnunet`).
  method: given
  # For method "model": the model folder, the device (cpu, cuda) and the post-processing
  # of the predicted mask (as `primage segment postprocess --steps`; "" for none).
  model: ""
  device: cpu
  postprocess: largest,fill

kinetics:
  # Maps are fitted inside the tumour grown by this margin (mm); ROI values use the tumour.
  margin_mm: 10
  adc: {enabled: true, method: nlls}      # method: nlls or wls
  dce: {enabled: true}                    # semi-quantitative: iAUC60, TTP, wash-in, ...
  # Fit-Cluster-Fit habitats inside the tumour (ADC from DWI, iAUC60 from DCE).
  fcf: {adc: true, iauc60: true, clusters: 2, confidence: 0.70}
  # Tofts model (Parker population AIF) on the concentration from the SPGR signal.
  # Acquisition values here are defaults; a case's case.json "dce" entry overrides them.
  tofts:
    enabled: false
    extended: false
    t10_s: 1.3              # pre-contrast T1 of tissue (s)
    flip_angle_deg: 15
    repetition_time_s: 0.004
    relaxivity: 4.5         # 1/(mM s)

radiomics:
  # Built-in preset (primage, ibsi, full) or a pyradiomics parameter file.
  preset: primage
  # pyradiomics settings that replace the preset's, e.g. {binWidth: 10}.
  setting: {}
  # Series roles and kinetic maps (adc, iauc60, ktrans, ve, kep) that get features.
  images: [t2w, t1w, ct, adc, iauc60]

export:
  # DICOM results after the steps, in OUT/<case>/dicom/ (as `primage dicom export`): a
  # DICOM SEG of the tumour and of each FCF habitat image, a Parametric Map per kinetic
  # map, and a TID 1500 Structured Report (tumour volume, ROI values of the maps, habitat
  # values, radiomic features), all referencing the reference series' source DICOM series.
  # The results must be on that series' own grid (a reference preprocessing preset that
  # resamples, such as ct, puts them on another: nothing is interpolated, the case fails
  # with the reason). Identity: the case folder name is the pseudonym.
  dicom: false
  # The DICOM folder `primage dicom assemble` read, and the inventory it used: case.json
  # names each file's series ids, the inventory their SeriesInstanceUIDs.
  dicom_source: ""
  inventory: ""
  # Parametric Maps: "all" (every map of the kinetics step with a DICOM code, see
  # primage.dicom.export.MAPS) or a list, e.g. [adc, iauc60, ktrans, ve].
  maps: all
  # Lossless Deflated Explicit VR Little Endian (smaller SEG; not every archive accepts it).
  deflate: false
"""


def _where(path: str) -> str:
    return f"config key {path!r}"


def _unknown_keys(data: Mapping, allowed: Mapping | tuple, path: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), [str(k) for k in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            name = f"{path}.{key}" if path else str(key)
            raise PrimageInputError(
                f"unknown {_where(name)}{hint}; allowed here: {', '.join(map(str, allowed))}"
            )


def _mapping(value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PrimageInputError(f"{_where(path)} must be a mapping (key: value), got {value!r}")
    return dict(value)


def _merge(defaults: dict, given: Mapping, path: str, *, open_keys: tuple = ()) -> dict:
    """``defaults`` updated by ``given``; nested mappings merged; unknown keys refused.

    Keys in ``open_keys`` hold user-chosen names (roles, settings): taken as given.
    """
    _unknown_keys(given, defaults, path)
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        name = f"{path}.{key}" if path else key
        if key in open_keys:
            merged[key] = _mapping(value, name)
        elif isinstance(defaults[key], dict):
            merged[key] = _merge(defaults[key], _mapping(value, name), name, open_keys=open_keys)
        else:
            merged[key] = value
    return merged


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PrimageInputError(f"{_where(path)} must be true or false, got {value!r}")
    return value


def _number(value: Any, path: str, low: float, high: float, *, integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise PrimageInputError(
            f"{_where(path)} must be {what} between {low} and {high}, got {value!r}"
        )
    return int(value) if integer else float(value)


def _choice(value: Any, choices: tuple, path: str) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PrimageInputError(
            f"{_where(path)} must be one of {', '.join(choices)}, got {value!r}{hint}"
        )
    return value


def _role(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value or not value.replace("_", "").isalnum():
        raise PrimageInputError(
            f"{_where(path)}: role names are letters, digits and underscores, got {value!r}"
        )
    return value.lower()


def _resolve_file(value: str, base: Path | None) -> str:
    """A relative preset/parameter file path, resolved against the config file's folder."""
    path = Path(value)
    if base is not None and not path.is_absolute() and (base / path).exists():
        return str((base / path).resolve())
    return value


def validate_config(data: Any, *, base: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fill in the defaults and validate a configuration (the parsed YAML); returns it.

    ``base`` is the folder of the configuration file (relative preset files are resolved
    against it). Presets are loaded to check that they exist; the returned configuration
    holds their names or resolved paths, as given.
    """
    base = Path(base) if base is not None else None
    config = _merge(
        DEFAULT_CONFIG,
        _mapping(data, "(top level)"),
        "",
        open_keys=("presets", "stages", "setting"),
    )
    if config["version"] != 1:
        raise PrimageInputError(f"{_where('version')} must be 1, got {config['version']!r}")
    config["reference"] = _role(config["reference"], "reference")
    steps = config["steps"]
    if not isinstance(steps, list) or not steps:
        raise PrimageInputError(
            f"{_where('steps')} must be a non-empty list, e.g. {list(STEP_ORDER)}"
        )
    for step in steps:
        _choice(step, STEP_ORDER, "steps")
    if len(set(steps)) != len(steps):
        raise PrimageInputError(f"{_where('steps')} names a step twice: {steps}")
    config["steps"] = [s for s in STEP_ORDER if s in steps]  # always run in chain order

    from primage.preprocessing import load_preset as load_preprocessing

    presets = config["preprocess"]["presets"]
    for role, preset in list(presets.items()):
        name = f"preprocess.presets.{role}"
        _role(role, name)
        if not isinstance(preset, str):
            raise PrimageInputError(f"{_where(name)} must be a preset name or file, got {preset!r}")
        presets[role] = _resolve_file(preset, base)
        try:
            load_preprocessing(presets[role])
        except PrimageInputError as error:
            raise PrimageInputError(f"{_where(name)}: {error}") from None

    from primage.registration import list_presets as registration_presets
    from primage.registration import settings_for

    register = config["register"]
    available = registration_presets()
    for role, preset in list(register["presets"].items()):
        name = f"register.presets.{role}"
        _role(role, name)
        if preset != "none" and preset not in available:
            raise PrimageInputError(
                f"{_where(name)}: unknown registration preset {preset!r}; use one of "
                f"{', '.join(available)} or none"
            )
    for role, stages in register["stages"].items():
        name = f"register.stages.{role}"
        if role not in register["presets"] or register["presets"][role] == "none":
            raise PrimageInputError(f"{_where(name)}: role {role!r} has no registration preset")
        try:
            settings_for(register["presets"][role], stages)
        except PrimageInputError as error:
            raise PrimageInputError(f"{_where(name)}: {error}") from None
    same_frame = register["same_frame_of_reference"]
    if isinstance(same_frame, Mapping):
        for role, mode in same_frame.items():
            name = f"register.same_frame_of_reference.{role}"
            _role(role, name)
            _choice(mode, SAME_FRAME_MODES, name)
        register["same_frame_of_reference"] = {str(r).lower(): m for r, m in same_frame.items()}
    else:
        _choice(same_frame, SAME_FRAME_MODES, "register.same_frame_of_reference")
    register["refine_max_mm"] = _number(register["refine_max_mm"], "register.refine_max_mm", 0, 100)
    _choice(register["dwi_volume"], ("lowest-b", "mean"), "register.dwi_volume")
    _number(register["dce_baseline_frames"], "register.dce_baseline_frames", 1, 50, integer=True)
    _bool(register["use_masks"], "register.use_masks")
    _bool(register["follow_frame_of_reference"], "register.follow_frame_of_reference")
    _bool(register["snapshots"], "register.snapshots")

    from primage.pipeline.segmenters import SEGMENTERS

    segment = config["segment"]
    _choice(segment["method"], tuple(SEGMENTERS), "segment.method")
    for key in ("model", "device", "postprocess"):
        if not isinstance(segment[key], str):
            raise PrimageInputError(f"{_where('segment.' + key)} must be text")
    if segment["method"] == "model":
        from primage.segmentation.models import check_model
        from primage.segmentation.postprocess import parse_steps

        if not segment["model"]:
            raise PrimageInputError(f"{_where('segment.model')}: give the model folder")
        segment["model"] = _resolve_file(segment["model"], base)
        try:
            check_model(segment["model"])
            parse_steps(segment["postprocess"])
        except PrimageInputError as error:
            raise PrimageInputError(f"{_where('segment')}: {error}") from None

    kinetics = config["kinetics"]
    kinetics["margin_mm"] = _number(kinetics["margin_mm"], "kinetics.margin_mm", 0, 200)
    _bool(kinetics["adc"]["enabled"], "kinetics.adc.enabled")
    _choice(kinetics["adc"]["method"], ("nlls", "wls"), "kinetics.adc.method")
    _bool(kinetics["dce"]["enabled"], "kinetics.dce.enabled")
    fcf = kinetics["fcf"]
    _bool(fcf["adc"], "kinetics.fcf.adc")
    _bool(fcf["iauc60"], "kinetics.fcf.iauc60")
    _number(fcf["clusters"], "kinetics.fcf.clusters", 2, 10, integer=True)
    fcf["confidence"] = _number(fcf["confidence"], "kinetics.fcf.confidence", 0, 1)
    tofts = kinetics["tofts"]
    _bool(tofts["enabled"], "kinetics.tofts.enabled")
    _bool(tofts["extended"], "kinetics.tofts.extended")
    tofts["t10_s"] = _number(tofts["t10_s"], "kinetics.tofts.t10_s", 0.01, 10)
    tofts["flip_angle_deg"] = _number(
        tofts["flip_angle_deg"], "kinetics.tofts.flip_angle_deg", 0.1, 179
    )
    tofts["repetition_time_s"] = _number(
        tofts["repetition_time_s"], "kinetics.tofts.repetition_time_s", 1e-5, 1
    )
    tofts["relaxivity"] = _number(tofts["relaxivity"], "kinetics.tofts.relaxivity", 0.01, 100)

    radiomics = config["radiomics"]
    if not isinstance(radiomics["preset"], str):
        raise PrimageInputError(f"{_where('radiomics.preset')} must be a preset name or a file")
    radiomics["preset"] = _resolve_file(radiomics["preset"], base)
    images = radiomics["images"]
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise PrimageInputError(f"{_where('radiomics.images')} must be a list of names")
    radiomics["images"] = [_role(i, "radiomics.images") for i in images]
    if "radiomics" in config["steps"]:
        radiomics_parameters(config)  # validates the preset and the settings (pyradiomics schema)
    _validate_export(config["export"], base)
    return config


def _validate_export(export: dict[str, Any], base: Path | None) -> None:
    """The ``export`` section: DICOM source folder and inventory exist when export is on."""
    _bool(export["dicom"], "export.dicom")
    _bool(export["deflate"], "export.deflate")
    for key in ("dicom_source", "inventory"):
        if not isinstance(export[key], str):
            raise PrimageInputError(f"{_where('export.' + key)} must be a path (text)")
        if export[key]:
            export[key] = _resolve_file(export[key], base)
    maps = export["maps"]
    if maps != "all":
        from primage.dicom.export import MAPS  # pydicom + highdicom: only when needed

        if not isinstance(maps, list) or not all(isinstance(m, str) for m in maps):
            raise PrimageInputError(
                f"{_where('export.maps')} must be all or a list of map names, got {maps!r}"
            )
        for name in maps:
            _choice(name, tuple(MAPS), "export.maps")
    if not export["dicom"]:
        return
    source, inventory = export["dicom_source"], export["inventory"]
    if not source or not Path(source).is_dir():
        raise PrimageInputError(
            f"{_where('export.dicom_source')}: export.dicom needs the DICOM folder the cases "
            f"were assembled from (got {source!r}: not a folder)"
        )
    if not inventory or not Path(inventory).is_file():
        raise PrimageInputError(
            f"{_where('export.inventory')}: export.dicom needs the inventory CSV of "
            f"`primage dicom scan` used by assemble (got {inventory!r}: not a file)"
        )


def radiomics_parameters(config: Mapping[str, Any]):
    """The validated :class:`~primage.radiomics.params.ParameterSet` of a configuration,
    with ``radiomics.setting`` applied (it wins over per-modality settings too)."""
    from primage.radiomics.params import ParameterSet, load_params, validate_params

    settings = config["radiomics"]
    try:
        parameters = load_params(settings["preset"])
        if settings["setting"]:
            params = copy.deepcopy(parameters.params)
            params.setdefault("setting", {}).update(settings["setting"])
            try:
                params = validate_params(params, "radiomics.setting")
            except PrimageInputError as error:
                # validate_params names a "parameter file"; here it is the configuration.
                detail = str(error).split(": ", 1)[-1]
                raise PrimageInputError(f"{_where('radiomics.setting')}: {detail}") from None
            modalities = copy.deepcopy(parameters.modalities)
            for entry in modalities.values():
                entry.setdefault("setting", {}).update(settings["setting"])
            parameters = ParameterSet(params, parameters.source, parameters.preset, modalities)
    except PrimageInputError as error:
        if str(error).startswith("config key"):
            raise
        raise PrimageInputError(f"{_where('radiomics.preset')}: {error}") from None
    return parameters


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text (safe loader); one clear error with the line on bad syntax."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PrimageInputError(
            f"configuration {source} is not valid YAML{where}: {problem}"
        ) from None


def load_config(path: str | os.PathLike | None) -> dict[str, Any]:
    """Read and validate a configuration file; ``None`` gives the defaults."""
    if path is None:
        return validate_config({})
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"configuration file does not exist: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PrimageInputError(f"cannot read configuration {path}: {error}") from None
    return validate_config(parse_yaml(text, str(path)), base=path.parent)
