"""The text LLM in llama.cpp (through llama-cpp-python), with image embeddings injected.

A prompt is a list of segments: token ids, or float32 embedding rows (the
image). Segments are decoded with raw ``llama_batch`` calls: token batches
and ``embd`` batches, chunked by ``n_batch`` (a larger batch aborts the
process), positions continuing exactly. The ``Llama`` object is used only to
load the model, create the context and tokenize; its own eval / generate are
never called, so its counters cannot drop our KV entries.

What is in the KV cache is tracked as a list of keys (one per position). A new
prompt reuses the longest common prefix: the fixed system prefix, and the
image rows when the same image is asked about again.
"""

from __future__ import annotations

import codecs
import ctypes
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InstitError


def cpu_has_amx() -> bool:
    """True when this CPU advertises AMX (Intel Sapphire Rapids and later)."""
    from ..system import cpu_flags

    return "amx_int8" in cpu_flags()


def build_has_amx() -> bool:
    """True when the installed llama.cpp was compiled with its AMX kernels.

    ``make setup`` builds llama-cpp-python without them on AMX CPUs
    (``GGML_NATIVE=OFF`` with the AVX-512 family listed by hand); a build
    compiled with ``-march=native`` on such a CPU has them. Read from
    ``llama_print_system_info()`` (``AMX_INT8 = 1``); an unreadable build
    counts as AMX when the CPU has it (the safe side).
    """
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
        info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    except Exception:  # noqa: BLE001 - no llama.cpp or no system info: decide by the CPU
        return cpu_has_amx()
    return bool(re.search(r"AMX_INT8\s*=\s*1", info))


def weight_repacking() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (AMX, CPU_REPACK).

    llama.cpp's AMX matmul crashes (SIGSEGV in ``ggml_backend_amx_mul_mat``,
    upstream issue ggml-org/llama.cpp#20824, never fixed) on quantized weights,
    and a llama-cpp-python build compiled with ``-march=native`` on an AMX CPU
    always includes it. So repacking is off when the build has the AMX kernels
    and the CPU runs them (seen here: a Q8_0 decode crashed the process), and on
    otherwise: ``make setup``'s build on AMX CPUs leaves AMX out, so the
    CPU_REPACK layouts (Q4_0 / IQ4_NL / Q8_0 interleaved) stay usable.
    ``INSTIT_LLAMA_REPACK=1|0`` overrides.
    """
    import os

    env = os.environ.get("INSTIT_LLAMA_REPACK")
    if env in ("0", "1"):
        return env == "1"
    return not (cpu_has_amx() and build_has_amx())


def load_llama(path, **kwargs):
    """``llama_cpp.Llama(model_path=path, **kwargs)`` with weight repacking set by :func:`weight_repacking`.

    ``Llama`` does not expose ``use_extra_bufts``; its constructor takes the
    model parameters from ``llama_model_default_params()``, so that function is
    wrapped for the duration of the load.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as lc

    if weight_repacking():
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    original = lc.llama_model_default_params

    def no_repack():
        params = original()
        params.use_extra_bufts = False
        return params

    lc.llama_model_default_params = no_repack
    try:
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    finally:
        lc.llama_model_default_params = original


@dataclass
class Segment:
    """Token ids, or embedding rows with a cache key (e.g. the image hash)."""

    tokens: list[int] | None = None
    embd: np.ndarray | None = None
    key: str = ""

    def keys(self) -> list:
        if self.tokens is not None:
            return [("t", t) for t in self.tokens]
        return [("e", self.key, i) for i in range(len(self.embd))]

    def __len__(self) -> int:
        return len(self.tokens) if self.tokens is not None else len(self.embd)


@dataclass
class GenStats:
    n_prompt: int = 0
    n_reused: int = 0
    n_generated: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {
            "prompt_tokens": self.n_prompt,
            "reused_tokens": self.n_reused,
            "generated_tokens": self.n_generated,
            "prefill_s": round(self.prefill_s, 6),
            "decode_s": round(self.decode_s, 6),
            "ttft_s": round(self.ttft_s, 6),
            "prefill_tok_s": round((self.n_prompt - self.n_reused) / self.prefill_s, 2) if self.prefill_s > 0 else None,
            "decode_tok_s": round(max(self.n_generated - 1, 0) / self.decode_s, 2) if self.decode_s > 0 else None,
        }
        d.update(self.extra)
        return d


class LlamaCppLLM:
    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        f32_kv: bool = False,
        verbose: bool = False,
    ):
        import llama_cpp

        self._lc = llama_cpp
        kw = {}
        if f32_kv:  # tight parity: llama.cpp's KV cache is F16 by default
            kw.update(type_k=0, type_v=0)
        try:
            self.llm = load_llama(
                path,
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=n_gpu_layers,
                verbose=verbose,
                **kw,
            )
        except ValueError as e:
            raise InstitError(f"llama.cpp could not load {path}: {e} (re-export the bundle)") from None
        self.ctx = self.llm._ctx.ctx
        self.n_ctx = self.llm.n_ctx()
        self.n_batch = n_batch
        self.n_embd = self.llm.n_embd()
        self.n_vocab = self.llm.n_vocab()
        self.eos = self.llm.token_eos()
        self._kv: list = []  # one key per filled position

    # ------------------------------------------------------------------ tokens
    def is_eog(self, token: int) -> bool:
        vocab = self._lc.llama_model_get_vocab(self.llm._model.model)
        return token == self.eos or bool(self._lc.llama_vocab_is_eog(vocab, token))

    def tokenize(self, text: str, add_bos: bool, special: bool = True) -> list[int]:
        """Token ids of ``text``; with ``special`` the vocabulary's control-token strings become those tokens."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def special_token(self, text: str) -> int | None:
        """The id of the control token spelled ``text``, or None when the vocabulary has no such token."""
        cache = self.__dict__.setdefault("_special_cache", {})
        if text not in cache:
            toks = self.tokenize(text, add_bos=False, special=True)
            cache[text] = toks[0] if len(toks) == 1 and toks != self.tokenize(text, False, special=False) else None
        return cache[text]

    def tokenize_parts(self, parts, add_bos: bool) -> list[int]:
        """Token ids of ``[(text, is_template), ...]`` joined: special tokens are parsed only in template parts.

        Text between the template's special tokens is tokenized as one run
        (user text merged with the template text around it, as llama.cpp does
        when it tokenizes the whole prompt), so a prompt whose user text spells
        no special token gets exactly the tokens of ``tokenize(whole, special=True)``.
        """
        from ..prompting import TEMPLATE_SPECIAL_TOKENS

        specials = [s for s in TEMPLATE_SPECIAL_TOKENS if self.special_token(s) is not None]
        pattern = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")") if specials else None
        runs: list = []
        cur = ""
        for text, is_template in parts:
            if not is_template or pattern is None:
                cur += text
                continue
            for i, piece in enumerate(pattern.split(text)):
                if i % 2:
                    runs.append(cur)
                    runs.append(self.special_token(piece))
                    cur = ""
                else:
                    cur += piece
        runs.append(cur)
        out = self.tokenize("", add_bos=True, special=False) if add_bos else []  # what llama.cpp adds (BOS)
        for r in runs:
            if isinstance(r, int):
                out.append(r)
            elif r:
                out += self.tokenize(r, add_bos=False, special=False)
        return out

    def token_bytes(self, token: int) -> bytes:
        return self.llm.detokenize([token], special=False)

    # ------------------------------------------------------------------ decode
    def reset(self) -> None:
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self.ctx), True)
        self._kv = []

    def truncate(self, n: int) -> None:
        """Drop KV entries from position ``n`` on (the next prompt then decodes from there)."""
        self._truncate(min(n, len(self._kv)))

    @property
    def n_cached(self) -> int:
        return len(self._kv)

    def _truncate(self, n: int) -> None:
        if n < len(self._kv):
            ok = self._lc.llama_memory_seq_rm(self._lc.llama_get_memory(self.ctx), 0, n, -1)
            if not ok:
                self.reset()
                return
            self._kv = self._kv[:n]

    def _decode_tokens(self, tokens: list[int], want_logits: str = "last") -> np.ndarray | None:
        lc = self._lc
        out = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last_chunk = start + self.n_batch >= len(tokens)
            batch = lc.llama_batch_init(len(chunk), 0, 1)
            try:
                batch.n_tokens = len(chunk)
                base = len(self._kv)
                for i, t in enumerate(chunk):
                    batch.token[i] = t
                    batch.pos[i] = base + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    want = want_logits == "all" or (want_logits == "last" and last_chunk and i == len(chunk) - 1)
                    batch.logits[i] = 1 if want else 0
                rc = lc.llama_decode(self.ctx, batch)
                if rc != 0:
                    raise InstitError(f"llama_decode failed with code {rc} (context full? n_ctx={self.n_ctx})")
                self._kv.extend(("t", t) for t in chunk)
                if want_logits == "all":
                    out.append(self._logits_rows(len(chunk)))
            finally:
                lc.llama_batch_free(batch)
        if want_logits == "all":
            return np.concatenate(out, 0)
        if want_logits == "last":
            return self._logits_rows(1)[-1]
        return None

    def _decode_embd(self, rows: np.ndarray, keys: list, want_last: bool) -> np.ndarray | None:
        lc = self._lc
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            # llama.cpp does not check the row width: a wrong width reads garbage silently
            raise InstitError(f"image embeddings have width {rows.shape[-1]}, the LLM expects {self.n_embd}; "
                              "the vision and LLM files come from different models")
        logits = None
        for start in range(0, len(rows), self.n_batch):
            chunk = rows[start:start + self.n_batch]
            n = len(chunk)
            batch = lc.llama_batch_init(n, self.n_embd, 1)
            try:
                batch.n_tokens = n
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
                base = len(self._kv)
                last_chunk = start + self.n_batch >= len(rows)
                for i in range(n):
                    batch.pos[i] = base + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1 if (want_last and last_chunk and i == n - 1) else 0
                rc = lc.llama_decode(self.ctx, batch)
                if rc != 0:
                    raise InstitError(f"llama_decode (embeddings) failed with code {rc}")
                self._kv.extend(keys[start:start + n])
            finally:
                lc.llama_batch_free(batch)
        if want_last:
            logits = self._logits_rows(1)[-1]
        return logits

    def _logits_rows(self, n: int) -> np.ndarray:
        rows = []
        for i in range(-n, 0):
            ptr = self._lc.llama_get_logits_ith(self.ctx, i)
            rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        return np.stack(rows)

    def prefill(self, segments: list[Segment], all_logits: bool = False) -> tuple[np.ndarray, int]:
        """Bring the KV cache to exactly ``segments``; return logits of the last row and reused count.

        With ``all_logits``, nothing is reused and the logits of every text row are returned
        (image rows give none), for parity tests.
        """
        keys = [k for s in segments for k in s.keys()]
        if len(keys) > self.n_ctx:
            raise InstitError(f"prompt is {len(keys)} tokens (text + image rows) but the context holds {self.n_ctx}; "
                              "shorten the question, use fewer frames, or load with a larger n_ctx")
        if all_logits:
            self.reset()
            reuse = 0
        else:
            reuse = 0
            for a, b in zip(self._kv, keys):
                if a != b:
                    break
                reuse += 1
            if reuse == len(keys):  # need at least one row to get fresh logits
                reuse -= 1
            self._truncate(reuse)
        pos = 0
        logits = None
        collected = []
        for s in segments:
            end = pos + len(s)
            if end <= reuse:
                pos = end
                continue
            skip = max(reuse - pos, 0)
            is_last = s is segments[-1]
            if s.tokens is not None:
                toks = s.tokens[skip:]
                mode = "all" if all_logits else ("last" if is_last else "none")
                out = self._decode_tokens(toks, mode)
                if all_logits:
                    collected.append(out)
                elif is_last:
                    logits = out
            else:
                out = self._decode_embd(s.embd[skip:], s.keys()[skip:], want_last=is_last and not all_logits)
                if is_last and not all_logits:
                    logits = out
            pos = end
        if all_logits:
            return np.concatenate(collected, 0), 0
        return logits, reuse

    def step(self, token: int) -> np.ndarray:
        if len(self._kv) + 1 > self.n_ctx:
            raise InstitError(f"generation reached the context length {self.n_ctx}; lower max_new_tokens")
        return self._decode_tokens([token], "last")

    # ------------------------------------------------------------------ generate
    def generate(
        self,
        segments: list[Segment],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] = (),
        stats: GenStats | None = None,
    ) -> Iterator[str]:
        """Stream text pieces. Greedy when ``temperature == 0``."""
        stats = stats if stats is not None else GenStats()
        n_prompt = sum(len(s) for s in segments)
        if n_prompt + 1 > self.n_ctx:
            raise InstitError(f"prompt is {n_prompt} tokens but the context holds {self.n_ctx}; "
                              "shorten the question or use fewer frames")
        max_new_tokens = min(max_new_tokens, self.n_ctx - n_prompt)
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        logits, reused = self.prefill(segments)
        stats.n_prompt, stats.n_reused = n_prompt, reused
        stats.prefill_s = time.perf_counter() - t0
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        emitted = 0
        t1 = time.perf_counter()
        for i in range(max_new_tokens):
            tok = _pick(logits, temperature, top_p, top_k, rng)
            if i == 0:
                stats.ttft_s = time.perf_counter() - t0
            if self.is_eog(tok):
                stats.n_generated = i + 1
                break
            text += dec.decode(self.token_bytes(tok))
            stats.n_generated = i + 1
            cut = _stop_at(text, stop)
            if cut is not None:
                if cut > emitted:
                    yield text[emitted:cut]
                emitted = cut
                break
            safe = _safe_emit_len(text, stop)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if i + 1 < max_new_tokens:
                logits = self.step(tok)
        tail = text[emitted:]
        cut = _stop_at(text, stop)
        if cut is None and tail:
            yield tail
        stats.decode_s = time.perf_counter() - t1


def _pick(logits: np.ndarray, temperature: float, top_p: float, top_k: int, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / temperature
    if top_k and top_k < len(x):
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(len(p), p=p))


def _stop_at(text: str, stop) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


def _safe_emit_len(text: str, stop) -> int:
    """Hold back a tail that could be the start of a stop string."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold
