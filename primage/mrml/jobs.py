"""Jobs in a separate process that a GUI polls from a timer and can cancel.

The module widgets stay responsive while long work (radiomics over many segments, model
inference, training) runs in another Python process (:mod:`primage.jobs`). A job's inputs
are written to a temporary folder; :meth:`BackgroundJob.poll` reads its reports without
blocking; :meth:`BackgroundJob.cancel` kills it (its worker processes too) and removes the
folder. Capabilities subclass :class:`BackgroundJob` with a ``finish`` method that turns
the job's output files into nodes (:class:`primage.mrml.radiomics.RadiomicsJob`,
:mod:`primage.mrml.segmentation_models`).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError
from primage.progress import ProgressCallback


@dataclass
class JobStatus:
    """What a job is doing: running or not, progress (0..1), the last message, the exit code,
    the error (empty when none) and the structured events reported so far."""

    running: bool
    fraction: float
    message: str
    returncode: int | None
    error: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def new_job_folder(prefix: str) -> Iterator[Path]:
    """A new temporary folder for a job's files, removed again when preparing the job fails
    (once the job has started, :meth:`BackgroundJob.cleanup` removes it)."""
    folder = Path(tempfile.mkdtemp(prefix=f"primage-{prefix}-"))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def write_job_image(image, path: Path) -> str:
    """Write a job's input image; returns its path as text. Uncompressed: the file lives only
    as long as the job, so compression would only cost time."""
    from primage.io import write_image

    write_image(image, path, compress=False)
    return str(path)


class BackgroundJob:
    """A job specification running in a separate Python process.

    ``label`` names the work in messages ("radiomics", "training"). The folder is removed
    by :meth:`cleanup` (called by :meth:`cancel` and by the subclasses' ``finish``).
    """

    label = "background"

    def __init__(self, kind: str, folder: Path, spec: dict[str, Any], scene):
        from primage.jobs import job_command, job_environment

        self.kind = kind
        self.folder = Path(folder)
        self.spec = {**spec, "kind": kind}
        self.scene = scene
        self.fraction = 0.0
        self.message = "starting"
        self.error = ""
        self.warnings: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str] = queue.Queue()
        spec_path = self.folder / "job.json"
        spec_path.write_text(json.dumps(self.spec), encoding="utf-8")
        self.process = subprocess.Popen(
            job_command(spec_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=job_environment(),
            cwd=str(self.folder),
            # Its own process group: cancelling kills the job and its worker processes.
            start_new_session=(os.name == "posix"),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self.process.stdout.close()

    def _take(self, line: str) -> None:
        if line.startswith("PROGRESS "):
            _, fraction, *message = line.split(" ", 2)
            self.fraction = float(fraction)
            self.message = message[0] if message else ""
        elif line.startswith("EVENT "):
            try:
                self.events.append(json.loads(line[len("EVENT ") :]))
            except json.JSONDecodeError:
                self.warnings.append(line)
        elif line.startswith("ERROR "):
            self.error = line[len("ERROR ") :]
        elif line.startswith("WARNING "):
            self.warnings.append(line[len("WARNING ") :])
        elif line == "DONE":
            self.fraction, self.message = 1.0, "done"
        elif line.strip() and not self.error:
            # Anything else (a crash's traceback, a library's print) is kept for the message.
            self.warnings.append(line.strip())

    def poll(self) -> JobStatus:
        """Read the job's reports so far (never blocks)."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            self._take(line)
        returncode = self.process.poll()
        running = returncode is None or self._reader.is_alive() or not self._lines.empty()
        if not running and returncode not in (0, None) and not self.error:
            tail = self.warnings[-1] if self.warnings else f"exit code {returncode}"
            self.error = f"the {self.label} process failed: {tail}"
        return JobStatus(
            running, self.fraction, self.message, returncode, self.error, list(self.events)
        )

    def wait(self, timeout: float | None = None, progress: ProgressCallback | None = None):
        """Block until the job ends (scripts and tests); returns the final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if progress is not None:
                progress(status.fraction, status.message)
            if not status.running:
                return status
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{self.label} job still running after {timeout} s")
            time.sleep(0.05)

    def cancel(self) -> None:
        """Stop the job now (its worker processes too) and remove its files."""
        if self.process.poll() is None:
            try:
                if os.name == "posix":
                    os.killpg(self.process.pid, 9)
                else:
                    self.process.kill()
            except ProcessLookupError:
                pass
            self.process.wait()
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the job's folder."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def finished_status(self) -> JobStatus:
        """The final status of an ended job; raises PrimageInputError when it is still running
        or failed (with the job's own message)."""
        status = self.poll()
        if status.running:
            raise PrimageInputError(f"the {self.label} job is still running")
        if status.error or status.returncode != 0:
            raise PrimageInputError(status.error or f"exit code {status.returncode}")
        return status
