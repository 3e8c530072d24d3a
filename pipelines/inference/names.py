"""Output names from case names a client or a folder supplied: never a path as it stands.

A served row's ``case`` is whatever the client sent, and ``medflow predict``
names outputs after input files. Either becomes ``<output>/<name>.nii.gz``, so
a name is reduced to letters, digits, ``.``, ``_`` and ``-`` first: separators,
``..``, control characters and leading dots cannot survive, and two cases never
share a file (later ones get ``-2``, ``-3``, compared without case because some
file systems ignore it).
"""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_LENGTH = 120  # room for suffixes like "_explanation.nii.gz" under the usual 255-byte limit


def safe_name(name, fallback: str) -> str:
    """``name`` as a single path component of safe characters, or ``fallback`` when nothing is left.

    >>> safe_name("../escaped", "case_0"), safe_name(".hidden", "x"), safe_name("a/b\\x00c", "x")
    ('_escaped', 'hidden', 'a_b_c')
    """
    text = "" if name is None else unicodedata.normalize("NFKC", str(name))
    text = _UNSAFE.sub("_", text).lstrip(".")[:MAX_LENGTH].rstrip(".")
    return text if text.strip("_") else fallback


def unique_names(names, fallbacks) -> list[str]:
    """:func:`safe_name` of each name, made distinct: a repeat gets ``-2``, ``-3``... (case-blind)."""
    out, seen = [], set()
    for name, fallback in zip(names, fallbacks):
        base = safe_name(name, fallback)
        candidate, k = base, 2
        while candidate.lower() in seen:
            candidate, k = f"{base}-{k}", k + 1
        seen.add(candidate.lower())
        out.append(candidate)
    return out
