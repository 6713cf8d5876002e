"""Tokenizer facts that the tokenizer builders (:mod:`instit_edge.models.real_tokenizers`) and the GGUF vocabulary
writer (:mod:`instit_edge.export.gguf_vocab`) both read: the ``tokenizers`` pipelines that split text like
llama.cpp's pre-tokenizers, and the SentencePiece ``tokenizer.model`` reader."""

from __future__ import annotations

from pathlib import Path

from ..errors import InstitError

# Split patterns, as the public tokenizer.json files of these families write them.
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(pattern: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    ]}


_GPT2_BYTES = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
# name -> (normalizer, pre_tokenizer) of the ``tokenizers`` pipeline that splits text like llama.cpp's
# pre-tokenizer of that name.
REFERENCE_PRE_TOKENIZERS = {
    "gpt-2": (None, _GPT2_BYTES),
    "llama-bpe": (None, _split_then_bytes(_LLAMA3_RE)),
    "qwen2": ({"type": "NFC"}, _split_then_bytes(QWEN2_RE)),
    "smollm": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _GPT2_BYTES]}),
}


def read_sentencepiece_model(path: str | Path) -> list[tuple[str, float, int]]:
    """``(piece, score, type)`` of every piece of a SentencePiece ``tokenizer.model`` (protobuf only).

    The piece types of SentencePiece (NORMAL=1 ... BYTE=6) are the GGUF token types.
    """
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise InstitError(f"{path} is not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise InstitError(f"{path} is not a SentencePiece model (no pieces)")
    return [(p.piece, float(p.score), int(p.type) or 1) for p in proto.pieces]
