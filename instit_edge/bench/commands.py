"""``instit-edge bench``: the benchmark command (the library part is :func:`instit_edge.bench.runner.run_benchmark`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InstitError
from ..system import split_csv


def _size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise InstitError(f"--image-size must look like 640x480, got {s!r}") from None
    return w, h


def register(app: typer.Typer, console, out) -> None:
    @app.command()
    def bench(
        target: str = typer.Argument(..., help="A bundle directory, or a preset (tiny, edge) to build under OUT/models."),
        out_dir: Path = typer.Option(..., "--out", help="Directory for results.json, report.md and the plots."),  # noqa: B008
        variants: str = typer.Option("f16,bf16,q8_0,q4_0,q4_k_m,gptq", "--variants", help="LLM variants to measure."),
        vision: str = typer.Option("fp32,int8", "--vision", help="Vision variants (the first pairs with every LLM)."),
        threads: int = typer.Option(2, "--threads", help="CPU threads for every backend."),
        reps: int = typer.Option(3, "--reps", help="Measured repetitions per configuration."),
        rounds: int = typer.Option(2, "--rounds", help="Split each configuration's repetitions over this many "
                                                       "rounds, in alternating order (A B, then B A)."),
        warmup: int = typer.Option(1, "--warmup", help="Warm-up runs per configuration (not measured)."),
        new_tokens: int = typer.Option(64, "--new-tokens", help="Tokens generated per answer (EOS ignored)."),
        baseline: str = typer.Option("eager,sdpa,sdpa-bf16", "--baseline",
                                     help="transformers baselines: eager, sdpa (fp32), eager-bf16, sdpa-bf16 "
                                          "('' = no baseline)."),
        baseline_reps: int = typer.Option(0, "--baseline-reps", help="Repetitions for the baseline (0 = --reps)."),
        image: Path = typer.Option(None, "--image", help="Image to ask about (default: a synthetic scene)."),  # noqa: B008
        question: str = typer.Option(None, "--question", "-q", help="Question (default: the scene's OE prompt)."),
        image_size: str = typer.Option("640x480", "--image-size", help="Size of the synthetic scene and marker frames."),
        mtmd: bool = typer.Option(True, "--mtmd/--no-mtmd", help="Time llama.cpp's own vision path (libmtmd)."),
        marker: bool = typer.Option(True, "--marker/--no-marker", help="Time the marker (if installed)."),
        profile: bool = typer.Option(True, "--profile/--no-profile", help="Where the prefill time goes: a perf "
                                     "profile of the deploy variant's prefill (needs linux-perf)."),
        quick: bool = typer.Option(False, "--quick", help="Reduced run: one repetition, no warm-up, 16 tokens."),
    ):
        """Benchmark a bundle against transformers fp32 and bf16, llama.cpp's vision path and the memory and
        compute rooflines."""
        from .runner import BenchConfig, run_benchmark

        if image is not None and not image.exists():
            raise InstitError(f"image not found: {image}")
        cfg = BenchConfig(target=target, out=out_dir, variants=split_csv(variants), vision=split_csv(vision),
                          threads=threads, reps=1 if quick else reps, rounds=rounds, warmup=0 if quick else warmup,
                          new_tokens=16 if quick else new_tokens, baseline=split_csv(baseline),
                          baseline_reps=baseline_reps or None, baseline_shared_process=quick,
                          image=str(image) if image else None, question=question, image_size=_size(image_size),
                          mtmd=mtmd, marker=marker, marker_frames=30 if quick else 120, profile=profile,
                          roofline_mb=128 if quick else 512, quick=quick)
        res = run_benchmark(cfg, log=lambda m: console.print(m, highlight=False))
        out.file.write((out_dir / "report.md").read_text())  # raw markdown: no wrapping of the tables
        out.file.flush()
        console.print(f"[green]wrote[/] {out_dir}/results.json, report.md, " + ", ".join(res.get("plots", [])))
