"""CLI command of the annotation pipeline: ``instit-edge annotate`` (registered by cli.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from instit_edge.errors import InstitError


def register(app: typer.Typer, console, out) -> None:
    """Add ``annotate`` to the ``instit-edge`` app."""

    @app.command()
    def annotate(
        inputs: List[Path] = typer.Argument(..., help="Video files, folders of frames (one video each) and images."),
        teacher: str = typer.Option(..., "--teacher", help="OpenAI-compatible base URL of the teacher, e.g. "
                                                           "http://127.0.0.1:8080/v1 (`instit-edge serve`, vLLM, "
                                                           "llama-server, a hosted API)."),
        model: str = typer.Option(..., "--model", help="The teacher's model name."),
        out_dir: Path = typer.Option(..., "--out", help="Inst-IT Dataset folder to write; rerunning the command "
                                                        "into it resumes (cached replies are not asked again)."),
        api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                                  help="Environment variable holding the teacher's API key "
                                                       "(default: OPENAI_API_KEY when set)."),
        detector: str = typer.Option("auto", "--detector",
                                     help="auto (motion for videos, static for images) | motion | static | "
                                          "onnx:PATH | tflite:PATH | face | person | manual:BOXES"),
        every: int = typer.Option(1, "--every", help="Annotate every K-th frame (the marker sees them all)."),
        max_frames: int = typer.Option(32, "--max-frames", help="At most N annotated frames per video."),
        concurrency: int = typer.Option(4, "--concurrency", help="Teacher requests in flight (threads)."),
        qa_pairs: int = typer.Option(5, "--qa-pairs", help="QA pairs asked per video (0: none)."),
        max_tokens: int = typer.Option(1024, "--max-tokens", help="Reply length cap per request."),
        temperature: float = typer.Option(0.0, "--temperature", min=0.0, max=2.0, help="Teacher temperature."),
        retries: int = typer.Option(5, "--retries", help="Retries of a request on HTTP 429 / 5xx / connection "
                                                         "errors (exponential backoff, Retry-After honoured)."),
        backoff: float = typer.Option(1.0, "--backoff", min=0.0, help="First backoff delay in seconds."),
        fix_attempts: int = typer.Option(2, "--fix-attempts", help="Times a malformed reply is sent back with "
                                                                   "the error before the item is marked failed."),
        timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="Seconds per HTTP request."),
        style: str = typer.Option("box+id", "--style", help="How marks are drawn: box+id | id | box | mask+id | "
                                                            "contour+id"),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the prompts and the request count; call no "
                                                              "teacher, write nothing."),
    ):
        """Annotate your own videos and images the Inst-IT way with a teacher model -> an Inst-IT Dataset."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from .pipeline import annotate as run_annotate

        key = None
        if api_key_env is not None:
            key = os.environ.get(api_key_env, "").strip()
            if not key:
                raise InstitError(f"--api-key-env {api_key_env}: the variable is not set or empty")
        else:
            key = os.environ.get("OPENAI_API_KEY", "").strip() or None
        common = dict(teacher=teacher, model=model, api_key=key, detector=detector, every=every,
                      max_frames=max_frames, concurrency=concurrency, qa_pairs=qa_pairs, max_tokens=max_tokens,
                      temperature=temperature, retries=retries, backoff=backoff, fix_attempts=fix_attempts,
                      timeout=timeout, style=style)
        if dry_run:
            summary = run_annotate(inputs, out_dir, dry_run=True, echo=lambda s: out.print(s, markup=False, soft_wrap=True,
                                                                                          highlight=False),
                                   **common)
            out.print_json(json.dumps(summary))
            return
        prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=console)
        task = prog.add_task("marking", total=None, counts="")

        def show(**kw):
            if not prog.live.is_started:  # started at the first news, so an early error stays the only line
                prog.start()
            prog.update(task, **kw)

        def on_marked(src):
            show(description=f"marked {src.label} ({len(src.frames)} frames kept)")

        def tick(s):
            show(description="annotate", total=s.planned, completed=s.done,
                 counts=f"ok {s.ok} failed {s.failed} cached {s.cached} retries {s.http_retries + s.fix_retries} "
                        f"tokens {s.tokens}")

        try:
            summary = run_annotate(inputs, out_dir, progress=tick, on_marked=on_marked,
                                   echo=lambda s: console.print(s, markup=False, highlight=False), **common)
        except BaseException:
            prog.live.transient = True  # the error line stays the only one
            raise
        finally:
            if prog.live.is_started:
                prog.stop()
        console.print(f"[green]wrote[/] {summary['out']}: {summary['images']} images, {summary['videos']} videos "
                      f"({summary['frames']} frames, {summary['qa_pairs']} QA pairs), "
                      f"{summary['requests']['tokens']} tokens, {summary['frames_per_minute']} frames/min")
        out.print_json(json.dumps(summary))
        if summary["failed_items"]:
            console.print(f"[yellow]{summary['failed_items']} items failed[/] (see "
                          f"{Path(summary['out']) / 'failed.json'}); rerun the same command to ask them again")
            raise typer.Exit(1)
