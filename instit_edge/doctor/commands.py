"""CLI command of the machine check: ``instit-edge doctor`` (registered by cli.py; the checks are
:func:`instit_edge.doctor.run_doctor`)."""

from __future__ import annotations

from pathlib import Path

import typer


def doctor_table(rows):
    """The rows of :func:`~instit_edge.doctor.run_doctor` as a rich table (ok / optional / missing)."""
    from rich.table import Table

    t = Table(title="instit-edge doctor")
    for col in ("component", "status", "detail"):
        t.add_column(col)
    for comp, ok, detail in rows:
        t.add_row(comp, "[green]ok[/]" if ok is True else ("[yellow]optional[/]" if ok is None else "[red]missing[/]"),
                  detail)
    return t


def register(app: typer.Typer, console, out) -> None:
    """Add ``doctor`` to the ``instit-edge`` app."""

    @app.command()
    def doctor(
        out_dir: Path = typer.Option(Path("out"), "--out", help="Where outputs will go (write access, free disk)."),
    ):
        """Report versions and capabilities; exit 1 when a required piece is missing (and say how to fix it)."""
        from . import run_doctor

        rows, missing = run_doctor(out_dir)
        out.print(doctor_table(rows))
        if missing:
            for m in missing:
                console.print(f"[red]missing:[/] {m}")
            raise typer.Exit(1)
