"""Inst-IT text conventions, the official Inst-IT Bench prompts, chat templates.

Everything that turns a question into model input text, and a model answer back
into a score, lives here, so that every pipeline stage (train, eval, runtime,
demo) speaks the same protocol:

* ``[ID]`` instance references and ``<t>`` / ``<s>-<e>`` frame references
  (1-based), with :func:`validate_references` for user questions;
* the official Inst-IT Bench prompts and multiple-choice answer prefixes,
  verbatim (scores are comparable with the leaderboard only when these are);
* the conversation templates (``vicuna_v1``, ``chatml`` / ``qwen_1_5``, ``mistral_instruct``,
  ``llava_llama_3``);
* multiple-choice answer extraction (the official rule and a stricter one)
  and accuracy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from .errors import InstitError

# --------------------------------------------------------------------------
# 1. Instance and frame references
# --------------------------------------------------------------------------

_ID_RE = re.compile(r"\[(\d+)\]")
# "<3>" or "<3>-<5>" (spaces around the dash tolerated); digits only, so that
# "<image>", "<s>" or "<|im_end|>" never match.
_TS_RE = re.compile(r"<(\d+)>(?:\s*-\s*<(\d+)>)?")


def find_ids(text: str) -> list[int]:
    """Instance IDs referenced as ``[ID]``, in order of appearance (repeats kept)."""
    return [int(m) for m in _ID_RE.findall(text)]


def unique_ids(text: str) -> list[int]:
    """Sorted distinct instance IDs referenced in ``text``."""
    return sorted(set(find_ids(text)))


def format_ids(ids: Iterable[int]) -> str:
    """``[1, 2]`` -> ``"[1] [2]"``, the Inst-IT way to name several instances."""
    return " ".join(f"[{int(i)}]" for i in ids)


def find_timestamps(text: str) -> list[tuple[int, int]]:
    """Frame references as ``(start, end)``: ``<t>`` -> ``(t, t)``, ``<s>-<e>`` -> ``(s, e)``."""
    out = []
    for m in _TS_RE.finditer(text):
        start = int(m.group(1))
        out.append((start, int(m.group(2)) if m.group(2) else start))
    return out


def check_text(text, where: str = "question") -> str:
    """Return ``text`` when it is a ``str`` that encodes as UTF-8, else raise :class:`InstitError`.

    A command-line argument with bytes that are not UTF-8 arrives as lone
    surrogates (Python's ``surrogateescape``), and a JSON ``"\\udcff"`` escape
    gives the same; neither can reach a tokenizer.
    """
    if not isinstance(text, str):
        raise InstitError(f"{where} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        shown = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise InstitError(f"{where} is not valid UTF-8 text ({shown} at character {e.start}); "
                          "check the terminal's or the file's encoding") from None
    return text


def _ts_text(start: int, end: int) -> str:
    return f"<{start}>" if start == end else f"<{start}>-<{end}>"


def validate_references(
    text: str,
    valid_ids: Iterable[int] | None = None,
    n_frames: int | None = None,
    where: str = "question",
) -> None:
    """Raise :class:`InstitError` when ``text`` refers to something not there.

    ``valid_ids``: the instance IDs drawn on the image/video (None: not checked).
    ``n_frames``: frames in the video (None: only ``t >= 1`` and ``s <= e`` are checked).
    ``where``: what ``text`` is, for the message ("question", "option B", ...).
    """
    if valid_ids is not None:
        visible = sorted(set(int(i) for i in valid_ids))
        for i in find_ids(text):
            if i not in visible:
                shown = f"the marked instances are {format_ids(visible)}" if visible else "no instances are marked"
                raise InstitError(f"{where} refers to instance [{i}], but {shown}")
    frames = f"the video has {n_frames} frames (<1>-<{n_frames}>)" if n_frames is not None else ""
    for start, end in find_timestamps(text):
        ref = _ts_text(start, end)
        if start < 1:
            raise InstitError(f"{where} refers to frame {ref}, but frames are numbered from <1>"
                              + (f"; {frames}" if frames else ""))
        if start > end:
            raise InstitError(f"{where} has interval {ref} that ends before it starts; "
                              f"write <{end}>-<{start}>")
        if n_frames is not None and end > n_frames:
            raise InstitError(f"{where} refers to frame {ref}, but {frames}")


# --------------------------------------------------------------------------
# 2. Official Inst-IT Bench protocol data
# --------------------------------------------------------------------------
# Verbatim from the public repository inst-it/inst-it, file
# inst-it-bench/prompts.py (``prompt_template``), commit
# 882e1613c4494456a1b66377ef922a25374946bb. Byte-identical on purpose, including
# the unbalanced quotes in "'[1]'', '[2]''", the typo "serveral", the curly
# quotes and the trailing spaces: scores are only comparable with the
# leaderboard when the prompts are the same. Do not "fix" them.
# tests/test_prompting.py pins their sha256.

IMAGE_MC_PRE_PROMPT = (
    "Based on the image, select the best answer to the following multiple-choice "
    "question. In both the question and options, specific objects are represented using "
    "the format [ID] (e.g., '[1]'', '[2]''. Respond with only the letter (A, B, C, or D) "
    "of the correct option."
)
IMAGE_MC_POST_PROMPT = (
    "The best answer is: "
)
IMAGE_OE_PRE_PROMPT = (
    "# Task Definition:\n"
    "You are an expert in image analysis. In this task, you will receive an image, and "
    "your task is to answer the given question based on the image content.\n"
    "# Guidelines and Rules:\n"
    "- Object References: In the image, each object has a unique ID. Use this ID in your "
    "response to specify objects, formatted as [ID] for a single object (e.g., “[8]”) or "
    "as [ID1] [ID2] ... for multiple objects, such as “[3] [4] [5]”. Avoid commas, "
    "ranges, or phrases like “[1, 2, 3]” or “[1] to [3]”. The IDs in the images and "
    "questions match directly."
)
IMAGE_OE_POST_PROMPT = (
    "Based on the input image, please answer the question: "
)
VIDEO_MC_PRE_PROMPT = (
    "Based on the video, select the best answer to the following multiple-choice "
    "question. In both the question and options, specific objects are represented using "
    'the format [ID] (e.g., "[1]", "[2]"), and time references are shown using the '
    'format <timestamp> (e.g., "at <6>" or "during <7>-<8>"). Respond with only the '
    "letter (A, B, C, or D) of the correct option."
)
VIDEO_MC_POST_PROMPT = (
    "The best answer is: "
)
VIDEO_OE_PRE_PROMPT = (
    "# Task Definition:\n"
    "You are an expert in video analysis. In this task, you will receive a series of "
    "frames as a video, and your task is to answer the given questions based on the "
    "video content.\n"
    "# Input Format:\n"
    "There are serveral images inputs as video frames. Each frame can be referenced by "
    "its timestamp (indicating when it appears in the video). For example, the first "
    "frame can be referred to as <1>.\n"
    "# Guidelines and Rules:\n"
    "- Object References: Each object has a unique ID. Use this ID in your response to "
    "specify objects, formatted as [ID] for a single object (e.g., “[8]”) or as [ID1] "
    "[ID2] ... for multiple objects, such as “[3] [4] [5]”. Avoid commas, ranges, or "
    "phrases like “[1, 2, 3]” or “[1] to [3]”. The IDs in the images and questions match "
    "directly.\n"
    "- Time References: Use timestamps to indicate moments or intervals in the video. "
    "For a specific moment, format as <timestamp> (e.g., “at <3>”). For an interval, use "
    "<start_timestamp>-<end_timestamp> (e.g., “during <5>-<7>”). Always enclose "
    "timestamps in <>."
)
VIDEO_OE_POST_PROMPT = (
    "Based on the input video, please answer the question: "
)
IMAGE_JUDGE_PROMPT = (
    "\n"
    "# Task Description:\n"
    "You are an expert evaluator tasked with scoring the accuracy of responses to "
    "open-ended questions. You will be provided with a set of questions, each with a "
    "corresponding ground-truth answer, as well as responses from a tester. Your job is "
    "to assess the accuracy of each response and provide a score between 0 and 1.\n"
    "# Guidelines:\n"
    "- Score Range: Your score for each test item must be between 0 and 1. A higher "
    "score means more correctness. Choose from the following: 0 (completely incorrect), "
    "0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 (completely correct)\n"
    "- For each test item, consider the question, the ground-truth answer, and the "
    "tester’s response together to determine correctness.\n"
    "- Objects in questions and answers may be referenced using the format [ID] (e.g., "
    "[1], [2]). Ensure that any objects referenced in the tester’s response match "
    "correctly with the ground-truth answer.\n"
    "# Input Format:\n"
    "The input is a set of test items to be scored, where each item includes: \n"
    "- `question`; \n"
    "- `ground truth answer for the question`; \n"
    "- `response from the tester`.\n"
    "Now, let's begin the evaluation, here are the input test items: \n"
)
VIDEO_JUDGE_PROMPT = (
    "\n"
    "# Task Description:\n"
    "You are an expert evaluator tasked with scoring the accuracy of responses to "
    "open-ended questions. You will be provided with a set of questions, each with a "
    "corresponding ground-truth answer, as well as responses from a tester. Your job is "
    "to assess the accuracy of each response and provide a score between 0 and 1.\n"
    "# Guidelines:\n"
    "- Score Range: Your score for each test item must be between 0 and 1. A higher "
    "score means more correctness. Choose from the following: 0 (completely incorrect), "
    "0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 (completely correct)\n"
    "- For each test item, consider the question, the ground-truth answer, and the "
    "tester’s response together to determine correctness.\n"
    "- Objects in questions and answers may be referenced using the format [ID] (e.g., "
    "[1], [2]). Ensure that any objects referenced in the tester’s response match "
    "correctly with the ground-truth answer.\n"
    "- Time points may be indicated with <timestamp> (e.g., <1>), and time intervals "
    "with <start_timestamp>-<end_timestamp> (e.g., <3>-<5>). Verify that the tester’s "
    "response includes accurate time expressions.\n"
    "# Input Format:\n"
    "The input is a set of test items to be scored, where each item includes: \n"
    "- `question`; \n"
    "- `ground truth answer for the question`; \n"
    "- `response from the tester`.\n"
    "Now, let's begin the evaluation, here are the input test items:\n"
)

# From inst-it/inst-it, inst-it-bench/evaluate.py, ``extract_characters_regex``
# (borrowed there from Video-MME), same commit. The official source misses two
# commas, so Python fuses "The best option is" + "The correct option is" and
# "Best answer:" + "Best option:" into one string each. This is the list as
# Python evaluates it (13 entries), because that is what the official score
# computes; keep the fused entries.
OFFICIAL_ANSWER_PREFIXES: tuple[str, ...] = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",  # fused in the official source
    "Best answer:Best option:",  # fused in the official source
    "Answer",
    "Answer:",
    "answer:",
    "answer",
    "Option:",
    "The correct answer",
    "The correct option",
)

def frame_label(number: int) -> str:
    """The text a model trained with frame labels reads before each video frame's rows: the frame's 1-based
    number in the whole video, as questions write it (``<7>``)."""
    return f"<{number}>"


SPLITS = ("image", "video")

_TASK_PROMPTS = MappingProxyType({
    ("image", "mc"): (IMAGE_MC_PRE_PROMPT, IMAGE_MC_POST_PROMPT),
    ("image", "oe"): (IMAGE_OE_PRE_PROMPT, IMAGE_OE_POST_PROMPT),
    ("video", "mc"): (VIDEO_MC_PRE_PROMPT, VIDEO_MC_POST_PROMPT),
    ("video", "oe"): (VIDEO_OE_PRE_PROMPT, VIDEO_OE_POST_PROMPT),
})

JUDGE_PROMPTS = MappingProxyType({"image": IMAGE_JUDGE_PROMPT, "video": VIDEO_JUDGE_PROMPT})

MC_LETTERS = ("A", "B", "C", "D")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise InstitError(f"unknown Inst-IT Bench split {split!r}; use one of: {', '.join(SPLITS)}")
    return split


def build_mc_prompt(question: str, options: Mapping[str, str], split: str = "image") -> str:
    """The official multiple-choice input text (without image token or chat template).

    ``options`` maps exactly the letters A-D to the option texts.
    """
    pre, post = _TASK_PROMPTS[(_check_split(split), "mc")]
    if set(options) != set(MC_LETTERS):
        got = ", ".join(map(str, options)) or "none"
        raise InstitError(f"multiple-choice options must be exactly A, B, C and D; got {got}")
    lines = "\n".join(f"{k}. {options[k]}" for k in MC_LETTERS)
    return f"{pre}\n{question}\n{lines}\n{post}"


def build_oe_prompt(question: str, split: str = "image") -> str:
    """The official open-ended input text: pre-prompt, post-prompt, then the question."""
    pre, post = _TASK_PROMPTS[(_check_split(split), "oe")]
    return f"{pre}\n{post}\n{question}"


def official_prompt(item) -> str:
    """The official Inst-IT Bench input text of a bench item (``format``, ``question``, ``options``,
    ``split``), without chat template or image token: what evaluation, calibration and training all ask."""
    if item.format == "mc":
        return build_mc_prompt(item.question, item.options or {}, item.split)
    return build_oe_prompt(item.question, item.split)


def judge_prompt(split: str = "image") -> str:
    """The official GPT-4o judge instruction for open-ended answers of ``split``."""
    return JUDGE_PROMPTS[_check_split(split)]


def judge_input(question: str, ground_truth: str, response: str) -> str:
    """The item text sent to the judge after :func:`judge_prompt`, as the official evaluator builds it."""
    return json.dumps({"question": question, "ground_truth_answer": ground_truth, "tester_response": response})


# --------------------------------------------------------------------------
# 3. Chat templates
# --------------------------------------------------------------------------

IMAGE_TOKEN = "<image>"
# Special-token strings the chat templates themselves write. Only the template's own text is tokenized
# with them as special tokens; a user's text is always plain text, even when it spells one of them.
TEMPLATE_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<s>", "</s>", IMAGE_TOKEN,
                           "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CHATML_SYSTEM = "You are a helpful assistant."
# LLaVA-NeXT llava/conversation.py conv_llava_llama_3
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)

# LLaVA-NeXT conv_templates names: vicuna_v1 (conv_llava_v1's system text, see _render_vicuna), qwen_1_5
# (conv_qwen: ChatML, system "You are a helpful assistant."; renders exactly like chatml), mistral_instruct
# (conv_mistral_instruct, SeparatorStyle.LLAMA_2), llava_llama_3 (conv_llava_llama_3, SeparatorStyle.LLAMA_3).
CHAT_TEMPLATES = ("vicuna_v1", "chatml", "qwen_1_5", "mistral_instruct", "llava_llama_3")
_STOP = MappingProxyType({"vicuna_v1": "</s>", "chatml": "<|im_end|>", "qwen_1_5": "<|im_end|>",
                          "mistral_instruct": "</s>", "llava_llama_3": "<|eot_id|>"})
# LLaVA training data says "human" / "gpt".
_ROLE_ALIASES = MappingProxyType({"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
                                  "system": "system"})


def with_image(text: str, n_images: int = 1) -> str:
    """Prepend ``n_images`` image placeholders, one per line, as the official scripts do."""
    if n_images < 0:
        raise InstitError(f"n_images must be >= 0, got {n_images}")
    return f"{IMAGE_TOKEN}\n" * n_images + text


def _check_template(name: str) -> str:
    if name not in CHAT_TEMPLATES:
        raise InstitError(f"unknown chat template {name!r}; known: {', '.join(CHAT_TEMPLATES)}")
    return name


def stop_strings(template_name: str) -> list[str]:
    """Strings that end the assistant's turn for ``template_name``."""
    return [_STOP[_check_template(template_name)]]


def _normalise_turns(turns: Sequence[tuple[str, str]], add_generation_prompt: bool) -> tuple[str | None, list]:
    """Split off an optional leading system turn; check user/assistant alternation."""
    norm = []
    for role, text in turns:
        if role not in _ROLE_ALIASES:
            raise InstitError(f"unknown chat role {role!r}; use user, assistant or system")
        norm.append((_ROLE_ALIASES[role], text))
    system = None
    if norm and norm[0][0] == "system":
        system = norm.pop(0)[1]
    for i, (role, _) in enumerate(norm):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise InstitError(f"chat turn {i + 1} is {role!r} but {expected!r} was expected "
                              "(optional system first, then user and assistant alternating)")
    if add_generation_prompt and (not norm or norm[-1][0] != "user"):
        raise InstitError("a generation prompt needs the conversation to end with a user turn")
    return system, norm


def _render_vicuna(system: str | None, turns: list, add_generation_prompt: bool) -> str:
    # LLaVA conv_vicuna_v1 (SeparatorStyle.TWO): sep " " after user, "</s>" after assistant.
    seps = (" ", "</s>")
    out = (VICUNA_SYSTEM if system is None else system) + seps[0]
    for i, (role, text) in enumerate(turns):
        out += ("USER" if role == "user" else "ASSISTANT") + ": " + text + seps[i % 2]
    return out + ("ASSISTANT:" if add_generation_prompt else "")


def _render_chatml(system: str | None, turns: list, add_generation_prompt: bool) -> str:
    # Qwen2 / LLaVA-NeXT conv_qwen: default system prompt when none is given.
    out = f"<|im_start|>system\n{CHATML_SYSTEM if system is None else system}<|im_end|>\n"
    for role, text in turns:
        out += f"<|im_start|>{role}\n{text}<|im_end|>\n"
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _render_mistral(system: str | None, turns: list, add_generation_prompt: bool) -> str:
    # LLaVA-NeXT conv_mistral_instruct (SeparatorStyle.LLAMA_2, sep "", sep2 "</s>", empty system):
    # "[INST] q [/INST]" per user turn, " a </s>" per assistant turn; a system text goes into the first
    # user turn as "<<SYS>>\n...\n<</SYS>>\n\n". BOS comes from the tokenizer.
    out = ""
    for i, (role, text) in enumerate(turns):
        if i == 0 and system:
            text = f"<<SYS>>\n{system}\n<</SYS>>\n\n" + text
        out += f"[INST] {text} [/INST]" if role == "user" else f" {text} </s>"
    return out


def _render_llama3(system: str | None, turns: list, add_generation_prompt: bool) -> str:
    # LLaVA-NeXT conv_llava_llama_3 (SeparatorStyle.LLAMA_3): the Meta-Llama-3-Instruct chat template
    # (content stripped) over [system] + turns. The template's leading <|begin_of_text|> is the BOS the
    # tokenizer adds, so it is not written here (LLaVA-NeXT's own code ends up with two).
    out = ""
    for role, text in [("system", LLAMA3_SYSTEM if system is None else system)] + list(turns):
        out += f"<|start_header_id|>{role}<|end_header_id|>\n\n{text.strip()}<|eot_id|>"
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


_RENDERERS = MappingProxyType({"vicuna_v1": _render_vicuna, "chatml": _render_chatml, "qwen_1_5": _render_chatml,
                               "mistral_instruct": _render_mistral, "llava_llama_3": _render_llama3})


def identify_chat_template(jinja: str, bos_token: str | None = None, eos_token: str | None = None) -> str | None:
    """The name of the template a checkpoint's Jinja ``chat_template`` renders like, or None.

    Rendered for a one-turn image question with the generation prompt (what the runtime sends); a
    leading BOS string is ignored (the tokenizer adds it).
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def _raise(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        tpl = env.from_string(jinja)
    except jinja2.TemplateError:
        return None
    turns = [("user", with_image("What is [1] holding?"))]
    try:
        got = tpl.render(messages=[{"role": r, "content": t} for r, t in turns], add_generation_prompt=True,
                         bos_token=bos_token or "", eos_token=eos_token or "")
    except Exception:  # noqa: BLE001 - a template may raise on anything
        return None
    if bos_token and got.startswith(bos_token):
        got = got[len(bos_token):]
    for name in CHAT_TEMPLATES:
        if got == render_chat(name, turns):
            return name
    return None


def render_chat(template_name: str, turns: Sequence[tuple[str, str]], add_generation_prompt: bool = True) -> str:
    """Render ``[(role, text), ...]`` with a chat template.

    Roles: an optional leading ``system`` (replaces the template's default
    system prompt), then ``user`` / ``assistant`` alternating from ``user``
    (``human`` / ``gpt`` are accepted too). With ``add_generation_prompt`` the
    text ends where the assistant's reply starts, and the last turn must be
    ``user``.
    """
    renderer = _RENDERERS[_check_template(template_name)]
    system, norm = _normalise_turns(turns, add_generation_prompt)
    return renderer(system, norm, add_generation_prompt)


# --------------------------------------------------------------------------
# 4. Multiple-choice answer extraction and scoring
# --------------------------------------------------------------------------

EXTRACT_MODES = ("official", "strict")

# strict mode: the prefixes without the fusion accident, longest first.
_STRICT_PREFIXES = sorted(
    {"The best answer is", "The correct answer is", "The answer is", "The best option is", "The correct option is",
     "Best answer:", "Best option:", "The correct answer", "The correct option", "The answer", "Answer:", "Answer",
     "Option:", "Option", "Choice:", "Choice"},
    key=len, reverse=True,
)
_STRICT_PREFIX_RE = re.compile("|".join(re.escape(p) for p in _STRICT_PREFIXES), re.IGNORECASE)
# "answer is B", "Option: (C)", "best option is D", "choice A": a cue word, then a capital letter token.
_CUE_RE = re.compile(r"\b(?i:answer|option|choice|letter)(?:\s+(?i:is))?\s*[:\-]?\s*[(\[]?([ABCD])(?![A-Za-z0-9_'])")
_LETTER_RE = re.compile(r"(?<![A-Za-z0-9_'])([ABCD])(?![A-Za-z0-9_'])")
_SOLE_LETTER_RE = re.compile(r"[\s(\[:.\-*]*([ABCDabcd])[\s)\].:*]*")
# After a standalone "A", these words still mean the option ("A is correct").
_A_VERBS = frozenset({"is", "was", "seems", "because", "since", "and", "or"})


def _extract_official(response: str) -> str:
    s = response.strip()
    for prefix in OFFICIAL_ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    # The official "more than 10 words and no A-D -> invalid" test is kept by
    # this: with no A-D anywhere the answer is invalid whatever its length.
    match = re.search("[ABCD]", s)
    return match.group(0) if match else ""


def _is_article(s: str, m: re.Match) -> bool:
    """True for the English article "A" ("A red circle"), not the option letter."""
    if m.group(1) != "A":
        return False
    nxt = re.match(r"\s+([a-z]+)", s[m.end():])
    return bool(nxt) and nxt.group(1) not in _A_VERBS


def _extract_strict(response: str) -> str:
    s = response.strip()
    cue = _CUE_RE.search(s)
    if cue:
        return cue.group(1)
    s = _STRICT_PREFIX_RE.sub(" ", s).strip()
    sole = _SOLE_LETTER_RE.fullmatch(s)
    if sole:
        return sole.group(1).upper()
    for m in _LETTER_RE.finditer(s):
        if not _is_article(s, m):
            return m.group(1)
    return ""


def extract_mc_answer(response: str, mode: str = "official") -> str:
    """The option letter a response chose, or ``""`` when it is invalid.

    ``official``: the Inst-IT Bench rule (``extract_characters_regex``): strip
    every official prefix anywhere (case-sensitive), then take the first A, B,
    C or D character anywhere, even inside a word ("At <4> ..." -> "A"); none
    means invalid (the official "over 10 words and no letter" rule is a
    special case of that).

    ``strict``: a stricter reading for our own reports. A cue ("answer is B",
    "Option: (C)", "choice D") wins; otherwise, with prefixes stripped
    case-insensitively, a response that is only a letter (any case, with
    brackets or punctuation: "b", "(B)", "C.") is that letter; otherwise the
    first standalone capital A-D token, skipping the article "A" ("A red
    circle"). Letters inside words ("At", "All", "Dog") never count, so a
    response with no standalone letter (of any length) is invalid.
    """
    if mode == "official":
        return _extract_official(response)
    if mode == "strict":
        return _extract_strict(response)
    raise InstitError(f"unknown answer extraction mode {mode!r}; use one of: {', '.join(EXTRACT_MODES)}")


def score_mc(predictions: Sequence[Mapping], mode: str = "official") -> dict:
    """Multiple-choice accuracy, as the official evaluator computes it.

    Each prediction needs ``model_prediction`` and ``ground_truth`` (a letter).
    Returns ``accuracy`` (correct / valid x 100, None when nothing is valid),
    ``total``, ``valid`` and ``correct``.
    """
    valid = correct = 0
    for n, pred in enumerate(predictions):
        missing = [k for k in ("model_prediction", "ground_truth") if k not in pred]
        if missing:
            qid = pred.get("question_id", f"#{n + 1}")
            raise InstitError(f"prediction {qid} has no {' or '.join(missing)}")
        letter = extract_mc_answer(pred["model_prediction"], mode)
        if letter:
            valid += 1
            correct += letter == pred["ground_truth"]
    accuracy = correct / valid * 100 if valid else None
    return {"accuracy": accuracy, "total": len(predictions), "valid": valid, "correct": correct}


def pick_template(processor, default: str, override: str | None = None) -> str:
    """The chat template a bundle records: ``override`` (``--template``), else the checkpoint's own
    ``chat_template`` when it renders like one of ours, else ``default`` (the LLM family's, from
    ``models.families.TEXT_FAMILIES``)."""
    if override:
        if override not in CHAT_TEMPLATES:
            raise InstitError(f"unknown --template {override!r}; choose one of {', '.join(CHAT_TEMPLATES)}")
        return override
    tok = getattr(processor, "tokenizer", processor)
    jinja = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
    if isinstance(jinja, dict):  # several named templates: the default one
        jinja = jinja.get("default")
    if jinja:
        name = identify_chat_template(jinja, getattr(tok, "bos_token", None), getattr(tok, "eos_token", None))
        if name is None:
            raise InstitError("the checkpoint's chat_template renders like none of the supported templates; "
                              f"pass --template NAME (one of {', '.join(CHAT_TEMPLATES)})")
        return name
    return _check_template(default)
