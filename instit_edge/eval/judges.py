"""Open-ended answer judges: 0..1 scores in steps of 0.1.

* ``openai``: the official judge protocol against any OpenAI-compatible
  ``/chat/completions`` endpoint (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
  model ``gpt-4o-2024-08-06`` by default, as the official evaluator uses):
  the official judge prompt of the split plus the official item JSON, a
  ``{"sample_score": x}`` answer, retries with backoff, and a JSON-lines cache
  keyed by sha256 of (model, prompt, input) so no item is judged twice.
  Scores match the leaderboard only with the official judge model.
* ``offline``: no network. Agreement of ``[ID]`` references, of ``<t>`` /
  ``<s>-<e>`` references (video) and of the remaining words (token F1),
  combined and rounded to 0.1. **Not the official score**: a cheap,
  reproducible proxy for comparing variants of one model against each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from ..errors import InstitError
from ..prompting import find_ids, find_timestamps, judge_input, judge_prompt

DEFAULT_JUDGE_MODEL = "gpt-4o-2024-08-06"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
JUDGES = ("offline", "openai")


def round_score(x: float) -> float:
    return round(min(max(x, 0.0), 1.0) * 10) / 10


# ------------------------------------------------------------------ offline
_MARK_RE = re.compile(r"\[\d+\]|<\d+>(?:\s*-\s*<\d+>)?")
_WORD_RE = re.compile(r"[a-z0-9]+")
# weights of the parts that apply (renormalised): IDs matter most in Inst-IT answers
OFFLINE_WEIGHTS = {"ids": 0.4, "timestamps": 0.3, "text": 0.3}
_STOP = frozenset("a an the is are was were it its of in on at to and or be this that there".split())


def _f1(pred: Counter, gold: Counter) -> float:
    if not pred and not gold:
        return 1.0
    common = sum((pred & gold).values())
    if common == 0:
        return 0.0
    p, r = common / sum(pred.values()), common / sum(gold.values())
    return 2 * p * r / (p + r)


def _words(text: str) -> Counter:
    return Counter(w for w in _WORD_RE.findall(_MARK_RE.sub(" ", text.lower())) if w not in _STOP)


def _frames(text: str) -> Counter:
    return Counter(t for s, e in find_timestamps(text) for t in range(s, min(e, s + 64) + 1))


class OfflineJudge:
    """ID agreement, timestamp agreement (video) and word overlap; not the official GPT-4o score."""

    name = "offline"
    official = False

    def parts(self, question: str, ground_truth: str, response: str, split: str = "image") -> dict:
        out = {"text": _f1(_words(response), _words(ground_truth))}
        gold_ids, pred_ids = set(find_ids(ground_truth)), set(find_ids(response))
        if gold_ids or pred_ids:
            out["ids"] = _f1(Counter(pred_ids), Counter(gold_ids))
        if split == "video":
            gold_t, pred_t = _frames(ground_truth), _frames(response)
            if gold_t or pred_t:
                out["timestamps"] = _f1(Counter(set(pred_t)), Counter(set(gold_t)))
        return out

    def score(self, question: str, ground_truth: str, response: str, split: str = "image") -> float:
        p = self.parts(question, ground_truth, response, split)
        total = sum(OFFLINE_WEIGHTS[k] for k in p)
        return round_score(sum(OFFLINE_WEIGHTS[k] * v for k, v in p.items()) / total)


# ------------------------------------------------------------------ openai
class JudgeCache:
    """JSON lines ``{"key", "score"}``; appended durably, read tolerantly."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.data: dict[str, float] = {}
        self._torn = False
        if self.path and self.path.is_file():
            raw = self.path.read_bytes()
            self._torn = bool(raw) and not raw.endswith(b"\n")
            for line in raw.decode("utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = float(rec["score"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn or foreign line: that item is judged again

    def get(self, key: str) -> float | None:
        return self.data.get(key)

    def put(self, key: str, score: float, **extra) -> None:
        self.data[key] = score
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if self._torn:  # start a fresh line after a torn one
                f.write("\n")
                self._torn = False
            f.write(json.dumps({"key": key, "score": score, **extra}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def parse_sample_score(content: str) -> float | None:
    """``sample_score`` from the judge's reply (JSON, or JSON inside text); None when absent or out of 0..1."""
    value = None
    try:
        obj = json.loads(content)
        if isinstance(obj, dict):
            value = obj.get("sample_score")
    except (ValueError, TypeError):
        m = re.search(r'"?sample_score"?\s*[:=]\s*"?(-?[0-9]*\.?[0-9]+)', content or "")
        value = m.group(1) if m else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if 0.0 <= value <= 1.0 else None


class OpenAIJudge:
    """The official judge prompt on an OpenAI-compatible endpoint (stdlib ``urllib`` only)."""

    name = "openai"
    official = True

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 cache: str | Path | None = None, retries: int = 4, backoff: float = 1.0, timeout: float = 120.0):
        self.model = model or DEFAULT_JUDGE_MODEL
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        if not self.api_key and self.base_url == DEFAULT_BASE_URL:
            raise InstitError("the openai judge needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local endpoint)")
        self.cache = JudgeCache(cache)
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.structured = True  # response_format json_schema, as the official evaluator; dropped if refused
        self.requests = 0
        self.last_error = ""

    def key(self, prompt: str, item: str) -> str:
        return hashlib.sha256(json.dumps([self.model, prompt, item]).encode("utf-8")).hexdigest()

    def _body(self, prompt: str, item: str) -> dict:
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "user", "content": [{"type": "text", "text": prompt},
                                                          {"type": "text", "text": item}]}]}
        if self.structured:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "SampleScore", "strict": True,
                "schema": {"type": "object", "properties": {"sample_score": {"type": "number"}},
                           "required": ["sample_score"], "additionalProperties": False}}}
        return body

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode("utf-8"),
                                     headers=headers, method="POST")
        self.requests += 1
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return json.loads(r.read().decode("utf-8"))

    def _ask(self, prompt: str, item: str) -> float | None:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self._post(self._body(prompt, item))
                score = parse_sample_score(reply["choices"][0]["message"]["content"])
                if score is not None:
                    return score
                last = "no sample_score in 0..1 in the reply"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code == 400 and self.structured:
                    self.structured = False  # endpoint without structured output: ask for JSON in plain text
                elif e.code in (401, 403, 404):
                    raise InstitError(f"openai judge: {self.base_url} answered HTTP {e.code}; "
                                      "check OPENAI_BASE_URL, OPENAI_API_KEY and --judge-model") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError, KeyError, IndexError,
                    TypeError) as e:
                last = f"{type(e).__name__}: {e}"
        self.last_error = last
        return None

    def score(self, question: str, ground_truth: str, response: str, split: str = "image") -> float | None:
        """The judge's score, or None when it gave no usable answer after the retries (an invalid item)."""
        prompt, item = judge_prompt(split), judge_input(question, ground_truth, response)
        key = self.key(prompt, item)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        score = self._ask(prompt, item)
        if score is not None:
            self.cache.put(key, score, model=self.model)
        return score


def default_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "instit_edge" / "judge_cache.jsonl"


def make_judge(name: str = "offline", model: str | None = None, cache: str | Path | None = None):
    if name == "offline":
        return OfflineJudge()
    if name == "openai":
        return OpenAIJudge(model=model, cache=cache if cache is not None else default_cache_path())
    raise InstitError(f"unknown judge {name!r}; use one of: {', '.join(JUDGES)}")
