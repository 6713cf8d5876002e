"""Facts about this machine that several stages report (doctor, model cards, benchmarks), and the one
small helper every command line uses (comma lists)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU feature flags (x86 ``flags`` / ARM ``Features`` in /proc/cpuinfo); empty when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable), or a huge number when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def package_version(dist: str) -> str | None:
    """The installed version of a distribution (``llama-cpp-python``, ``torch``, ...), or None."""
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - not installed, or broken metadata: unknown either way
        return None


def split_csv(csv: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma list from the command line."""
    return [s.strip() for s in csv.split(",") if s.strip()]
