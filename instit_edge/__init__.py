"""instit-edge: instance-aware (Inst-IT) vision-language models on edge devices."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import instit_edge` stays cheap and torch-free
    if name == "EdgeSession":
        from .runtime.session import EdgeSession

        return EdgeSession
    if name == "Bundle":
        from .bundle import Bundle

        return Bundle
    raise AttributeError(name)


__all__ = ["EdgeSession", "Bundle", "__version__"]
