"""Arterial input functions (plasma concentration in mM against time in s).

* Population: Parker et al., Magn Reson Med 2006;56:993, whole-blood concentration, turned
  into plasma with the haematocrit; its time origin is shifted by ``delay_s``.
* Measured: a CSV file (time in s, plasma concentration in mM, one header line), or the
  mean blood curve inside a segment (a vessel), turned into plasma with the haematocrit.

Between samples a measured AIF is interpolated linearly; before its first sample and after
its last it is not extrapolated: it must cover the frames of the tissue curves.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from primage.errors import PrimageInputError

#: Parker et al. 2006 population AIF (time in minutes, concentration in mmol/L whole blood).
PARKER = {
    "A1": 0.809,  # mmol min
    "A2": 0.330,
    "T1": 0.17046,  # min
    "T2": 0.365,
    "sigma1": 0.0563,  # min
    "sigma2": 0.132,
    "alpha": 1.050,  # mmol
    "beta": 0.1685,  # 1/min
    "s": 38.078,  # 1/min
    "tau": 0.483,  # min
}
#: Typical haematocrit of large vessels (fraction).
HAEMATOCRIT = 0.42
#: Parker's first-pass peak comes T1 = 10.2 s after its time origin; its rise starts about
#: two widths (sigma1) earlier. Used to place the population AIF from a detected arrival.
PARKER_ONSET_S = (PARKER["T1"] - 2.0 * PARKER["sigma1"]) * 60.0


def parker_blood(t_s: np.ndarray, delay_s: float = 0.0) -> np.ndarray:
    """Parker population AIF, whole-blood concentration (mM) at times ``t_s`` (s)."""
    p = PARKER
    t = (np.asarray(t_s, dtype=float) - delay_s) / 60.0
    gaussians = sum(
        p[f"A{n}"]
        / (p[f"sigma{n}"] * math.sqrt(2 * math.pi))
        * np.exp(-((t - p[f"T{n}"]) ** 2) / (2 * p[f"sigma{n}"] ** 2))
        for n in (1, 2)
    )
    with np.errstate(over="ignore"):
        sigmoid = p["alpha"] * np.exp(-p["beta"] * t) / (1.0 + np.exp(-p["s"] * (t - p["tau"])))
    return gaussians + sigmoid


@dataclass(frozen=True)
class ArterialInput:
    """Plasma concentration (mM) of an arterial input function as a function of time (s).

    ``kind`` is ``"parker"`` (analytic, ``delay_s`` applied) or ``"sampled"`` (``times_s`` and
    ``plasma_mM`` interpolated linearly). ``source`` describes it for records.
    """

    kind: str
    source: str
    delay_s: float = 0.0
    haematocrit: float = HAEMATOCRIT
    times_s: np.ndarray | None = None
    plasma_mM: np.ndarray | None = None

    def plasma(self, t_s: np.ndarray) -> np.ndarray:
        """Plasma concentration (mM) at times ``t_s`` (s)."""
        t_s = np.asarray(t_s, dtype=float)
        if self.kind == "parker":
            return parker_blood(t_s, self.delay_s) / (1.0 - self.haematocrit)
        return np.interp(t_s - self.delay_s, self.times_s, self.plasma_mM)

    def check_covers(self, frame_times_s: np.ndarray) -> None:
        """Refuse a sampled AIF that does not span the frame times (after its delay)."""
        if self.kind == "parker":
            return
        first, last = self.times_s[0] + self.delay_s, self.times_s[-1] + self.delay_s
        tolerance = 1e-6 * max(1.0, abs(frame_times_s[-1]))
        if last < frame_times_s[-1] - tolerance:
            raise PrimageInputError(
                f"the AIF ({self.source}) ends at {last:g} s but the tissue curves run to "
                f"{frame_times_s[-1]:g} s; the AIF must cover every frame"
            )
        if first > frame_times_s[0] + tolerance:
            raise PrimageInputError(
                f"the AIF ({self.source}) starts at {first:g} s, after the first frame at "
                f"{frame_times_s[0]:g} s; the AIF must cover every frame"
            )

    def describe(self) -> dict:
        """JSON-ready description."""
        record = {"kind": self.kind, "source": self.source, "delay_s": round(self.delay_s, 4)}
        if self.kind == "parker":
            record |= {"haematocrit": self.haematocrit, "parameters": dict(PARKER)}
        else:
            record |= {"samples": int(self.times_s.size)}
        return record


def population_aif(delay_s: float = 0.0, haematocrit: float = HAEMATOCRIT) -> ArterialInput:
    """Parker population AIF (plasma) with its time origin at ``delay_s`` (s)."""
    if not 0.0 <= haematocrit < 1.0:
        raise PrimageInputError(f"haematocrit must be in [0, 1), got {haematocrit}")
    return ArterialInput("parker", "Parker 2006 population AIF", float(delay_s), haematocrit)


def sampled_aif(
    times_s: np.ndarray, plasma_mM: np.ndarray, source: str = "curve", delay_s: float = 0.0
) -> ArterialInput:
    """A measured plasma AIF from samples (times strictly increasing, values finite)."""
    times_s = np.asarray(times_s, dtype=float).ravel()
    plasma_mM = np.asarray(plasma_mM, dtype=float).ravel()
    if times_s.size != plasma_mM.size or times_s.size < 2:
        raise PrimageInputError(f"the AIF ({source}) needs at least two (time, value) samples")
    if not (np.all(np.isfinite(times_s)) and np.all(np.isfinite(plasma_mM))):
        raise PrimageInputError(f"the AIF ({source}) has non-finite times or values")
    if np.any(np.diff(times_s) <= 0):
        raise PrimageInputError(f"the AIF ({source}) times must be strictly increasing")
    return ArterialInput("sampled", source, float(delay_s), times_s=times_s, plasma_mM=plasma_mM)


def aif_from_blood_curve(
    times_s: np.ndarray, blood_mM: np.ndarray, haematocrit: float = HAEMATOCRIT, source="segment"
) -> ArterialInput:
    """A measured AIF from a whole-blood curve (e.g. the mean inside a vessel segment)."""
    if not 0.0 <= haematocrit < 1.0:
        raise PrimageInputError(f"haematocrit must be in [0, 1), got {haematocrit}")
    return sampled_aif(times_s, np.asarray(blood_mM, float) / (1.0 - haematocrit), source)


def read_aif_csv(path: str | Path) -> ArterialInput:
    """AIF from a CSV file: a header line, then rows of time (s), plasma concentration (mM)."""
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"AIF file does not exist: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = [row for row in csv.reader(stream) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PrimageInputError(f"cannot read AIF file {path}: {error}") from None
    if len(rows) < 3:
        raise PrimageInputError(
            f"AIF file {path} needs a header line and at least two rows of time (s), "
            "concentration (mM)"
        )
    times, values = [], []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) < 2:
            raise PrimageInputError(f"AIF file {path}, line {number}: two columns expected")
        try:
            times.append(float(row[0]))
            values.append(float(row[1]))
        except ValueError:
            raise PrimageInputError(
                f"AIF file {path}, line {number}: {row[:2]} are not two numbers"
            ) from None
    return sampled_aif(np.array(times), np.array(values), source=f"file {path.name}")
