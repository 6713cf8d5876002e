"""A Hugging Face tokenizer -> the GGUF vocabulary llama.cpp reads, as llama.cpp's converter writes it.

Two kinds, decided by the tokenizer itself:

* **SentencePiece** (Llama / Vicuna / Mistral ``tokenizer.model``, byte fallback): GGUF tokenizer model
  ``llama`` with the pieces' scores and types (NORMAL / UNKNOWN / CONTROL / USER_DEFINED / UNUSED / BYTE),
  read from ``tokenizer.model`` when the checkpoint has one (protobuf only, no ``sentencepiece`` needed)
  and otherwise derived from ``tokenizer.json``'s merges. Tokens added on top (``<image>``, ``<pad>``)
  get score -1000 and CONTROL (special) or USER_DEFINED type, as ``convert_hf_to_gguf.py`` does.
* **Byte-level BPE** (GPT-2, Llama 3, Qwen2, SmolLM...): GGUF tokenizer model ``gpt2`` with merges and a
  pre-tokenizer name. llama.cpp implements each pre-tokenizer (the regex that splits text before BPE)
  by name, and its converter finds the name by hashing the token ids of a fixed check string. We do the
  same, then fall back to comparing how the tokenizer's own pre-tokenizer splits that string with how each
  known pre-tokenizer splits it (that also recognises small vocabularies trained with a known pattern).

Every vocabulary is padded to the embedding rows with ``[PADn]`` UNUSED tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from ..errors import InstitError
from ..models.tokenizer_facts import REFERENCE_PRE_TOKENIZERS, read_sentencepiece_model

# The reference string of llama.cpp's converter (``get_vocab_base_pre``): its token ids, hashed, identify
# the pre-tokenizer of a BPE vocabulary.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(tokenizer.encode(CHECK_TEXT))) -> llama.cpp pre-tokenizer name, for the public tokenizers
# listed in llama.cpp's converter (as vendored in llama-cpp-python 0.3.36).
KNOWN_PRE_HASHES = {
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",  # evilfreelancer/ruGPT3XL
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
}

# Names accepted by --pre-tokenizer: the detectable ones and other byte-level BPE pre-tokenizers
# llama.cpp 0.3.36 implements.
PRE_TOKENIZER_NAMES = tuple(REFERENCE_PRE_TOKENIZERS) + (
    "deepseek-llm", "deepseek-coder", "falcon", "mpt", "starcoder", "refact", "command-r", "olmo", "dbrx",
    "stablelm2", "tekken", "gpt-4o", "chatglm-bpe", "phi-2",
)


@dataclass
class GGUFVocab:
    """What the GGUF ``tokenizer.ggml.*`` keys get."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: list = field(default_factory=list)
    types: list = field(default_factory=list)
    scores: list | None = None
    merges: list | None = None
    add_space_prefix: bool | None = None
    details: dict = field(default_factory=dict)

    def write(self, w) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges is not None:
            w.add_token_merges(self.merges)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)


def tokenizer_kind(tokenizer) -> str:
    """``"spm"`` (byte-fallback BPE: SentencePiece families) or ``"bpe"`` (byte-level BPE)."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise InstitError(
            f"tokenizer type {model.get('type')!r} is not supported for GGUF export (supported: SentencePiece "
            "BPE with byte fallback, byte-level BPE)")
    return "spm" if model.get("byte_fallback") else "bpe"


def looks_special(token: str) -> bool:
    """Added tokens llama.cpp's converter makes CONTROL even when not marked special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def check_hash(tokenizer) -> str:
    """The llama.cpp converter's identifier of a BPE tokenizer: sha256 of ``str(ids of CHECK_TEXT)``."""
    return sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()


def _splits(normalizer, pre_tokenizer, text: str) -> list[str]:
    if normalizer is not None:
        text = normalizer.normalize_str(text)
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)] if pre_tokenizer is not None else [text]


def detect_pre_tokenizer(tokenizer) -> str:
    """The llama.cpp pre-tokenizer name of a byte-level BPE tokenizer, or a one-line :class:`InstitError`.

    First the converter's way (hash of the check string's token ids, for the public tokenizers it knows),
    then by behaviour: the tokenizer's own normalizer + pre-tokenizer must split the check string exactly
    like one of :data:`REFERENCE_PRE_TOKENIZERS`.
    """
    from tokenizers import Tokenizer

    digest = check_hash(tokenizer)
    if digest in KNOWN_PRE_HASHES:
        return KNOWN_PRE_HASHES[digest]
    backend = tokenizer.backend_tokenizer
    own = _splits(backend.normalizer, backend.pre_tokenizer, CHECK_TEXT)
    for name, (norm, pre) in REFERENCE_PRE_TOKENIZERS.items():
        ref = Tokenizer.from_str(json.dumps({
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": norm,
            "pre_tokenizer": pre, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "vocab": {}, "merges": []}}))
        if _splits(ref.normalizer, ref.pre_tokenizer, CHECK_TEXT) == own:
            return name
    raise InstitError(
        f"the BPE pre-tokenizer of this tokenizer is not recognised (llama.cpp check hash {digest[:16]}...); "
        f"pass --pre-tokenizer NAME (one of {', '.join(PRE_TOKENIZER_NAMES)})")


def add_flags(tokenizer) -> tuple[bool, bool]:
    """``(add_bos, add_eos)``: whether the tokenizer puts BOS before / EOS after a plain text."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return (bos is not None and ids[:1] == [bos]), (eos is not None and len(ids) > 1 and ids[-1:] == [eos])


def _bpe_vocab(tokenizer, n_vocab: int, pre: str | None) -> GGUFVocab:
    from gguf import TokenType

    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tj["model"]
    if pre is None:
        pre = detect_pre_tokenizer(tokenizer)
    elif pre not in PRE_TOKENIZER_NAMES:
        raise InstitError(f"unknown pre-tokenizer {pre!r}; use one of {', '.join(PRE_TOKENIZER_NAMES)}")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["content"]: a for a in tj.get("added_tokens", [])}
    for content, a in added.items():
        vocab[content] = a["id"]
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(TokenType.UNUSED)] * n_vocab
    for tok, i in vocab.items():
        tokens[i] = tok
        if tok in added:
            special = added[tok].get("special") or looks_special(tok)
            types[i] = int(TokenType.CONTROL) if special else int(TokenType.USER_DEFINED)
        else:
            types[i] = int(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return GGUFVocab("gpt2", pre, tokens, types, merges=merges, details={"pre_hash": check_hash(tokenizer)})


def _pieces_from_json(tokenizer) -> list[tuple[str, float, int]]:
    """Pieces of a byte-fallback BPE tokenizer.json without its tokenizer.model: scores from merge ranks.

    llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined piece has the highest score;
    a piece's score is minus the rank of the first merge that makes it, which merges in the same order as
    the BPE model.
    """
    from gguf import TokenType

    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tj["model"]
    vocab = model["vocab"]
    rank: dict[str, int] = {}
    for r, m in enumerate(model.get("merges", [])):
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(left + right, r)
    specials = {a["content"] for a in tj.get("added_tokens", []) if a.get("special")}
    unk = model.get("unk_token")
    pieces: list = [None] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
        if piece == unk:
            ty = TokenType.UNKNOWN
        elif piece in specials:
            ty = TokenType.CONTROL
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            ty = TokenType.BYTE
        else:
            ty = TokenType.NORMAL
        score = 0.0 if ty != TokenType.NORMAL else (-float(rank[piece]) if piece in rank else 0.0)
        pieces[i] = (piece, score, int(ty))
    return [p if p is not None else (f"[PAD{i}]", -10000.0, int(TokenType.UNUSED)) for i, p in enumerate(pieces)]


def _spm_vocab(tokenizer, n_vocab: int, model_file: Path | None) -> GGUFVocab:
    from gguf import TokenType

    if model_file is not None and model_file.is_file():
        pieces, source = read_sentencepiece_model(model_file), "tokenizer.model"
    else:
        pieces, source = _pieces_from_json(tokenizer), "tokenizer.json merges"
    if len(pieces) > n_vocab:
        raise InstitError(f"tokenizer has {len(pieces)} tokens but the embedding has {n_vocab} rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for i, (piece, score, ty) in enumerate(pieces):
        tokens[i], scores[i], types[i] = piece, score, ty
    # tokens the HF tokenizer adds on top of the SentencePiece model (<image>, <pad>, ...). A piece of the
    # model that is already CONTROL / UNKNOWN keeps its score and type (as in llama.cpp's reference vocab).
    for i, tok in sorted(tokenizer.added_tokens_decoder.items()):
        if i >= n_vocab:
            raise InstitError(f"tokenizer token {tok.content!r} has id {i} but the embedding has {n_vocab} rows")
        if i < len(pieces) and pieces[i][0] == tok.content and pieces[i][2] in (TokenType.CONTROL, TokenType.UNKNOWN):
            continue
        special = tok.special or looks_special(tok.content)
        tokens[i] = tok.content if special else tok.content.replace("\u2581", " ")
        scores[i] = -1000.0
        types[i] = int(TokenType.CONTROL) if special else int(TokenType.USER_DEFINED)
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    space_prefix = bool(ids) and tokenizer.convert_ids_to_tokens(ids[:1])[0].startswith("\u2581")
    return GGUFVocab("llama", "default", tokens, types, scores=scores, add_space_prefix=space_prefix,
                     details={"scores_from": source})


def gguf_vocab(tokenizer, n_vocab: int, model_dir: str | Path | None = None, pre: str | None = None) -> GGUFVocab:
    """The GGUF vocabulary of ``tokenizer`` padded to ``n_vocab`` rows.

    ``model_dir``: where to look for ``tokenizer.model`` (SentencePiece scores); ``pre``: the BPE
    pre-tokenizer name (None: detected).
    """
    kind = tokenizer_kind(tokenizer)
    n_tok = max([len(tokenizer)] + [i + 1 for i in tokenizer.added_tokens_decoder])
    if n_tok > n_vocab:
        raise InstitError(f"tokenizer has {n_tok} tokens but the embedding has {n_vocab} rows")
    if kind == "spm":
        if pre not in (None, "default"):
            raise InstitError(f"--pre-tokenizer {pre} applies to byte-level BPE tokenizers; this one is SentencePiece")
        model_file = Path(model_dir) / "tokenizer.model" if model_dir is not None else None
        v = _spm_vocab(tokenizer, n_vocab, model_file)
    else:
        v = _bpe_vocab(tokenizer, n_vocab, pre)
    add_bos, add_eos = add_flags(tokenizer)
    v.details.update(kind=kind, add_bos=add_bos, add_eos=add_eos)
    return v
