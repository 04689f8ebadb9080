"""Pseudonyms for case folders: a user's map, or a keyed hash of the patient ID.

The keyed hash is HMAC-SHA256 of the patient ID with a secret only the user holds, so
the same patient always gets the same pseudonym, and nobody without the secret can
recompute it from a list of IDs (an unkeyed hash of a short ID can be reversed by trying
every ID). Messages here never contain a patient ID.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import re
from pathlib import Path

from primage.errors import PrimageInputError

#: Environment variable that may hold the secret (keeps it out of shell history).
SECRET_VARIABLE = "PRIMAGE_PSEUDONYM_SECRET"
MIN_SECRET_LENGTH = 16
PSEUDONYM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Pseudonymiser:
    """Patient ID -> pseudonym, from a map (``mapping``) or a keyed hash (``secret``)."""

    def __init__(self, *, mapping: dict[str, str] | None = None, secret: bytes | None = None):
        if (mapping is None) == (secret is None):
            raise PrimageInputError("give either a pseudonym map or a secret, not both")
        if secret is not None and len(secret) < MIN_SECRET_LENGTH:
            raise PrimageInputError(
                f"the pseudonym secret is too short ({len(secret)} bytes); use at least "
                f"{MIN_SECRET_LENGTH} random characters"
            )
        self.mapping = mapping
        self.secret = secret

    @property
    def method(self) -> str:
        return "map" if self.mapping is not None else "keyed hash (HMAC-SHA256)"

    def __call__(self, patient_id: str) -> str | None:
        """The pseudonym, or None when the map has no entry for this patient."""
        if self.mapping is not None:
            return self.mapping.get(patient_id.strip())
        digest = hmac.new(self.secret, patient_id.strip().encode("utf-8"), hashlib.sha256)
        return "P" + digest.hexdigest()[:12]


def read_secret(path: str | Path | None) -> bytes | None:
    """Secret from a file (first line, stripped) or from ``PRIMAGE_PSEUDONYM_SECRET``."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PrimageInputError(f"secret file does not exist: {path}")
        text = path.read_text("utf-8").strip().splitlines()
        secret = text[0].strip() if text else ""
        if not secret:
            raise PrimageInputError(f"secret file {path} is empty")
        return secret.encode("utf-8")
    value = os.environ.get(SECRET_VARIABLE, "").strip()
    return value.encode("utf-8") if value else None


def read_map(path: str | Path) -> dict[str, str]:
    """``patient_id -> pseudonym`` from a CSV with columns ``patient_id,pseudonym``.

    Refuses unsafe folder names, a pseudonym used for two patients, a patient listed twice
    and a pseudonym equal to the patient ID (it would not hide anything).
    """
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"pseudonym map does not exist: {path}")
    try:
        text = path.read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise PrimageInputError(
            f"pseudonym map {path} cannot be read as UTF-8 text: {error}"
        ) from None
    reader = csv.DictReader(io.StringIO(text))
    if not {"patient_id", "pseudonym"} <= set(reader.fieldnames or []):
        raise PrimageInputError(
            f"pseudonym map {path} needs the columns 'patient_id' and 'pseudonym'"
        )
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for line, row in enumerate(reader, start=2):
        patient = (row.get("patient_id") or "").strip()
        pseudonym = (row.get("pseudonym") or "").strip()
        if not patient and not pseudonym:
            continue
        if not patient or not pseudonym:
            raise PrimageInputError(
                f"pseudonym map {path} line {line}: empty patient_id or pseudonym"
            )
        if not PSEUDONYM_PATTERN.fullmatch(pseudonym):
            raise PrimageInputError(
                f"pseudonym map {path} line {line}: pseudonym must be 1-64 letters, digits, "
                "'.', '_' or '-' (a folder name), starting with a letter or digit"
            )
        if pseudonym == patient:
            raise PrimageInputError(
                f"pseudonym map {path} line {line}: the pseudonym equals the patient ID"
            )
        if patient in mapping:
            raise PrimageInputError(f"pseudonym map {path} line {line}: patient listed twice")
        if pseudonym in used:
            raise PrimageInputError(
                f"pseudonym map {path} line {line}: pseudonym {pseudonym!r} is used twice"
            )
        mapping[patient] = pseudonym
        used.add(pseudonym)
    if not mapping:
        raise PrimageInputError(f"pseudonym map {path} has no entries")
    return mapping


def pseudonymiser(map_path: str | Path | None, secret_path: str | Path | None) -> Pseudonymiser:
    """The pseudonymiser the user asked for; refuses to run without a map or a secret."""
    if map_path is not None and secret_path is not None:
        raise PrimageInputError("give either --pseudonym-map or --secret-file, not both")
    if map_path is not None:
        return Pseudonymiser(mapping=read_map(map_path))
    secret = read_secret(secret_path)
    if secret is None:
        raise PrimageInputError(
            "pseudonymisation needs a pseudonym map (--pseudonym-map MAP.csv) or a secret "
            f"for the keyed hash (--secret-file FILE or the {SECRET_VARIABLE} environment "
            "variable); keep the secret to get the same pseudonyms next time"
        )
    return Pseudonymiser(secret=secret)
