"""CLI command of the synthetic world: ``instit-edge synth`` (registered by cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import InstitError


def parse_image_size(image_size: str) -> tuple[int, ...] | None:
    """``"W,H"`` -> ``(W, H)``; ``"varied"`` -> None (mixed sizes); InstitError otherwise."""
    if image_size == "varied":
        return None
    try:
        return tuple(int(v) for v in image_size.split(","))
    except ValueError:
        raise InstitError(f"--image-size must be W,H (e.g. 128,128), got {image_size!r}") from None


def synth_world(out_dir: str | Path, *, seed: int = 0, images: int = 40, videos: int = 10,
                image_size: str = "128,128", force: bool = False, console=None) -> dict:
    """Build a synthetic Inst-IT world under ``out_dir`` (:func:`~instit_edge.data.synth.build_world`) with a
    progress bar on ``console`` (default: stderr); the summary gets the wall time in ``seconds``."""
    import time

    from rich.progress import Progress

    from ..terminal import console as default_console
    from .synth import build_world, world_units

    size = parse_image_size(image_size)
    t0 = time.perf_counter()
    with Progress(console=console or default_console) as prog:
        task = prog.add_task("synth", total=world_units(images, videos))
        summary = build_world(out_dir, seed=seed, n_images=images, n_videos=videos, force=force, image_size=size,
                              progress=lambda n=1: prog.advance(task, n))
    return {**summary, "seconds": round(time.perf_counter() - t0, 2)} if isinstance(summary, dict) else summary


def register(app: typer.Typer, console, out) -> None:
    """Add ``synth`` to the ``instit-edge`` app."""

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
        summary = synth_world(out_dir, seed=seed, images=images, videos=videos, image_size=image_size, force=force,
                              console=console)
        console.print(f"[green]wrote[/] {out_dir}")
        out.print_json(json.dumps(summary, default=str))
