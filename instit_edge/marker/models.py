"""Detector model files for the mediapipe detectors, fetched once into a local cache.

mediapipe 1.2.x ships no models, and no model hub is reachable from a device
build farm; the mediapipe **0.10.21** wheel on the package registry still
carries the BlazeFace short-range face detector and the selfie segmentation
model (Apache-2.0), and they run under the current Tasks API. So
``instit-edge models`` does::

    pip download mediapipe==0.10.21 --no-deps --only-binary=:all:   (the wheel only, nothing installed)
    unzip the two .tflite files -> CACHE/face_detection_short_range.tflite, CACHE/selfie_segmentation.tflite
    CACHE/models.json   (name, file, size, sha256, source wheel)

The wheel is platform-specific but the ``.tflite`` files are identical in all
of them; when the current interpreter has no matching wheel (Python >= 3.13)
a manylinux / CPython 3.12 wheel is requested explicitly. ``--wheel PATH``
extracts from a wheel already on disk (offline). The cache is
``$INSTIT_EDGE_MODELS``, else ``$XDG_CACHE_HOME/instit-edge/models``, else
``~/.cache/instit-edge/models``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from instit_edge.errors import InstitError

MEDIAPIPE_WHEEL = "mediapipe==0.10.21"
#: detector name -> file name inside the wheel (found by basename) and in the cache
MODEL_FILES = {"face": "face_detection_short_range.tflite", "person": "selfie_segmentation.tflite"}
#: pip platform arguments tried after the current interpreter's own tags
_FALLBACK_TAGS = (
    ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--platform", "manylinux_2_28_x86_64"],
    ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--platform", "manylinux_2_17_x86_64"],
)


def cache_dir() -> Path:
    env = os.environ.get("INSTIT_EDGE_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "instit-edge" / "models"


def model_path(name: str, cache: Path | None = None) -> Path:
    """Path of a cached model for detector ``name`` (``face`` / ``person``); InstitError when absent."""
    if name not in MODEL_FILES:
        raise InstitError(f"no bundled model for detector {name!r} (known: {', '.join(MODEL_FILES)})")
    p = Path(cache or cache_dir()) / MODEL_FILES[name]
    if not p.is_file():
        raise InstitError(f"the {name!r} detector model is not in {p.parent} (run `instit-edge models` once, "
                          "or give your own model with --detector tflite:PATH)")
    return p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_models(wheel, cache: Path | None = None) -> dict[str, Path]:
    """Copy the face / person ``.tflite`` files out of a mediapipe wheel into the cache (atomic per file)."""
    from instit_edge.atomic import atomic_path, write_json

    wheel = Path(wheel)
    cache = Path(cache or cache_dir())
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise InstitError(f"cannot read wheel {wheel}: {e} (give a mediapipe .whl file)") from None
    found: dict[str, Path] = {}
    manifest = []
    with zf:
        members = {Path(n).name: n for n in zf.namelist()}
        for name, fname in MODEL_FILES.items():
            member = members.get(fname)
            if member is None:
                continue
            target = cache / fname
            with atomic_path(target) as tmp:
                tmp.write_bytes(zf.read(member))
            found[name] = target
            manifest.append({"name": name, "file": fname, "size": target.stat().st_size,
                             "sha256": _sha256(target), "source": f"{wheel.name}:{member}"})
    if not found:
        raise InstitError(f"wheel {wheel} has none of {', '.join(MODEL_FILES.values())} "
                          f"(use the {MEDIAPIPE_WHEEL} wheel)")
    write_json(cache / "models.json", {"models": manifest})
    return found


def download_wheel(dest: Path) -> Path:  # pragma: no cover - needs the network
    """``pip download`` the mediapipe 0.10.21 wheel (no dependencies, nothing installed) into ``dest``."""
    base = [sys.executable, "-m", "pip", "download", MEDIAPIPE_WHEEL, "--no-deps", "--only-binary=:all:",
            "--dest", str(dest), "--quiet"]
    last = ""
    for extra in ([], *_FALLBACK_TAGS):
        r = subprocess.run(base + extra, capture_output=True, text=True)
        wheels = sorted(Path(dest).glob("mediapipe-*.whl"))
        if r.returncode == 0 and wheels:
            return wheels[0]
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        last = last[0]
    raise InstitError(f"could not download {MEDIAPIPE_WHEEL} with pip ({last[:160]}); download the wheel "
                      "elsewhere and run `instit-edge models --wheel PATH`")


def fetch_models(cache: Path | None = None, wheel: Path | None = None) -> dict[str, Path]:
    """Fill the cache: from ``wheel`` when given, else from a freshly downloaded wheel."""
    if wheel is not None:
        if not Path(wheel).is_file():
            raise InstitError(f"wheel not found: {wheel}")
        return extract_models(wheel, cache)
    with tempfile.TemporaryDirectory(prefix="instit-mp-") as tmp:  # pragma: no cover - needs the network
        return extract_models(download_wheel(Path(tmp)), cache)


def cached_models(cache: Path | None = None) -> dict[str, Path | None]:
    """Detector name -> cached file (None when missing)."""
    cache = Path(cache or cache_dir())
    return {n: (cache / f if (cache / f).is_file() else None) for n, f in MODEL_FILES.items()}
