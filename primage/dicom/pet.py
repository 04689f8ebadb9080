"""PET standardised uptake value (SUV body weight) from the DICOM radiopharmaceutical tags.

SUVbw (g/ml) = activity concentration (Bq/ml) x body weight (g) / injected dose (Bq), with
the dose decay-corrected to the time the image values refer to:

* DecayCorrection START: images are decay-corrected to the scan start (the series time,
  or the earliest acquisition time when the series time is later, as after
  reprocessing), so the dose is decayed from injection to scan start:
  ``dose x 2^(-(scan start - injection) / half-life)``;
* DecayCorrection ADMIN: images are corrected to the injection time, the dose is used
  as injected.

Anything else (units other than BQML or GML, DecayCorrection NONE or missing, no weight,
dose, half-life or injection time, images not attenuation-corrected, injection after
the scan) is refused with the reason: an SUV computed from guessed values looks right and
is wrong. Units GML means the values already are SUVbw.
"""

from __future__ import annotations

from dataclasses import dataclass

from primage.dicom.headers import date_time, parse_datetime


def _get(dataset, keyword):
    value = dataset.get(keyword)
    return None if value is None or value == "" else value


def pet_tags(dataset) -> dict:
    """The PET attributes SUV needs, as plain values (missing ones are None).

    Times are microseconds (see :mod:`primage.dicom.headers`); ``weight_kg`` kg,
    ``dose_bq`` Bq, ``half_life_s`` s.
    """
    info = dataset.get("RadiopharmaceuticalInformationSequence")
    item = info[0] if info is not None and len(info) else None

    def from_item(keyword):
        return None if item is None else _get(item, keyword)

    injection = None
    injection_source = None
    start_datetime = from_item("RadiopharmaceuticalStartDateTime")
    if start_datetime:
        injection = parse_datetime(start_datetime)
        injection_source = "RadiopharmaceuticalStartDateTime (0018,1078)"
    elif from_item("RadiopharmaceuticalStartTime"):
        # Only a time of day: the injection is taken to be on the series date.
        injection = date_time(
            _get(dataset, "SeriesDate"), from_item("RadiopharmaceuticalStartTime")
        )
        injection_source = "RadiopharmaceuticalStartTime (0018,1072) on the series date"

    def number(value):
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    corrected = dataset.get("CorrectedImage")
    return {
        "units": str(_get(dataset, "Units") or "").strip().upper() or None,
        "decay_correction": str(_get(dataset, "DecayCorrection") or "").strip().upper() or None,
        "corrected_image": None if corrected is None else [str(v).upper() for v in corrected],
        "weight_kg": number(_get(dataset, "PatientWeight")),
        "dose_bq": number(from_item("RadionuclideTotalDose")),
        "half_life_s": number(from_item("RadionuclideHalfLife")),
        "injection_us": injection,
        "injection_source": injection_source,
        "series_us": date_time(_get(dataset, "SeriesDate"), _get(dataset, "SeriesTime")),
    }


class SuvRefused(Exception):
    """SUV cannot be computed correctly; the message says which tag is missing or wrong."""


@dataclass
class SuvFactor:
    """Multiply Bq/ml by ``factor`` to get SUVbw (g/ml).

    ``decay_factor`` is the fraction of the injected activity left at the reference time
    of the image values, ``uptake_s`` the time from injection to scan start (s).
    """

    factor: float
    decay_factor: float
    uptake_s: float
    half_life_s: float
    decay_correction: str
    units: str
    scan_start_source: str
    injection_source: str

    def record(self) -> dict:
        """JSON-ready description (no weight or dose: they are patient data)."""
        return {
            "quantity": "SUVbw",
            "units": "g/ml",
            "suv_factor_g_per_ml_per_bq_per_ml": self.factor,
            "decay_factor": self.decay_factor,
            "uptake_time_s": self.uptake_s,
            "half_life_s": self.half_life_s,
            "decay_correction": self.decay_correction,
            "source_units": self.units,
            "scan_start": self.scan_start_source,
            "injection_time": self.injection_source,
        }


def suv_factor(tags: dict, acquisition_us: list[int]) -> SuvFactor:
    """SUVbw factor from :func:`pet_tags` and the frames' acquisition times (microseconds).

    Raises :class:`SuvRefused` with the reason when a needed tag is missing or unusable.
    """
    units = tags.get("units")
    if units == "GML":
        return SuvFactor(1.0, 1.0, 0.0, tags.get("half_life_s") or 0.0, "n/a", "GML", "n/a", "n/a")
    if units != "BQML":
        raise SuvRefused(
            f"PET units (0054,1001) are {units or 'missing'}; SUV needs activity concentration "
            "in Bq/ml (BQML)"
        )
    corrected = tags.get("corrected_image")
    if corrected is not None and "ATTN" not in corrected:
        raise SuvRefused("PET images are not attenuation-corrected (no ATTN in CorrectedImage)")
    decay = tags.get("decay_correction")
    if decay is None:
        raise SuvRefused("PET series has no decay information: DecayCorrection (0054,1102) missing")
    if decay not in ("START", "ADMIN"):
        raise SuvRefused(
            f"PET DecayCorrection (0054,1102) is {decay}; only START and ADMIN are supported"
        )
    missing = [
        label
        for key, label in (
            ("weight_kg", "PatientWeight (0010,1030)"),
            ("dose_bq", "RadionuclideTotalDose (0018,1074)"),
            ("half_life_s", "RadionuclideHalfLife (0018,1075)"),
        )
        if not tags.get(key) or tags[key] <= 0
    ]
    if tags.get("injection_us") is None:
        missing.append("RadiopharmaceuticalStartTime (0018,1072) / StartDateTime (0018,1078)")
    if missing:
        raise SuvRefused("PET series lacks what SUV needs: " + ", ".join(missing))
    series = tags.get("series_us")
    earliest = min(acquisition_us) if acquisition_us else None
    if series is not None and (earliest is None or series <= earliest):
        start, start_source = series, "series time (0008,0031)"
    elif earliest is not None:
        start, start_source = earliest, "earliest acquisition time (0008,0032)"
    else:
        raise SuvRefused("PET series has neither a series time nor acquisition times (scan start)")
    uptake_s = (start - tags["injection_us"]) / 1e6
    if uptake_s < 0:
        raise SuvRefused(
            f"PET injection time is {-uptake_s:.0f} s after the scan start; check the "
            "radiopharmaceutical start time"
        )
    half_life = float(tags["half_life_s"])
    decay_factor = 2.0 ** (-uptake_s / half_life) if decay == "START" else 1.0
    factor = tags["weight_kg"] * 1000.0 / (tags["dose_bq"] * decay_factor)
    return SuvFactor(
        factor=factor,
        decay_factor=decay_factor,
        uptake_s=uptake_s,
        half_life_s=half_life,
        decay_correction=decay,
        units=units,
        scan_start_source=start_source,
        injection_source=tags["injection_source"],
    )
