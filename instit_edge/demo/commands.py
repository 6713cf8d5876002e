"""CLI command of the webcam demo: ``instit-edge demo BUNDLE`` (registered by cli.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import typer

from instit_edge.errors import InstitError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` -> ``(user, password)``; InstitError when malformed."""
    if auth is None:
        return None
    user, sep, pw = auth.partition(":")
    if not sep or not user or not pw:
        raise InstitError("--auth takes USER:PASS (both non-empty)")
    return user, pw


def register(app: typer.Typer, console, out) -> None:
    """Add ``demo`` to the ``instit-edge`` app."""

    @app.command()
    def demo(
        bundle: Optional[Path] = typer.Argument(
            None, help="Bundle directory (from `instit-edge export`; default: out/bundle, built by `make demo`)."),
        llm: str = typer.Option("f16", "--llm", help="LLM variant to start with (switchable in the UI)."),
        vision: str = typer.Option("fp32", "--vision", help="Vision variant to start with (switchable in the UI)."),
        detector: str = typer.Option("motion", "--detector",
                                     help="motion | static | onnx:PATH | tflite:PATH | face | person | "
                                          "manual:x0,y0,x1,y1;x,y"),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to bind; 0.0.0.0 exposes the demo to the network (use --auth)."),
        port: Optional[int] = typer.Option(None, "--port", help="Port (default: the first free one from 7860)."),
        auth: Optional[str] = typer.Option(None, "--auth", help="Require a login, USER:PASS."),
        keyframes: int = typer.Option(8, "--keyframes", help="Keyframes kept for <t> questions (1..32)."),
        keyframe_interval: float = typer.Option(1.0, "--keyframe-interval", help="Seconds between keyframes."),
        max_side: int = typer.Option(1280, "--max-side", min=32, help="Frames with a longer side are downscaled."),
        queue_size: int = typer.Option(16, "--queue-size", help="Requests waiting at most (then refused)."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the model."),
        max_tiles: Optional[int] = typer.Option(None, "--max-tiles", min=0,
                                                help="Image token budget: AnyRes grids of at most N tiles (0 = base)."),
        gpu_layers: int = typer.Option(0, "--gpu-layers", min=-1, help="LLM layers to offload to a GPU (llama.cpp GPU build)."),
        no_verify: bool = typer.Option(False, "--no-verify", help="Skip sha256 checks of the bundle files."),
        prefetch: bool = typer.Option(True, "--prefetch/--no-prefetch",
                                      help="Encode keyframes while the model is idle (faster <t> questions; "
                                           "turn off when the vision tower is slow on this CPU)."),
    ):
        """Real-time webcam instance Q&A in the browser: marks with stable IDs, questions about [ID]s and <t>s."""
        if port is not None and not 1 <= port <= 65535:
            raise InstitError(f"--port must be 1..65535 (got {port})")
        if keyframe_interval <= 0:
            raise InstitError(f"--keyframe-interval must be positive (got {keyframe_interval})")
        if queue_size < 1:
            raise InstitError(f"--queue-size must be at least 1 (got {queue_size})")
        if not 1 <= keyframes <= 32:
            raise InstitError(f"--keyframes must be 1..32 (got {keyframes}); Inst-IT video prompts use at most 32")
        credentials = parse_auth(auth)
        if importlib.util.find_spec("gradio") is None:
            raise InstitError("the demo needs gradio: pip install 'instit-edge[demo]'")
        from instit_edge.bundle import default_bundle
        from instit_edge.demo.engine import DemoEngine

        bundle = default_bundle(bundle)
        with console.status(f"loading {bundle} (llm {llm}, vision {vision})"):
            engine = DemoEngine(bundle, llm=llm, vision=vision, detector=detector, keyframes=keyframes,
                                keyframe_interval=keyframe_interval, max_side=max_side, n_threads=threads,
                                n_gpu_layers=gpu_layers, verify=not no_verify, prefetch=prefetch)
            engine.session.set_max_tiles(max_tiles)
        if host not in LOCAL_HOSTS and credentials is None:
            console.print(f"[yellow]warning:[/] serving on {host} without --auth: anyone on the network can use "
                          "the camera page and the model")
        from instit_edge.demo.app import launch

        try:
            server = launch(engine, host=host, port=port, auth=credentials, queue_size=queue_size, quiet=True)
            console.print(f"[green]demo running[/] at {server.url}  (Ctrl-C to stop)", highlight=False)
            server.wait()
            console.print("demo stopped; temporary files removed")
        finally:
            engine.close()
