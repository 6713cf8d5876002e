"""CLI command of the exporter: ``instit-edge export MODEL --out BUNDLE`` (registered by cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..system import split_csv
from ..terminal import bundle_table, steps


def export_checkpoint(model: str, out_dir: str | Path, *, llm_types: str = "f16", vision_types: str = "fp32,fp16",
                      mmproj: bool = True, force: bool = False, template: str | None = None,
                      pre_tokenizer: str | None = None, console=None):
    """Check the checkpoint, then export it to a bundle (:func:`~instit_edge.export.bundle_writer.export_bundle`)
    with a progress bar on ``console`` (default: stderr); ``llm_types`` / ``vision_types`` are comma lists.
    Returns the :class:`~instit_edge.bundle.Bundle`."""
    from ..models.loading import check_checkpoint
    from .bundle_writer import export_bundle

    check_checkpoint(model)
    lt, vt = tuple(split_csv(llm_types)), tuple(split_csv(vision_types))
    prog, step = steps(2 + len(lt) + len(vt) + int(mmproj), "export", console)
    with prog:
        return export_bundle(model, out_dir, force=force, llm_types=lt, vision_types=vt, mmproj=mmproj, progress=step,
                             template=template, pre_tokenizer=pre_tokenizer)


def register(app: typer.Typer, console, out) -> None:
    """Add ``export`` to the ``instit-edge`` app."""

    @app.command()
    def export(
        model: str = typer.Argument(..., help="Local HF checkpoint directory (or a hub name when online)."),
        out_dir: Path = typer.Option(..., "--out", help="Bundle directory to create."),
        llm_types: str = typer.Option("f16", "--llm-types", help="Comma list of GGUF types to write: f16, f32."),
        vision_types: str = typer.Option("fp32,fp16", "--vision-types", help="Comma list: fp32 (required), fp16."),
        mmproj: bool = typer.Option(True, "--mmproj/--no-mmproj",
                                    help="Also write mmproj.f16.gguf for llama.cpp tools."),
        force: bool = typer.Option(False, "--force",
                                   help="Replace an existing bundle (only once the new one is complete)."),
        template: str = typer.Option(None, "--template", help="Chat template (vicuna_v1, chatml, qwen_1_5, "
                                     "mistral_instruct, llava_llama_3); default: the checkpoint's own, else the "
                                     "family's."),
        pre_tokenizer: str = typer.Option(None, "--pre-tokenizer", help="llama.cpp BPE pre-tokenizer name (gpt-2, "
                                          "llama-bpe, qwen2, smollm, ...); default: detected as llama.cpp's "
                                          "converter does."),
    ):
        """Export a LLaVA / LLaVA-Next checkpoint to an edge bundle (GGUF LLM + ONNX vision + mmproj + manifest)."""
        b = export_checkpoint(model, out_dir, llm_types=llm_types, vision_types=vision_types, mmproj=mmproj,
                              force=force, template=template, pre_tokenizer=pre_tokenizer, console=console)
        out.print(bundle_table(b))
