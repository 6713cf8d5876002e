"""The real-time webcam instance Q&A demo: ``instit-edge demo BUNDLE``.

``engine`` is the processing path (frames in -> marked frames + instances;
questions -> streamed answers from cached work; latency stats) and needs no
Gradio; ``app`` builds the Gradio UI on it and launches it safely;
``commands`` adds the CLI command. Names are imported lazily so the CLI
stays quick to start.
"""

import os

# Gradio reports usage to its servers unless told not to; it reads this when it is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

_EXPORTS = {"DemoEngine": "engine", "LiveView": "engine", "prepare_frame": "engine",
            "build_app": "app", "launch": "app"}


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


__all__ = ["DemoEngine", "LiveView", "build_app", "launch", "prepare_frame"]
