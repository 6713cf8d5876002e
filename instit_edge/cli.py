"""The ``instit-edge`` command line.

Every user error is one line on stderr and exit code 2 (``--debug`` shows the
traceback). Heavy imports (torch, transformers) happen inside the commands
that need them, so ``ask`` on a device never imports torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import Progress

from .errors import InstitError
from .system import split_csv

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Instance-aware VLMs (Inst-IT) on edge devices: build, export, ask, mark, evaluate.",
)
console = Console(stderr=True)
out = Console()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    """instit-edge: export LLaVA / LLaVA-Next to GGUF + ONNX bundles and ask instance questions on device."""


class _QuietOnErrorProgress(Progress):
    """A progress bar that leaves nothing behind when the work fails, so the error stays the only line."""

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None:
            self.live.transient = True
        return super().__exit__(exc_type, exc_val, exc_tb)


def _steps(total: int, description: str):
    """A rich progress bar driven by named steps."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    prog = _QuietOnErrorProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
                                 transient=False)
    task = prog.add_task(description, total=total)

    def step(name: str) -> None:
        prog.update(task, advance=1, description=f"{description}: {name}")

    return prog, step


# --------------------------------------------------------------------------- doctor
@app.command()
def doctor(
    out_dir: Path = typer.Option(Path("out"), "--out", help="Where outputs will go (write access, free disk)."),
):
    """Report versions and capabilities; exit 1 when a required piece is missing (and say how to fix it)."""
    from .doctor import run_doctor

    rows, missing = run_doctor(out_dir)
    from rich.table import Table

    t = Table(title="instit-edge doctor")
    for col in ("component", "status", "detail"):
        t.add_column(col)
    for comp, ok, detail in rows:
        t.add_row(comp, "[green]ok[/]" if ok is True else ("[yellow]optional[/]" if ok is None else "[red]missing[/]"),
                  detail)
    out.print(t)
    if missing:
        for m in missing:
            console.print(f"[red]missing:[/] {m}")
        raise typer.Exit(1)


# --------------------------------------------------------------------------- tiny
@app.command()
def tiny(
    out_dir: Path = typer.Option(..., "--out", help="Directory to write the checkpoint to."),
    preset: str = typer.Option("tiny", "--preset",
                               help="tiny (test model) | edge (Qwen2-0.5B-sized LLM + ViT-B/16-224 SigLIP, benchmarks)"),
    arch: Optional[str] = typer.Option(None, help="llava | llava-next (default: the preset's)"),
    llm: Optional[str] = typer.Option(None, help="llama | qwen2 (default: the preset's)"),
    vision: Optional[str] = typer.Option(None, help="clip | siglip (default: the preset's)"),
    seed: int = typer.Option(0, help="Weight seed."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
):
    """Build a tiny LLaVA / LLaVA-Next checkpoint offline (random weights, real tokenizer and processor)."""
    from .models.tiny import build_tiny, preset_spec

    overrides = {k: v for k, v in (("arch", arch), ("llm", llm), ("vision", vision)) if v is not None}
    spec = preset_spec(preset, seed=seed, **overrides)  # validates
    arch, llm, vision = spec.arch, spec.llm, spec.vision
    with console.status(f"building {preset} {arch} ({llm} + {vision})"):
        p = build_tiny(out_dir, spec, force=force)
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    console.print(f"[green]wrote[/] {p} ({size / 1e6:.1f} MB)")


# --------------------------------------------------------------------------- synth
@app.command()
def synth(
    out_dir: Path = typer.Option(..., "--out", help="Directory for the synthetic world."),
    seed: int = typer.Option(0, help="World seed (same seed, same world)."),
    images: int = typer.Option(40, "--images", help="Number of still scenes."),
    videos: int = typer.Option(10, "--videos", help="Number of short videos."),
    image_size: str = typer.Option("128,128", "--image-size",
                                   help="W,H for every scene (default 128,128: what the embedded default model "
                                        "reads), or 'varied' for mixed sizes and aspect ratios."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
):
    """Build a synthetic Inst-IT world: marked scenes and videos, a bench (JSON + parquet) and a training set."""
    import time

    from rich.progress import Progress

    from .data.synth import build_world, world_units

    t0 = time.perf_counter()
    with Progress(console=console) as prog:
        task = prog.add_task("synth", total=world_units(images, videos))
        size = None
        if image_size != "varied":
            try:
                size = tuple(int(v) for v in image_size.split(","))
            except ValueError:
                raise InstitError(f"--image-size must be W,H (e.g. 128,128), got {image_size!r}") from None
        summary = build_world(out_dir, seed=seed, n_images=images, n_videos=videos, force=force, image_size=size,
                              progress=lambda n=1: prog.advance(task, n))
    summary = {**summary, "seconds": round(time.perf_counter() - t0, 2)} if isinstance(summary, dict) else summary
    console.print(f"[green]wrote[/] {out_dir}")
    out.print_json(json.dumps(summary, default=str))


# --------------------------------------------------------------------------- export
@app.command()
def export(
    model: str = typer.Argument(..., help="Local HF checkpoint directory (or a hub name when online)."),
    out_dir: Path = typer.Option(..., "--out", help="Bundle directory to create."),
    llm_types: str = typer.Option("f16", "--llm-types", help="Comma list of GGUF types to write: f16, f32."),
    vision_types: str = typer.Option("fp32,fp16", "--vision-types", help="Comma list: fp32 (required), fp16."),
    mmproj: bool = typer.Option(True, "--mmproj/--no-mmproj", help="Also write mmproj.f16.gguf for llama.cpp tools."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle (only once the new one is complete)."),
    template: str = typer.Option(None, "--template", help="Chat template (vicuna_v1, chatml, qwen_1_5, "
                                 "mistral_instruct, llava_llama_3); default: the checkpoint's own, else the family's."),
    pre_tokenizer: str = typer.Option(None, "--pre-tokenizer", help="llama.cpp BPE pre-tokenizer name (gpt-2, "
                                      "llama-bpe, qwen2, smollm, ...); default: detected as llama.cpp's converter does."),
):
    """Export a LLaVA / LLaVA-Next checkpoint to an edge bundle (GGUF LLM + ONNX vision + mmproj + manifest)."""
    from .export.bundle_writer import export_bundle
    from .models.loading import check_checkpoint

    check_checkpoint(model)
    lt, vt = tuple(split_csv(llm_types)), tuple(split_csv(vision_types))
    prog, step = _steps(2 + len(lt) + len(vt) + int(mmproj), "export")
    with prog:
        b = export_bundle(model, out_dir, force=force, llm_types=lt, vision_types=vt, mmproj=mmproj, progress=step,
                          template=template, pre_tokenizer=pre_tokenizer)
    _print_bundle(b)


def _print_bundle(b) -> None:
    from rich.table import Table

    t = Table(title=f"bundle {b.root}")
    for col in ("group", "variant", "file", "size"):
        t.add_column(col)
    for group, name, path, size in b.describe():
        t.add_row(group, name, path, f"{size / 1e6:.2f} MB")
    out.print(t)


# --------------------------------------------------------------------------- quantize
@app.command()
def quantize(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `instit-edge export`)."),
    llm: str = typer.Option("", "--llm", help="Comma list of GGUF types, e.g. q8_0,q6_k,q5_k_m,q4_k_m,iq4_xs."),
    vision: str = typer.Option("", "--vision", help="Comma list of ONNX types: int8, int8s (static), int4, int4-hqq, fp16."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Inst-IT Bench dir for calibration (default: synthetic)."),
    imatrix: str = typer.Option("auto", "--imatrix", help="Multimodal importance matrix: auto | on | off."),
    model: Optional[str] = typer.Option(None, "--model", help="Source HF checkpoint (default: the bundle's source)."),
    gptq: bool = typer.Option(False, "--gptq", help="Also run real GPTQ (gptqmodel) -> llm-gptq/ and llm.gptq.gguf."),
    threads: int = typer.Option(2, "--threads", min=1, help="CPU threads."),
):
    """Add quantized variants to a bundle (GGUF k-quants with a multimodal imatrix, ONNX int8/int4/fp16, GPTQ)."""
    from rich.table import Table

    from .quant.recipe import quantize_bundle

    if imatrix not in ("auto", "on", "off"):
        raise InstitError(f"--imatrix must be auto, on or off, got {imatrix!r}")
    lt, vt = split_csv(llm), split_csv(vision)
    prog, step = _steps(1 + len(lt) + len(vt) + int(imatrix != "off" and bool(lt)) + int(gptq), "quantize")
    with prog:
        rows = quantize_bundle(bundle, lt, vt, calib=calib, imatrix=imatrix, model=model, n_threads=threads,
                               progress=step)
        if gptq:
            from .quant.gptq import gptq_bundle

            rows += gptq_bundle(bundle, calib=calib, model=model, progress=step)
    t = Table(title=f"new variants in {bundle} (fidelity on held-out multimodal prompts)")
    for col in ("group", "variant", "size MB", "imatrix", "KLD", "top-1", "vision cos", "fallbacks"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["group"], r["variant"], f"{r['size_mb']:.2f}", str(r.get("imatrix", "")),
                  f"{r['kld']:.5f}" if "kld" in r else "", f"{r['top1']:.3f}" if "top1" in r else "",
                  f"{r['cosine']:.5f}" if "cosine" in r else "",
                  str(r.get("fallbacks", "")))
    out.print(t)
    if any(r.get("fallbacks") for r in rows):
        console.print("[yellow]warning:[/] some tensors fell back to another type (row size not a multiple of the "
                      "block size); see bundle.json recipe.fallbacks")


# --------------------------------------------------------------------------- train
@app.command()
def train(
    base: str = typer.Option(..., "--base", help="HF LLaVA / LLaVA-Next checkpoint to start from."),
    instit: Path = typer.Option(..., "--instit", help="Inst-IT Dataset (folder or JSON)."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory: checkpoints/, model/ (the final HF checkpoint)."),
    general: Optional[Path] = typer.Option(None, "--general", help="General data, LLaVA conversation JSON."),
    ratio: float = typer.Option(1.0, "--ratio", help="Share of Inst-IT samples in the mix, in (0, 1] (paper ~0.17)."),
    lora: int = typer.Option(0, "--lora", help="LoRA rank (0 = full fine-tuning of LLM + projector)."),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning (same as --lora 0)."),
    freeze_vision_layers: int = typer.Option(12, "--freeze-vision-layers", help="Freeze the first K vision layers."),
    lr: float = typer.Option(2e-4, "--lr"),
    epochs: float = typer.Option(1.0, "--epochs"),
    max_steps: int = typer.Option(0, "--max-steps", help="Stop after this many optimizer steps (0 = epochs)."),
    batch_size: int = typer.Option(1, "--batch-size"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    save_every: int = typer.Option(50, "--save-every", help="Checkpoint every N steps (resume picks the latest)."),
    seed: int = typer.Option(0, "--seed"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing"),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="Merge LoRA into the saved checkpoint."),
):
    """Continual Inst-IT instruction tuning (LoRA or full); rerun the same command to resume after a crash."""
    from .train.trainer import TrainConfig
    from .train.trainer import train as run_train

    if full and lora:
        raise InstitError("give --lora RANK or --full, not both")
    cfg = TrainConfig(base=base, instit=str(instit), out=str(out_dir), general=str(general) if general else None,
                      ratio=ratio, lora=lora, freeze_vision_layers=freeze_vision_layers, lr=lr, epochs=epochs,
                      max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, save_every=save_every,
                      seed=seed, gradient_checkpointing=gradient_checkpointing, merge=merge)
    r = run_train(cfg)
    console.print(f"[green]trained[/] {r['steps']} steps, final loss {r['losses'][-1]:.4f}, "
                  f"{r['samples_per_s'] or 0:.1f} samples/s -> {r['model']}")


# --------------------------------------------------------------------------- ask
@app.command()
def ask(
    bundle: Optional[Path] = typer.Argument(None, help="Bundle directory (default: out/bundle, built by `make demo`)."),
    question: Optional[str] = typer.Option(None, "--question", "-q", help="The question, e.g. 'What is [2] holding?'"),
    image: Optional[Path] = typer.Option(None, "--image", help="An image (with marks drawn)."),
    video: Optional[Path] = typer.Option(None, "--video", help="A video file or a folder of frames."),
    llm: str = typer.Option("f16", "--llm", help="LLM variant (see --list), or auto (the one for this device)."),
    vision: str = typer.Option("fp32", "--vision", help="Vision variant (see --list), or auto."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Generation length cap (official: 128)."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy (the official protocol)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads."),
    gpu_layers: int = typer.Option(0, "--gpu-layers", min=-1,
                                   help="LLM layers to offload to a GPU (llama.cpp GPU build; -1: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer with timings as JSON."),
    list_variants: bool = typer.Option(False, "--list", help="List the bundle's variants and exit."),
    max_tiles: Optional[int] = typer.Option(None, "--max-tiles", min=0,
                                            help="Image token budget: AnyRes grids of at most N tiles "
                                                 "(0 = the base image only)."),
    oe: bool = typer.Option(False, "--oe", help="Wrap the question in the official Inst-IT Bench open-ended prompt "
                                                "(the form the embedded default model was trained on)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip sha256 checks (faster start)."),
):
    """Answer a question about an image or a video from a bundle (llama.cpp + ONNX Runtime, no torch)."""
    from .bundle import Bundle, default_bundle

    b = Bundle.load(default_bundle(bundle), verify=False)
    if list_variants:
        _print_bundle(b)
        return
    if not question:
        raise InstitError("give a question with --question")
    if image is None and video is None:
        raise InstitError("give --image PATH or --video PATH_OR_FRAME_DIR")
    from .runtime.session import EdgeSession

    if oe:
        from .prompting import build_oe_prompt

        question = build_oe_prompt(question, split="video" if video is not None else "image")

    s = EdgeSession.load(b, llm=llm, vision=vision, n_threads=threads, n_gpu_layers=gpu_layers, verify=not no_verify)
    s.set_max_tiles(max_tiles)
    pieces = []
    for piece in s.stream(question, image=image, video=video, max_new_tokens=max_new_tokens, temperature=temperature):
        pieces.append(piece)
        if not as_json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if as_json:
        print(json.dumps({"answer": "".join(pieces).strip(), **s.last_stats}))
    else:
        sys.stdout.write("\n")


# The commands of the pipeline stages live beside their code; each stage module has ``register(app, console, out)``.
from .annotate import commands as _annotate_commands  # noqa: E402
from .bench import commands as _bench_commands  # noqa: E402
from .demo import commands as _demo_commands  # noqa: E402
from .eval import commands as _eval_commands  # noqa: E402
from .marker import commands as _marker_commands  # noqa: E402
from .models import commands as _models_commands  # noqa: E402
from .serve import commands as _serve_commands  # noqa: E402

for _stage in (_marker_commands, _eval_commands, _demo_commands, _bench_commands, _serve_commands, _models_commands,
               _annotate_commands):
    _stage.register(app, console=console, out=out)


# Arguments that may name a local checkpoint / input as a plain string (a hub name or a camera index otherwise).
_LOCAL_STRING_ARGS = ("model", "base", "target", "input")


def _absolute(value, name: str):
    """A user path made absolute (``~`` expanded, symlinks kept), so no later ``chdir`` changes its meaning."""
    if isinstance(value, Path):
        return Path(os.path.abspath(os.path.expanduser(value)))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Path) for v in value):
        return type(value)(_absolute(v, name) for v in value)
    if isinstance(value, str) and name in _LOCAL_STRING_ARGS and value and os.path.exists(os.path.expanduser(value)):
        return os.path.abspath(os.path.expanduser(value))
    return value


def _resolve_user_paths(command) -> None:
    """Wrap a registered command so every user path is resolved once, here at the CLI edge."""
    import functools

    fn = command.callback
    if fn is None or getattr(fn, "_paths_resolved", False):
        return

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **{k: _absolute(v, k) for k, v in kwargs.items()})

    wrapper._paths_resolved = True
    command.callback = wrapper


for _cmd in app.registered_commands:
    _resolve_user_paths(_cmd)


def main() -> None:
    import logging

    # torch / torchao announce deprecations on import; they are not the user's business
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:  # typer >= 0.24 carries its own copy of click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException

    debug = "--debug" in sys.argv
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # typer's own handling prints the help
            e.show()
            sys.exit(e.exit_code)
        # a usage error (unknown option, a value out of its range, ...): one line, like every other user error
        from rich.markup import escape

        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        console.print(f"[red]error:[/] {escape(' '.join(e.format_message().split()))}{escape(hint)}",
                      highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(1)
    except InstitError as e:
        if debug:
            raise
        from rich.markup import escape

        console.print(f"[red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
