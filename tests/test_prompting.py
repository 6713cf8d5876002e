"""Tests for instit_edge.prompting: Inst-IT conventions, official prompts, chat templates, MC scoring."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from instit_edge import prompting as P
from instit_edge.errors import InstitError

# --------------------------------------------------------------------------
# Independent re-implementation of the official rule, transcribed from
# inst-it/inst-it inst-it-bench/evaluate.py (extract_characters_regex). The
# prefix list is written exactly as the official source writes it, missing
# commas included, so Python fuses two pairs of entries just as it does there.
# --------------------------------------------------------------------------

def reference_extract(s):
    s = s.strip()
    answer_prefixes = [
        "The best answer is",
        "The correct answer is",
        "The answer is",
        "The answer",
        "The best option is"  # noqa: ISC001 - missing comma, as in the official source
        "The correct option is",
        "Best answer:"  # noqa: ISC001 - missing comma, as in the official source
        "Best option:",
        "Answer",
        "Answer:",
        "answer:",
        "answer",
        "Option:",
        "The correct answer",
        "The correct option",
    ]
    for answer_prefix in answer_prefixes:
        s = s.replace(answer_prefix, "")

    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    matches = re.search(r'[ABCD]', s)
    if matches is None:
        return ""
    return matches[0]


# (response, official expected by hand or None = only compared with the reference, strict expected)
CASES = [
    ("A", "A", "A"),
    ("B", "B", "B"),
    ("C.", "C", "C"),
    ("(D)", "D", "D"),
    ("B)", "B", "B"),
    ("**C**", "C", "C"),
    ("B\n", "B", "B"),
    ("The best answer is: B", "B", "B"),
    ("The best answer is B.", "B", "B"),
    ("The answer is A", "A", "A"),
    ("The correct answer is (B) [2]", "B", "B"),
    ("The correct option is C", "C", "C"),
    ("The best option is D", "D", "D"),
    ("Answer: C", "C", "C"),
    ("answer is B", "B", "B"),
    ("answer: d", "", "D"),
    ("Option B", "B", "B"),
    ("Option: (C)", "C", "C"),
    ("Best answer:Best option: C", "C", "C"),  # the fused official prefix
    ("Best answer: C", "B", "C"),  # official: only "answer:" is stripped, "Best" gives B
    ("b", "", "B"),
    ("a", "", "A"),
    ("(c)", "", "C"),
    ("c) the green triangle", "", ""),
    ("At <4>, [2] moves left", "A", ""),
    ("A red circle", "A", ""),
    ("All of them", "A", ""),
    ("Dog", "D", ""),
    ("A is correct", "A", "A"),
    ("A. [1] is to the left of [2]", "A", "A"),
    ("Both A and C are plausible", "B", "A"),
    ("I would choose D because [1] is red", "D", "D"),
    ("Based on <3>-<5>, D", "B", "D"),
    ("After looking at every marked object in the scene, I think the right one is B", "A", "B"),
    ("the red circle on the left side moves towards the blue square over time", "", ""),
    ("The object labelled [3] is the tallest one in this entire scene today", "", ""),
    ("E", "", ""),
    ("[1] [2]", "", ""),
    ("", "", ""),
    ("   ", "", ""),
    ("I am not sure", None, ""),
    ("The answer is not clear from the frames", None, ""),
    ("Choice D", None, "D"),
]


def test_enough_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("response", [c[0] for c in CASES])
def test_official_mode_equals_reference(response):
    assert P.extract_mc_answer(response, "official") == reference_extract(response)


@pytest.mark.parametrize("response,expected", [(c[0], c[1]) for c in CASES if c[1] is not None])
def test_official_mode_hand_values(response, expected):
    assert P.extract_mc_answer(response) == expected


@pytest.mark.parametrize("response,expected", [(c[0], c[2]) for c in CASES])
def test_strict_mode(response, expected):
    assert P.extract_mc_answer(response, "strict") == expected


def test_official_prefix_list_is_as_python_evaluates_the_source():
    fused = P.OFFICIAL_ANSWER_PREFIXES
    assert len(fused) == 13
    assert "The best option isThe correct option is" in fused
    assert "Best answer:Best option:" in fused
    assert "The best option is" not in fused and "Best option:" not in fused
    assert fused[0] == "The best answer is" and fused[-1] == "The correct option"
    digest = hashlib.sha256("\x00".join(fused).encode()).hexdigest()
    assert digest == "79c24f88384798ce0be39bc31a39af491dbf8b86d60dde16ec344958a44e37c9"


def test_unknown_extract_mode():
    with pytest.raises(InstitError, match="official, strict"):
        P.extract_mc_answer("A", "lenient")


# --------------------------------------------------------------------------
# score_mc
# --------------------------------------------------------------------------

def _preds(*pairs):
    return [{"question_id": f"q{i}", "model_prediction": p, "ground_truth": g} for i, (p, g) in enumerate(pairs)]


def test_score_mc_official():
    preds = _preds(("B", "B"), ("The best answer is: C", "D"), ("the left one, clearly", "A"), ("A red circle", "A"))
    result = P.score_mc(preds)
    assert result == {"accuracy": pytest.approx(200 / 3), "total": 4, "valid": 3, "correct": 2}


def test_score_mc_strict_differs():
    preds = _preds(("B", "B"), ("The best answer is: C", "D"), ("the left one, clearly", "A"), ("A red circle", "A"))
    assert P.score_mc(preds, "strict") == {"accuracy": 50.0, "total": 4, "valid": 2, "correct": 1}


def test_score_mc_no_valid_and_missing_key():
    assert P.score_mc(_preds(("no idea", "A"))) == {"accuracy": None, "total": 1, "valid": 0, "correct": 0}
    assert P.score_mc([]) == {"accuracy": None, "total": 0, "valid": 0, "correct": 0}
    with pytest.raises(InstitError, match="q7 has no ground_truth"):
        P.score_mc([{"question_id": "q7", "model_prediction": "A"}])


# --------------------------------------------------------------------------
# [ID] and <t> conventions
# --------------------------------------------------------------------------

@pytest.mark.parametrize("text,ids", [
    ("[3] [4] [5] are on the table", [3, 4, 5]),
    ("[2] meets [1], then [2] leaves", [2, 1, 2]),
    ("[12] and [07]", [12, 7]),
    ("phrases like [1, 2, 3] or [a] or [ 3] are not references", []),
    ("<image>\nWhat is [1] doing at <3>?", [1]),
    ("", []),
])
def test_find_ids(text, ids):
    assert P.find_ids(text) == ids


def test_unique_ids_and_format():
    assert P.unique_ids("[5] [2] [5] [10]") == [2, 5, 10]
    assert P.format_ids([1, 2]) == "[1] [2]"
    assert P.format_ids([7]) == "[7]"
    assert P.format_ids([]) == ""


@pytest.mark.parametrize("text,stamps", [
    ("At <4>, [2] moves left", [(4, 4)]),
    ("during <5>-<7> and at <9>", [(5, 7), (9, 9)]),
    ("from <3> - <5>", [(3, 5)]),
    ("<image>\nat <2>", [(2, 2)]),
    ("<s>-<e> and <timestamp>", []),
    ("<|im_start|>user\nhi<|im_end|></s>", []),
    ("<b>bold</b> <10>", [(10, 10)]),
    ("<1>", [(1, 1)]),
])
def test_find_timestamps(text, stamps):
    assert P.find_timestamps(text) == stamps


def _error(**kw):
    with pytest.raises(InstitError) as exc:
        P.validate_references(**kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_validate_references_ok():
    assert P.validate_references("Where is [2] at <3>-<8>?", valid_ids=[1, 2, 3], n_frames=8) is None
    assert P.validate_references("[99] <500>") is None  # nothing to check against


def test_validate_unknown_id():
    msg = _error(text="Is [7] left of [1]?", valid_ids=[3, 1, 2])
    assert "[7]" in msg and "[1] [2] [3]" in msg and msg.startswith("question")
    msg = _error(text="[1]", valid_ids=[], where="option B")
    assert msg.startswith("option B") and "no instances" in msg


def test_validate_timestamps():
    msg = _error(text="What happens at <9>?", n_frames=8)
    assert "<9>" in msg and "8 frames" in msg
    msg = _error(text="during <7>-<12>", n_frames=8)
    assert "<7>-<12>" in msg and "8 frames" in msg
    msg = _error(text="at <0>", n_frames=8)
    assert "<0>" in msg and "<1>" in msg
    msg = _error(text="during <5>-<3>")
    assert "<5>-<3>" in msg and "<3>-<5>" in msg


# --------------------------------------------------------------------------
# Official prompts: verbatim, pinned by hash, and assembled as the scripts do
# --------------------------------------------------------------------------

PINNED = {
    "IMAGE_MC_PRE_PROMPT": "514bbf63aff18ef76453dbaa126ac2b6a4c1dd2ecb26f29fc327cdabc4b74978",
    "IMAGE_MC_POST_PROMPT": "fda7ab516e630ccccc55f3854c41c65384aaa68c85f9c3baa4ebaec83308e5c6",
    "IMAGE_OE_PRE_PROMPT": "db658cf221cfc1eb576f49d8c37d77c3a6fb15d6f25937fb008146183c3ef069",
    "IMAGE_OE_POST_PROMPT": "0d8b9fb7e3c98cce66b2652e59291c2f7c91f3b061111dc89dbb07795e7f632c",
    "VIDEO_MC_PRE_PROMPT": "4d2c3cd539cddd56c173376216ddf126dd36ce381bc548b617c1174a833ec515",
    "VIDEO_MC_POST_PROMPT": "fda7ab516e630ccccc55f3854c41c65384aaa68c85f9c3baa4ebaec83308e5c6",
    "VIDEO_OE_PRE_PROMPT": "65b99374d5cfd3285f70cf2aa476bf9507d436807c063df39a9a8a610eed410e",
    "VIDEO_OE_POST_PROMPT": "af18f8b42a6f26d93ef8551656546b25080086ff1164d2c2a9d3d4ab00e42517",
    "IMAGE_JUDGE_PROMPT": "f27bd8d96720e81e7803106c0b318457fa84c059eebacd3ff0f5ab980a6be182",
    "VIDEO_JUDGE_PROMPT": "b75b34b0c5fbfd81ca0d89de566bfca50057cee6ef5d60ee628fdfa576b7f8a3",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_official_prompt_bytes_pinned(name):
    assert hashlib.sha256(getattr(P, name).encode("utf-8")).hexdigest() == PINNED[name]


def test_official_prompt_quirks_kept():
    assert "(e.g., '[1]'', '[2]''. Respond" in P.IMAGE_MC_PRE_PROMPT
    assert "There are serveral images inputs" in P.VIDEO_OE_PRE_PROMPT
    assert "“[3] [4] [5]”" in P.IMAGE_OE_PRE_PROMPT
    assert P.IMAGE_MC_POST_PROMPT == "The best answer is: " == P.VIDEO_MC_POST_PROMPT


OPTIONS = {"A": "[1] is red", "B": "[2] is red", "C": "[3] is red", "D": "none"}


def test_build_mc_prompt_image_exact():
    got = P.build_mc_prompt("Which object is red?", OPTIONS, "image")
    assert got == (P.IMAGE_MC_PRE_PROMPT + "\nWhich object is red?\nA. [1] is red\nB. [2] is red\n"
                   "C. [3] is red\nD. none\nThe best answer is: ")
    assert got.startswith("Based on the image, select the best answer")


def test_build_mc_prompt_video_and_option_order():
    shuffled = {k: OPTIONS[k] for k in ("D", "B", "A", "C")}
    got = P.build_mc_prompt("What does [2] do during <3>-<5>?", shuffled, split="video")
    assert got.startswith("Based on the video, select the best answer")
    assert got.endswith('correct option.\nWhat does [2] do during <3>-<5>?\nA. [1] is red\nB. [2] is red\n'
                        "C. [3] is red\nD. none\nThe best answer is: ")


def test_build_mc_prompt_bad_options_and_split():
    with pytest.raises(InstitError, match="exactly A, B, C and D"):
        P.build_mc_prompt("q", {"A": "x", "B": "y", "C": "z"})
    with pytest.raises(InstitError, match="image, video"):
        P.build_mc_prompt("q", OPTIONS, "audio")


def test_build_oe_prompts_exact():
    assert P.build_oe_prompt("What is [1]?", "image") == (
        P.IMAGE_OE_PRE_PROMPT + "\nBased on the input image, please answer the question: \nWhat is [1]?")
    got = P.build_oe_prompt("What is [1] doing at <2>?", "video")
    assert got == (P.VIDEO_OE_PRE_PROMPT
                   + "\nBased on the input video, please answer the question: \nWhat is [1] doing at <2>?")
    assert got.startswith("# Task Definition:\nYou are an expert in video analysis.")


def test_judge_prompts():
    for split in ("image", "video"):
        text = P.judge_prompt(split)
        assert text.strip() and "[ID]" in text and "between 0 and 1" in text
    assert "<start_timestamp>-<end_timestamp>" in P.judge_prompt("video")
    assert "<timestamp>" not in P.judge_prompt("image")
    assert P.judge_prompt("image").endswith("here are the input test items: \n")
    assert P.judge_prompt("video").endswith("here are the input test items:\n")
    with pytest.raises(InstitError):
        P.judge_prompt("audio")


def test_judge_input_matches_official_json():
    got = P.judge_input("Q [1]?", "[1] is red", "red")
    assert got == '{"question": "Q [1]?", "ground_truth_answer": "[1] is red", "tester_response": "red"}'
    assert json.loads(got)["tester_response"] == "red"


# --------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------

VICUNA_SYS = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions.")


def test_with_image():
    assert P.IMAGE_TOKEN == "<image>"
    assert P.with_image("What is [1]?") == "<image>\nWhat is [1]?"
    assert P.with_image("q", n_images=2) == "<image>\n<image>\nq"
    assert P.with_image("q", n_images=0) == "q"
    with pytest.raises(InstitError):
        P.with_image("q", n_images=-1)


def test_vicuna_single_turn_matches_llava():
    msg = P.with_image("Describe [1].")
    assert P.render_chat("vicuna_v1", [("user", msg)]) == VICUNA_SYS + " USER: <image>\nDescribe [1]. ASSISTANT:"


def test_vicuna_multi_turn():
    turns = [("human", "hi"), ("gpt", "hello"), ("user", "and [2]?")]
    assert P.render_chat("vicuna_v1", turns) == VICUNA_SYS + " USER: hi ASSISTANT: hello</s>USER: and [2]? ASSISTANT:"
    full = P.render_chat("vicuna_v1", [("user", "hi"), ("assistant", "hello")], add_generation_prompt=False)
    assert full == VICUNA_SYS + " USER: hi ASSISTANT: hello</s>"
    custom = P.render_chat("vicuna_v1", [("system", "Be brief."), ("user", "hi")])
    assert custom == "Be brief. USER: hi ASSISTANT:"


def test_chatml():
    assert P.render_chat("chatml", [("user", "<image>\nhi")]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nhi<|im_end|>\n<|im_start|>assistant\n")
    got = P.render_chat("chatml", [("system", "S"), ("user", "a"), ("assistant", "b")], add_generation_prompt=False)
    assert got == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"


def test_stop_strings():
    assert P.stop_strings("vicuna_v1") == ["</s>"]
    assert P.stop_strings("chatml") == ["<|im_end|>"]


def test_chat_errors():
    with pytest.raises(InstitError, match="vicuna_v1, chatml") as exc:
        P.render_chat("llama3", [("user", "hi")])
    assert "llama3" in str(exc.value)
    with pytest.raises(InstitError, match="vicuna_v1, chatml"):
        P.stop_strings("mistral")
    with pytest.raises(InstitError, match="turn 2"):
        P.render_chat("chatml", [("user", "a"), ("user", "b")])
    with pytest.raises(InstitError, match="end with a user turn"):
        P.render_chat("vicuna_v1", [("user", "a"), ("assistant", "b")])
    with pytest.raises(InstitError, match="unknown chat role"):
        P.render_chat("chatml", [("robot", "a")])
