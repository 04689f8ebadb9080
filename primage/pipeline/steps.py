"""The steps of one case: preprocess -> register -> segment -> kinetics -> radiomics.

Each step turns the case's current state (:class:`CaseContext`: the latest image of every
role, the transforms, the tumour mask, the kinetic maps) into :class:`~primage.pipeline.units.Unit`
s that call the engine (``primage.preprocessing``, ``primage.registration``,
``primage.kinetics``, ``primage.radiomics``) and write into ``OUT/<case>/<step>/``. A step
updates the context from its units' outputs whether they were computed or up to date, so
the chain reads the same files either way. The ``figures`` step at the end draws the PNGs
of the report from the files the other steps wrote.

A unit's ``version`` is part of its content hash: bump it when the unit's code changes
what it writes, and every case recomputes that unit (and what depends on it) once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import (
    SeriesFile,
    read_frame_means,
    read_image,
    read_series_box,
    read_volume_grid,
    write_image,
    write_json,
    write_series,
)
from primage.pipeline.cohort import Case
from primage.pipeline.config import SERIES_4D, step_image_name
from primage.pipeline.units import FileHashes, Unit, UnitOutcome, run_unit

#: Code versions of the units (see the module docstring).
VERSIONS = {
    "preprocess": "1",
    "register": "2",
    "segment": "1",
    "kinetics": "2",
    "radiomics": "1",
    "figures": "1",
    "dicom": "1",
}


@dataclass
class CaseContext:
    """The state of one case as the chain runs (paths, never images, so it stays small)."""

    case: Case
    config: dict[str, Any]
    folder: Path
    hashes: FileHashes = field(default_factory=FileHashes)
    current: dict[str, Path] = field(default_factory=dict)
    transforms: dict[str, Path] = field(default_factory=dict)
    mask: Path | None = None
    maps: dict[str, Path] = field(default_factory=dict)
    # Every image the kinetics step wrote, by file stem (adc, adc_se, fcf_adc_habitats, ...).
    kinetic_images: dict[str, Path] = field(default_factory=dict)
    kinetics: dict[str, Path] = field(default_factory=dict)  # unit -> its JSON summary
    qc: dict[str, Path] = field(default_factory=dict)  # role -> registration QC JSON
    snapshots: dict[str, Path] = field(default_factory=dict)
    radiomics: dict[str, Path] = field(default_factory=dict)  # image -> features CSV
    figures: dict[str, Path] = field(default_factory=dict)
    dicom: dict[str, Any] = field(default_factory=dict)  # the dicom step's objects
    notes: list[str] = field(default_factory=list)
    threads: int = 1  # the case's threads (ITK's, and the kinetics fits')

    @property
    def reference(self) -> str:
        return self.config["reference"]

    def step_folder(self, step: str) -> Path:
        return self.folder / step


@dataclass
class StepOutcome:
    """The units of one step as run (or found up to date) and notes for a person."""

    units: list[UnitOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return "done" if any(u.state == "done" for u in self.units) else "up-to-date"


def anonymous(image: sitk.Image) -> sitk.Image:
    """``image`` without its metadata dictionary (file headers may carry names)."""
    for key in image.GetMetaDataKeys():
        image.EraseMetaData(key)
    return image


def _write(image: sitk.Image, path: Path) -> Path:
    return write_image(anonymous(image), path)


def _dimension(role: str) -> int:
    return 4 if role in SERIES_4D else 3


def _run(ctx: CaseContext, step: str, units: list[Unit], outcome: StepOutcome, progress) -> None:
    for index, unit in enumerate(units):
        progress(index / max(len(units), 1), f"{step}: {unit.name}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_unit(ctx.step_folder(step), unit, ctx.hashes)
        messages = list(dict.fromkeys(str(w.message) for w in caught))
        if messages:
            result.details.setdefault("warnings", messages[:5])
        outcome.units.append(result)


# --- preprocess ---------------------------------------------------------------------------


def step_preprocess(ctx: CaseContext, progress) -> StepOutcome:
    """Every series with a preset through :func:`primage.preprocessing.run_steps` (4D: per volume)."""
    from primage.preprocessing import iter_steps_volumes, load_preset, run_steps, series_records

    outcome = StepOutcome()
    presets = ctx.config["preprocess"]["presets"]
    units = []
    for role, path in sorted(ctx.current.items()):
        if role not in presets:
            outcome.notes.append(f"{role}: no preprocessing preset, used as it is")
            continue
        preset = load_preset(presets[role])

        def run(folder: Path, role=role, path=path, preset=preset):
            image = read_image(path, dimension=_dimension(role), role=role)
            target = folder / step_image_name(role)
            if image.GetDimension() == 4:
                volume_records = []

                def processed(image=image, records=volume_records):
                    # Each volume written as it is done: the series is never whole twice.
                    for result in iter_steps_volumes(image, preset["steps"]):
                        records.append(result.records)
                        yield anonymous(result.image)

                out = write_series(
                    processed(),
                    target,
                    time_origin=image.GetOrigin()[3],
                    time_spacing=image.GetSpacing()[3],
                )
                records = series_records(volume_records)
            else:
                result = run_steps(image, preset["steps"])
                records = result.records
                out = _write(result.image, target)
            record = write_json(
                {"preset": preset["name"], "source": preset["source"], "steps": records},
                folder / f"{role}.json",
            )
            return {"image": out, "record": record}, {
                "preset": preset["name"],
                "steps": [r["step"] for r in records],
            }

        units.append(
            Unit(
                role,
                {"image": path},
                {"preset": preset["steps"], "name": preset["name"]},
                VERSIONS["preprocess"],
                run,
            )
        )
    _run(ctx, "preprocess", units, outcome, progress)
    for unit in outcome.units:
        ctx.current[unit.name] = unit.outputs["image"]
    return outcome


# --- register -----------------------------------------------------------------------------


def representative_volume(series: SeriesFile, role: str, values: np.ndarray | None, config):
    """The 3D volume of a 4D series that is registered: DWI lowest b (or mean), DCE the
    mean of the first (pre-contrast) frames."""
    if role == "dwi":
        if config["dwi_volume"] == "mean":
            return _mean(series, series.count)
        lowest = values is not None and len(values) == series.count
        return series.volume(int(np.argmin(values)) if lowest else 0)
    return _mean(series, min(series.count, config["dce_baseline_frames"]))


def _mean(series: SeriesFile, count: int) -> sitk.Image:
    """Float32 mean of the first ``count`` volumes, summed in Float64 in frame order (as
    ``numpy.mean(..., axis=0, dtype=float64)`` sums them)."""
    first = series.volume(0)
    total = sitk.GetArrayFromImage(first).astype(np.float64)
    for index in range(1, count):
        volume = series.volume(index)  # referenced: the view does not keep it alive
        total += sitk.GetArrayViewFromImage(volume)
    total /= count
    image = sitk.GetImageFromArray(total.astype(np.float32))
    image.CopyInformation(first)
    return image


def _index_values(ctx: CaseContext, role: str) -> np.ndarray | None:
    from primage.kinetics.values import parse_values

    path = ctx.case.values.get(role)
    if path is None:
        return None
    return parse_values(path, role="b-values" if role == "dwi" else "frame times")


def alignment_mode(ctx: CaseContext, role: str, preset: str) -> tuple[str, str]:
    """What the register step does with ``role``: ``(mode, why)``, mode one of
    ``register``, ``resample``, ``refine`` (see ``register.same_frame_of_reference``).
    The outcome, ``alignment`` in the QC JSON, is ``registered``, ``resampled`` or
    ``refined`` (a rejected refinement is ``resampled``)."""
    reference = ctx.reference
    same = ctx.case.same_frame_of_reference(role, reference)
    if preset == "none":
        return "resample", "registration preset none: resampled only"
    if same:
        mode = ctx.config["register"]["same_frame_of_reference"]
        if isinstance(mode, dict):  # per role; roles not listed are resampled
            mode = mode.get(role, "resample")
        why = {
            "resample": f"same frame of reference as {reference}: resampled only",
            "refine": f"same frame of reference as {reference}: rigid refinement",
            "register": f"same frame of reference as {reference}, registered with {preset} "
            "(same_frame_of_reference: register)",
        }[mode]
        return mode, why
    if same is None:
        return "register", f"frame of reference unknown: registered with {preset}"
    return "register", f"other frame of reference than {reference}: registered with {preset}"


def _carriers(ctx: CaseContext, modes: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Series to be aligned by another's registration: role -> the registered role in its
    frame of reference (a CT before the others, then by name); only series that would
    otherwise be registered themselves, and only from series that are."""
    registered = [role for role, (mode, _) in modes.items() if mode == "register"]
    registered.sort(key=lambda role: (role != "ct", role))
    carriers: dict[str, str] = {}
    anchors: list[str] = []  # registered with their own presets
    for role in registered:
        carrier = next((a for a in anchors if ctx.case.same_frame_of_reference(role, a)), None)
        if carrier is None:
            anchors.append(role)
        else:
            carriers[role] = carrier
    return carriers


def refinement_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A rigid refinement from the headers' alignment: one rigid stage with the preset's
    metric and histogram bins and the default pyramid, which ends at full resolution (a
    preset's rigid stage may stop earlier and leave the detail to its affine stage); no
    centre-of-mass start. :func:`_refine` decides whether the result is kept."""
    rigid = next((s for s in settings["stages"] if s["stage"] == "rigid"), {})
    stage = {"stage": "rigid"}
    stage.update({k: rigid[k] for k in ("metric", "histogram_bins") if k in rigid})
    return {**settings, "initialisation": "none", "stages": [stage]}


def displacement_mm(
    transform: sitk.Transform, fixed: sitk.Image, mask: sitk.Image | None = None
) -> dict[str, Any]:
    """How far ``transform`` moves points from the headers' alignment (mm): mean and
    maximum over the voxel centres of ``mask`` (e.g. the reference tumour, on any grid),
    or over a 4-fold coarser copy of the ``fixed`` grid without one."""
    from primage.registration.truth import transform_error

    identity = sitk.Transform(3, sitk.sitkIdentity)
    if mask is not None:
        # The tumour's voxels on its own grid (physical points: no resampling needed),
        # only its bounding box: a 1 mm CT grid would cost a 100 MB displacement field.
        region = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
        inside = np.argwhere(sitk.GetArrayViewFromImage(region) > 0)
        if inside.size == 0:
            raise PrimageInputError("the tumour mask is empty")
        low, high = inside.min(axis=0)[::-1], inside.max(axis=0)[::-1]
        region = sitk.RegionOfInterest(region, (high - low + 1).tolist(), low.tolist())
        grid, over = region, "tumour"
    else:
        grid = sitk.Image([max(1, n // 4) for n in fixed.GetSize()], sitk.sitkUInt8)
        grid.SetSpacing([s * 4 for s in fixed.GetSpacing()])
        grid.SetOrigin(fixed.GetOrigin())
        grid.SetDirection(fixed.GetDirection())
        region, over = None, "image"
    error = transform_error(transform, identity, grid, region)
    return {"mean": round(error["mean_mm"], 4), "max": round(error["max_mm"], 4), "over": over}


def _refine(fixed, moving, settings, masks, use_masks, bound_mm, why):
    """Rigid refinement from the headers' alignment, kept only when the registration's
    own check kept it (better than the start on fresh samples) and when it is better by
    measures the optimiser did not see: mutual information on a dense histogram (every
    voxel of the overlap, or of the dilated reference tumour when masks are used) must
    rise, the Dice of the tumour masks (both given) must not fall by more than 0.01, and
    the reference tumour (or image) must move at most ``bound_mm`` on average. Otherwise
    the identity. Returns (transform, alignment, why, record)."""
    from primage.registration import register_images
    from primage.registration.core import dilate_mask
    from primage.registration.qc import dice, propagate_mask, similarity

    identity = sitk.Transform(3, sitk.sitkIdentity)
    fixed_mask, moving_mask = masks.get("fixed_mask"), masks.get("moving_mask")
    result = register_images(
        fixed,
        moving,
        refinement_settings(settings),
        fixed_mask=fixed_mask if use_masks else None,
        moving_mask=moving_mask if use_masks else None,
    )
    refined = result.transform
    if result.kept_start:
        record = {"stages": result.stages, "seconds": result.seconds}
        record["refinement"] = {"kept": False, "acceptance": result.acceptance}
        reason = result.acceptance.get("reason", "not better than the start")
        return identity, "resampled", f"{why} rejected ({reason}): resampled only", record
    region = None
    if use_masks:
        from primage.io import mask_on_image_grid

        region = dilate_mask(
            mask_on_image_grid(fixed_mask, fixed, role="fixed mask"), settings["mask_dilation_mm"]
        )
    before = similarity(fixed, moving, identity, region)["mutual_information"]
    after = similarity(fixed, moving, refined, region)["mutual_information"]
    moved = displacement_mm(refined, fixed, fixed_mask)
    check: dict[str, Any] = {
        "mutual_information_before": before,
        "mutual_information_after": after,
        "metric_region": "dilated tumour" if region is not None else "overlap",
        "displacement_mm": moved,
        "bound_mm": bound_mm,
    }
    problems = []
    if before is None or after is None or after <= before:
        problems.append(f"mutual information not better ({before} -> {after} nats)")
    if fixed_mask is not None and moving_mask is not None:
        fixed_binary = propagate_mask(fixed_mask, fixed, identity)
        check["dice_before"] = round(
            dice(fixed_binary, propagate_mask(moving_mask, fixed, identity)), 4
        )
        check["dice_after"] = round(
            dice(fixed_binary, propagate_mask(moving_mask, fixed, refined)), 4
        )
        if check["dice_after"] < check["dice_before"] - 0.01:
            problems.append(f"Dice worse ({check['dice_before']} -> {check['dice_after']})")
    if moved["mean"] > bound_mm:
        problems.append(
            f"moved the {moved['over']} {moved['mean']:.2f} mm, more than refine_max_mm {bound_mm:g}"
        )
    check["kept"] = not problems
    check["acceptance"] = result.acceptance
    record = {"stages": result.stages, "seconds": result.seconds, "refinement": check}
    if problems:
        return (
            identity,
            "resampled",
            f"{why} rejected ({'; '.join(problems)}): resampled only",
            record,
        )
    why += f" kept (MI {before} -> {after} nats, moved {moved['mean']:.2f} mm)"
    return refined, "refined", why, record


def step_register(ctx: CaseContext, progress) -> StepOutcome:
    """Every series onto the reference (:func:`primage.registration.register_images`),
    with the QC of :func:`primage.registration.qc.quality_control` and its snapshots.

    A series sharing the reference's frame of reference is resampled only (or refined,
    or registered: ``register.same_frame_of_reference``); see :func:`alignment_mode`.
    """
    from primage.registration import register_images, resample_to_fixed, settings_for
    from primage.registration.core import read_transform, write_transform
    from primage.registration.qc import quality_control, write_snapshots

    outcome = StepOutcome()
    options = ctx.config["register"]
    reference = ctx.reference
    fixed_path = ctx.current[reference]
    # The tumour on the reference: tumour.* or tumour_<reference role>.*
    reference_mask = ctx.case.masks.get("reference") or ctx.case.masks.get(reference)
    units = []
    modes = {}
    for role in sorted(ctx.current):
        preset = options["presets"].get(role)
        if role != reference and preset is not None:
            modes[role] = alignment_mode(ctx, role, preset)
    carriers = _carriers(ctx, modes) if options["follow_frame_of_reference"] else {}
    # A series that carries another's transform is registered first.
    order = sorted(ctx.current.items(), key=lambda item: (item[0] in carriers, item[0]))
    for role, path in order:
        if role == reference:
            continue
        preset = options["presets"].get(role)
        if preset is None:
            outcome.notes.append(f"{role}: no registration preset, not used after registration")
            continue
        settings = settings_for(preset, options["stages"].get(role)) if preset != "none" else None
        mode, why = modes[role]
        moving_mask = ctx.case.masks.get(role)
        inputs = {"fixed": fixed_path, "moving": path}
        if role in carriers:
            mode = "follow"
            why = (
                f"same frame of reference as {carriers[role]}, which is registered: "
                f"{carriers[role]}'s transform to {reference} is used"
            )
            inputs["carrier_transform"] = (
                ctx.step_folder("register") / f"{carriers[role]}_to_{reference}.tfm"
            )
        if role in ctx.case.values:
            inputs["values"] = ctx.case.values[role]
        if reference_mask is not None:
            inputs["fixed_mask"] = reference_mask
            if moving_mask is not None:
                inputs["moving_mask"] = moving_mask

        def run(
            folder: Path,
            role=role,
            path=path,
            preset=preset,
            settings=settings,
            inputs=inputs,
            mode=mode,
            why=why,
        ):
            fixed = read_image(fixed_path, role=reference)
            if _dimension(role) == 4:  # read volume by volume, never whole
                series = SeriesFile(path, role=role)
                moving = representative_volume(series, role, _index_values(ctx, role), options)
            else:
                series = moving = read_image(path, role=role)
            masks = {
                key: read_image(inputs[key], role=key.replace("_", " "))
                for key in ("fixed_mask", "moving_mask")
                if key in inputs
            }
            use_masks = options["use_masks"] and len(masks) == 2
            thresholds = settings["qc"] if settings is not None else None
            record: dict[str, Any] = {"preset": preset, "mode": mode}
            acceptance = None  # the registration's own "never worse" check, when it ran
            if mode == "resample":
                transform, alignment = sitk.Transform(3, sitk.sitkIdentity), "resampled"
            elif mode == "follow":
                transform, alignment = read_transform(inputs["carrier_transform"]), "followed"
            elif mode == "refine":
                transform, alignment, why, extra = _refine(
                    fixed, moving, settings, masks, use_masks, options["refine_max_mm"], why
                )
                record.update(extra)
            else:
                result = register_images(
                    fixed,
                    moving,
                    settings,
                    fixed_mask=masks.get("fixed_mask") if use_masks else None,
                    moving_mask=masks.get("moving_mask") if use_masks else None,
                )
                transform, alignment = result.transform, "registered"
                record.update(stages=result.stages, seconds=result.seconds)
                acceptance = result.acceptance
                if result.kept_start:
                    start = result.initialisation.get("method", "start")
                    why += f"; optimisation not better than its start ({start}), start kept"
            qc = quality_control(
                fixed,
                moving,
                transform,
                fixed_mask=masks.get("fixed_mask") if "moving_mask" in masks else None,
                moving_mask=masks.get("moving_mask"),
                thresholds=thresholds,
                masks_used=use_masks,
                acceptance=acceptance,
            )
            qc["alignment"], qc["alignment_reason"] = alignment, why
            qc["displacement_mm"] = displacement_mm(transform, fixed, masks.get("fixed_mask"))
            # ITK text format: HDF5 files carry a write time, so the same transform would
            # hash differently on every run and needlessly rerun what reads it.
            outputs = {"transform": folder / f"{role}_to_{reference}.tfm"}
            write_transform(transform, outputs["transform"])
            if isinstance(series, SeriesFile):
                # Linear, not B-spline: cubic overshoot can make a DWI/DCE signal negative,
                # and negative signals cannot be fitted.
                # Frame by frame, each written as it is resampled: never the whole
                # resampled series (1 GB for a clinical DCE) in memory.
                volumes = (
                    resample_to_fixed(v, fixed, transform, interpolation="linear")
                    for v in series.volumes()
                )
                outputs["image"] = write_series(
                    volumes,
                    folder / step_image_name(role),
                    time_origin=series.time_origin,
                    time_spacing=series.time_spacing,
                )
            else:
                registered = resample_to_fixed(series, fixed, transform)
                outputs["image"] = _write(registered, folder / step_image_name(role))
            if options["snapshots"]:
                written = write_snapshots(
                    fixed,
                    moving,
                    transform,
                    folder / f"{role}_qc",
                    fixed_mask=masks.get("fixed_mask"),
                )
                outputs.update({kind: folder / name for kind, name in written.items()})
            outputs["qc"] = write_json({**qc, "registration": record}, folder / f"{role}_qc.json")
            after = qc["metric_after"]
            return outputs, {
                "preset": preset,
                "alignment": alignment,
                "alignment_reason": why,
                "displacement_mm": qc["displacement_mm"]["mean"],
                "verdict": qc["verdict"],
                "reason": qc["reason"],
                "mutual_information": after.get("mutual_information"),
                "dice": qc.get("dice_after"),
            }

        # Only the options this role uses: another role's setting must not rerun it.
        used = {"use_masks": options["use_masks"], "snapshots": options["snapshots"]}
        if role == "dwi":
            used["dwi_volume"] = options["dwi_volume"]
        elif role == "dce":
            used["dce_baseline_frames"] = options["dce_baseline_frames"]
        # The frame-of-reference decision comes from case.json, not from an input file.
        used["mode"] = mode
        if mode == "refine":
            used["refine_max_mm"] = options["refine_max_mm"]
        units.append(
            Unit(
                role,
                inputs,
                {"preset": preset, "settings": settings, "options": used},
                VERSIONS["register"],
                run,
            )
        )
    _run(ctx, "register", units, outcome, progress)
    registered = {unit.name for unit in outcome.units}
    for role in [r for r in ctx.current if r != reference and r not in registered]:
        del ctx.current[role]
    for unit in outcome.units:
        ctx.current[unit.name] = unit.outputs["image"]
        ctx.transforms[unit.name] = unit.outputs["transform"]
        ctx.qc[unit.name] = unit.outputs["qc"]
        for kind in ("fusion_after", "checkerboard_after", "fusion_before"):
            if kind in unit.outputs:
                ctx.snapshots[f"{unit.name}_{kind}"] = unit.outputs[kind]
        if unit.details.get("alignment_reason"):
            outcome.notes.append(f"{unit.name}: {unit.details['alignment_reason']}")
        if unit.details.get("verdict") == "review":
            outcome.notes.append(
                f"{unit.name}: registration needs review ({unit.details['reason']})"
            )
    return outcome


# --- segment ------------------------------------------------------------------------------


def step_segment(ctx: CaseContext, progress) -> StepOutcome:
    """The tumour mask on the reference grid by the configured segmenter
    (:mod:`primage.pipeline.segmenters`)."""
    from primage.pipeline.segmenters import SEGMENTERS, SegmentationRequest

    outcome = StepOutcome()
    method = ctx.config["segment"]["method"]
    segmenter = SEGMENTERS[method]
    reference_path = ctx.current[ctx.reference]
    masks = dict(ctx.case.masks)
    inputs = {"reference": reference_path}
    inputs.update({f"mask_{role}": path for role, path in masks.items()})
    inputs.update(
        {f"transform_{role}": ctx.transforms[role] for role in masks if role in ctx.transforms}
    )
    options = dict(ctx.config["segment"])
    case = ctx.case
    reference_frame = case.frames_of_reference.get(ctx.reference)
    same_frame = frozenset(
        role
        for role in masks
        if reference_frame is not None
        and (case.mask_frames_of_reference.get(role) or case.frames_of_reference.get(role))
        == reference_frame
    )
    if method == "model":
        # The model's files are inputs: retraining the model reruns the segmentation.
        model_folder = Path(options["model"])
        inputs.update(
            {
                f"model_{path.relative_to(model_folder)}": path
                for path in sorted(model_folder.rglob("*"))
                if path.is_file()
            }
        )

    def run(folder: Path):
        reference = read_image(reference_path, role=ctx.reference)
        request = SegmentationRequest(
            reference,
            ctx.reference,
            masks,
            {role: ctx.transforms[role] for role in masks if role in ctx.transforms},
            dict(ctx.current),
            options,
            same_frame,
        )
        mask = segmenter.function(request)
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        volume_ml = voxels * float(np.prod(mask.GetSpacing())) / 1000.0
        out = _write(sitk.Cast(mask, sitk.sitkUInt8), folder / "tumour.nii.gz")
        return {"mask": out}, {"voxels": voxels, "volume_ml": round(volume_ml, 4), "method": method}

    unit = Unit(
        "tumour",
        inputs,
        {
            "method": method,
            "segmenter": segmenter.version,
            "same_frame": sorted(same_frame),
            **(
                {"device": options["device"], "postprocess": options["postprocess"]}
                if method == "model"
                else {}
            ),
        },
        VERSIONS["segment"],
        run,
    )
    _run(ctx, "segment", [unit], outcome, progress)
    ctx.mask = outcome.units[0].outputs["mask"]
    return outcome


# --- kinetics -----------------------------------------------------------------------------


def _tumour_values(image: sitk.Image, tumour: np.ndarray) -> np.ndarray:
    values = sitk.GetArrayFromImage(image)[tumour].astype(float)
    # Maps hold 0 where no fit was possible: such voxels are not values.
    return values[values != 0]


@dataclass
class _Cropped:
    """A 4D series cut to the bounding box of its fitted region, with the tumour and the
    region on the cut grid; :meth:`save` writes a 3D result pasted onto the full grid."""

    series: sitk.Image
    tumour: sitk.Image
    region: sitk.Image
    inside: np.ndarray  # (z, y, x) bool, the tumour on the cut grid
    grid: sitk.Image  # the full 3D grid of the series
    low: tuple[int, int, int]  # (x, y, z) index of the box on the full grid
    baseline_frames: int | None = None

    def save(self, image: sitk.Image, path: Path) -> Path:
        array = sitk.GetArrayViewFromImage(image)
        full = np.zeros(sitk.GetArrayViewFromImage(self.grid).shape, array.dtype)
        x, y, z = self.low
        full[z : z + array.shape[0], y : y + array.shape[1], x : x + array.shape[2]] = array
        pasted = sitk.GetImageFromArray(full)
        pasted.CopyInformation(self.grid)
        return _write(pasted, path)


def _read_region(path: Path, role: str, tumour: sitk.Image, margin_mm: float) -> _Cropped:
    """The series of ``path`` inside the box of the tumour grown by ``margin_mm``: only that
    box is read (streamed from an uncompressed file), with the tumour and region cut alike."""
    from primage.registration.core import dilate_mask

    grid = read_volume_grid(path, role=role)
    tumour = sitk.Resample(
        sitk.Cast(tumour != 0, sitk.sitkUInt8), grid, sitk.Transform(),
        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8,
    )  # fmt: skip
    region = dilate_mask(tumour, margin_mm)
    inside = np.argwhere(sitk.GetArrayViewFromImage(region) > 0)
    if inside.size == 0:
        raise PrimageInputError("the tumour mask is empty on the series grid")
    low = inside.min(axis=0)[::-1].tolist()
    size = (inside.max(axis=0)[::-1] + 1 - inside.min(axis=0)[::-1]).tolist()
    cut = read_series_box(path, low, size, role=role)
    tumour = sitk.RegionOfInterest(tumour, size, low)
    region = sitk.RegionOfInterest(region, size, low)
    return _Cropped(cut, tumour, region, sitk.GetArrayFromImage(tumour) > 0, grid, tuple(low))


def _kinetics_units(ctx: CaseContext) -> tuple[list[Unit], list[str]]:
    from primage.kinetics import (
        adc_maps,
        dce_maps,
        fcf_maps,
        fit_adc,
        roi_statistics,
        tofts_maps,
    )
    from primage.kinetics.dce import check_frame_times, concentration_image, mean_curve_arrival

    options = ctx.config["kinetics"]
    notes: list[str] = []
    units: list[Unit] = []
    mask_path = ctx.mask

    # Each 4D series is read once per step and cut to the box of the fitted region (tumour
    # grown by margin_mm): every unit of a role fits only there, and a 60-frame DCE on the
    # reference grid is a gigabyte. Maps are pasted back onto the full grid (0 outside).
    prepared: dict[str, _Cropped] = {}

    def prepare(role: str, path: Path) -> _Cropped:
        if role not in prepared:
            tumour = read_image(mask_path, role="tumour mask")
            prepared[role] = _read_region(path, role, tumour, options["margin_mm"])
            if role == "dce" and options["tofts"]["enabled"]:
                # The concentration's baseline frames come from the whole series' mean
                # curve, as on the uncut series (streamed: the series is never whole).
                times = check_frame_times(
                    _index_values(ctx, role), prepared[role].series.GetSize()[3]
                )
                arrival = mean_curve_arrival(read_frame_means(path, role=role), times)
                prepared[role].baseline_frames = int(np.count_nonzero(times <= arrival + 1e-9))
        return prepared[role]

    def add(name: str, role: str, settings: dict, work: Callable) -> None:
        if role not in ctx.current:
            notes.append(f"{name}: no {role} series, skipped")
            return
        if role not in ctx.case.values:
            raise PrimageInputError(
                f"the {role} series has no {SERIES_4D[role]} ({'b-values' if role == 'dwi' else 'frame times'})"
            )
        inputs = {"series": ctx.current[role], "values": ctx.case.values[role], "mask": mask_path}

        def run(folder: Path, role=role, inputs=inputs):
            cut = prepare(role, inputs["series"])
            values = _index_values(ctx, role)
            return work(folder, cut.save, cut.series, values, cut.tumour, cut.region, cut.inside)

        units.append(Unit(name, inputs, settings, VERSIONS["kinetics"], run))

    if options["adc"]["enabled"]:

        def adc(folder, save, series, b, tumour, region, inside):
            result = adc_maps(series, b, region, method=options["adc"]["method"])
            outputs = {
                n: save(result.maps[n], folder / f"{n}.nii.gz") for n in ("adc", "adc_se", "r2")
            }
            signal = sitk.GetArrayFromImage(series)  # (b, z, y, x)
            mean = signal[:, inside].mean(axis=1)
            fit = fit_adc(mean[None, :], b, method=options["adc"]["method"])
            b_fit = np.linspace(0.0, float(np.max(b)), 50)
            summary = {
                "tumour": {"adc": roi_statistics(_tumour_values(result.maps["adc"], inside))},
                "tumour_mean_signal_fit": {
                    "adc": float(fit.adc[0]),
                    "adc_se": float(fit.adc_se[0]),
                },
                "curve": {"x": b, "y": mean, "x_fit": b_fit, "fit": fit.predict(b_fit)[0]},
                "units": result.summary["maps"],
                "summary": result.summary,
            }
            outputs["summary"] = write_json(summary, folder / "adc.json")
            return outputs, {"tumour_adc_median": summary["tumour"]["adc"].get("median")}

        add("adc", "dwi", dict(options["adc"], margin_mm=options["margin_mm"]), adc)

    if options["dce"]["enabled"]:

        def dce(folder, save, series, times, tumour, region, inside):
            result = dce_maps(series, times, region)
            outputs = {n: save(image, folder / f"{n}.nii.gz") for n, image in result.maps.items()}
            signal = sitk.GetArrayFromImage(series)[:, inside].mean(axis=1)
            frames = result.summary["baseline_frames"]
            summary = {
                "tumour": {
                    n: roi_statistics(_tumour_values(result.maps[n], inside))
                    for n in result.summary["units"]
                    if n in result.maps
                },
                "curve": {"x": times, "y": signal / signal[:frames].mean() - 1.0},
                "units": result.summary["units"],
                "summary": result.summary,
            }
            outputs["summary"] = write_json(summary, folder / "dce.json")
            return outputs, {"tumour_iauc60_median": summary["tumour"]["iauc60"].get("median")}

        add("dce", "dce", dict(options["dce"], margin_mm=options["margin_mm"]), dce)

    fcf_options = options["fcf"]
    for parameter, role in (("adc", "dwi"), ("iauc60", "dce")):
        if not fcf_options[parameter]:
            continue

        def fcf(folder, save, series, values, tumour, region, inside, parameter=parameter):
            result = fcf_maps(
                series,
                values,
                tumour,
                parameter=parameter,
                clusters=fcf_options["clusters"],
                confidence=fcf_options["confidence"],
            )
            name = f"fcf_{parameter}"
            outputs = {
                "habitats": save(result.habitats, folder / f"{name}_habitats.nii.gz"),
                "confidence": save(result.confidence, folder / f"{name}_confidence.nii.gz"),
            }
            record = result.result.record()
            record["curves"] = [
                {"label": h.label, "x": h.x, "y": h.signal, "x_fit": h.x_fit, "fit": h.fit}
                for h in result.result.habitats
            ]
            outputs["summary"] = write_json(record, folder / f"{name}.json")
            return outputs, {"habitats": [h["value"] for h in record["habitats"]]}

        add(f"fcf_{parameter}", role, dict(fcf_options, parameter=parameter), fcf)

    tofts_options = options["tofts"]
    if tofts_options["enabled"]:
        acquisition = dict(tofts_options)
        for key in ("t10_s", "flip_angle_deg", "repetition_time_s", "relaxivity"):
            if key in ctx.case.acquisition:
                acquisition[key] = float(ctx.case.acquisition[key])

        def tofts(folder, save, series, times, tumour, region, inside):
            concentration, _ = concentration_image(
                series,
                times,
                t10_s=acquisition["t10_s"],
                flip_angle_deg=acquisition["flip_angle_deg"],
                repetition_time_s=acquisition["repetition_time_s"],
                relaxivity=acquisition["relaxivity"],
                baseline_frames=prepared["dce"].baseline_frames,
            )
            result = tofts_maps(
                concentration, times, "parker", region, extended=acquisition["extended"]
            )
            outputs = {n: save(image, folder / f"{n}.nii.gz") for n, image in result.maps.items()}
            mean = sitk.GetArrayFromImage(concentration)[:, inside].mean(axis=1)
            summary = {
                "tumour": {
                    n: roi_statistics(_tumour_values(result.maps[n], inside))
                    for n in ("ktrans", "kep", "ve", "vp")
                    if n in result.maps
                },
                "curve": {"x": times, "y": mean},
                "acquisition": acquisition,
                "summary": result.summary,
            }
            outputs["summary"] = write_json(summary, folder / "tofts.json")
            return outputs, {"tumour_ktrans_median": summary["tumour"]["ktrans"].get("median")}

        add("tofts", "dce", acquisition, tofts)
    return units, notes


def step_kinetics(ctx: CaseContext, progress) -> StepOutcome:
    """ADC, semi-quantitative DCE, Fit-Cluster-Fit and (optionally) Tofts maps in the tumour
    region, with tumour ROI values (:mod:`primage.kinetics`)."""
    if ctx.mask is None:
        raise PrimageInputError(
            "kinetics needs a tumour mask: run the segment step or give tumour.nii.gz"
        )
    from primage.kinetics.series import fit_threads

    units, notes = _kinetics_units(ctx)
    outcome = StepOutcome(notes=notes)
    with fit_threads(ctx.threads):
        _run(ctx, "kinetics", units, outcome, progress)
    for unit in outcome.units:
        ctx.kinetics[unit.name] = unit.outputs["summary"]
        for path in unit.outputs.values():
            if Path(path).name.endswith(".nii.gz"):
                ctx.kinetic_images[Path(path).name[: -len(".nii.gz")]] = Path(path)
        for name in ("adc", "iauc60", "ktrans", "ve", "kep", "habitats"):
            if name in unit.outputs:
                key = f"{unit.name}_habitats" if name == "habitats" else name
                ctx.maps[key] = unit.outputs[name]
    return outcome


# --- radiomics ----------------------------------------------------------------------------


def step_radiomics(ctx: CaseContext, progress) -> StepOutcome:
    """pyradiomics features of the tumour on each configured series and map
    (:func:`primage.radiomics.extraction.extract`, one image per unit)."""
    from primage.pipeline.config import radiomics_parameters
    from primage.radiomics.extraction import extract, result_rows
    from primage.radiomics.tables import write_csv

    if ctx.mask is None:
        raise PrimageInputError(
            "radiomics needs a tumour mask: run the segment step or give tumour.nii.gz"
        )
    outcome = StepOutcome()
    parameters = radiomics_parameters(ctx.config)
    units = []
    for name in ctx.config["radiomics"]["images"]:
        path = ctx.current.get(name) or ctx.maps.get(name)
        if path is None:
            outcome.notes.append(f"radiomics: no {name}, skipped")
            continue
        if name in SERIES_4D:
            outcome.notes.append(f"radiomics: {name} is a 4D series; measure its maps instead")
            continue
        modality = parameters.modality_of(name)
        params = parameters.for_modality(modality)

        def run(folder: Path, name=name, path=path):
            results = extract(
                {name: str(path)}, str(ctx.mask), labels=[1], parameters=parameters, workers=1
            )
            rows, diagnostics = result_rows(results, region_column="label", diagnostics="separate")
            out = write_csv(rows, folder / f"{name}.csv")
            extra = write_csv(diagnostics, folder / f"{name}.diagnostics.csv")
            error = results[0].error
            return {"features": out, "diagnostics": extra}, {
                "features": len(results[0].features),
                "error": error,
            }

        units.append(
            Unit(
                name,
                {"image": path, "mask": ctx.mask},
                {"params": params, "modality": modality},
                VERSIONS["radiomics"],
                run,
            )
        )
    _run(ctx, "radiomics", units, outcome, progress)
    for unit in outcome.units:
        ctx.radiomics[unit.name] = unit.outputs["features"]
        if unit.details.get("error"):
            outcome.notes.append(f"radiomics {unit.name}: {unit.details['error']}")
    return outcome


# --- figures ------------------------------------------------------------------------------


def step_figures(ctx: CaseContext, progress) -> StepOutcome:
    """The report's PNGs of this case (:mod:`primage.pipeline.figures`)."""
    from primage.pipeline import figures

    outcome = StepOutcome()
    reference = ctx.current.get(ctx.reference)
    if reference is None:
        return outcome
    inputs = {"reference": reference}
    if ctx.mask is not None:
        inputs["mask"] = ctx.mask
    for name in ("adc", "iauc60", "ktrans", "fcf_adc_habitats"):
        if name in ctx.maps:
            inputs[name] = ctx.maps[name]
    inputs.update({f"summary_{k}": v for k, v in ctx.kinetics.items()})

    def run(folder: Path):
        return figures.case_figures(folder, inputs), {}

    unit = Unit("figures", inputs, {}, VERSIONS["figures"], run)
    _run(ctx, "figures", [unit], outcome, progress)
    ctx.figures = dict(outcome.units[0].outputs)
    return outcome


# --- dicom -------------------------------------------------------------------------------

#: DICOM SEG algorithm type of the tumour by segmentation method (a given mask's origin is
#: not known: SEMIAUTOMATIC, as ``primage dicom export``).
TUMOUR_ALGORITHMS = {"given": "SEMIAUTOMATIC", "model": "AUTOMATIC"}


def step_dicom(ctx: CaseContext, progress) -> StepOutcome:
    """The case's results as DICOM SEG, Parametric Maps and a TID 1500 SR in ``dicom/``
    (:func:`primage.dicom.export.export_results`), referencing the reference role's source
    series (:mod:`primage.pipeline.dicom_out`); only results on that series' grid."""
    import tempfile

    from primage.dicom.export import MAPS, export_results, read_source_files
    from primage.pipeline import dicom_out

    export = ctx.config["export"]
    outcome = StepOutcome()
    source = dicom_out.find_source(ctx.case, ctx.reference, export)
    grid = read_source_files(source.files, series_uid=source.series_uid).reference
    wanted = set(MAPS) if export["maps"] == "all" else set(export["maps"])
    images: dict[str, Path] = {}
    if ctx.mask is not None:
        images["tumour"] = ctx.mask
    for name, path in sorted(ctx.kinetic_images.items()):
        if name.endswith("_habitats") or name in wanted:
            images[name] = path
    if not images:
        raise PrimageInputError(
            "export.dicom: the case has no results to export (tumour mask, kinetic maps)"
        )
    kept, refused = dicom_out.on_grid(images, grid)
    if not kept:
        raise PrimageInputError(
            f"export.dicom: no result is on the grid of the {ctx.reference} source series: "
            f"{refused[0]} (a {ctx.reference} preprocessing preset that resamples moves them; "
            "nothing is interpolated)"
        )
    tumour = kept.pop("tumour", None)
    habitats = {n: p for n, p in kept.items() if n.endswith("_habitats")}
    maps = {n: p for n, p in kept.items() if n not in habitats}
    features = dict(sorted(ctx.radiomics.items())) if tumour is not None else {}
    inputs: dict[str, Path] = {}
    if tumour is not None:
        inputs["tumour"] = tumour
    inputs.update({f"map_{n}": p for n, p in maps.items()})
    for name, path in habitats.items():
        inputs[f"habitats_{name}"] = path
        table = path.with_name(name.removesuffix("_habitats") + ".json")
        if table.is_file():
            inputs[f"habitat_values_{name}"] = table
    inputs.update({f"features_{n}": p for n, p in features.items()})
    # By number, not by name: DICOM file and folder names may hold a patient's name.
    inputs.update({f"source_{i:05d}": p for i, p in enumerate(source.files)})
    algorithm = TUMOUR_ALGORITHMS.get(ctx.config["segment"]["method"], "SEMIAUTOMATIC")
    if "segment" not in ctx.config["steps"]:
        algorithm = "SEMIAUTOMATIC"

    def run(folder: Path):
        # A rerun replaces the objects: new results must not sit beside stale ones.
        for old in folder.glob("*.dcm"):
            if old.name.split("_", 1)[0] in ("seg", "pm", "sr"):
                old.unlink()
        with tempfile.TemporaryDirectory(prefix="primage-dicom-source-") as staging:
            result = export_results(
                dicom_out.staged_source(source.files, Path(staging)),
                folder,
                pseudonym=ctx.case.case_id,
                series_uid=source.series_uid,
                tumour=tumour,
                tumour_algorithm=algorithm,
                habitats=list(habitats.values()),
                maps=maps,
                features=list(features.values()),
                deflate=export["deflate"],
            )
        outputs = {f"{o.kind}_{o.name}": o.path for o in result.objects}
        outputs["manifest"] = result.manifest
        return outputs, {
            "objects": [o.path.name for o in result.objects],
            "measurements": result.measurements,
            "series": ctx.reference,
            "not_exported": refused,
        }

    unit = Unit(
        "export",
        inputs,
        {
            "pseudonym": ctx.case.case_id,
            "tumour_algorithm": algorithm,
            "maps": sorted(maps),
            "deflate": export["deflate"],
        },
        VERSIONS["dicom"],
        run,
    )
    _run(ctx, "dicom", [unit], outcome, progress)
    details = outcome.units[0].details
    outcome.notes.append(
        f"dicom: {len(details['objects'])} objects referencing the {ctx.reference} series"
    )
    outcome.notes.extend(f"dicom: not exported: {reason}" for reason in details["not_exported"])
    ctx.dicom = dict(details)
    return outcome


#: The step functions by name (``figures`` runs after the configured steps and is not
#: configurable; ``dicom`` after it when ``export.dicom`` is on).
STEPS: dict[str, Callable[[CaseContext, Any], StepOutcome]] = {
    "preprocess": step_preprocess,
    "register": step_register,
    "segment": step_segment,
    "kinetics": step_kinetics,
    "radiomics": step_radiomics,
    "figures": step_figures,
    "dicom": step_dicom,
}
