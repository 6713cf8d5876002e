"""The edge bundle: a directory with a manifest (``bundle.json``) and model files.

``bundle.json`` records the format version, the source model, the
architecture, the preprocessing, the prompt template, the image-token rules
and every file with its size and sha256, grouped into variants:

- ``llm``: GGUF text models by name (``f16``, ``f32``, ``q4_k_m``, ...)
- ``vision``: ONNX vision tower + projector by name (``fp32``, ``fp16``, ``int8``, ...)
- ``extra``: other files (``mmproj``, ``image_newline``, ...)

This module imports nothing heavy: devices load bundles without torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InstitError

FORMAT_VERSION = 1
MANIFEST = "bundle.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, rel: str, **extra) -> dict:
    p = Path(root) / rel
    return {"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p), **extra}


@dataclass
class Bundle:
    root: Path
    manifest: dict = field(default_factory=dict)

    # --- loading -----------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> "Bundle":
        root = Path(root)
        if not root.is_dir():
            raise InstitError(f"bundle not found: {root} (create one with `instit-edge export MODEL --out {root}`)")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise InstitError(f"{mpath} is missing: not a bundle (re-run `instit-edge export`)")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InstitError(f"{mpath} is not valid JSON ({e.msg} at line {e.lineno}); re-export the bundle") from None
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise InstitError(f"{mpath}: format_version {version!r} is not supported (expected {FORMAT_VERSION}); re-export")
        for key in ("architecture", "preprocess", "prompt", "files"):
            if key not in manifest:
                raise InstitError(f"{mpath}: missing field {key!r}; re-export the bundle")
        b = cls(root, manifest)
        if verify:
            b.verify()
        return b

    def verify(self, names: list[str] | None = None) -> None:
        """Check size and sha256 of every listed file (or only ``names``)."""
        for entries in self.manifest["files"].values():
            for entry in entries.values():
                if names is not None and entry["path"] not in names:
                    continue
                self._verify_entry(entry)

    def _verify_entry(self, entry: dict) -> None:
        p = self.root / entry["path"]
        if not p.is_file():
            raise InstitError(f"bundle file missing: {p} (re-export or re-quantize the bundle)")
        if p.stat().st_size != entry["size"]:
            raise InstitError(
                f"bundle file {p} has size {p.stat().st_size}, manifest says {entry['size']}: "
                "the file is truncated or tampered; re-export it"
            )
        if sha256_file(p) != entry["sha256"]:
            raise InstitError(f"bundle file {p} fails its sha256 check: the file is corrupt or tampered; re-export it")

    # --- access ------------------------------------------------------------
    def variants(self, group: str) -> list[str]:
        return list(self.manifest["files"].get(group, {}))

    def path(self, group: str, name: str) -> Path:
        entries = self.manifest["files"].get(group, {})
        if name not in entries:
            avail = ", ".join(entries) or "none"
            raise InstitError(f"{group} variant {name!r} is not in bundle {self.root} (available: {avail})")
        return self.root / entries[name]["path"]

    def entry(self, group: str, name: str) -> dict:
        self.path(group, name)
        return self.manifest["files"][group][name]

    @property
    def architecture(self) -> dict:
        return self.manifest["architecture"]

    @property
    def preprocess(self) -> dict:
        return self.manifest["preprocess"]

    @property
    def prompt(self) -> dict:
        return self.manifest["prompt"]

    # --- writing -----------------------------------------------------------
    def add_file(self, group: str, name: str, rel: str, **extra) -> None:
        self.manifest.setdefault("files", {}).setdefault(group, {})[name] = file_entry(self.root, rel, **extra)

    def save(self) -> None:
        from .atomic import write_json

        write_json(self.root / MANIFEST, self.manifest)

    def describe(self) -> list[tuple[str, str, str, int]]:
        rows = []
        for group, entries in self.manifest["files"].items():
            for name, e in entries.items():
                rows.append((group, name, e["path"], e["size"]))
        return rows
