"""Cohort pipeline throughput: 8 generated cases with 1 and with 2 Dask workers in one run.

Prints cases per hour for each, the speed-up (target >= 1.7x on 2 cores), the time per
step (mean per case) and checks that both runs give the same features. Each worker runs
one case at a time with 1 ITK thread (the pipeline's default), so the speed-up measures
scaling over cases. The digital patients use a 64 x 64 x 20 grid over the standard field
of view; every step runs with the default configuration. Usage:

    python benchmarks/bench_pipeline.py [--cases 8] [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

STEPS = ("preprocess", "register", "segment", "kinetics", "radiomics", "figures")


def make_cohort(folder: Path, cases: int) -> None:
    from primage.synthetic import make_digital_patient, write_case

    for index in range(cases):
        patient = make_digital_patient(100 + index, size=(64, 64, 20), spacing=(2.25, 2.25, 8.0))
        write_case(patient, folder / f"bench{index + 1:02d}")


def step_means(summaries) -> dict[str, float]:
    totals = dict.fromkeys(STEPS, 0.0)
    for summary in summaries:
        for row in summary["steps"]:
            if row["seconds"]:
                totals[row["step"]] += float(row["seconds"])
    return {step: total / len(summaries) for step, total in totals.items()}


def features(folder: Path) -> list[dict]:
    with open(folder / "features.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def main() -> None:
    from primage.pipeline import run_cohort
    from primage.radiomics.extraction import available_cpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--keep", help="keep the cohort and outputs in this folder")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="primage-bench-"))
    try:
        started = time.perf_counter()
        make_cohort(root / "cohort", args.cases)
        print(f"cohort: {args.cases} cases written in {time.perf_counter() - started:.1f} s; "
              f"CPUs available: {available_cpus()} (os.cpu_count {os.cpu_count()})")  # fmt: skip
        results = {}
        for workers in (1, 2):
            out = root / f"out_{workers}"
            shutil.rmtree(out, ignore_errors=True)  # a cold run: nothing up to date
            began = time.perf_counter()
            result = run_cohort(root / "cohort", None, out, workers=workers)
            seconds = time.perf_counter() - began
            failed = result.failed
            results[workers] = (seconds, step_means(result.summaries), out)
            print(
                f"{workers} worker(s): {seconds:6.1f} s, {3600 * args.cases / seconds:7.0f} "
                f"cases/hour" + (f"  FAILED: {failed}" if failed else "")
            )
        speed_up = results[1][0] / results[2][0]
        print(f"speed-up 2 workers vs 1: {speed_up:.2f}x (target >= 1.7x on 2 cores)")
        print("mean seconds per case and step (1 worker | 2 workers):")
        for step in STEPS:
            print(f"  {step:<11} {results[1][1][step]:6.2f} | {results[2][1][step]:6.2f}")
        same = features(results[1][2]) == features(results[2][2])
        print(f"features.csv identical between the two runs: {same}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":  # Dask's spawned workers import this file: keep the guard
    main()
