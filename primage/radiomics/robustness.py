"""Feature robustness: ICC(2,1) of every feature over cases x repeated segmentations.

The repetitions of a case are either its observers' masks (two radiologists segmenting
the same tumour) or the tool's perturbations of one mask (:func:`extraction.perturb`:
erosion or dilation by a voxel, a one-voxel translation, added noise), the unperturbed
mask being the first repetition. Every non-zero voxel of a mask belongs to the tumour.
An ICC needs several subjects: fewer than three cases is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from primage.errors import PrimageInputError
from primage.io import image_stem
from primage.progress import ProgressCallback
from primage.radiomics.extraction import (
    PERTURBATIONS,
    ImageSource,
    Result,
    Task,
    run_tasks,
)
from primage.radiomics.icc import icc_2_1, icc_class
from primage.radiomics.params import ParameterSet, load_params

MIN_CASES = 3
#: Columns of the ICC table.
ICC_COLUMNS = ("feature", "icc", "ci_low", "ci_high", "class")


@dataclass
class Case:
    """One subject: an image and one mask per observer (one mask with perturbations).

    ``modality`` chooses the preset's per-modality settings; without it the image file
    name decides (``ct.nii.gz`` is CT), as for extraction.
    """

    name: str
    image: ImageSource
    masks: list[ImageSource] = field(default_factory=list)
    modality: str | None = None

    @property
    def image_name(self) -> str:
        if isinstance(self.image, (str, os.PathLike)):
            return image_stem(self.image)
        return self.name


def parse_perturbations(text: str | Sequence[str] | None) -> list[str]:
    """``"erode,dilate"`` (or a list) -> ``["erode", "dilate"]``, checked and de-duplicated."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    kinds = []
    for item in items:
        kind = item.strip().lower()
        if not kind:
            continue
        if kind not in PERTURBATIONS:
            raise PrimageInputError(
                f"unknown perturbation {item!r}; choose from {', '.join(PERTURBATIONS)}"
            )
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def check_cases(cases: Sequence[Case], perturbations: Sequence[str]) -> None:
    """Refuse what cannot give an ICC: < 3 cases, missing or unequal repetitions."""
    names = [case.name for case in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PrimageInputError(f"case names must be unique: {', '.join(duplicates)}")
    if len(cases) < MIN_CASES:
        raise PrimageInputError(
            f"an ICC needs at least {MIN_CASES} cases (subjects); got {len(cases)}"
        )
    if perturbations:
        several = [case.name for case in cases if len(case.masks) != 1]
        if several:
            raise PrimageInputError(
                f"with perturbations give exactly one mask per case; case {several[0]!r} has "
                f"{len([c for c in cases if c.name == several[0]][0].masks)}"
            )
        return
    counts = {case.name: len(case.masks) for case in cases}
    if min(counts.values()) < 2:
        single = min(counts, key=counts.get)
        raise PrimageInputError(
            f"case {single!r} has {counts[single]} mask; give two or more observers' masks per "
            "case, or choose perturbations"
        )
    if len(set(counts.values())) > 1:
        raise PrimageInputError(
            "every case needs the same number of observers' masks; found "
            + ", ".join(f"{name}: {count}" for name, count in counts.items())
        )


def robustness_tasks(
    cases: Sequence[Case], parameters: ParameterSet, perturbations: Sequence[str]
) -> list[Task]:
    """One extraction task per (case, repetition); the mask's non-zero voxels are the region."""
    tasks = []
    for case_index, case in enumerate(cases):
        modality = parameters.modality_of(case.image_name, case.modality)
        params = parameters.for_modality(modality)
        if perturbations:
            repetitions = [("original", case.masks[0], None)] + [
                (kind, case.masks[0], kind) for kind in perturbations
            ]
        else:
            repetitions = [
                (f"observer {number}", mask, None) for number, mask in enumerate(case.masks, 1)
            ]
        for repetition, (name, mask, kind) in enumerate(repetitions):
            tasks.append(
                Task(
                    image_name=case.name,
                    region_name=name,
                    label=1,
                    image=case.image,
                    mask=mask,
                    params=params,
                    parameters_source=parameters.source,
                    modality=modality,
                    perturbation=kind,
                    seed=1000 * case_index + repetition,
                    binarize=True,
                    meta={"case": case.name, "repetition": name},
                )
            )
    return tasks


def icc_table(
    results: Sequence[Result], confidence: float = 0.95
) -> tuple[list[dict[str, Any]], list[str]]:
    """ICC rows (one per feature) from extraction results; also the cases left out.

    A case with a failed repetition is left out of every feature; a feature missing (NaN)
    for some case is computed on the remaining cases. Fewer than three usable cases is
    refused.
    """
    by_case: dict[str, dict[str, Result]] = {}
    for result in results:
        by_case.setdefault(result.task.meta["case"], {})[result.task.meta["repetition"]] = result
    repetitions = list(dict.fromkeys(r.task.meta["repetition"] for r in results))
    dropped = [
        case for case, reps in by_case.items() if any(not reps[name].ok for name in repetitions)
    ]
    usable = [case for case in by_case if case not in dropped]
    if len(usable) < MIN_CASES:
        errors = [r.error for r in results if not r.ok]
        reason = f"; first error: {errors[0]}" if errors else ""
        raise PrimageInputError(
            f"only {len(usable)} case(s) could be measured in every repetition; an ICC needs "
            f"at least {MIN_CASES}{reason}"
        )
    names: list[str] = []
    for case in usable:
        for name in by_case[case][repetitions[0]].features:
            if name not in names:
                names.append(name)
    rows = []
    for feature in names:
        table = np.array(
            [
                [by_case[case][rep].features.get(feature, math.nan) for rep in repetitions]
                for case in usable
            ],
            dtype=np.float64,
        )
        complete = table[np.all(np.isfinite(table), axis=1)]
        if complete.shape[0] >= MIN_CASES:
            icc, low, high = icc_2_1(complete, confidence)
        else:
            icc = low = high = math.nan
        rows.append(
            {
                "feature": feature,
                "icc": icc,
                "ci_low": low,
                "ci_high": high,
                "class": icc_class(icc),
            }
        )
    return rows, dropped


def robustness(
    cases: Sequence[Case],
    *,
    parameters: ParameterSet | None = None,
    perturbations: Sequence[str] = (),
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[list[dict[str, Any]], list[Result], list[str]]:
    """ICC(2,1) per feature over ``cases``; returns ``(icc_rows, results, dropped_cases)``."""
    perturbations = parse_perturbations(perturbations)
    check_cases(cases, perturbations)
    parameters = parameters or load_params("primage")
    tasks = robustness_tasks(cases, parameters, perturbations)
    results = run_tasks(tasks, workers=workers, progress=progress, cancel=cancel)
    rows, dropped = icc_table(results)
    return rows, results, dropped


def cases_from_rows(rows: Sequence[Mapping[str, str]], base_folder=None) -> list[Case]:
    """Cases from CASES.csv rows (``case``, ``image``, ``mask``); paths relative to ``base_folder``."""
    from pathlib import Path

    cases: dict[str, Case] = {}
    for number, row in enumerate(rows, start=2):
        missing = [column for column in ("case", "image", "mask") if not row.get(column)]
        if missing:
            raise PrimageInputError(f"cases table line {number}: empty {', '.join(missing)}")

        def resolve(text: str) -> str:
            path = Path(text)
            return str(
                path if path.is_absolute() or base_folder is None else Path(base_folder) / path
            )

        name = row["case"]
        image = resolve(row["image"])
        if name not in cases:
            cases[name] = Case(name, image, [], row.get("modality") or None)
        elif Path(cases[name].image) != Path(image):
            raise PrimageInputError(
                f"cases table line {number}: case {name!r} has two images; one image per case"
            )
        cases[name].masks.append(resolve(row["mask"]))
    return list(cases.values())
