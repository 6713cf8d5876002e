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
# where `make demo` builds the default model's bundle; `ask` and `demo` use it when no bundle is given
DEFAULT_BUNDLE = Path("out") / "bundle"
# packing choices a manifest may record (runtime/anyres.py implements them)
POOL_MODES = ("average", "max", "bilinear")
UNPAD_ROUNDINGS = ("round7", "int")  # HF unpad_image, original LLaVA-NeXT
VIDEO_NEWLINE_POSITIONS = ("no_token", "one_token", "frame", "grid")


def default_bundle(bundle: str | Path | None) -> Path:
    """``bundle``, or the default bundle ``out/bundle`` when none is given and it exists."""
    if bundle is not None:
        return Path(bundle)
    if (DEFAULT_BUNDLE / MANIFEST).is_file():
        return DEFAULT_BUNDLE.absolute()
    raise InstitError(f"give a bundle directory (no default bundle at {DEFAULT_BUNDLE}: `make demo` builds it "
                      "from the embedded default model)")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, rel: str, **extra) -> dict:
    p = Path(root) / rel
    return {"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p), **extra}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def check_manifest(manifest, mpath) -> None:
    """Raise :class:`InstitError` naming the first field of ``bundle.json`` that a session could not use."""
    def bad(what: str):
        raise InstitError(f"{mpath}: {what}; re-export the bundle")

    if not isinstance(manifest, dict):
        bad(f"expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise InstitError(f"{mpath}: format_version {version!r} is not supported (expected {FORMAT_VERSION}); re-export")
    for key in ("architecture", "preprocess", "prompt", "files"):
        if key not in manifest:
            bad(f"missing field {key!r}")
        if not isinstance(manifest[key], dict):
            bad(f"field {key!r} must be an object, got {type(manifest[key]).__name__}")
    ctx = manifest["architecture"].get("context_length", 4096)
    if not _is_int(ctx) or ctx < 1:
        bad(f"architecture.context_length must be a positive integer, got {ctx!r}")
    pre = manifest["preprocess"]
    size = pre.get("image_size")
    if not _is_int(size) or size < 1:
        bad(f"preprocess.image_size must be a positive integer, got {size!r}")
    for key in ("image_mean", "image_std"):
        v = pre.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v)):
            bad(f"preprocess.{key} must be a list of 3 numbers, got {v!r}")
    if any(x == 0 for x in pre["image_std"]):
        bad("preprocess.image_std has a zero")
    resample = pre.get("resample", 3)
    if not _is_int(resample) or resample not in range(6):
        bad(f"preprocess.resample must be a PIL resampling filter 0-5, got {resample!r}")
    pins = pre.get("pinpoints")
    if pins is not None:
        if not (isinstance(pins, list) and pins and all(
                isinstance(p, list) and len(p) == 2 and all(_is_int(x) and x >= size and x % size == 0 for x in p)
                for p in pins)):
            bad(f"preprocess.pinpoints must be a list of [height, width] multiples of image_size {size}")
        patch = pre.get("patch_size")
        if not _is_int(patch) or patch < 1 or size % patch:
            bad(f"preprocess.patch_size must be a positive divisor of image_size {size}, got {patch!r}")
    video = pre.get("video", {})
    if not isinstance(video, dict):
        bad("preprocess.video must be an object")
    for key, lo in (("pool_stride", 1), ("max_frames", 1)):
        v = video.get(key, lo)
        if not _is_int(v) or v < lo:
            bad(f"preprocess.video.{key} must be an integer >= {lo}, got {v!r}")
    if video.get("pool_mode", "average") not in POOL_MODES:
        bad(f"preprocess.video.pool_mode must be one of {', '.join(POOL_MODES)}, got {video.get('pool_mode')!r}")
    if video.get("newline_position", "no_token") not in VIDEO_NEWLINE_POSITIONS:
        bad(f"preprocess.video.newline_position must be one of {', '.join(VIDEO_NEWLINE_POSITIONS)}, "
            f"got {video.get('newline_position')!r}")
    if not isinstance(video.get("pool_ceil", True), bool):
        bad(f"preprocess.video.pool_ceil must be true or false, got {video.get('pool_ceil')!r}")
    if pre.get("unpad_rounding", "round7") not in UNPAD_ROUNDINGS:
        bad(f"preprocess.unpad_rounding must be one of {', '.join(UNPAD_ROUNDINGS)}, got {pre.get('unpad_rounding')!r}")
    amax = pre.get("anyres_max")
    if amax is not None and (not _is_int(amax) or amax < 1):
        bad(f"preprocess.anyres_max must be null or an integer >= 1, got {amax!r}")
    prompt = manifest["prompt"]
    from .prompting import CHAT_TEMPLATES

    if prompt.get("template") not in CHAT_TEMPLATES:
        bad(f"prompt.template must be one of {', '.join(CHAT_TEMPLATES)}, got {prompt.get('template')!r}")
    token = prompt.get("image_token")
    if not isinstance(token, str) or not token.strip():
        bad(f"prompt.image_token must be text, got {token!r}")
    if not isinstance(prompt.get("add_bos"), bool):
        bad(f"prompt.add_bos must be true or false, got {prompt.get('add_bos')!r}")
    stop = prompt.get("stop", [])
    if not (isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
        bad(f"prompt.stop must be a list of strings, got {stop!r}")
    if prompt.get("question_format", "raw") not in ("raw", "official_oe"):
        bad(f"prompt.question_format must be raw or official_oe, got {prompt.get('question_format')!r}")
    mnt = prompt.get("max_new_tokens", 128)
    if not _is_int(mnt) or mnt < 1:
        bad(f"prompt.max_new_tokens must be a positive integer, got {mnt!r}")
    for group, entries in manifest["files"].items():
        if not isinstance(entries, dict):
            bad(f"files.{group} must be an object of variants")
        for name, e in entries.items():
            where = f"files.{group}.{name}"
            if not isinstance(e, dict):
                bad(f"{where} must be an object")
            rel = e.get("path")
            if not isinstance(rel, str) or not rel or "\x00" in rel:
                bad(f"{where}.path must be a file name, got {rel!r}")
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts or rel.startswith("~"):
                bad(f"{where}.path {rel!r} points outside the bundle")
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                bad(f"{where}.path is not valid UTF-8")
            if not _is_int(e.get("size")) or e["size"] < 0:
                bad(f"{where}.size must be a byte count, got {e.get('size')!r}")
            if not isinstance(e.get("sha256"), str):
                bad(f"{where}.sha256 must be a hex digest, got {e.get('sha256')!r}")


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
            manifest = json.loads(mpath.read_bytes().decode("utf-8"))
        except OSError as e:
            raise InstitError(f"cannot read {mpath}: {e.strerror or type(e).__name__}") from None
        except UnicodeDecodeError:
            raise InstitError(f"{mpath} is not UTF-8 text; re-export the bundle") from None
        except json.JSONDecodeError as e:
            raise InstitError(f"{mpath} is not valid JSON ({e.msg} at line {e.lineno}); re-export the bundle") from None
        except RecursionError:
            raise InstitError(f"{mpath} is not a bundle manifest (nested too deeply); re-export the bundle") from None
        check_manifest(manifest, mpath)
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
