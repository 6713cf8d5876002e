"""CLI command of the device runtime: ``instit-edge ask BUNDLE -q QUESTION --image/--video`` (registered by cli.py).

No torch here or in what it calls: ``ask`` is the device path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from ..errors import InstitError
from ..terminal import bundle_table


def ask_bundle(bundle: str | Path | None, question: str | None, *, image: str | Path | None = None,
               video: str | Path | None = None, llm: str = "f16", vision: str = "fp32", max_new_tokens: int = 128,
               temperature: float = 0.0, threads: int | None = None, gpu_layers: int = 0,
               max_tiles: int | None = None, oe: bool = False, verify: bool = True,
               on_piece: Callable[[str], None] | None = None) -> dict:
    """Answer ``question`` about an image or a video with a bundle (default: out/bundle) through
    :class:`~instit_edge.runtime.session.EdgeSession`; ``oe`` wraps it in the official open-ended prompt.
    ``on_piece`` gets every streamed piece. Returns ``{"answer": ..., **timings}``; InstitError on a missing
    question or medium, before the model loads."""
    from ..bundle import Bundle, default_bundle

    b = Bundle.load(default_bundle(bundle), verify=False)
    if not question:
        raise InstitError("give a question with --question")
    if image is None and video is None:
        raise InstitError("give --image PATH or --video PATH_OR_FRAME_DIR")
    from .session import EdgeSession

    if oe:
        from ..prompting import build_oe_prompt

        question = build_oe_prompt(question, split="video" if video is not None else "image")

    s = EdgeSession.load(b, llm=llm, vision=vision, n_threads=threads, n_gpu_layers=gpu_layers, verify=verify)
    s.set_max_tiles(max_tiles)
    pieces = []
    for piece in s.stream(question, image=image, video=video, max_new_tokens=max_new_tokens, temperature=temperature):
        pieces.append(piece)
        if on_piece is not None:
            on_piece(piece)
    return {"answer": "".join(pieces).strip(), **s.last_stats}


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def register(app: typer.Typer, console, out) -> None:
    """Add ``ask`` to the ``instit-edge`` app."""

    @app.command()
    def ask(
        bundle: Optional[Path] = typer.Argument(None,
                                                help="Bundle directory (default: out/bundle, built by `make demo`)."),
        question: Optional[str] = typer.Option(None, "--question", "-q",
                                               help="The question, e.g. 'What is [2] holding?'"),
        image: Optional[Path] = typer.Option(None, "--image", help="An image (with marks drawn)."),
        video: Optional[Path] = typer.Option(None, "--video", help="A video file or a folder of frames."),
        llm: str = typer.Option("f16", "--llm", help="LLM variant (see --list), or auto (the one for this device)."),
        vision: str = typer.Option("fp32", "--vision", help="Vision variant (see --list), or auto."),
        max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1,
                                           help="Generation length cap (official: 128)."),
        temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy (the official protocol)."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads."),
        gpu_layers: int = typer.Option(0, "--gpu-layers", min=-1,
                                       help="LLM layers to offload to a GPU (llama.cpp GPU build; -1: all)."),
        as_json: bool = typer.Option(False, "--json", help="Print the answer with timings as JSON."),
        list_variants: bool = typer.Option(False, "--list", help="List the bundle's variants and exit."),
        max_tiles: Optional[int] = typer.Option(None, "--max-tiles", min=0,
                                                help="Image token budget: AnyRes grids of at most N tiles "
                                                     "(0 = the base image only)."),
        oe: bool = typer.Option(False, "--oe", help="Wrap the question in the official Inst-IT Bench open-ended "
                                                    "prompt (the form the embedded default model was trained on)."),
        no_verify: bool = typer.Option(False, "--no-verify", help="Skip sha256 checks (faster start)."),
    ):
        """Answer a question about an image or a video from a bundle (llama.cpp + ONNX Runtime, no torch)."""
        if list_variants:
            from ..bundle import Bundle, default_bundle

            out.print(bundle_table(Bundle.load(default_bundle(bundle), verify=False)))
            return
        res = ask_bundle(bundle, question, image=image, video=video, llm=llm, vision=vision,
                         max_new_tokens=max_new_tokens, temperature=temperature, threads=threads,
                         gpu_layers=gpu_layers, max_tiles=max_tiles, oe=oe, verify=not no_verify,
                         on_piece=None if as_json else _write)
        if as_json:
            print(json.dumps(res))
        else:
            sys.stdout.write("\n")
