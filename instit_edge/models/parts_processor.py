"""A processor made of a checkpoint's image processor and tokenizer (a leaf: loading and the tiny builder use it)."""

from __future__ import annotations

from pathlib import Path


class PartsProcessor:
    """The image processor + tokenizer of a checkpoint whose HF processor class cannot be built here.

    ``LlavaOnevisionProcessor`` insists on a video processor, and transformers' video processors need
    torchvision, which this toolkit does not install (no CPU wheel that imports beside our torch); every
    path of ours uses only the image processor, the tokenizer and the chat template, which load without it.
    """

    def __init__(self, path: str | Path):
        from transformers import AutoImageProcessor, AutoTokenizer

        self.image_processor = AutoImageProcessor.from_pretrained(str(path))
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.chat_template = getattr(self.tokenizer, "chat_template", None)
        self.image_token = "<image>"

    def save_pretrained(self, out: str | Path) -> None:
        self.image_processor.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
