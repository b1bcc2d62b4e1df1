"""Human sizes for quotas: "500M", "10G", "1.5T", "unlimited" (powers of 1024)."""
import re

from ironfs.errors import UsageError

UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """Bytes, or None for no limit."""
    if text.strip().lower() in ("unlimited", "none", "0"):
        return None
    m = SIZE_RE.match(text)
    if not m:
        raise UsageError(f"{text!r} is not a size.", "Write it like 500M, 10G, 1.5T or 'unlimited'.")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def format_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
