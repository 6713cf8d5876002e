"""CLI commands of the evaluation stage: ``eval``, ``merge``, ``report``, ``score`` (registered by cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InstitError


def _check_choice(value, allowed, option: str):
    if value is not None and value not in allowed:
        raise InstitError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _scores_table(title: str, summary: dict):
    from rich.table import Table

    t = Table(title=title)
    for col in ("split/format", "accuracy", "valid", "correct", "total", "strict acc", "strict valid"):
        t.add_column(col)
    for g, s in summary.items():
        st = s.get("strict") or {}
        acc = "n/a" if s["accuracy"] is None else f"{s['accuracy']:.2f}"
        sacc = "" if not st else ("n/a" if st["accuracy"] is None else f"{st['accuracy']:.2f}")
        correct = str(s["correct"]) if "correct" in s else f"{s['score_sum']:.1f} (score sum)"
        t.add_row(g, acc, str(s["valid"]), correct, str(s["total"]), sacc, str(st.get("valid", "")))
    return t


def register(app: typer.Typer, console, out) -> None:
    @app.command("eval")
    def eval_cmd(
        bundle: Optional[Path] = typer.Argument(
            None, help="Bundle directory (torch backend: optional, its source model is used)."),
        bench: Path = typer.Option(..., "--bench", help="Inst-IT Bench folder (JSON or hub parquet layout)."),
        out_dir: Path = typer.Option(..., "--out", help="Run folder; rerunning into it resumes."),
        split: Optional[str] = typer.Option(None, "--split", help="image | video (default: both)."),
        fmt: Optional[str] = typer.Option(None, "--format", help="mc | oe (default: both)."),
        llm: str = typer.Option("f16", "--llm", help="LLM variant of the bundle."),
        vision: str = typer.Option("fp32", "--vision", help="Vision variant of the bundle."),
        backend: str = typer.Option("bundle", "--backend", help="bundle (llama.cpp + ONNX) | torch (HF reference)."),
        model: Optional[str] = typer.Option(None, "--model", help="HF checkpoint for --backend torch."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most N questions per split/format."),
        shard: Optional[str] = typer.Option(None, "--shard", help="i/n: this machine's share (by question_id)."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads."),
        gpu_layers: int = typer.Option(0, "--gpu-layers", min=-1, help="LLM layers to offload (llama.cpp GPU build)."),
        max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Official: 128."),
        no_verify: bool = typer.Option(False, "--no-verify", help="Skip the sha256 check of the bundle files."),
        max_tiles: Optional[int] = typer.Option(
            None, "--max-tiles", min=0, help="Image token budget: AnyRes grids of at most N tiles (0 = base image)."),
        mark_style: Optional[str] = typer.Option(
            None, "--mark-style", help="Synthetic bench only: redraw its marks as id | box | box+id | mask+id | "
                                       "contour+id | none (same questions and answers; the visual-prompt ablation)."),
    ):
        """Answer every Inst-IT Bench question with the official prompts (greedy); resumable."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from .runner import run_eval
        from .scoring import score_items, summarize
        from .store import read_predictions

        _check_choice(split, ("image", "video"), "--split")
        _check_choice(fmt, ("mc", "oe"), "--format")
        _check_choice(backend, ("bundle", "torch"), "--backend")
        prog = Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console)
        task = prog.add_task("eval", total=None)

        def tick(done: int, total: int) -> None:  # first called once the bench and the model are loaded
            if not prog.live.is_started:
                prog.start()
            prog.update(task, completed=done, total=total)

        from .distributed import launcher_rank, run_ranked

        if mark_style is not None:
            from ..data.synth import restyle_bench
            from ..marker.render import STYLES

            _check_choice(mark_style, STYLES, "--mark-style")
            with console.status(f"redrawing the bench's marks as {mark_style}"):
                bench = restyle_bench(bench, mark_style, Path(out_dir) / f"world-{mark_style.replace('+', '-')}")

        def run(dest, this_shard):
            return run_eval(bundle, bench, dest, split=split, fmt=fmt, llm=llm, vision=vision, backend=backend,
                            model=model, limit=limit, shard=this_shard, n_threads=threads, n_gpu_layers=gpu_layers,
                            max_new_tokens=max_new_tokens, verify=not no_verify, progress=tick,
                            max_tiles=max_tiles)

        ranked = launcher_rank()
        if ranked and shard:
            raise InstitError("give --shard or start eval through torchrun / accelerate launch, not both")
        try:
            if ranked:  # torchrun / accelerate launch: this rank's shard; rank 0 merges them into --out
                meta = run_ranked(run, out_dir, *ranked, n_gpu_layers=gpu_layers)
                if ranked[0] != 0:
                    return
            else:
                meta = run(out_dir, shard)
        except BaseException:
            prog.live.transient = True  # the error line stays the only one
            raise
        finally:
            if prog.live.is_started:
                prog.stop()
        console.print(f"[green]wrote[/] {out_dir}: {meta['done']} predictions, "
                      f"submissions {', '.join(meta['submissions'])}")
        mc = [r for r in read_predictions(Path(out_dir) / "predictions.jsonl") if r["format"] == "mc"]
        if mc:
            out.print(_scores_table("multiple choice (official rule; OE: run `instit-edge score` or `report`)",
                                    summarize(score_items(mc))))

    @app.command("merge")
    def merge_cmd(
        runs: List[Path] = typer.Argument(..., help="Run folders of the same model (e.g. shards)."),
        out_dir: Path = typer.Option(..., "--out", help="Merged run folder."),
    ):
        """Join shard runs of one model into one run (predictions, submissions, run.json)."""
        from .merge import merge_runs

        meta = merge_runs(runs, out_dir)
        console.print(f"[green]merged[/] {len(runs)} runs into {out_dir}: {meta['done']} predictions"
                      + ("" if meta["complete"] else " [yellow](some inputs were incomplete)[/]"))

    @app.command("report")
    def report_cmd(
        runs: List[Path] = typer.Argument(..., help="Run folders to compare."),
        reference: Optional[Path] = typer.Option(None, "--reference", help="Reference run (default: the first)."),
        out_dir: Path = typer.Option(..., "--out", help="Report folder (report.md, report.json, PNG plots)."),
        max_drop: Optional[float] = typer.Option(
            None, "--max-drop", help="Exit 1 when a run loses more than this many points on any split/format."),
        judge: str = typer.Option("offline", "--judge", help="OE judge: offline (not official) | openai."),
        judge_model: Optional[str] = typer.Option(
            None, "--judge-model", help="Judge model (openai; default gpt-4o-2024-08-06)."),
        judge_cache: Optional[Path] = typer.Option(
            None, "--judge-cache", help="Judge cache JSONL (default ~/.cache/instit_edge/judge_cache.jsonl)."),
        kld_prompts: int = typer.Option(8, "--kld-prompts", min=0, help="Bench prompts for the KL divergence (0: skip)."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the KLD sessions."),
    ):
        """Quantization accuracy report: scores, paired deltas with CIs, McNemar, flips, KLD, sizes, speeds."""
        from .report import report

        if bootstrap < 100:
            raise InstitError(f"--bootstrap must be at least 100, got {bootstrap}")
        _check_choice(judge, ("offline", "openai"), "--judge")
        with console.status("building the report"):
            rep = report(runs, reference or runs[0], out_dir, max_drop=max_drop, judge=judge,
                         judge_model=judge_model, judge_cache=judge_cache, kld_prompts=kld_prompts, n_boot=bootstrap,
                         n_threads=threads)
        for name, run in rep["runs"].items():
            out.print(_scores_table(f"{name}" + (" (reference)" if name == rep["reference"] else ""), run["scores"]))
        console.print(f"[green]wrote[/] {Path(out_dir) / 'report.md'}")
        g = rep["gate"]
        if not g["passed"]:
            for f in g["failures"]:
                console.print(f"[red]gate failed:[/] {f['run']} loses {f['drop']:.1f} points on {f['group']} "
                              f"(max {g['max_drop']})", highlight=False)
            raise typer.Exit(1)
        if g["max_drop"] is not None:
            console.print(f"[green]gate passed[/] (max drop {g['max_drop']} points)")

    @app.command("score")
    def score_cmd(
        predictions: Path = typer.Argument(
            ..., help="Submission JSON (official format), predictions.jsonl or a run folder."),
        judge: str = typer.Option("offline", "--judge", help="OE judge: offline (not official) | openai."),
        fmt: str = typer.Option("auto", "--format", help="mc | oe | auto (MC when the ground truth is a letter)."),
        judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge model (openai)."),
        judge_cache: Optional[Path] = typer.Option(None, "--judge-cache", help="Judge cache JSONL."),
    ):
        """Score predictions: accuracy, valid and correct counts per split and format."""
        from .judges import make_judge
        from .scoring import load_predictions_file, score_items, summarize

        _check_choice(fmt, ("mc", "oe", "auto"), "--format")
        _check_choice(judge, ("offline", "openai"), "--judge")
        records = load_predictions_file(predictions)
        needs_judge = fmt == "oe" or (fmt == "auto" and any(
            str(r["ground_truth"]).strip() not in ("A", "B", "C", "D") for r in records))
        jd = make_judge(judge, judge_model, judge_cache) if needs_judge else None
        summary = summarize(score_items(records, jd, fmt))
        title = f"{predictions}" + (f" (OE judge: {jd.name}{'' if jd.official else ', not the official score'})"
                                    if jd else "")
        out.print(_scores_table(title, summary))
