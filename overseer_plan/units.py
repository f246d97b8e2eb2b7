"""Byte sizes: parse what users type, format for display.

Bytes are the only unit inside Overseer. Display uses 1024-based units
labelled GiB/MiB (never "GB" for 2**30; see torchtitan's CONTRIBUTING notes).
"""

from __future__ import annotations

import re

from overseer_plan.errors import UserInputError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
GB = 1000**3

_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": GB,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, *, what: str = "size") -> int:
    """Parse '8GiB', '512MiB', '16GB', '4g' or a plain byte count into bytes.

    A bare 'g'/'m'/'k' suffix is read as GiB/MiB/KiB, matching `ulimit`/`prlimit`.
    'GB' is decimal (10**9), 'GiB' binary (2**30).
    """
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UserInputError(f"{what}: cannot read {text!r} as a size; write e.g. 8GiB, 512MiB or 16GB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise UserInputError(f"{what}: {text!r} must be larger than zero")
    return int(value)


def fmt_bytes(n: int | float | None) -> str:
    """Format bytes with 1024-based units: '3.50 GiB', '812.0 MiB', '—' for None."""
    if n is None:
        return "—"
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TiB", 1024**4), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}" if unit in ("TiB", "GiB") else f"{sign}{n / size:.1f} {unit}"
    return f"{sign}{int(n)} B"
