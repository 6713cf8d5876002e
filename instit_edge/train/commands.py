"""CLI command of training: ``instit-edge train --base CKPT --instit DATASET --out RUN`` (registered by cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InstitError


def run_training(*, base: str, instit: str | Path, out_dir: str | Path, general: str | Path | None = None,
                 ratio: float = 1.0, lora: int = 0, full: bool = False, freeze_vision_layers: int = 12,
                 lr: float = 2e-4, epochs: float = 1.0, max_steps: int = 0, batch_size: int = 1, grad_accum: int = 1,
                 save_every: int = 50, seed: int = 0, gradient_checkpointing: bool = False,
                 merge: bool = True) -> dict:
    """Check the options, then run :func:`~instit_edge.train.trainer.train` (which shows its own progress and
    resumes from the run folder's last checkpoint). Returns its summary (steps, losses, samples/s, model)."""
    from .trainer import TrainConfig, train

    if full and lora:
        raise InstitError("give --lora RANK or --full, not both")
    cfg = TrainConfig(base=base, instit=str(instit), out=str(out_dir), general=str(general) if general else None,
                      ratio=ratio, lora=lora, freeze_vision_layers=freeze_vision_layers, lr=lr, epochs=epochs,
                      max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, save_every=save_every,
                      seed=seed, gradient_checkpointing=gradient_checkpointing, merge=merge)
    return train(cfg)


def register(app: typer.Typer, console, out) -> None:
    """Add ``train`` to the ``instit-edge`` app."""

    @app.command()
    def train(
        base: str = typer.Option(..., "--base", help="HF LLaVA / LLaVA-Next checkpoint to start from."),
        instit: Path = typer.Option(..., "--instit", help="Inst-IT Dataset (folder or JSON)."),
        out_dir: Path = typer.Option(..., "--out",
                                     help="Run directory: checkpoints/, model/ (the final HF checkpoint)."),
        general: Optional[Path] = typer.Option(None, "--general", help="General data, LLaVA conversation JSON."),
        ratio: float = typer.Option(1.0, "--ratio",
                                    help="Share of Inst-IT samples in the mix, in (0, 1] (paper ~0.17)."),
        lora: int = typer.Option(0, "--lora", help="LoRA rank (0 = full fine-tuning of LLM + projector)."),
        full: bool = typer.Option(False, "--full", help="Full fine-tuning (same as --lora 0)."),
        freeze_vision_layers: int = typer.Option(12, "--freeze-vision-layers",
                                                 help="Freeze the first K vision layers."),
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
        r = run_training(base=base, instit=instit, out_dir=out_dir, general=general, ratio=ratio, lora=lora, full=full,
                         freeze_vision_layers=freeze_vision_layers, lr=lr, epochs=epochs, max_steps=max_steps,
                         batch_size=batch_size, grad_accum=grad_accum, save_every=save_every, seed=seed,
                         gradient_checkpointing=gradient_checkpointing, merge=merge)
        console.print(f"[green]trained[/] {r['steps']} steps, final loss {r['losses'][-1]:.4f}, "
                      f"{r['samples_per_s'] or 0:.1f} samples/s -> {r['model']}")
