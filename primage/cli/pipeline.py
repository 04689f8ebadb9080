"""``primage pipeline``: run the whole chain on a cohort (``run``), write the commented
default configuration (``init``), or check a configuration and cohort (``check``).

``run`` exits 0 when every case succeeded, 1 when a case failed (the others are still
processed; see ``OUT/status.csv`` and ``OUT/<case>/error.log``), 2 for a bad configuration
or cohort (found before any work).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from primage.errors import PrimageInputError
from primage.progress import ConsoleProgress


def _available_cpus() -> int:
    from primage.radiomics.extraction import available_cpus

    return available_cpus()


def register(subparsers) -> None:
    """Add the ``pipeline`` command with its ``run``, ``init`` and ``check`` actions."""
    parser = subparsers.add_parser(
        "pipeline",
        help="run preprocess -> register -> segment -> kinetics -> radiomics on a cohort",
        description="The cohort pipeline: every case through the configured steps, resumable "
        "(unchanged work is skipped by content hashes), on a local Dask cluster or an "
        "existing one. 'primage pipeline init CONFIG.yaml' writes the commented default "
        "configuration.",
    )
    actions = parser.add_subparsers(dest="action", metavar="<action>")
    actions.required = True

    run_parser = actions.add_parser(
        "run",
        allow_abbrev=False,
        help="run the pipeline on a cohort",
        description="Run every case of the cohort (a folder of case folders, or a CSV with a "
        "'folder' column) into OUT/<case>/<step>/, then write OUT/features.csv, "
        "OUT/report.html and OUT/status.csv (live while running). A failing case is "
        "recorded and the others go on; the exit code is 1 if any case failed.",
    )
    run_parser.add_argument("--cohort", required=True, help="cohort folder or CSV file")
    run_parser.add_argument(
        "--config", help="YAML configuration (default: the built-in defaults, see 'init')"
    )
    run_parser.add_argument("--output-dir", required=True, help="output folder (not in the cohort)")
    where = run_parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        help="worker processes of a local Dask cluster (default: CPUs, at most the number "
        "of cases); 0 runs in this process without Dask",
    )
    where.add_argument(
        "--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786"
    )
    run_parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="ITK threads per case (default 1: one case per core; results are identical "
        "for a given value)",
    )
    run_parser.add_argument(
        "--memory-limit",
        default="auto",
        help="memory limit per local worker, e.g. 4GB (default auto: memory / workers; "
        "'none' for no limit)",
    )
    run_parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    run_parser.set_defaults(handler=run)

    init = actions.add_parser(
        "init",
        help="write the commented default configuration",
        description="Write the default configuration, every key commented, to CONFIG.",
    )
    init.add_argument("config", help="YAML file to write")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=run_init)

    check = actions.add_parser(
        "check",
        help="validate a configuration (and list a cohort's cases)",
        description="Validate the configuration (every key, preset and setting) and, with "
        "--cohort, list the cases with their series; nothing is computed.",
    )
    check.add_argument("--config", help="YAML configuration (default: built-in defaults)")
    check.add_argument("--cohort", help="cohort folder or CSV file")
    check.set_defaults(handler=run_check)


def run(args: argparse.Namespace) -> int:
    """Handler of ``primage pipeline run``."""
    from primage.pipeline import discover_cohort, load_config, run_cohort

    config = load_config(args.config)
    cases = discover_cohort(args.cohort)
    workers = args.workers
    if args.scheduler is None and workers is None:
        workers = max(1, min(_available_cpus(), len(cases)))
    memory = None if str(args.memory_limit).lower() == "none" else args.memory_limit
    progress = None if args.quiet else ConsoleProgress()
    result = run_cohort(
        cases,
        config,
        args.output_dir,
        workers=workers or 0,
        scheduler=args.scheduler,
        threads_per_worker=args.threads_per_worker,
        memory_limit=memory,
        progress=progress,
    )
    out = Path(args.output_dir)
    if result.failed:
        sys.stderr.write(
            f"primage: {len(result.failed)} of {len(result.summaries)} case(s) failed: "
            f"{', '.join(result.failed)} (see {out / 'status.csv'} and <case>/error.log)\n"
        )
    if not args.quiet:
        sys.stderr.write(
            f"primage: {len(result.summaries)} case(s) in {result.seconds:.1f} s; report "
            f"{out / 'report.html'}, features {out / 'features.csv'}\n"
        )
    return result.exit_code


def run_init(args: argparse.Namespace) -> int:
    """Handler of ``primage pipeline init``."""
    from primage.io import write_text
    from primage.pipeline.config import DEFAULT_CONFIG_TEXT

    path = Path(args.config)
    if path.exists() and not args.force:
        raise PrimageInputError(f"{path} exists; use --force to overwrite it")
    if path.exists() and path.is_dir():
        raise PrimageInputError(f"{path} is a folder")
    write_text(DEFAULT_CONFIG_TEXT, path)
    sys.stderr.write(f"primage: wrote the default configuration to {path}\n")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Handler of ``primage pipeline check``."""
    from primage.pipeline import discover_cohort, load_config

    config = load_config(args.config)
    print(f"configuration ok: steps {', '.join(config['steps'])}; reference {config['reference']}")
    if args.cohort:
        cases = discover_cohort(args.cohort)
        for case in cases:
            problems = f"  PROBLEM: {'; '.join(case.problems)}" if case.problems else ""
            print(f"{case.case_id}: {', '.join(sorted(case.series))}{problems}")
        print(f"{len(cases)} case(s)")
    return 0
