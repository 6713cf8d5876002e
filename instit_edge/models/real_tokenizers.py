"""Real tokenizers, rebuilt offline, for tiny checkpoints.

No model hub is reachable, but real vocabularies are (DESIGN.md section 7): llama.cpp's vocab-only GGUF
files (the Llama / Vicuna SentencePiece vocabulary, Qwen2's byte-level BPE, GPT-2, Llama 3...) and
Mistral's SentencePiece ``tokenizer.model``. This module turns them into Hugging Face tokenizers:

* a SentencePiece vocabulary (from a ``tokenizer.model`` or a ``llama``-model GGUF) -> a
  ``tokenizer.model`` (BPE type, byte fallback, identity normalizer, dummy prefix) and the
  ``LlamaTokenizer`` transformers builds from it;
* a byte-level BPE GGUF -> a fast tokenizer with the pre-tokenizer its ``tokenizer.ggml.pre`` names
  (llama.cpp's ``[PADn]`` fillers dropped).

GGUF files may be xz-compressed (``.gguf.xz``).
"""

from __future__ import annotations

import lzma
import re
import tempfile
from pathlib import Path

from ..errors import InstitError

_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
            12: "<f8"}


def _read_kv(buf: bytes) -> dict:
    """The key-value section of a GGUF file (v2 / v3), read directly: ``gguf.GGUFReader`` takes ~9 s on
    a 150k-token vocabulary, this ~0.2 s."""
    import struct

    import numpy as np

    if buf[:4] != b"GGUF":
        raise InstitError("not a GGUF file")
    n_kv = struct.unpack_from("<Q", buf, 16)[0]
    pos = 24

    def string(pos):
        n = struct.unpack_from("<Q", buf, pos)[0]
        return buf[pos + 8:pos + 8 + n].decode("utf-8"), pos + 8 + n

    def value(ty, pos):
        if ty == 8:
            return string(pos)
        if ty == 9:
            ity, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if ity in _SCALARS:
                arr = np.frombuffer(buf, dtype=_SCALARS[ity], count=n, offset=pos)
                return arr.tolist(), pos + arr.nbytes
            items = []
            for _ in range(n):
                item, pos = value(ity, pos)
                items.append(item)
            return items, pos
        dt = np.dtype(_SCALARS[ty])
        v = np.frombuffer(buf, dtype=dt, count=1, offset=pos)[0].item()
        return (bool(v) if ty == 7 else v), pos + dt.itemsize

    out = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        ty = struct.unpack_from("<I", buf, pos)[0]
        out[key], pos = value(ty, pos + 4)
    return out


def read_vocab_gguf(path: str | Path) -> dict:
    """The ``tokenizer.ggml.*`` fields of a (vocab-only) GGUF file, ``.xz`` allowed."""
    path = Path(path)
    data = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    try:
        kv = _read_kv(data)
    except (InstitError, ValueError, UnicodeDecodeError, KeyError) as e:
        raise InstitError(f"{path} is not a readable GGUF file ({e})") from None
    out = {k[len("tokenizer.ggml."):]: v for k, v in kv.items() if k.startswith("tokenizer.ggml.")}
    if "tokens" not in out:
        raise InstitError(f"{path} has no tokenizer vocabulary")
    return out


def spm_model_bytes(pieces: list[tuple[str, float, int]], unk_id: int = 0, bos_id: int = 1, eos_id: int = 2) -> bytes:
    """A SentencePiece ``tokenizer.model``: BPE, byte fallback, identity normalizer, dummy prefix."""
    from transformers.convert_slow_tokenizer import import_protobuf

    pb = import_protobuf()
    m = pb.ModelProto()
    for piece, score, ty in pieces:
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, float(score), int(ty)
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(pieces)
    t.byte_fallback = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = unk_id, bos_id, eos_id, -1
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m.SerializeToString()


def spm_pieces_from_gguf(path: str | Path) -> list[tuple[str, float, int]]:
    v = read_vocab_gguf(path)
    if v.get("model") != "llama":
        raise InstitError(f"{path} is not a SentencePiece (llama) vocabulary: {v.get('model')!r}")
    return [(t, float(s), int(ty)) for t, s, ty in zip(v["tokens"], v["scores"], v["token_type"])]


def llama_tokenizer(pieces: list[tuple[str, float, int]]):
    """A fast tokenizer of a SentencePiece vocabulary that tokenizes like SentencePiece (and llama.cpp).

    The pipeline is the one of the published Llama / Vicuna / llava-hf ``tokenizer.json`` files (the
    "legacy" layout): byte-fallback BPE whose merges follow the piece scores, normalizer
    ``Prepend("▁")`` + ``Replace(" ", "▁")``, no pre-tokenizer, BOS added. It is saved as a plain
    ``PreTrainedTokenizerFast``: transformers 5's ``LlamaTokenizer`` class rebuilds any Llama tokenizer
    with a ``Metaspace`` pre-tokenizer that does not prepend "▁" to text already starting with a space,
    so it tokenizes " Hello" as ``▁Hello`` where SentencePiece and llama.cpp give ``▁ ▁Hello``.
    """
    from gguf import TokenType
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    scores = {piece: score for piece, score, _ in pieces}
    skip = {piece for piece, _, ty in pieces if ty != TokenType.NORMAL}
    merges = generate_merges(vocab, scores, skip_tokens=skip)
    unk, bos, eos = pieces[0][0], pieces[1][0], pieces[2][0]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, vocab[bos])])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, _, ty in pieces if ty in (TokenType.CONTROL, TokenType.UNKNOWN)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"],
                                   unk_token=unk, bos_token=bos, eos_token=eos, clean_up_tokenization_spaces=False)


def bpe_tokenizer_from_gguf(path: str | Path):
    """A fast byte-level BPE tokenizer from a llama.cpp ``gpt2`` vocabulary (``[PADn]`` fillers dropped)."""
    import json

    from gguf import TokenType
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from .tokenizer_facts import REFERENCE_PRE_TOKENIZERS

    v = read_vocab_gguf(path)
    if v.get("model") != "gpt2":
        raise InstitError(f"{path} is not a byte-level BPE (gpt2) vocabulary: {v.get('model')!r}")
    pre = v.get("pre", "gpt-2")
    if pre not in REFERENCE_PRE_TOKENIZERS:
        raise InstitError(f"{path}: pre-tokenizer {pre!r} has no reference pipeline here")
    norm, pre_tok = REFERENCE_PRE_TOKENIZERS[pre]
    vocab, added = {}, []
    for i, (t, ty) in enumerate(zip(v["tokens"], v["token_type"])):
        if re.fullmatch(r"\[PAD\d+\]", t):  # llama.cpp's fillers (UNUSED, or USER_DEFINED in older files)
            continue
        vocab[t] = i
        if ty in (TokenType.CONTROL, TokenType.USER_DEFINED):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": ty == TokenType.USER_DEFINED, "special": ty == TokenType.CONTROL})
    bos = v.get("bos_token_id")
    add_bos = bool(v.get("add_bos_token", False)) and bos is not None
    post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    if add_bos:
        bos_tok = v["tokens"][bos]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_tok: {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": norm,
          "pre_tokenizer": pre_tok, "post_processor": post,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                    "vocab": vocab, "merges": [m.split(" ", 1) for m in v["merges"]]}}
    kw = {}
    for key, name in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"), ("padding_token_id", "pad_token")):
        if v.get(key) is not None and v[key] < len(v["tokens"]):
            kw[name] = v["tokens"][v[key]]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)),
                                   model_input_names=["input_ids", "attention_mask"], **kw)


def load_real_tokenizer(source: str | Path):
    """``(hf_tokenizer, spm_model_bytes_or_None)`` from a tokenizer source.

    ``source``: a SentencePiece ``tokenizer.model`` (``tokenizer.model*`` or ``*.model*``), a llama.cpp
    vocab GGUF (``.gguf`` / ``.gguf.xz``; SentencePiece or byte-level BPE), or a directory holding a
    Hugging Face tokenizer.
    """
    source = Path(source)
    if not source.exists():
        raise InstitError(f"tokenizer source {source} does not exist")
    if source.is_dir():
        from transformers import AutoTokenizer

        spm = source / "tokenizer.model"
        return AutoTokenizer.from_pretrained(str(source)), (spm.read_bytes() if spm.is_file() else None)
    name = source.name
    if ".gguf" in name:
        model = read_vocab_gguf(source).get("model")
        if model == "llama":
            pieces = spm_pieces_from_gguf(source)
            return llama_tokenizer(pieces), spm_model_bytes(pieces)
        return bpe_tokenizer_from_gguf(source), None
    if ".model" in name:
        from .tokenizer_facts import read_sentencepiece_model

        data = lzma.decompress(source.read_bytes()) if name.endswith(".xz") else source.read_bytes()
        with tempfile.NamedTemporaryFile(suffix=".model") as f:
            f.write(data)
            f.flush()
            pieces = read_sentencepiece_model(f.name)
        return llama_tokenizer(pieces), data
    raise InstitError(f"tokenizer source {source}: expected a tokenizer.model, a .gguf vocabulary or a directory")
