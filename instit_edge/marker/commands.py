"""CLI commands of the marker: ``instit-edge mark`` and ``instit-edge models`` (registered by cli.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

from instit_edge.errors import InstitError


def mark_video(input, out: Path | None = None, jsonl: Path | None = None, *, detector: str = "motion",
               style: str = "box+id", max_frames: int | None = None, fps: float | None = None,
               progress=None, force: bool = False) -> dict:
    """Mark every frame of ``input`` (video file, frame folder, image, camera index) -> MP4 and/or JSONL.

    Both files are written under temporary names and renamed at the end, so
    a reader never sees half a file. A camera is read through
    :class:`~instit_edge.marker.live.LiveMarker` (stale frames dropped; stop
    with ``max_frames`` or Ctrl-C, which still finishes the files).
    ``progress``: optional ``callable(advance, total)``. Returns a summary.
    """
    import time

    import cv2
    import numpy as np

    from instit_edge.atomic import atomic_path
    from instit_edge.marker.live import LiveMarker
    from instit_edge.marker.pipeline import Marker
    from instit_edge.marker.sources import open_source

    if out is None and jsonl is None:
        raise InstitError("mark: give --out marked.mp4 and/or --json instances.jsonl")
    if max_frames is not None and max_frames < 1:
        raise InstitError(f"--max-frames must be at least 1 (got {max_frames})")
    if fps is not None and not 0 < fps <= 1000:
        raise InstitError(f"--fps must be a frame rate in (0, 1000] (got {fps})")
    if out is not None and Path(out).suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise InstitError(f"--out {out}: write an .mp4 file (the video is encoded with mp4v)")
    _guard_mark_outputs(input, out, jsonl, force)
    marker = Marker(detector, style=style)  # validates detector and style before the input is opened
    source = open_source(input, fps=fps)
    total = source.count if max_frames is None else min(max_frames, source.count or max_frames)
    t0 = time.perf_counter()
    stages = {"detect_ms": 0.0, "track_ms": 0.0, "render_ms": 0.0}
    ids: set[int] = set()
    n = 0
    interrupted = False
    live = None
    with contextlib.ExitStack() as stack:  # temp files are renamed into place only when the block succeeds
        vid_tmp = stack.enter_context(atomic_path(out, suffix=Path(out).suffix)) if out is not None else None
        js_tmp = stack.enter_context(atomic_path(jsonl, suffix=".jsonl")) if jsonl is not None else None
        writer = None
        jf = open(js_tmp, "w", encoding="utf-8") if js_tmp else None
        try:
            if source.live:
                live = LiveMarker(source, marker)
                frames = iter(live)
            else:
                frames = (marker.process(f, timestamp=ts) for ts, f in source)
            try:
                for mf in frames:
                    if writer is None and vid_tmp is not None:
                        h, w = mf.image.shape[:2]
                        writer = cv2.VideoWriter(str(vid_tmp), cv2.VideoWriter_fourcc(*"mp4v"), source.fps, (w, h))
                        if not writer.isOpened():
                            raise InstitError(f"cannot write video {out} (no mp4v encoder in this OpenCV build?)")
                    if writer is not None:
                        writer.write(cv2.cvtColor(np.ascontiguousarray(mf.image), cv2.COLOR_RGB2BGR))
                    if jf is not None:
                        jf.write(json.dumps(mf.to_dict()) + "\n")
                    for k in stages:
                        stages[k] += mf.timings[k]
                    ids.update(mf.ids)
                    n += 1
                    if progress is not None:
                        progress(1, total)
                    if max_frames is not None and n >= max_frames:
                        break
            except KeyboardInterrupt:
                if not source.live:
                    raise
                interrupted = True
        finally:
            if writer is not None:
                writer.release()
            if jf is not None:
                jf.close()
            if live is not None:
                live.stop()
            source.close()
            marker.close()
        if n == 0:
            raise InstitError(f"{source.describe()} gave no frames")
    secs = time.perf_counter() - t0
    summary = {"input": str(input), "frames": n, "ids": sorted(ids), "ids_issued": marker.tracker.ids_issued,
               "detector": detector, "style": style, "fps_in": round(source.fps, 3),
               "seconds": round(secs, 3), "fps": round(n / secs, 2) if secs > 0 else None,
               **{k: round(v / n, 3) for k, v in stages.items()},
               "out": str(out) if out else None, "json": str(jsonl) if jsonl else None}
    if live is not None:
        summary["dropped"] = live.dropped
    if interrupted:
        summary["interrupted"] = True
    return summary


def _guard_mark_outputs(input, out, jsonl, force: bool) -> None:
    """Never overwrite the input; replace an existing output only with ``force``; fail before any work."""
    import os

    from instit_edge.atomic import _is_within

    outs = [p for p in (out, jsonl) if p is not None]
    if len(outs) == 2 and os.path.abspath(outs[0]) == os.path.abspath(outs[1]):
        raise InstitError(f"--out and --json name the same file {outs[0]}; give two different files")
    for p in outs:
        p = Path(p)
        if os.path.exists(str(input)) and _is_within(p, input):
            raise InstitError(f"output {p} is the input (or inside it); write the result somewhere else")
        if p.is_dir():
            raise InstitError(f"output {p} is a folder; give a file name")
        if p.exists() and not force:
            raise InstitError(f"output exists: {p} (pass --force to replace it)")
        parent = p.parent if str(p.parent) else Path(".")
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InstitError(f"cannot write to {parent} (permission denied); choose another output path")


def register(app: typer.Typer, console, out) -> None:
    """Add ``mark`` and ``models`` to the ``instit-edge`` app."""

    @app.command()
    def mark(
        input: str = typer.Argument(..., help="Video file, folder of frames, image, or camera index (0, 1, ...)."),
        out_path: Optional[Path] = typer.Option(None, "--out", help="Marked video to write (.mp4, mp4v codec)."),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Per-frame instances as JSON lines."),
        detector: str = typer.Option("motion", "--detector",
                                     help="motion | static | onnx:PATH | tflite:PATH | face | person | "
                                          "manual:x0,y0,x1,y1;x,y"),
        style: str = typer.Option("box+id", "--style", help="box+id | id | box | mask+id | contour+id | none"),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after N frames."),
        fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of a frame folder (default 10)."),
        force: bool = typer.Option(False, "--force", help="Replace existing output files (never the input)."),
    ):
        """Detect, track and mark instances with persistent IDs; write a marked MP4 and a JSONL of instances."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]mark"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as prog:
            task = prog.add_task("mark", total=None)

            def step(advance, total):
                prog.update(task, advance=advance, total=total)

            summary = mark_video(input, out_path, json_path, detector=detector, style=style, max_frames=max_frames,
                                 fps=fps, progress=step, force=force)
        for key in ("out", "json"):
            if summary.get(key):
                console.print(f"[green]wrote[/] {summary[key]}")
        out.print_json(json.dumps(summary))

    @app.command()
    def models(
        wheel: Optional[Path] = typer.Option(None, "--wheel", help="Extract from this mediapipe wheel (offline)."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Model cache folder (default: ~/.cache/...)."),
        list_only: bool = typer.Option(False, "--list", help="Show the cache without downloading."),
    ):
        """Fetch the face / person detector models (.tflite) from the mediapipe 0.10.21 wheel into a local cache."""
        from instit_edge.marker.models import MEDIAPIPE_WHEEL, cache_dir, cached_models, fetch_models

        where = Path(cache or cache_dir())
        if not list_only:
            with console.status(f"fetching models from {wheel or MEDIAPIPE_WHEEL}"):
                fetch_models(where, wheel)
        rows = {name: (str(p) if p else None) for name, p in cached_models(where).items()}
        out.print_json(json.dumps({"cache": str(where), "models": rows}))
