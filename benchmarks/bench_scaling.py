"""Cohort scaling: cost per case and step as the volume grows, cases per hour on a real Dask
cluster, and a projection for 32 and 64 workers.

Part 1, volume: digital patients (``primage.synthetic``) over one field of view (144 x 144 x
160 mm) on grids of 1x, 2x and 4x voxels (64 x 64 x 20, then each axis times the cube root
of the factor; 41 DCE frames, 7 b-values), run through the default pipeline in this
process (``run_cohort(workers=0)``, 1 ITK thread). Per step: wall and CPU seconds (all
threads of the process) per case, mean over ``--cases-per-scale`` cases after one warm-up
case, and the growth exponent k of cost ~ voxels^k (k <= 1: no faster than linear).

Part 2, workers: a ``dask scheduler`` and 1 or 2 ``dask worker`` processes (each its own
command, 1 thread, loopback addresses only, started and stopped here; the scheduler quits
by itself after 10 idle minutes and the workers 60 s after losing it) run ``--cases`` 1x
cases with ``run_cohort(scheduler=...)``: cases per hour, speed-up, per-case cost, and the
scheduler's overhead per task (no-op tasks through the same scheduler). The projection
for W workers on a W-core server is 3600 W / (c + W o) cases per hour, with c the per-case
cost measured with 2 workers and o the scheduler's time per task; a second, pessimistic
figure applies the efficiency lost from 1 to 2 workers again at every doubling.
``--case-seconds`` adds the projection for another per-case cost (e.g. a clinical-size
case's CPU seconds from ``bench_case.py``). Usage:

    python benchmarks/bench_scaling.py [--cases 4] [--cases-per-scale 2] [--scales 1,2,4]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = ("preprocess", "register", "segment", "kinetics", "radiomics", "figures")
BASE_SIZE = (64, 64, 20)
FIELD_MM = (144.0, 144.0, 160.0)


def grid(factor: float) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Grid of about ``factor`` x the base voxel count over the same field of view."""
    scale = factor ** (1.0 / 3.0)
    size = tuple(max(2, round(n * scale)) for n in BASE_SIZE)
    spacing = tuple(f / n for f, n in zip(FIELD_MM, size, strict=True))
    return size, spacing


def make_cohort(folder: Path, factor: float, cases: int, first_seed: int) -> int:
    """Write ``cases`` digital patients on the ``factor`` grid; returns voxels per volume."""
    from primage.synthetic import make_digital_patient, write_case

    size, spacing = grid(factor)
    for index in range(cases):
        patient = make_digital_patient(first_seed + index, size=size, spacing=spacing)
        write_case(patient, folder / f"s{index + 1:02d}")
    return math.prod(size)


# --- part 1: cost per step as the volume grows -------------------------------------------


class StepClock:
    """Wraps the pipeline's step functions: wall and CPU seconds (process, all threads)."""

    def __init__(self) -> None:
        from primage.pipeline import steps

        self.records: list[tuple[str, float, float]] = []
        self.originals = dict(steps.STEPS)
        for name, function in self.originals.items():
            steps.STEPS[name] = self._timed(name, function)

    def _timed(self, name, function):
        def timed(ctx, progress):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return function(ctx, progress)
            finally:
                self.records.append((name, time.perf_counter() - wall, time.process_time() - cpu))

        return timed

    def restore(self) -> None:
        from primage.pipeline import steps

        steps.STEPS.update(self.originals)


def volume_scaling(root: Path, factors, cases: int) -> dict[float, dict]:
    """Per factor: voxels and the mean (wall, CPU) seconds per case of every step."""
    from primage.pipeline import run_cohort

    clock = StepClock()
    try:
        warm = root / "warm"
        make_cohort(warm / "cohort", factors[0], 1, 900)
        run_cohort(warm / "cohort", None, warm / "out", workers=0)  # imports, caches
        results = {}
        for factor in factors:
            folder = root / f"x{factor:g}"
            voxels = make_cohort(folder / "cohort", factor, cases, 200)
            clock.records.clear()
            result = run_cohort(folder / "cohort", None, folder / "out", workers=0)
            if result.failed:
                raise SystemExit(f"cases failed at {factor:g}x: {result.failed}")
            per_step = {}
            for step in STEPS:
                rows = [(w, c) for name, w, c in clock.records if name == step]
                per_step[step] = (
                    sum(w for w, _ in rows) / cases,
                    sum(c for _, c in rows) / cases,
                )
            results[factor] = {"voxels": voxels, "steps": per_step}
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        clock.restore()
    return results


def exponent(cost_a: float, cost_b: float, voxels_a: int, voxels_b: int) -> float:
    """k in cost ~ voxels^k between two grids (nan when a cost is too small to tell)."""
    if min(cost_a, cost_b) < 0.01:
        return float("nan")
    return math.log(cost_b / cost_a) / math.log(voxels_b / voxels_a)


def print_volume_table(results: dict[float, dict]) -> None:
    factors = sorted(results)
    first, last = factors[0], factors[-1]
    print("\ncost per case and step as the volume grows (CPU s | wall s; mean per case):")
    labels = [f"{f:g}x ({results[f]['voxels']:,} vox)" for f in factors]
    header = "".join(f"{label:>22}" for label in labels)
    print(f"  {'step':<11}{header}   k (CPU, {first:g}x->{last:g}x)")
    totals = {f: [0.0, 0.0] for f in factors}
    for step in [*STEPS, "total"]:
        cells = []
        for factor in factors:
            if step == "total":
                wall, cpu = totals[factor]
            else:
                wall, cpu = results[factor]["steps"][step]
                totals[factor][0] += wall
                totals[factor][1] += cpu
            cells.append(f"{cpu:10.2f} | {wall:7.2f}  ")
        cpu_first = totals[first][1] if step == "total" else results[first]["steps"][step][1]
        cpu_last = totals[last][1] if step == "total" else results[last]["steps"][step][1]
        k = exponent(cpu_first, cpu_last, results[first]["voxels"], results[last]["voxels"])
        verdict = "" if math.isnan(k) else ("linear or less" if k <= 1.0 else "FASTER than linear")
        text = "  (too small)" if math.isnan(k) else f"{k:6.2f}  {verdict}"
        print(f"  {step:<11}{''.join(f'{c:>22}' for c in cells)} {text}")


# --- part 2: a real scheduler and workers ------------------------------------------------


def _stop(process: subprocess.Popen) -> None:
    """Stop a process and everything it started (its own session), TERM then KILL."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def dask_cluster(workers: int, folder: Path, timeout_s: float = 90.0):
    """``dask scheduler`` + ``workers`` x ``dask worker`` on 127.0.0.1; yields (address,
    seconds until every worker had joined). Every process is stopped on exit."""
    from distributed import Client

    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    processes: list[subprocess.Popen] = []

    def start(command, log):
        with open(folder / log, "wb") as stream:
            processes.append(
                subprocess.Popen(
                    command,
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    cwd=folder,
                )  # fmt: skip
            )

    began = time.perf_counter()
    try:
        start(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(scheduler_file), "--idle-timeout", "600s"],
            "scheduler.log",
        )  # fmt: skip
        while not scheduler_file.exists():
            if processes[0].poll() is not None or time.perf_counter() - began > timeout_s:
                raise SystemExit(f"the dask scheduler did not start; see {folder}/scheduler.log")
            time.sleep(0.05)
        for index in range(workers):
            start(
                [*dask, "worker", "--scheduler-file", str(scheduler_file), "--host",
                 "127.0.0.1", "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                 "--name", f"w{index}", "--death-timeout", "60s"],
                f"worker{index}.log",
            )  # fmt: skip
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(workers, timeout=timeout_s)
            address = client.scheduler.address
            ready = time.perf_counter() - began
            if not address.startswith("tcp://127.0.0.1:"):
                raise SystemExit(f"the scheduler listens on {address}, not on loopback")
        yield address, ready
    finally:
        for process in reversed(processes):
            _stop(process)
        left = [p.pid for p in processes if p.poll() is None]
        if left:
            print(f"warning: dask processes still running: {left}", file=sys.stderr)


def scheduler_overhead(address: str, tasks: int = 400) -> tuple[float, float]:
    """Seconds per task through the scheduler: (throughput of a batch of no-op tasks,
    median round trip of one task at a time)."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.gather(client.map(abs, range(-20, 0), pure=False))  # warm
        began = time.perf_counter()
        client.gather(client.map(abs, range(-tasks, 0), pure=False))
        batch = (time.perf_counter() - began) / tasks
        trips = []
        for value in range(20):
            began = time.perf_counter()
            client.submit(abs, -value, pure=False).result()
            trips.append(time.perf_counter() - began)
    return batch, statistics.median(trips)


def worker_scaling(root: Path, cases: int) -> dict[int, dict]:
    from primage.pipeline import run_cohort

    cohort = root / "cohort"
    make_cohort(cohort, 1.0, cases, 100)
    runs = {}
    for workers in (1, 2):
        out = root / f"out_{workers}"
        with dask_cluster(workers, root / f"dask_{workers}") as (address, ready):
            began = time.perf_counter()
            result = run_cohort(cohort, None, out, scheduler=address)
            seconds = time.perf_counter() - began
            if result.failed:
                raise SystemExit(f"cases failed with {workers} worker(s): {result.failed}")
            batch, trip = scheduler_overhead(address)
        case_seconds = [float(s["seconds"]) for s in result.summaries]
        runs[workers] = {
            "startup": ready,
            "seconds": seconds,
            "case": statistics.mean(case_seconds),
            "task": batch,
            "trip": trip,
            "features": (out / "features.csv").read_text(encoding="utf-8"),
        }
    return runs


def projection(
    case_s: float, task_s: float, efficiency: float, workers: int
) -> tuple[float, float]:
    """Cases per hour on ``workers`` cores: (per-case cost + scheduler, pessimistic)."""
    ideal = 3600.0 * workers / (case_s + workers * task_s)
    return ideal, ideal * efficiency ** math.log2(workers)


def print_worker_table(runs: dict[int, dict], cases: int, extra_case_s: float | None) -> None:
    print(f"\ncohort of {cases} 1x cases on a real dask scheduler + dask worker processes:")
    for workers, run in runs.items():
        print(
            f"  {workers} worker(s): {run['seconds']:6.1f} s, {3600 * cases / run['seconds']:6.0f} "
            f"cases/hour; {run['case']:.2f} s per case inside the worker; cluster ready in "
            f"{run['startup']:.1f} s; scheduler {1e3 * run['task']:.2f} ms/task (batch), "
            f"{1e3 * run['trip']:.1f} ms round trip"
        )
    speed_up = runs[1]["seconds"] / runs[2]["seconds"]
    efficiency = min(1.0, speed_up / 2.0)
    overhead = (runs[1]["seconds"] - cases * runs[1]["case"]) / cases
    print(
        f"  speed-up 2 vs 1 worker: {speed_up:.2f}x (efficiency {100 * speed_up / 2:.0f} %); "
        f"around the cases (submit, status polling, features.csv, report): "
        f"{overhead:.2f} s per case with 1 worker"
    )
    print(f"  features.csv identical: {runs[1]['features'] == runs[2]['features']}")
    task_s = max(runs[1]["task"], runs[2]["task"])
    costs = [("measured 1x case", runs[2]["case"])]
    if extra_case_s:
        costs.append(("--case-seconds", extra_case_s))
    print(
        f"projection, cases/hour on a W-core server (3600 W / (c + W x {1e3 * task_s:.2f} ms); "
        f"pessimistic: x {efficiency:.3f}^log2(W)):"
    )
    for label, case_s in costs:
        cells = []
        for workers in (1, 2, 32, 64):
            ideal, low = projection(case_s, task_s, efficiency, workers)
            cells.append(f"W={workers}: {ideal:8.0f} ({low:.0f})")
        hours = 1000 / projection(case_s, task_s, efficiency, 32)[1]
        print(
            f"  {label} (c = {case_s:.2f} s): {'; '.join(cells)}; 1000 cases on 32 workers: "
            f"{hours:.1f} h (pessimistic)"
        )


def main() -> int:
    from primage.radiomics.extraction import available_cpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4, help="cases of the worker runs")
    parser.add_argument("--cases-per-scale", type=int, default=2)
    parser.add_argument("--scales", default="1,2,4", help="voxel factors, e.g. 1,2,4")
    parser.add_argument("--case-seconds", type=float, help="also project for this case cost")
    parser.add_argument("--skip-volume", action="store_true", help="only the worker runs")
    parser.add_argument("--skip-workers", action="store_true", help="only the volume runs")
    args = parser.parse_args()
    factors = sorted(float(f) for f in args.scales.split(","))
    load = os.getloadavg()[0]
    print(f"{available_cpus()} CPUs; 1-minute load at the start {load:.2f}")
    root = Path(tempfile.mkdtemp(prefix="primage-scaling-"))
    try:
        if not args.skip_volume:
            print_volume_table(volume_scaling(root / "volume", factors, args.cases_per_scale))
        if not args.skip_workers:
            runs = worker_scaling(root / "workers", args.cases)
            print_worker_table(runs, args.cases, args.case_seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"1-minute load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":  # workers import this file when they unpickle: keep the guard
    sys.exit(main())
