"""CLI command of the server: ``instit-edge serve BUNDLE`` (registered by cli.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

import typer

from instit_edge.errors import InstitError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def resolve_api_key(api_key: str | None, api_key_env: str | None) -> str | None:
    """``--api-key KEY`` or ``--api-key-env VAR`` (not both); InstitError when the variable is unset or empty."""
    if api_key is not None and api_key_env is not None:
        raise InstitError("give --api-key or --api-key-env, not both")
    if api_key_env is not None:
        key = os.environ.get(api_key_env, "")
        if not key.strip():
            raise InstitError(f"--api-key-env {api_key_env}: the variable is not set or empty")
        return key.strip()
    if api_key is not None and not api_key.strip():
        raise InstitError("--api-key is empty")
    return api_key.strip() if api_key is not None else None


def register(app: typer.Typer, console, out) -> None:
    """Add ``serve`` to the ``instit-edge`` app."""

    @app.command()
    def serve(
        bundle: Path = typer.Argument(..., help="Bundle directory (from `instit-edge export`)."),
        llm: str = typer.Option("f16", "--llm", help="LLM variant."),
        vision: str = typer.Option("fp32", "--vision", help="Vision variant."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the server "
                                                             "to the network (set an API key)."),
        port: int = typer.Option(8080, "--port", help="Port."),
        api_key: Optional[str] = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY'."),
        api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                                  help="Read the key from this environment variable."),
        max_concurrency: int = typer.Option(1, "--max-concurrency",
                                            help="Model jobs running at once, each with its own copy of the model "
                                                 "(1 on a CPU: one job at a time is fastest)."),
        queue: int = typer.Option(8, "--queue", help="Requests that may wait; beyond that they get 429 at once."),
        allow_urls: bool = typer.Option(False, "--allow-urls",
                                        help="Fetch http(s) image URLs (default: data: URLs only). "
                                             "Local paths and file:// are never read."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the model."),
        max_tiles: Optional[int] = typer.Option(None, "--max-tiles", min=0,
                                                help="Image token budget: AnyRes grids of at most N tiles (0 = base)."),
        gpu_layers: int = typer.Option(0, "--gpu-layers", help="LLM layers to offload to a GPU (llama.cpp GPU build)."),
        max_body_mb: float = typer.Option(32.0, "--max-body-mb", help="Largest request body (413 beyond)."),
        max_image_mb: float = typer.Option(16.0, "--max-image-mb", help="Largest encoded image (413 beyond)."),
        max_image_pixels: int = typer.Option(4096 * 4096, "--max-image-pixels",
                                             help="Largest image in pixels, width x height (413 beyond)."),
        model_name: Optional[str] = typer.Option(None, "--model-name",
                                                 help="Model id in /v1/models and responses (default: the "
                                                      "bundle folder name)."),
        shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout",
                                               help="On Ctrl-C / SIGTERM, seconds to let running requests finish."),
        no_verify: bool = typer.Option(False, "--no-verify", help="Skip sha256 checks of the bundle files."),
    ):
        """Serve a bundle over an OpenAI-compatible API (chat completions with images, instance marks)."""
        from instit_edge.bundle import Bundle

        if not 1 <= port <= 65535:
            raise InstitError(f"--port must be 1..65535 (got {port})")
        if max_concurrency < 1:
            raise InstitError(f"--max-concurrency must be at least 1 (got {max_concurrency})")
        if queue < 0:
            raise InstitError(f"--queue must be 0 or more (got {queue})")
        if min(max_body_mb, max_image_mb) <= 0 or max_image_pixels < 64:
            raise InstitError("--max-body-mb and --max-image-mb must be positive, --max-image-pixels at least 64")
        key = resolve_api_key(api_key, api_key_env)
        for mod, extra in (("fastapi", "demo"), ("uvicorn", "demo")):
            if importlib.util.find_spec(mod) is None:
                raise InstitError(f"the server needs {mod}: pip install 'instit-edge[{extra}]' (or fastapi uvicorn)")
        b = Bundle.load(bundle, verify=False)  # a wrong path or variant fails here, before binding
        b.entry("llm", llm)
        b.entry("vision", vision)

        import uvicorn

        from instit_edge.serve.app import create_app
        from instit_edge.serve.engine import LOAD_DELAY_ENV, ServeEngine
        from instit_edge.serve.protocol import ImageLimits

        server_box: list = []

        def load_failed(_msg: str) -> None:
            if server_box:
                server_box[0].should_exit = True

        engine = ServeEngine(bundle, llm=llm, vision=vision, max_concurrency=max_concurrency, queue_size=queue,
                             n_threads=threads, n_gpu_layers=gpu_layers, verify=not no_verify, model_name=model_name,
                             load_delay=float(os.environ.get(LOAD_DELAY_ENV, "0") or 0), max_tiles=max_tiles,
                             on_load_failed=load_failed)
        limits = ImageLimits(max_bytes=int(max_image_mb * (1 << 20)), max_pixels=max_image_pixels,
                             allow_urls=allow_urls)
        api = create_app(engine, api_key=key, limits=limits, max_body_bytes=int(max_body_mb * (1 << 20)))
        config = uvicorn.Config(api, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=shutdown_timeout, server_header=False)
        server = uvicorn.Server(config)
        server_box.append(server)
        if host not in LOCAL_HOSTS and key is None:
            console.print(f"[yellow]warning:[/] serving on {host} without an API key: anyone on the network can use "
                          "the model (set --api-key or --api-key-env)")
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"
        console.print(f"[green]serving[/] {engine.model_name} (llm {llm}, vision {vision}) at {url}; the model is "
                      f"loading, /health says when it is ready  (Ctrl-C to stop)", highlight=False)
        # uvicorn stops gracefully on SIGINT / SIGTERM, then re-raises the signal to the handler that was
        # installed before it: these record it, so a requested stop ends with exit code 0
        import signal

        stopped_by: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, _frame: stopped_by.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run()
        except SystemExit:
            if not server.started:
                raise InstitError(f"cannot serve on {host}:{port} (address in use or not available; "
                                  "choose another --port)") from None
            raise
        finally:
            engine.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if engine.state == "failed":
            raise InstitError(f"cannot load the model: {engine.error}")
        if not server.started:
            raise InstitError(f"cannot serve on {host}:{port} (address in use or not available; "
                              "choose another --port)")
        why = f" ({signal.Signals(stopped_by[0]).name})" if stopped_by else ""
        console.print(f"server stopped{why}: running requests finished, model freed")
