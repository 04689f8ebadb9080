"""Run a cohort: every case's chain on Dask workers (or in this process), live status,
then ``features.csv`` and ``report.html``.

Scale-out: one Dask task per case (its whole step chain), on a local cluster of
``workers`` processes (``threads_per_worker`` ITK threads each, a memory limit per
worker) or on an existing cluster (``scheduler="tcp://host:8786"``). The output folder
must be visible to the workers and to this process (a shared file system on a cluster):
workers write the case outputs and their ``status.json``; this process polls those into
``OUT/status.csv`` and builds the cohort outputs at the end. ``workers=0`` runs the
cases one after another in this process, without Dask (debugging; Slicer's GUI).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError
from primage.io import write_json, write_text
from primage.pipeline.case import chain, failed_summary, run_case
from primage.pipeline.cohort import Case, discover_cohort
from primage.pipeline.config import load_config, validate_config
from primage.progress import ProgressCallback, no_progress

STATUS_COLUMNS = ("case", "step", "state", "seconds", "message")
#: States after which a step will not change again in this run.
FINAL_STATES = ("done", "up-to-date", "failed", "blocked")


class StatusBoard:
    """``OUT/status.csv``: one row per (case, step), rewritten atomically on every change."""

    def __init__(self, output_dir: Path, cases: Sequence[Case], steps: list[str]) -> None:
        self.path = output_dir / "status.csv"
        self.output_dir = output_dir
        self.rows: dict[str, list[dict]] = {
            case.case_id: [
                {"case": case.case_id, "step": s, "state": "pending", "seconds": "", "message": ""}
                for s in steps
            ]
            for case in cases
        }
        self.total = sum(len(rows) for rows in self.rows.values())
        self.last = ""
        self.write()

    def update(self, case_id: str, rows: list[dict]) -> None:
        if self.rows.get(case_id) == rows:
            return
        for new in rows:
            old = next((r for r in self.rows[case_id] if r["step"] == new["step"]), None)
            if old is not None and old != new:
                self.last = f"{case_id}: {new['step']} {new['state']}"
        self.rows[case_id] = [dict(r) for r in rows]
        self.write()

    def poll(self, case_ids: Sequence[str], started: float) -> None:
        """Read the workers' ``status.json`` files (only those written in this run)."""
        for case_id in case_ids:
            path = self.output_dir / case_id / "status.json"
            try:
                if path.stat().st_mtime < started:
                    continue
                rows = json.loads(path.read_text(encoding="utf-8"))["steps"]
            except (OSError, ValueError, KeyError):
                continue  # not written yet, or replaced while reading
            self.update(case_id, rows)

    def finished_steps(self) -> int:
        return sum(r["state"] in FINAL_STATES for rows in self.rows.values() for r in rows)

    def write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=STATUS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for rows in self.rows.values():
            writer.writerows(rows)
        write_text(buffer.getvalue(), self.path)


@dataclass
class CohortResult:
    """Summaries of every case (as in ``OUT/<case>/summary.json``) and the run's numbers."""

    output_dir: Path
    summaries: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    @property
    def failed(self) -> list[str]:
        return [s["case_id"] for s in self.summaries if s["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when every case succeeded ("ok" or "review"), 1 otherwise."""
        return 1 if self.failed else 0


def _check_output_dir(output_dir: Path, cases: Sequence[Case], cohort: Path | None) -> None:
    resolved = output_dir.resolve()
    folders = [case.folder.resolve() for case in cases]
    if cohort is not None and cohort.is_dir():
        folders.append(cohort.resolve())
    for folder in folders:
        if resolved == folder or folder in resolved.parents:
            raise PrimageInputError(
                f"--output-dir {output_dir} is (inside) the input folder {folder}; choose a "
                "folder outside the cohort (inputs are never written to)"
            )
    if output_dir.exists() and not output_dir.is_dir():
        raise PrimageInputError(f"--output-dir {output_dir} exists and is not a folder")


def _worker_environment() -> dict[str, str]:
    # Workers must import primage also where it is not installed (a Slicer extension).
    parent = str(Path(__file__).resolve().parents[2])
    paths = [parent, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def _use_slicer_python() -> None:
    """Inside Slicer ``sys.executable`` is not a Python interpreter: spawn workers with
    Slicer's own (PythonSlicer), as the radiomics worker pools do."""
    import multiprocessing
    import sys

    from primage.jobs import python_executable

    if python_executable() != sys.executable:
        multiprocessing.set_executable(python_executable())


def run_cohort(
    cohort: str | os.PathLike | Sequence[Case],
    config: str | os.PathLike | dict | None,
    output_dir: str | os.PathLike,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | float | None = "auto",
    progress: ProgressCallback | None = None,
    abort_after: str | None = None,
) -> CohortResult:
    """Run every case of ``cohort`` (a folder, a CSV or a list of :class:`Case`) with
    ``config`` (a YAML path, a dict, or None for the defaults) into ``output_dir``.

    ``workers`` processes on a local Dask cluster (0: in this process, no Dask), or the
    cluster at ``scheduler``. ``threads_per_worker`` ITK threads per case chain;
    ``memory_limit`` per worker ("auto": the machine's memory / workers; "4GB"; None: no
    limit). ``progress(fraction, message)`` follows the finished steps. Raises
    :class:`PrimageInputError` (before any work) for a bad configuration or cohort.
    """
    report = progress or no_progress
    cohort_path = None
    if isinstance(cohort, (str, os.PathLike)):
        cohort_path = Path(cohort)
        cases = discover_cohort(cohort_path)
    else:
        cases = list(cohort)
    if isinstance(config, dict):
        config = validate_config(config)
    else:
        config = load_config(config)
    if workers < 0:
        raise PrimageInputError(f"--workers must be 0 (no Dask) or more, got {workers}")
    if threads_per_worker < 1:
        raise PrimageInputError(
            f"--threads-per-worker must be at least 1, got {threads_per_worker}"
        )
    output_dir = Path(output_dir)
    _check_output_dir(output_dir, cases, cohort_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    write_text(
        "# The configuration of the last run, with every default filled in.\n"
        + yaml.safe_dump(config, sort_keys=False),
        output_dir / "config.yaml",
    )
    steps = chain(config)
    board = StatusBoard(output_dir, cases, steps)
    started = time.time()
    clock = time.perf_counter()
    summaries: dict[str, dict] = {}
    report(0.0, f"{len(cases)} case(s), {len(steps)} steps each")

    def show() -> None:
        report(0.98 * board.finished_steps() / max(board.total, 1), board.last or "working")

    if scheduler is None and workers == 0:
        for case in cases:

            def listen(case_id, rows):
                board.update(case_id, rows)
                show()

            summaries[case.case_id] = run_case(
                case, config, output_dir, threads=threads_per_worker, abort_after=abort_after,
                on_status=listen,
            )  # fmt: skip
    else:
        summaries = _run_on_dask(
            cases, config, output_dir, board, show, started,
            workers=workers, scheduler=scheduler, threads=threads_per_worker,
            memory_limit=memory_limit, abort_after=abort_after,
        )  # fmt: skip
    ordered = [summaries[case.case_id] for case in cases]
    for summary in ordered:
        board.update(summary["case_id"], summary["steps"] or board.rows[summary["case_id"]])
    result = CohortResult(output_dir, ordered, time.perf_counter() - clock, workers)
    report(0.98, "writing features.csv and report.html")
    from primage.pipeline.report import write_cohort_outputs

    write_cohort_outputs(
        result,
        config,
        {
            "workers": workers if scheduler is None else "cluster",
            "scheduler": scheduler or ("local cluster" if workers else "none (in this process)"),
            "threads_per_worker": threads_per_worker,
        },
    )
    report(1.0, f"{len(cases) - len(result.failed)} of {len(cases)} case(s) succeeded")
    return result


def _worker_failed_rows(rows: list[dict], message: str) -> list[dict]:
    """Status rows of a case whose worker died: the unfinished step failed, the rest blocked."""
    rows = [dict(r) for r in rows]
    failed = False
    for row in rows:
        if row["state"] in FINAL_STATES:
            continue
        row.update(state="blocked" if failed else "failed", message="" if failed else message[:500])
        failed = True
    return rows


def _run_on_dask(
    cases, config, output_dir, board, show, started, *, workers, scheduler, threads,
    memory_limit, abort_after,
) -> dict[str, dict]:  # fmt: skip
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        _use_slicer_python()
        with warnings.catch_warnings():
            # The scheduler's HTTP endpoint moves to a free port when 8787 is taken (another
            # cluster on this machine); nothing to tell the user.
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,  # one case chain at a time per worker process
                processes=True,
                memory_limit=memory_limit,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                env=_worker_environment(),
            )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as error:
            raise PrimageInputError(
                f"cannot connect to the Dask scheduler {scheduler}: {error}"
            ) from None
    summaries: dict[str, dict] = {}
    token = uuid.uuid4().hex[:8]
    try:
        # Before the first case, so the threads that run the cases share the heap that
        # keeps freed memory (primage.memory) instead of a malloc arena each.
        from primage.memory import reuse_freed_memory

        client.run(reuse_freed_memory)
        futures = {
            client.submit(
                run_case, case, config, str(output_dir), threads=threads, abort_after=abort_after,
                key=f"primage-{case.case_id}-{token}", pure=False,
            ): case
            for case in cases
        }  # fmt: skip
        pending = set(futures)
        while pending:
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                case = futures[future]
                try:
                    summaries[case.case_id] = future.result()
                except Exception as error:  # the worker died (memory limit, crash)
                    message = (
                        f"the worker running this case failed: {type(error).__name__}: {error}"
                    )
                    summary = failed_summary(case, "worker", message[:500])
                    summary["steps"] = _worker_failed_rows(board.rows[case.case_id], message)
                    summaries[case.case_id] = summary
                    write_json(summary, output_dir / case.case_id / "summary.json")
            board.poll([futures[f].case_id for f in pending], started)
            show()
            if pending:
                time.sleep(0.25)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return summaries
