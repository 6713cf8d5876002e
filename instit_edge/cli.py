"""The ``instit-edge`` command line.

Every user error is one line on stderr and exit code 2 (``--debug`` shows the
traceback). Heavy imports (torch, transformers) happen inside the commands
that need them, so ``ask`` on a device never imports torch. The commands
themselves live in each stage's ``commands.py``; this module builds the app,
registers them, resolves user paths at the edge (:mod:`instit_edge.terminal`)
and turns errors into one line.
"""

from __future__ import annotations

import sys

import typer

from .annotate import commands as _annotate_commands
from .bench import commands as _bench_commands
from .data import commands as _data_commands
from .demo import commands as _demo_commands
from .doctor import commands as _doctor_commands
from .errors import InstitError
from .eval import commands as _eval_commands
from .export import commands as _export_commands
from .marker import commands as _marker_commands
from .models import commands as _models_commands
from .quant import commands as _quant_commands
from .runtime import commands as _runtime_commands
from .serve import commands as _serve_commands
from .terminal import console, out, resolve_user_paths
from .train import commands as _train_commands

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Instance-aware VLMs (Inst-IT) on edge devices: build, export, ask, mark, evaluate.",
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    """instit-edge: export LLaVA / LLaVA-Next to GGUF + ONNX bundles and ask instance questions on device."""


# Every command lives beside the code it drives: each stage's ``commands.py`` has ``register(app, console, out)``
# with one typer function per command that calls into the stage's library, where the argument checks (one-line
# InstitErrors) and the progress reporting are. Registered in pipeline order (the order of ``--help``).
for _stage in (_doctor_commands, _models_commands, _data_commands, _export_commands, _quant_commands,
               _train_commands, _runtime_commands, _marker_commands, _eval_commands, _demo_commands, _bench_commands,
               _serve_commands, _annotate_commands):
    _stage.register(app, console=console, out=out)

for _cmd in app.registered_commands:
    resolve_user_paths(_cmd)


def main() -> None:
    import logging

    # torch / torchao announce deprecations on import; they are not the user's business
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:  # typer >= 0.24 carries its own copy of click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException

    debug = "--debug" in sys.argv
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # typer's own handling prints the help
            e.show()
            sys.exit(e.exit_code)
        # a usage error (unknown option, a value out of its range, ...): one line, like every other user error
        from rich.markup import escape

        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        console.print(f"[red]error:[/] {escape(' '.join(e.format_message().split()))}{escape(hint)}",
                      highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(1)
    except InstitError as e:
        if debug:
            raise
        from rich.markup import escape

        console.print(f"[red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
