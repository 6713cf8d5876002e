"""CLI commands about checkpoints: ``tiny`` (build one offline), ``convert`` (LLaVA-NeXT repo layout -> HF) and
``inspect`` (registered by cli.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from ..errors import InstitError
from ..terminal import tree_mb
from .families import detect, text_family

PROBE_IMAGE = (640, 480)  # (w, h)
PROBE_FRAMES = 8


def describe_original(info) -> list[tuple[str, str]]:
    """Rows of ``inspect`` for an original-layout checkpoint."""
    from .original_layout import image_rows, video_rows

    t = info.tower
    cfg = info.cfg
    n = t.image_size // t.patch_size
    img = image_rows(info, PROBE_IMAGE)
    hf_img = image_rows(info, PROBE_IMAGE, rounding="round7", anyres_max=False)
    if info.aspect == "anyres":
        packing = (f"AnyRes, tile {t.image_size} px ({n}x{n} rows), {len(info.pinpoints)} pinpoints (w x h) "
                   f"{_pins(info.pinpoints)}; base image first, tiles merged, unpad (int()), newline per row")
        if info.anyres_max:
            packing += f"; anyres_max_{info.anyres_max}: bilinear downsizing when sqrt(h*w/({info.anyres_max}*{n}^2)) > 1.1"
    else:
        packing = f"pad to square (mean colour), one tile of {t.image_size} px, {n}x{n} rows, no newline"
    v = info.video
    vid = video_rows(info, PROBE_FRAMES)
    src = "Inst-IT eval overrides" if info.instit else "config"
    export = (f"convert to HF {'LlavaNext' if info.hf_arch == 'llava_next' else 'Llava'} in a temporary folder, then "
              f"GGUF ({info.llm if info.llm != 'mistral' else 'llama'}) + ONNX vision; template {info.template}")
    notes = []
    if hf_img != img:
        notes.append(f"HF LlavaNext (the converted checkpoint, used by train and eval --backend torch) packs {hf_img} "
                     f"rows for 640x480 (no anyres_max downsizing, round(x, 7) unpad); exported bundles follow "
                     f"the original")
    if info.projector == "linear":
        notes.append("linear projector written as linear_1 + identity linear_2 (act 'linear')")
    return [
        ("layout", f"LLaVA-NeXT repo ({info.arch}, model_type {cfg.get('model_type')!r})"),
        ("family", f"{info.hf_arch} (original layout)"),
        ("LLM", f"{info.llm}: {cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
                f"vocab {info.shapes['model.embed_tokens.weight'][0][0]}"),
        ("vision tower", f"{t.kind} {t.name!r} from {t.source}: {t.num_hidden_layers} layers (from the weights), "
                         f"hidden {t.hidden_size}, patch {t.patch_size}, image {t.image_size}, feature layer "
                         f"{info.select_layer}, {info.select_feature if t.kind == 'clip' else 'all patches'}"),
        ("projector", info.projector),
        ("tokenizer", info.tokenizer_kind + "; `<image>` added on convert"),
        ("template", info.template),
        ("image packing", packing),
        ("video packing", f"{src}: pool {v['pool_mode']} stride {v['pool_stride']} "
                          f"({'ceil' if v['pool_mode'] == 'bilinear' else 'floor'}), newline {v['newline_position']}, "
                          f"max {v['max_frames']} frames; config: {json.dumps(info.video_config) or '{}'}"),
        ("rows: 640x480 image", str(img)),
        (f"rows: {PROBE_FRAMES} frames", str(vid)),
        ("export", export),
        *((("not reproduced by HF", "; ".join(notes)),) if notes else ()),
    ]


def _pins(p) -> str:
    s = ", ".join(f"{w}x{h}" for w, h in p[:6])
    return s + (f", ... ({len(p)})" if len(p) > 6 else "")


def _own_template(path: Path) -> str | None:
    """The supported template the checkpoint's own chat_template renders like (None: none of its own)."""
    from ..prompting import identify_chat_template

    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        f = path / name
        if not f.is_file():
            continue
        text = f.read_text(encoding="utf-8")
        jinja = text if name.endswith(".jinja") else json.loads(text).get("chat_template")
        if isinstance(jinja, list):  # several named templates
            jinja = next((t.get("template") for t in jinja if t.get("name") == "default"), None)
        if jinja:
            tcfg = json.loads((path / "tokenizer_config.json").read_text()) if (path / "tokenizer_config.json").is_file() else {}
            tok_str = lambda v: v.get("content") if isinstance(v, dict) else v
            return identify_chat_template(jinja, tok_str(tcfg.get("bos_token")), tok_str(tcfg.get("eos_token"))) or \
                "its own (none of the supported ones: pass --template)"
    return None


def describe_hf(path: Path, cfg: dict) -> list[tuple[str, str]]:
    from .original_layout import _tokenizer_kind

    v, tx = cfg.get("vision_config", {}), cfg.get("text_config", {})
    n = int(v.get("image_size", 0)) // max(int(v.get("patch_size", 1)), 1)
    fam = detect(cfg, str(path / "config.json"))
    pins = cfg.get("image_grid_pinpoints")
    orig = cfg.get("instit_original") or {}
    amax = orig.get("anyres_max") if orig else fam.anyres_max(cfg)
    rows = "?"
    if fam.anyres and pins:
        from .original_layout import select_best_resolution, unpadded_shape

        S = int(v["image_size"])
        w, h = select_best_resolution(PROBE_IMAGE, [[b, a] for a, b in pins])
        r, c = unpadded_shape(h // S * n, w // S * n, PROBE_IMAGE, orig.get("unpad_rounding", fam.unpad_rounding))
        times = math.sqrt(r * c / (amax * n * n)) if amax else 0
        if times > 1.1:  # anyres_max_N: the grid is shrunk bilinearly
            r, c = int(r // times), int(c // times)
        rows = str(n * n + r * (c + 1))
    elif not fam.anyres:
        rows = str(n * n + (1 if cfg.get("vision_feature_select_strategy") == "full" and "clip" in
                                  v.get("model_type", "") else 0))
    vid = {**fam.video, **(orig.get("video") or {})}
    side = math.ceil(n / 2) if vid["pool_mode"] == "bilinear" or not orig else n // 2
    frames = PROBE_FRAMES * side * side + {"grid": PROBE_FRAMES * side, "frame": PROBE_FRAMES, "one_token": 1,
                                           "no_token": 0}[vid["newline_position"]]
    packing = "one tile"
    if fam.anyres:
        packing = (f"AnyRes ({fam.title}: unpad {'int()' if orig.get('unpad_rounding') == 'int' else 'round(x, 7)'}, "
                   f"newline per row{f', anyres_max_{amax} bilinear downsizing' if amax else ''})")
    return [
        ("layout", "Hugging Face" + (f" (converted from {orig.get('source_arch')})" if orig else "")),
        ("family", f"{fam.name} ({fam.title})"),
        ("LLM", f"{tx.get('model_type')}: {tx.get('num_hidden_layers')} layers, hidden {tx.get('hidden_size')}, "
                f"vocab {tx.get('vocab_size')}"),
        ("vision tower", f"{v.get('model_type')}: {v.get('num_hidden_layers')} layers, hidden {v.get('hidden_size')}, "
                         f"patch {v.get('patch_size')}, image {v.get('image_size')}, feature layer "
                         f"{cfg.get('vision_feature_layer')}, {cfg.get('vision_feature_select_strategy')}"),
        ("tokenizer", _tokenizer_kind(path)),
        ("template", orig.get("template") or _own_template(path) or text_family(tx.get("model_type", "llama")).template),
        ("image packing", packing),
        ("video packing", f"{vid['pool_mode']} {vid['pool_stride']}x{vid['pool_stride']}, newline "
                          f"{vid['newline_position']}" + (" (from the original checkpoint)" if orig.get("video") else "")),
        ("rows: 640x480 image", rows),
        (f"rows: {PROBE_FRAMES} frames", str(frames)),
        ("export", "GGUF + ONNX vision directly"),
    ]


def describe_bundle(path: Path) -> list[tuple[str, str]]:
    from ..bundle import MANIFEST

    try:
        m = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InstitError(f"{path / MANIFEST} is not readable JSON; re-export the bundle") from None
    a, pre, pr = m.get("architecture", {}), m.get("preprocess", {}), m.get("prompt", {})
    files = m.get("files", {})
    return [
        ("layout", f"bundle (format {m.get('format_version')})"),
        ("source", json.dumps(m.get("source"))),
        ("family", str(a.get("arch"))),
        ("LLM", f"{a.get('llm')}: hidden {a.get('text_hidden')}, vocab {a.get('vocab_size')}; variants "
                f"{', '.join(sorted(files.get('llm', {})))}"),
        ("vision tower", f"{a.get('vision')}: {a.get('vision_layers')} layers, hidden {a.get('vision_hidden')}; "
                         f"variants {', '.join(sorted(files.get('vision', {})))}"),
        ("template", str(pr.get("template"))),
        ("image packing", f"tile {pre.get('image_size')}, pinpoints {pre.get('pinpoints')}"),
        ("video packing", json.dumps(pre.get("video"))),
    ]


def inspect_path(path: str | Path, vision_tower=None) -> list[tuple[str, str]]:
    from ..bundle import MANIFEST
    from .original_layout import inspect_original, is_original_layout, read_config

    p = Path(path)
    if not p.exists():
        raise InstitError(f"not found: {p} (give a checkpoint or bundle directory)")
    if not p.is_dir():
        raise InstitError(f"{p} is a file; give a checkpoint or bundle directory")
    if (p / MANIFEST).is_file():
        return describe_bundle(p)
    if not (p / "config.json").is_file():
        raise InstitError(f"{p} has neither config.json nor {MANIFEST}: not a checkpoint or bundle")
    cfg = read_config(p)
    if cfg is None:
        raise InstitError(f"{p / 'config.json'} is not readable JSON")
    if is_original_layout(cfg):
        return describe_original(inspect_original(p, cfg, vision_tower=vision_tower))
    from .loading import check_checkpoint

    check_checkpoint(p)
    return describe_hf(p, cfg)


def build_preset(out_dir: str | Path, preset: str = "tiny", *, arch: str | None = None, llm: str | None = None,
                 vision: str | None = None, seed: int = 0, force: bool = False, console=None) -> Path:
    """Build the checkpoint of a preset (``arch`` / ``llm`` / ``vision`` override the preset's) under ``out_dir``
    with a status line on ``console`` (default: stderr); InstitError on an unknown preset or choice."""
    from ..terminal import console as default_console
    from .tiny import build_tiny, preset_spec

    overrides = {k: v for k, v in (("arch", arch), ("llm", llm), ("vision", vision)) if v is not None}
    spec = preset_spec(preset, seed=seed, **overrides)  # validates
    with (console or default_console).status(f"building {preset} {spec.arch} ({spec.llm} + {spec.vision})"):
        return build_tiny(out_dir, spec, force=force)


def register(app: typer.Typer, console, out) -> None:
    @app.command()
    def tiny(
        out_dir: Path = typer.Option(..., "--out", help="Directory to write the checkpoint to."),
        preset: str = typer.Option("tiny", "--preset",
                                   help="tiny (test model) | edge (Qwen2-0.5B-sized LLM + ViT-B/16-224 SigLIP, "
                                        "benchmarks)"),
        arch: Optional[str] = typer.Option(None, help="llava | llava-next | llava-onevision (default: the preset's)"),
        llm: Optional[str] = typer.Option(None, help="llama | qwen2 (default: the preset's)"),
        vision: Optional[str] = typer.Option(None, help="clip | siglip (default: the preset's)"),
        seed: int = typer.Option(0, help="Weight seed."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    ):
        """Build a tiny LLaVA / LLaVA-Next checkpoint offline (random weights, real tokenizer and processor)."""
        p = build_preset(out_dir, preset, arch=arch, llm=llm, vision=vision, seed=seed, force=force, console=console)
        console.print(f"[green]wrote[/] {p} ({tree_mb(p):.1f} MB)")

    @app.command("convert")
    def convert_cmd(
        checkpoint: Path = typer.Argument(..., help="LLaVA-NeXT repo checkpoint (LlavaLlama/Mistral/QwenForCausalLM)."),
        out_dir: Path = typer.Option(..., "--out", help="Folder for the HF-format checkpoint."),
        vision_tower: Optional[Path] = typer.Option(
            None, "--vision-tower", help="The tower's HF folder (config.json) when mm_vision_tower is not local "
                                         "and not a known tower."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output (only once the new one is whole)."),
    ):
        """Convert an original LLaVA-NeXT repo checkpoint into a Hugging Face LLaVA / LLaVA-Next checkpoint."""
        from .original_layout import convert_original, is_original_layout, read_config

        if not checkpoint.is_dir():
            raise InstitError(f"checkpoint not found: {checkpoint} (give a local checkpoint directory)")
        cfg = read_config(checkpoint)
        if cfg is None:
            raise InstitError(f"{checkpoint} has no readable config.json")
        if not is_original_layout(cfg):
            raise InstitError(f"{checkpoint} is not in the LLaVA-NeXT repo layout (architectures "
                              f"{cfg.get('architectures')}); HF checkpoints need no conversion")
        with console.status(f"converting {checkpoint}"):
            p = convert_original(checkpoint, out_dir, vision_tower=vision_tower, force=force)
        console.print(f"[green]wrote[/] {p} ({tree_mb(p):.1f} MB)")

    @app.command("inspect")
    def inspect_cmd(
        path: Path = typer.Argument(..., help="A checkpoint (HF or LLaVA-NeXT repo layout) or a bundle."),
        vision_tower: Optional[Path] = typer.Option(None, "--vision-tower", help="As for `convert`."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of a table."),
    ):
        """Say what was detected (family, LLM, tower, tokenizer, template, packing, row counts) and what export will do."""
        rows = inspect_path(path, vision_tower=vision_tower)
        if as_json:
            out.print_json(json.dumps(dict(rows)))
            return
        from rich.table import Table

        t = Table(title=f"inspect {path}", show_header=False)
        t.add_column("what", style="bold")
        t.add_column("detected")
        for k, v in rows:
            t.add_row(k, v)
        out.print(t)
