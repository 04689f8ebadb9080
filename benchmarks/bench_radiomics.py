"""Benchmark: the `full` radiomics preset on 8 (image, segment) pairs, plain pyradiomics vs primage.

Plain pyradiomics runs the 8 pairs one after the other in one process
(``RadiomicsFeatureExtractor(params).execute(image, mask, label=N)``, each pair with the
parameters primage uses for it: the CT images get the CT modality's settings); the project
runs the same 8 pairs in one call of :func:`primage.radiomics.extraction.run_tasks`, which
shares them between this process and worker processes (one per CPU in all), largest
first. The features of both are compared. Then one pair alone, both ways, gives the
project's overhead (checks, bookkeeping) over plain pyradiomics.

Data: digital patients (``primage.synthetic``), 96 x 96 x 40 voxels of 1.5 x 1.5 x 4 mm;
pairs = 2 patients x 2 images (T2w, CT) x 2 regions (whole tumour, necrotic core).
Targets (issues 8 and 14): >= 1.7x faster than serial on 2 cores; overhead < 5 % for one pair.

Usage: ``.venv/bin/python benchmarks/bench_radiomics.py [--preset full] [--rounds 2] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_pairs(folder: Path) -> list[tuple[str, str, str, int]]:
    """(name, image path, label map path, label) x 8, written into ``folder``."""
    import numpy as np
    import SimpleITK as sitk

    from primage.io import write_image
    from primage.synthetic import make_digital_patient

    pairs = []
    for seed in (0, 1):
        patient = make_digital_patient(seed)
        tissues = sitk.GetArrayFromImage(patient.tissues)
        # 1: whole tumour (viable + necrotic), 2: necrotic core.
        labels = np.where(tissues == 9, 2, np.where(tissues == 8, 1, 0)).astype(np.uint8)
        label_map = sitk.GetImageFromArray(labels)
        label_map.CopyInformation(patient.tissues)
        mask_path = write_image(label_map, folder / f"p{seed}_labels.nii.gz")
        for modality in ("t2w", "ct"):
            image_path = write_image(
                getattr(patient, modality), folder / f"p{seed}_{modality}.nii.gz"
            )
            for label in (1, 2):
                pairs.append((f"p{seed}_{modality}", str(image_path), str(mask_path), label))
    return pairs


def make_tasks(pairs, parameters):
    """One task per pair, as primage builds them (an image named ``*_ct`` gets the CT
    modality's settings); plain pyradiomics is given each task's own parameters."""
    from primage.radiomics.extraction import Region, build_tasks

    tasks = []
    for name, image, mask, label in pairs:
        tasks += build_tasks({name: image}, [Region(str(label), mask, label)], parameters)
    return tasks


def plain(tasks, cpu: list | None = None) -> tuple[float, list[dict]]:
    """Seconds for plain pyradiomics, one pair after the other, and the features; appends
    the CPU seconds of this process (all threads) to ``cpu``."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    start, start_cpu = time.perf_counter(), time.process_time()
    values = [
        RadiomicsFeatureExtractor(t.params).execute(t.image, t.mask, label=t.label) for t in tasks
    ]
    seconds = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return seconds, [
        {k: float(v) for k, v in row.items() if not k.startswith("diagnostics")} for row in values
    ]


def project(tasks, workers=None) -> tuple[float, list]:
    """Seconds for primage: all pairs in one run_tasks() call, and the results."""
    from primage.radiomics.extraction import run_tasks

    start = time.perf_counter()
    results = run_tasks(tasks, workers=workers)
    seconds = time.perf_counter() - start
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"extraction failed: {failed[0]}")
    return seconds, results


def _list(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> int:
    sys.path.insert(0, str(REPO))
    import radiomics

    from primage.radiomics.extraction import available_cpus
    from primage.radiomics.params import enabled_feature_count, load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="full", help="radiomics preset (default: full)")
    parser.add_argument("--rounds", type=int, default=2, help="8-pair rounds (best counts)")
    parser.add_argument("--repeat", type=int, default=5, help="single-pair repetitions")
    args = parser.parse_args()
    radiomics.setVerbosity(logging.CRITICAL + 1)
    parameters = load_params(args.preset)
    params = parameters.params
    with tempfile.TemporaryDirectory() as folder:
        tasks = make_tasks(make_pairs(Path(folder)), parameters)
        print(
            f"{len(tasks)} pairs, preset {args.preset} ({enabled_feature_count(params)} "
            f"features each), {available_cpus()} CPUs, 1-minute load {os.getloadavg()[0]:.2f}"
        )
        # Interleaved rounds, best of each: a shared machine's noise only ever slows a run.
        serial_times, parallel_times, busy, serial_cpu = [], [], [], []
        same = True
        for _ in range(args.rounds):
            seconds, expected = plain(tasks, serial_cpu)
            serial_times.append(seconds)
            seconds, results = project(tasks)
            parallel_times.append(seconds)
            same &= [r.features for r in results] == expected
            busy.append(sum(float(r.diagnostics["diagnostics_primage_seconds"]) for r in results))
        serial, parallel = min(serial_times), min(parallel_times)
        print(f"plain pyradiomics, serial: {serial:7.2f} s  (rounds: {_list(serial_times)})")
        share = statistics.median(c / w for c, w in zip(serial_cpu, serial_times, strict=True))
        print(
            f"  its CPU seconds: {_list(serial_cpu)}, CPU / wall {share:.2f} (above 1 where "
            "ITK's multi-threaded filters use the second core inside plain pyradiomics)"
        )
        print(f"primage, one run:          {parallel:7.2f} s  (rounds: {_list(parallel_times)})")
        print(
            f"  primage's tasks took {_list(busy)} s in all (both processes): the work a "
            "perfect split would halve"
        )
        ratios = [s / p for s, p in zip(serial_times, parallel_times, strict=True)]
        print(
            f"speed-up: {serial / parallel:.2f}x best vs best, {statistics.median(ratios):.2f}x "
            f"median of the rounds' ratios (range {min(ratios):.2f}-{max(ratios):.2f}; target "
            f">= 1.7x on 2 cores); features identical to plain pyradiomics: {same}"
        )

        one = tasks[:1]
        plain_times, project_times = [], []
        for _ in range(args.repeat):
            plain_times.append(plain(one)[0])
            project_times.append(project(one, workers=1)[0])
        base, ours = statistics.median(plain_times), statistics.median(project_times)
        print(
            f"one pair (median of {args.repeat}): plain {base:.2f} s, primage {ours:.2f} s, "
            f"overhead {100 * (ours - base) / base:+.1f} % (target < 5 %); best: plain "
            f"{min(plain_times):.2f} s, primage {min(project_times):.2f} s"
        )
        print(f"1-minute load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
