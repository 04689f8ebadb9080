"""Work units and their content hashes: what makes the pipeline resumable.

A step of one case is a list of :class:`Unit` s (e.g. ``register/dwi``). A unit's key is
the SHA-256 of its input files' contents, its settings (canonical JSON) and the version
of its code (the unit's own version and the primage version). When a unit's manifest
entry (``OUT/<case>/<step>/step.json``) holds the same key and every output it listed is
still there with the same checksum, the unit is skipped; otherwise it runs, writes its
outputs (atomically, file by file) and only then records its entry. A run that is killed
midway therefore leaves every finished unit recorded and no unit half-recorded, and a
changed setting reruns the units that use it and, through the changed output hashes,
exactly the units downstream of them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primage import __version__
from primage.io import json_text, write_json

MANIFEST = "step.json"
#: Per case folder: the file digests of :class:`FileHashes`, kept between runs.
HASH_STORE = "file_hashes.json"


class FileHashes:
    """SHA-256 of files, remembered by (path, size, mtime).

    With ``store`` (a JSON file; :meth:`save` writes it) the digests outlive the process:
    a case's next run, or its next step in another process, does not read unchanged
    files again (a clinical case's images are 2-3 GB). A rewritten file has a new mtime
    (nanoseconds), so its old digest is not used: the rule make and git's index follow.
    """

    def __init__(self, store: str | Path | None = None) -> None:
        self._store = Path(store) if store is not None else None
        self._changed = False
        # Digest of the path -> (size, mtime in ns, SHA-256): the store's entries and every
        # file hashed since.
        self._entries: dict[str, tuple[int, int, str]] = {}
        if self._store is not None:
            try:
                entries = json.loads(self._store.read_text(encoding="utf-8"))
                self._entries = {
                    str(name): (int(size), int(mtime), str(digest))
                    for name, (size, mtime, digest) in entries.items()
                }
            except (OSError, ValueError, TypeError, AttributeError):
                self._entries = {}  # no store yet, or a damaged one: hash again

    def __call__(self, path: str | Path) -> str:
        path = Path(path)
        stat = path.stat()
        # Files are named by a digest of their path: folder names can identify a patient,
        # and outputs must not.
        name = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:32]
        entry = self._entries.get(name)
        if entry is not None and entry[:2] == (stat.st_size, stat.st_mtime_ns):
            return entry[2]
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        self._entries[name] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
        self._changed = True
        return self._entries[name][2]

    def save(self) -> None:
        """Write the store (atomically) if a file was hashed since it was read."""
        if self._store is None or not self._changed:
            return
        write_json({name: list(entry) for name, entry in self._entries.items()}, self._store)
        self._changed = False


def settings_digest(settings: Any) -> str:
    """SHA-256 of settings as canonical JSON (key order does not matter)."""
    text = json.dumps(json.loads(json_text(settings)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Unit:
    """One piece of work of a step.

    ``inputs``: name -> file (hashed by content); ``settings``: everything else that
    changes the result (JSON-ready); ``version``: bump when the unit's code changes its
    output; ``run(folder) -> dict[name, Path]`` writes the outputs into the step folder and
    returns them (they must be inside ``folder``); ``details`` from the run are kept in
    the manifest (e.g. a QC verdict) and returned on a skip too.
    """

    name: str
    inputs: dict[str, Path]
    settings: dict[str, Any]
    version: str
    run: Callable[[Path], tuple[dict[str, Path], dict[str, Any]]]

    def key(self, hashes: FileHashes) -> tuple[str, dict[str, str]]:
        """The unit's content key and the hashes of its inputs."""
        input_hashes = {name: hashes(path) for name, path in sorted(self.inputs.items())}
        record = {
            "unit": self.name,
            "version": self.version,
            "primage": __version__,
            "inputs": input_hashes,
            "settings": settings_digest(self.settings),
        }
        return settings_digest(record), input_hashes


@dataclass
class UnitOutcome:
    """What happened to a unit: ``state`` "done" (computed) or "up-to-date" (skipped)."""

    name: str
    state: str
    outputs: dict[str, Path]
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished: str = ""


def timestamp() -> str:
    """Local time with nanoseconds (ISO 8601), so timestamps of fast units still differ."""
    now = time.time_ns()
    seconds, fraction = divmod(now, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds)) + f".{fraction:09d}"


def read_manifest(folder: Path) -> dict[str, Any]:
    """The step manifest of a step folder (empty when absent or unreadable)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"units": {}}
    return data if isinstance(data.get("units"), dict) else {"units": {}}


def _outputs_intact(folder: Path, entry: Mapping[str, Any], hashes: FileHashes) -> bool:
    for recorded in entry.get("outputs", {}).values():
        path = folder / recorded["file"]
        if not path.is_file() or hashes(path) != recorded["sha256"]:
            return False
    return True


def run_unit(folder: Path, unit: Unit, hashes: FileHashes) -> UnitOutcome:
    """Run ``unit`` unless its manifest entry is current; record it after its outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    key, input_hashes = unit.key(hashes)
    manifest = read_manifest(folder)
    entry = manifest["units"].get(unit.name)
    if entry and entry.get("key") == key and _outputs_intact(folder, entry, hashes):
        outputs = {name: folder / item["file"] for name, item in entry["outputs"].items()}
        return UnitOutcome(
            unit.name, "up-to-date", outputs, entry.get("details", {}), 0.0, entry["finished"]
        )
    started = time.perf_counter()
    outputs, details = unit.run(folder)
    seconds = time.perf_counter() - started
    finished = timestamp()
    # Re-read: another unit of the same step may have recorded itself meanwhile.
    manifest = read_manifest(folder)
    manifest["units"][unit.name] = {
        "key": key,
        "version": unit.version,
        "inputs": input_hashes,
        "settings": unit.settings,
        "outputs": {
            name: {"file": Path(path).relative_to(folder).as_posix(), "sha256": hashes(path)}
            for name, path in outputs.items()
        },
        "details": details,
        "seconds": round(seconds, 4),
        "finished": finished,
    }
    write_json(manifest, folder / MANIFEST)
    return UnitOutcome(unit.name, "done", dict(outputs), details, seconds, finished)
