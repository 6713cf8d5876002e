"""CLI command of quantization: ``instit-edge quantize BUNDLE`` (registered by cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InstitError
from ..system import split_csv
from ..terminal import steps

IMATRIX_MODES = ("auto", "on", "off")


def quantize_variants(bundle: str | Path, *, llm: str = "", vision: str = "", calib: str | Path | None = None,
                      imatrix: str = "auto", model: str | None = None, gptq: bool = False, threads: int = 2,
                      console=None) -> list[dict]:
    """Add quantized variants to a bundle (:func:`~instit_edge.quant.recipe.quantize_bundle`, then GPTQ with
    ``gptq``) with a progress bar on ``console`` (default: stderr); ``llm`` / ``vision`` are comma lists.
    Returns one row per new variant (size, fidelity, fallbacks)."""
    from .recipe import quantize_bundle

    if imatrix not in IMATRIX_MODES:
        raise InstitError(f"--imatrix must be auto, on or off, got {imatrix!r}")
    lt, vt = split_csv(llm), split_csv(vision)
    prog, step = steps(1 + len(lt) + len(vt) + int(imatrix != "off" and bool(lt)) + int(gptq), "quantize", console)
    with prog:
        rows = quantize_bundle(bundle, lt, vt, calib=calib, imatrix=imatrix, model=model, n_threads=threads,
                               progress=step)
        if gptq:
            from .gptq import gptq_bundle

            rows += gptq_bundle(bundle, calib=calib, model=model, progress=step)
    return rows


def variants_table(bundle, rows: list[dict]):
    """The rows of :func:`quantize_variants` as a rich table."""
    from rich.table import Table

    t = Table(title=f"new variants in {bundle} (fidelity on held-out multimodal prompts)")
    for col in ("group", "variant", "size MB", "imatrix", "KLD", "top-1", "vision cos", "fallbacks"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["group"], r["variant"], f"{r['size_mb']:.2f}", str(r.get("imatrix", "")),
                  f"{r['kld']:.5f}" if "kld" in r else "", f"{r['top1']:.3f}" if "top1" in r else "",
                  f"{r['cosine']:.5f}" if "cosine" in r else "",
                  str(r.get("fallbacks", "")))
    return t


def register(app: typer.Typer, console, out) -> None:
    """Add ``quantize`` to the ``instit-edge`` app."""

    @app.command()
    def quantize(
        bundle: Path = typer.Argument(..., help="Bundle directory (from `instit-edge export`)."),
        llm: str = typer.Option("", "--llm", help="Comma list of GGUF types, e.g. q8_0,q6_k,q5_k_m,q4_k_m,iq4_xs."),
        vision: str = typer.Option("", "--vision",
                                   help="Comma list of ONNX types: int8, int8s (static), int4, int4-hqq, fp16."),
        calib: Optional[Path] = typer.Option(None, "--calib",
                                             help="Inst-IT Bench dir for calibration (default: synthetic)."),
        imatrix: str = typer.Option("auto", "--imatrix", help="Multimodal importance matrix: auto | on | off."),
        model: Optional[str] = typer.Option(None, "--model", help="Source HF checkpoint (default: the bundle's source)."),
        gptq: bool = typer.Option(False, "--gptq", help="Also run real GPTQ (gptqmodel) -> llm-gptq/ and llm.gptq.gguf."),
        threads: int = typer.Option(2, "--threads", min=1, help="CPU threads."),
    ):
        """Add quantized variants to a bundle (GGUF k-quants with a multimodal imatrix, ONNX int8/int4/fp16, GPTQ)."""
        rows = quantize_variants(bundle, llm=llm, vision=vision, calib=calib, imatrix=imatrix, model=model, gptq=gptq,
                                 threads=threads, console=console)
        out.print(variants_table(bundle, rows))
        if any(r.get("fallbacks") for r in rows):
            console.print("[yellow]warning:[/] some tensors fell back to another type (row size not a multiple of "
                          "the block size); see bundle.json recipe.fallbacks")
