"""Named preprocessing steps, their validation and :func:`run_steps`.

A pipeline is a list of step dicts, e.g. ``[{"step": "n4", "iterations": [50, 30]},
{"step": "anisotropic_diffusion"}]``. Every parameter not given takes its default
(:data:`STEPS` lists them); an optional ``"note"`` string documents a step and is ignored.
All steps are validated before any runs, so a typo never wastes a long N4 run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import count_nonfinite, mask_on_image_grid, series_volume
from primage.preprocessing import filters
from primage.progress import ProgressCallback, sub_progress

_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One step parameter: ``kind`` is "float", "int", "bool", "choice", "int_list" or
    "spacing" (three positive floats, or one number meaning isotropic)."""

    kind: str
    default: Any = _REQUIRED
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class StepSpec:
    """A named step: its parameters and how it uses the mask and reference."""

    name: str
    summary: str
    params: dict[str, Param]
    uses_mask: bool = False
    needs_reference: bool = False
    kind: str = "intensity"  # "denoise", "bias", "normalise", "resample"


_POSITIVE = {"minimum": 0.0, "exclusive_minimum": True}
_USE_MASK = Param("bool", True, help="use the mask when one is given")

#: The step registry: name -> specification.
STEPS: dict[str, StepSpec] = {
    "anisotropic_diffusion": StepSpec(
        "anisotropic_diffusion",
        "gradient anisotropic diffusion (edge-preserving smoothing)",
        {
            "conductance": Param("float", 1.0, **_POSITIVE, help="relative to mean gradient"),
            "iterations": Param("int", 2, minimum=1),
            "time_step": Param(
                "float", None, **_POSITIVE, nullable=True, help="null: stable bound"
            ),
        },
        kind="denoise",
    ),
    "curvature_flow": StepSpec(
        "curvature_flow",
        "curvature flow smoothing",
        {
            "iterations": Param("int", 5, minimum=1),
            "time_step": Param(
                "float", None, **_POSITIVE, nullable=True, help="null: stable bound"
            ),
        },
        kind="denoise",
    ),
    "bilateral": StepSpec(
        "bilateral",
        "bilateral filter (Gaussian in space and intensity)",
        {
            "domain_sigma_mm": Param("float", 2.0, **_POSITIVE),
            "range_sigma": Param(
                "float", None, **_POSITIVE, nullable=True, help="null: 3x noise SD"
            ),
            "range_samples": Param("int", 100, minimum=1),
        },
        kind="denoise",
    ),
    "non_local_means": StepSpec(
        "non_local_means",
        "patch-based (non-local means) denoising",
        {
            "patch_radius": Param("int", 1, minimum=1, maximum=5, help="voxels"),
            "iterations": Param("int", 2, minimum=1),
            "sample_patches": Param("int", 20, minimum=1),
            "search_sigma_voxels": Param("float", 5.0, **_POSITIVE),
            "noise_model": Param("choice", "none", choices=tuple(filters.NOISE_MODELS)),
            "kernel_bandwidth_sigma": Param(
                "float", None, **_POSITIVE, nullable=True, help="null: 5x noise SD"
            ),
        },
        kind="denoise",
    ),
    "n4": StepSpec(
        "n4",
        "N4 bias-field correction",
        {
            "control_point_spacing_mm": Param("float", 50.0, **_POSITIVE),
            "iterations": Param("int_list", [50, 30], minimum=1, help="per fitting level"),
            "shrink_factor": Param("int", 2, minimum=1),
            "convergence_threshold": Param("float", 0.001, minimum=0.0),
            "histogram_bins": Param("int", 200, minimum=2),
            "bias_fwhm": Param("float", 0.15, **_POSITIVE),
            "wiener_noise": Param("float", 0.01, minimum=0.0),
            "spline_order": Param("int", 3, minimum=1, maximum=3),
            "use_mask": _USE_MASK,
        },
        uses_mask=True,
        kind="bias",
    ),
    "zscore": StepSpec(
        "zscore", "z-score normalisation", {"use_mask": _USE_MASK}, uses_mask=True, kind="normalise"
    ),
    "percentile": StepSpec(
        "percentile",
        "linear percentile scaling",
        {
            "low": Param("float", 1.0, minimum=0.0, maximum=100.0),
            "high": Param("float", 99.0, minimum=0.0, maximum=100.0),
            "out_min": Param("float", 0.0),
            "out_max": Param("float", 1.0),
            "clip": Param("bool", False),
            "use_mask": _USE_MASK,
        },
        uses_mask=True,
        kind="normalise",
    ),
    "histogram_match": StepSpec(
        "histogram_match",
        "histogram matching to a reference image",
        {
            "histogram_levels": Param("int", 256, minimum=2),
            "match_points": Param("int", 7, minimum=1),
            "threshold_at_mean": Param("bool", True),
        },
        needs_reference=True,
        kind="normalise",
    ),
    "resample": StepSpec(
        "resample",
        "resampling to a new voxel spacing",
        {
            "spacing_mm": Param("spacing", help="required: [x, y, z] mm or one number"),
            "interpolator": Param("choice", "linear", choices=filters.INTERPOLATORS),
        },
        kind="resample",
    ),
}

_META_KEYS = ("step", "note")


def _check_value(where: str, key: str, param: Param, value: Any) -> Any:
    def fail(expected: str) -> PrimageInputError:
        return PrimageInputError(f"{where}: parameter {key!r} must be {expected}, got {value!r}")

    if value is None:
        if param.nullable:
            return None
        raise fail("given (null is not allowed)")

    def number(v: Any, integer: bool) -> float | int:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise fail("an integer" if integer else "a number")
        if integer and not float(v).is_integer():
            raise fail("an integer")
        if not math.isfinite(v):
            raise fail("a finite number")
        if param.minimum is not None and (
            v <= param.minimum if param.exclusive_minimum else v < param.minimum
        ):
            sign = ">" if param.exclusive_minimum else ">="
            raise fail(f"{sign} {param.minimum:g}")
        if param.maximum is not None and v > param.maximum:
            raise fail(f"<= {param.maximum:g}")
        return int(v) if integer else float(v)

    if param.kind == "float":
        return number(value, False)
    if param.kind == "int":
        return number(value, True)
    if param.kind == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if param.kind == "choice":
        if value not in param.choices:
            raise fail("one of " + ", ".join(repr(c) for c in param.choices))
        return value
    if param.kind == "int_list":
        if not isinstance(value, (list, tuple)) or not value:
            raise fail("a non-empty list of integers")
        return [number(v, True) for v in value]
    if param.kind == "spacing":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * 3
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise fail("[x, y, z] in mm (or one number for isotropic voxels)")
        values = [number(v, False) for v in value]
        if min(values) <= 0:
            raise fail("three spacings > 0 mm")
        return values
    raise AssertionError(param.kind)


def validate_step(step: Any, position: int = 1) -> dict[str, Any]:
    """Check one step dict; returns it with every parameter filled in (defaults)."""
    where = f"step {position}"
    if not isinstance(step, Mapping):
        raise PrimageInputError(
            f'{where}: a step must be an object like {{"step": "n4"}}, got {step!r}'
        )
    name = step.get("step")
    if not isinstance(name, str) or not name:
        raise PrimageInputError(
            f'{where}: missing "step" (the step name); available: ' + ", ".join(STEPS)
        )
    spec = STEPS.get(name)
    if spec is None:
        raise PrimageInputError(f"{where}: unknown step {name!r}; available: " + ", ".join(STEPS))
    where = f"step {position} ({name})"
    unknown = [key for key in step if key not in spec.params and key not in _META_KEYS]
    if unknown:
        allowed = ", ".join(spec.params) or "(none)"
        raise PrimageInputError(
            f"{where}: unknown parameter {', '.join(repr(k) for k in unknown)}; allowed: {allowed}"
        )
    if "note" in step and not isinstance(step["note"], str):
        raise PrimageInputError(f'{where}: "note" must be text')
    filled: dict[str, Any] = {"step": name}
    for key, param in spec.params.items():
        if key in step:
            filled[key] = _check_value(where, key, param, step[key])
        elif param.required:
            raise PrimageInputError(f"{where}: parameter {key!r} is required ({param.help})")
        else:
            default = param.default
            filled[key] = list(default) if isinstance(default, list) else default
    if name == "percentile" and not filled["low"] < filled["high"]:
        raise PrimageInputError(f"{where}: 'low' ({filled['low']:g}) must be below 'high'")
    return filled


def validate_steps(steps: Any) -> list[dict[str, Any]]:
    """Validate a whole pipeline (a list of step dicts); returns the filled-in steps."""
    if isinstance(steps, Mapping) or not isinstance(steps, Sequence) or isinstance(steps, str):
        raise PrimageInputError('steps must be a list of step objects, e.g. [{"step": "n4"}]')
    return [validate_step(step, position) for position, step in enumerate(steps, start=1)]


@dataclass
class PreprocessingResult:
    """What :func:`run_steps` returns.

    ``image``: Float32 result. ``bias_field``: the combined multiplicative field of the
    N4 steps on the grid of ``image`` (``None`` without N4). ``records``: one dict per
    step as applied: ``step``, ``parameters`` (all filled in), ``seconds``, ``mask``
    ("given", "otsu" or "none" for mask-using steps) and step ``details``.
    """

    image: sitk.Image
    bias_field: sitk.Image | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Total time of all steps (s)."""
        return float(sum(record["seconds"] for record in self.records))


def _apply(
    spec: StepSpec,
    params: dict[str, Any],
    image: sitk.Image,
    mask: sitk.Image | None,
    reference: sitk.Image | None,
    progress: ProgressCallback,
) -> tuple[sitk.Image, sitk.Image | None, dict[str, Any]]:
    """Run one validated step; returns (image, bias field or None, details)."""
    step_mask = mask if (spec.uses_mask and params.get("use_mask", True)) else None
    details: dict[str, Any] = {}
    if spec.uses_mask:
        details["mask"] = "given" if step_mask is not None else "none"
    name = spec.name
    if name == "anisotropic_diffusion":
        details["time_step_used"] = filters._time_step(image, params["time_step"], name)
        out = filters.anisotropic_diffusion(
            image,
            params["conductance"],
            params["iterations"],
            params["time_step"],
            progress=progress,
        )
        return out, None, details
    if name == "curvature_flow":
        details["time_step_used"] = filters._time_step(image, params["time_step"], name)
        out = filters.curvature_flow(
            image, params["iterations"], params["time_step"], progress=progress
        )
        return out, None, details
    if name == "bilateral":
        out = filters.bilateral(
            image,
            params["domain_sigma_mm"],
            params["range_sigma"],
            params["range_samples"],
            progress=progress,
        )
        return out, None, details
    if name == "non_local_means":
        keys = (
            "patch_radius", "iterations", "sample_patches", "search_sigma_voxels",
            "noise_model", "kernel_bandwidth_sigma",
        )  # fmt: skip
        out = filters.non_local_means(image, **{k: params[k] for k in keys}, progress=progress)
        return out, None, details
    if name == "n4":
        if step_mask is None:
            details["mask"] = "otsu"
        details["control_points"] = filters.n4_control_points(
            image, params["control_point_spacing_mm"], params["spline_order"]
        )
        keys = (
            "control_point_spacing_mm", "iterations", "shrink_factor", "convergence_threshold",
            "histogram_bins", "bias_fwhm", "wiener_noise", "spline_order",
        )  # fmt: skip
        corrected, bias = filters.n4_bias_correction(
            image, step_mask, **{k: params[k] for k in keys}, progress=progress
        )
        return corrected, bias, details
    if name == "zscore":
        return filters.zscore(image, step_mask), None, details
    if name == "percentile":
        keys = ("low", "high", "out_min", "out_max", "clip")
        out = filters.percentile_scale(image, mask=step_mask, **{k: params[k] for k in keys})
        return out, None, details
    if name == "histogram_match":
        out = filters.histogram_match(
            image,
            reference,
            params["histogram_levels"],
            params["match_points"],
            params["threshold_at_mean"],
        )
        return out, None, details
    if name == "resample":
        out = filters.resample_to_spacing(image, params["spacing_mm"], params["interpolator"])
        out = filters.as_float32(out)
        details["input_size"] = list(image.GetSize())
        details["output_size"] = list(out.GetSize())
        return out, None, details
    raise AssertionError(name)


def check_finite(image: sitk.Image, role: str = "image") -> None:
    """Refuse an image with NaN or infinite voxels (the count is in the message)."""
    count = count_nonfinite(image)
    if count:
        hint = " (command line: --nonfinite zero)" if role == "image" else ""
        raise PrimageInputError(
            f"{role} has {count} NaN/infinite voxel(s); preprocessing filters would spread "
            f"them. Replace them first{hint}"
        )


def run_steps(
    image: sitk.Image,
    steps: Sequence[Mapping[str, Any]],
    *,
    mask: sitk.Image | None = None,
    reference: sitk.Image | None = None,
    progress: ProgressCallback | None = None,
) -> PreprocessingResult:
    """Apply ``steps`` in order to a 3D ``image``; returns a :class:`PreprocessingResult`.

    All steps are validated first (unknown step, unknown parameter or wrong type raise
    :class:`PrimageInputError` naming the key and the allowed ones). ``mask`` (any grid:
    resampled with nearest neighbour and warned when needed; an empty mask is refused) is
    used by n4, zscore and percentile; ``histogram_match`` needs ``reference``. Images with
    NaN/inf voxels are refused. The output is Float32 on the input grid, except after a
    ``resample`` step (the mask and bias field follow the new grid).
    """
    validated = validate_steps(steps)
    if image.GetDimension() != 3:
        raise PrimageInputError(
            f"preprocessing takes a 3D volume; got a {image.GetDimension()}D image "
            "(use run_steps_series for a 4D series)"
        )
    needs_reference = [s["step"] for s in validated if STEPS[s["step"]].needs_reference]
    if needs_reference and reference is None:
        raise PrimageInputError(
            f"step {needs_reference[0]!r} needs a reference image (command line: --reference)"
        )
    check_finite(image)
    if reference is not None:
        check_finite(reference, "reference image")
    current = filters.as_float32(image)
    current_mask = mask_on_image_grid(mask, current) if mask is not None else None
    bias_field: sitk.Image | None = None
    records: list[dict[str, Any]] = []
    count = len(validated)
    for index, params in enumerate(validated):
        spec = STEPS[params["step"]]
        message = f"step {index + 1}/{count}: {spec.name}"
        step_progress = sub_progress(progress, index / count, (index + 1) / count)
        step_progress(0.0, message)
        start = time.perf_counter()

        def report(fraction: float, _text: str, report=step_progress, text=message) -> None:
            report(fraction, text)

        current, bias, details = _apply(spec, params, current, current_mask, reference, report)
        seconds = time.perf_counter() - start
        if spec.kind == "resample":
            if current_mask is not None:
                current_mask = sitk.Resample(
                    current_mask, current, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                    sitk.sitkUInt8,
                )  # fmt: skip
            if bias_field is not None:
                bias_field = sitk.Resample(
                    bias_field, current, sitk.Transform(), sitk.sitkLinear, 1.0, sitk.sitkFloat32
                )
        if bias is not None:
            bias_field = bias if bias_field is None else sitk.Multiply(bias_field, bias)
        record = {
            "step": spec.name,
            "parameters": {k: v for k, v in params.items() if k != "step"},
            "seconds": round(seconds, 4),
        }
        if "note" in steps[index]:
            record["note"] = steps[index]["note"]
        record.update(details)
        records.append(record)
        step_progress(1.0, message)
    if progress is not None:
        progress(1.0, "preprocessing done")
    return PreprocessingResult(filters.as_float32(current), bias_field, records)


@dataclass
class SeriesResult:
    """What :func:`run_steps_volumes` returns: the processed 3D ``volumes`` of a 4D series
    in order, their N4 ``bias_fields`` (``None`` without N4), the ``records`` of the first
    volume with ``seconds`` summed over all volumes and ``volumes`` added, and the
    series' 4th-axis ``time_origin`` and ``time_spacing`` (time or b-value index)."""

    volumes: list[sitk.Image]
    bias_fields: list[sitk.Image] | None
    records: list[dict[str, Any]]
    time_origin: float
    time_spacing: float

    def joined(self) -> PreprocessingResult:
        """The result as one 4D series (and a 4D bias field)."""
        origin, spacing = self.time_origin, self.time_spacing
        bias = None
        if self.bias_fields is not None:
            bias = sitk.JoinSeries(self.bias_fields, origin, spacing)
        return PreprocessingResult(
            sitk.JoinSeries(self.volumes, origin, spacing), bias, self.records
        )


def iter_steps_volumes(
    series: sitk.Image,
    steps: Sequence[Mapping[str, Any]],
    *,
    mask: sitk.Image | None = None,
    reference: sitk.Image | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[PreprocessingResult]:
    """:func:`run_steps` of every 3D volume of a 4D series in turn, each independently with
    the same settings, one volume at a time (write them with
    :func:`primage.io.write_series` as they come: neither the series' volumes nor its
    results are ever all in memory); :func:`series_records` sums their records."""
    validate_steps(steps)
    if series.GetDimension() != 4:
        raise PrimageInputError(f"expected a 4D series, got a {series.GetDimension()}D image")
    count = series.GetSize()[3]
    if mask is not None:  # resample (and warn) once, not once per volume
        mask = mask_on_image_grid(mask, series_volume(series, 0))
    for index in range(count):
        part = sub_progress(progress, index / count, (index + 1) / count)
        label = f"volume {index + 1}/{count}"
        yield run_steps(
            series_volume(series, index),
            steps,
            mask=mask,
            reference=reference,
            progress=lambda f, m, p=part, label=label: p(f, f"{label}: {m}"),
        )


def series_records(results: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The records of a series' volumes (one list per volume, in order) as one: the first
    volume's, with ``seconds`` summed over all volumes and ``volumes`` added."""
    records = [dict(record) for record in results[0]]
    for position, record in enumerate(records):
        record["seconds"] = round(sum(r[position]["seconds"] for r in results), 4)
        record["volumes"] = len(results)
    return records


def run_steps_volumes(
    series: sitk.Image,
    steps: Sequence[Mapping[str, Any]],
    *,
    mask: sitk.Image | None = None,
    reference: sitk.Image | None = None,
    progress: ProgressCallback | None = None,
) -> SeriesResult:
    """Apply ``steps`` to every 3D volume of a 4D series (b-values, time frames), each
    independently with the same settings; the volumes stay apart (write them with
    :func:`primage.io.write_series` without joining a copy of the whole series)."""
    results = list(
        iter_steps_volumes(series, steps, mask=mask, reference=reference, progress=progress)
    )
    bias = [r.bias_field for r in results] if results[0].bias_field is not None else None
    return SeriesResult(
        [r.image for r in results],
        bias,
        series_records([r.records for r in results]),
        series.GetOrigin()[3],
        series.GetSpacing()[3],
    )


def run_steps_series(
    series: sitk.Image,
    steps: Sequence[Mapping[str, Any]],
    *,
    mask: sitk.Image | None = None,
    reference: sitk.Image | None = None,
    progress: ProgressCallback | None = None,
) -> PreprocessingResult:
    """Apply ``steps`` to every 3D volume of a 4D series (b-values, time frames).

    Each volume is processed independently with the same settings; the result is a 4D
    series on the (possibly resampled) grid. ``records`` are those of the first volume
    with ``seconds`` summed over all volumes and ``volumes`` added; ``bias_field`` is a
    4D series when the steps contain N4 (one field per volume).
    """
    return run_steps_volumes(
        series, steps, mask=mask, reference=reference, progress=progress
    ).joined()


def describe_steps() -> list[dict[str, Any]]:
    """The registry as plain data (for help texts and GUIs): name, summary, parameters."""
    described = []
    for spec in STEPS.values():
        params = {}
        for key, param in spec.params.items():
            params[key] = {
                "kind": param.kind,
                "default": None if param.required else param.default,
                "required": param.required,
                "nullable": param.nullable,
                **({"choices": list(param.choices)} if param.choices else {}),
                **({"help": param.help} if param.help else {}),
            }
        described.append(
            {
                "step": spec.name,
                "summary": spec.summary,
                "uses_mask": spec.uses_mask,
                "needs_reference": spec.needs_reference,
                "parameters": params,
            }
        )
    return described
