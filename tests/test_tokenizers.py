"""Real tokenizers in, exactly: SentencePiece and byte-level BPE vocabularies -> GGUF -> llama.cpp.

Tiny LLaVA checkpoints are built around real vocabularies (tests/data: llama.cpp's Llama-SPM, Qwen2 and
GPT-2 vocab files with their golden tokenizations, Mistral's tokenizer.model) and exported; the bundle's
GGUF must tokenize every golden string as llama.cpp's own file says, HF and llama.cpp must agree on the
golden strings and the official prompts, and the SPM-Llama bundle must reproduce the PyTorch forward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
VOCAB = DATA / "llamacpp_vocab"
SPM_GGUF = VOCAB / "ggml-vocab-llama-spm.gguf.xz"
QWEN2_GGUF = VOCAB / "ggml-vocab-qwen2.gguf.xz"
GPT2_GGUF = VOCAB / "ggml-vocab-gpt-2.gguf.xz"
MISTRAL_SPM = DATA / "mistral" / "tokenizer.model.v1.xz"

# name -> (TinySpec fields, golden vocab file or None)
REAL = {
    "spm-llama": (dict(arch="llava-next", llm="llama", vision="clip", tokenizer=str(SPM_GGUF)), "llama-spm"),
    "spm-mistral": (dict(arch="llava", llm="mistral", vision="clip", tokenizer=str(MISTRAL_SPM),
                         chat_template="mistral_instruct", hidden_size=64, intermediate_size=128, num_layers=1,
                         num_heads=2, num_kv_heads=1), None),
    "qwen2": (dict(arch="llava", llm="qwen2", vision="siglip", tokenizer=str(QWEN2_GGUF), hidden_size=64,
                   intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=1), "qwen2"),
}


def golden(name: str) -> list[tuple[str, list[int]]]:
    inp = (VOCAB / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    out = (VOCAB / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").rstrip("\n").split("\n")
    assert len(out) >= 40 and inp[len(out):] in ([], [""])
    return [(s, [int(x) for x in o.split()]) for s, o in zip(inp, out)]


def official_prompts() -> list[str]:
    from instit_edge.prompting import build_mc_prompt, build_oe_prompt

    q = "What is [1] holding at <3>? (A) 12345 apples"
    opts = {"A": "[1] a red cup", "B": "[2] 3.14 m", "C": "nothing at <2>-<4>", "D": "“[3] [4]”"}
    texts = []
    for split in ("image", "video"):
        texts += [build_mc_prompt(q, opts, split), build_oe_prompt(q, split)]
    return texts


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """name -> (checkpoint, bundle), built lazily once."""
    from instit_edge.export.bundle_writer import export_bundle
    from instit_edge.models.tiny import TinySpec, build_tiny

    root = tmp_path_factory.mktemp("real_tok")
    cache = {}

    def get(name):
        if name not in cache:
            spec = TinySpec(seed=7, **REAL[name][0])
            ckpt = build_tiny(root / name, spec)
            bundle = root / f"{name}-bundle"
            export_bundle(str(ckpt), bundle, llm_types=("f32",), vision_types=("fp32",), mmproj=False)
            cache[name] = (ckpt, bundle)
        return cache[name]

    return get


def _vocab_llama(bundle: Path):
    from llama_cpp import Llama

    return Llama(model_path=str(bundle / "llm.f32.gguf"), vocab_only=True, verbose=False)


@pytest.mark.parametrize("name", ["spm-llama", "qwen2"])
def test_bundle_gguf_reproduces_llamacpp_golden_tokenizations(name, real):
    _, bundle = real(name)
    llm = _vocab_llama(bundle)
    cases = golden(REAL[name][1])
    bad = [(s, llm.tokenize(s.encode(), add_bos=False, special=False), ids) for s, ids in cases
           if llm.tokenize(s.encode(), add_bos=False, special=False) != ids]
    assert not bad, bad[:3]


@pytest.mark.parametrize("name", list(REAL))
def test_hf_and_llamacpp_agree_on_golden_strings_and_official_prompts(name, real):
    from transformers import AutoTokenizer

    ckpt, bundle = real(name)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    llm = _vocab_llama(bundle)
    texts = [s for s, _ in golden(REAL[name][1] or "llama-spm")] + official_prompts()
    for s in texts:
        assert tok(s)["input_ids"] == llm.tokenize(s.encode(), add_bos=True, special=False), repr(s[:60])
    if REAL[name][1]:  # the rebuilt HF tokenizer is the real one: the golden ids too
        for s, ids in golden(REAL[name][1]):
            assert tok(s, add_special_tokens=False)["input_ids"] == ids, repr(s[:60])


def test_spm_vocab_is_llamacpp_reference_plus_added_tokens(real):
    import gguf

    from instit_edge.models.real_tokenizers import read_vocab_gguf

    _, bundle = real("spm-llama")
    ref = read_vocab_gguf(SPM_GGUF)
    ours = read_vocab_gguf(bundle / "llm.f32.gguf")
    n = len(ref["tokens"])
    assert ours["model"] == "llama" and ours["pre"] == "default"
    assert ours["tokens"][:n] == ref["tokens"] and ours["token_type"][:n] == ref["token_type"]
    assert np.allclose(ours["scores"][:n], ref["scores"])
    assert ours["tokens"][n:] == ["<image>", "<pad>"]
    assert ours["token_type"][n:] == [gguf.TokenType.CONTROL] * 2 and ours["scores"][n:] == [-1000.0] * 2
    assert sum(t == gguf.TokenType.BYTE for t in ours["token_type"]) == 256
    assert (ours["bos_token_id"], ours["eos_token_id"], ours["unknown_token_id"], ours["padding_token_id"]) == (1, 2, 0, n + 1)
    assert ours["add_bos_token"] is True and ours["add_eos_token"] is False and ours["add_space_prefix"] is True


def test_spm_scores_without_tokenizer_model_tokenize_the_same(real, tmp_path):
    """A checkpoint with tokenizer.json only: scores from merge ranks give the same llama.cpp tokens."""
    import shutil

    from llama_cpp import Llama

    from instit_edge.export.gguf_vocab import gguf_vocab

    ckpt, bundle = real("spm-mistral")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    v = gguf_vocab(tok, len(tok), model_dir=None)
    assert v.details["scores_from"] == "tokenizer.json merges"
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    v.write(w)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    shutil.copy(bundle / "llm.f32.gguf", tmp_path / "ref.gguf")
    a = Llama(model_path=str(tmp_path / "v.gguf"), vocab_only=True, verbose=False)
    b = Llama(model_path=str(tmp_path / "ref.gguf"), vocab_only=True, verbose=False)
    for s in [s for s, _ in golden("llama-spm")] + official_prompts():
        assert a.tokenize(s.encode(), add_bos=False, special=False) == b.tokenize(s.encode(), add_bos=False,
                                                                                 special=False), repr(s[:60])


def test_pre_tokenizer_detection():
    from instit_edge.errors import InstitError
    from instit_edge.export.gguf_vocab import KNOWN_PRE_HASHES, check_hash, detect_pre_tokenizer
    from instit_edge.models.real_tokenizers import bpe_tokenizer_from_gguf
    from instit_edge.models.tiny import TinySpec, build_tokenizer

    qwen2, gpt2 = bpe_tokenizer_from_gguf(QWEN2_GGUF), bpe_tokenizer_from_gguf(GPT2_GGUF)
    # the rebuilt real tokenizers give the very hashes llama.cpp's converter lists
    assert KNOWN_PRE_HASHES[check_hash(qwen2)] == "qwen2"
    assert KNOWN_PRE_HASHES[check_hash(gpt2)] == "gpt-2"
    # (A) 12345 apples: 9 tokens with qwen2's digit split, 10 with gpt-2's (issue 13)
    assert len(qwen2("(A) 12345 apples")["input_ids"]) == 9
    # our own tiny tokenizers (gpt-2 pattern, unknown vocabularies) are recognised by behaviour
    for llm in ("llama", "qwen2"):
        assert detect_pre_tokenizer(build_tokenizer(TinySpec(llm=llm), Path("."))) == "gpt-2"
    from tokenizers import pre_tokenizers

    odd = build_tokenizer(TinySpec(), Path("."))
    odd.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(InstitError, match=r"--pre-tokenizer NAME") as e:
        detect_pre_tokenizer(odd)
    assert "\n" not in str(e.value)


def test_qwen2_bundle_gets_qwen2_pre_tokenizer(real):
    from instit_edge.models.real_tokenizers import read_vocab_gguf

    _, bundle = real("qwen2")
    v = read_vocab_gguf(bundle / "llm.f32.gguf")
    assert v["model"] == "gpt2" and v["pre"] == "qwen2"
    assert _vocab_llama(bundle).tokenize(b"(A) 12345 apples", add_bos=False, special=False).__len__() == 9


@pytest.mark.parametrize("name,media", [("spm-llama", "image"), ("spm-llama", "video"), ("spm-mistral", "image"),
                                        ("spm-mistral", "video"), ("qwen2", "image"), ("qwen2", "video")])
def test_real_tokenizer_bundle_matches_torch(real, name, media):
    """F32 GGUF + F32 KV vs PyTorch, with each real tokenizer and its template, for an image and for a 3-frame
    video in the official video prompt: logits at every text position within 1e-3, 12 greedy tokens identical."""
    from PIL import Image

    from instit_edge.prompting import build_oe_prompt
    from instit_edge.runtime.session import EdgeSession
    from instit_edge.runtime.torch_ref import TorchSession

    ckpt, bundle = real(name)
    edge, ref = EdgeSession.load(bundle, llm="f32", f32_kv=True), TorchSession.load(str(ckpt))
    rng = np.random.default_rng(3)
    if media == "image":
        kw = {"image": Image.fromarray(rng.integers(0, 256, (45, 77, 3), dtype=np.uint8))}
        q = "What is [1] holding? Answer with 12345 apples."
    else:
        kw = {"video": [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]}
        q = build_oe_prompt("What does [1] do between <1> and <3>?", "video")
    a, b = edge.logits(q, **kw), ref.logits(q, **kw)
    assert a.shape == b.shape
    err = float(np.abs(a - b).max())
    print(f"{name} {media}: max |logit diff| {err:.2e} over {a.shape[0]} positions")
    assert err <= 1e-3
    assert edge.generated_ids(q, max_new_tokens=12, **kw) == ref.generated_ids(q, max_new_tokens=12, **kw)


# ----------------------------------------------------------------------------- templates

def test_templates_render_like_llava_next():
    from instit_edge.prompting import CHAT_TEMPLATES, render_chat, stop_strings, with_image

    q = with_image("What is [1]?")
    assert render_chat("qwen_1_5", [("user", q)]) == render_chat("chatml", [("user", q)]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is [1]?"
        "<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat("mistral_instruct", [("user", q)]) == "[INST] <image>\nWhat is [1]? [/INST]"
    assert render_chat("mistral_instruct", [("user", q), ("assistant", "A cup."), ("user", "And [2]?")]) == (
        "[INST] <image>\nWhat is [1]? [/INST] A cup. </s>[INST] And [2]? [/INST]")
    assert render_chat("mistral_instruct", [("system", "Be brief."), ("user", "Hi")]) == (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]")
    assert render_chat("llava_llama_3", [("user", q)]) == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. You are "
        "able to understand the visual content that the user provides, and assist the user with a variety of "
        "tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is [1]?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert [stop_strings(t)[0] for t in CHAT_TEMPLATES] == ["</s>", "<|im_end|>", "<|im_end|>", "</s>", "<|eot_id|>"]


LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def test_checkpoint_chat_template_wins_and_template_option_overrides():
    from types import SimpleNamespace

    from instit_edge.errors import InstitError
    from instit_edge.models.tiny import CHATML_TEMPLATE, MISTRAL_TEMPLATE, VICUNA_TEMPLATE
    from instit_edge.prompting import pick_template

    def proc(jinja, bos="<s>"):
        return SimpleNamespace(chat_template=jinja, tokenizer=SimpleNamespace(chat_template=jinja, bos_token=bos,
                                                                            eos_token="</s>"))

    assert pick_template(proc(VICUNA_TEMPLATE), "chatml") == "vicuna_v1"
    assert pick_template(proc(CHATML_TEMPLATE), "vicuna_v1") == "chatml"
    assert pick_template(proc(MISTRAL_TEMPLATE), "vicuna_v1") == "mistral_instruct"
    hf_mistral = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
                  "{{ message['content'] }} [/INST]{% else %}{{ message['content'] }}</s>{% endif %}{% endfor %}")
    assert pick_template(proc(hf_mistral), "vicuna_v1") == "mistral_instruct"
    # Meta-Llama-3-Instruct's template with LLaVA-NeXT's system prompt rendered in: llava_llama_3 only when
    # the system text matches, so the bare Llama 3 template (no system) is not llava_llama_3
    with pytest.raises(InstitError, match="--template NAME"):
        pick_template(proc(LLAMA3_JINJA, "<|begin_of_text|>"), "vicuna_v1")
    assert pick_template(proc(LLAMA3_JINJA, "<|begin_of_text|>"), "vicuna_v1", "llava_llama_3") == "llava_llama_3"
    assert pick_template(proc(None), "vicuna_v1") == "vicuna_v1" and pick_template(proc(None), "chatml") == "chatml"
    assert pick_template(proc(VICUNA_TEMPLATE), "vicuna_v1", "chatml") == "chatml"
    with pytest.raises(InstitError, match="unknown --template"):
        pick_template(proc(None), "vicuna_v1", "alpaca")


def test_text_family_registry_decides_template_arch_and_context():
    """One entry per LLM kind: llama.cpp arch, rotary permutation, default templates, the attention window."""
    from instit_edge.errors import InstitError
    from instit_edge.models.families import TEXT_FAMILIES, text_family
    from instit_edge.prompting import CHAT_TEMPLATES

    for fam in TEXT_FAMILIES.values():
        assert fam.template in CHAT_TEMPLATES and fam.repo_template in CHAT_TEMPLATES
    m = text_family("mistral")
    assert (m.gguf_arch, m.rotary_permute, m.template) == ("llama", True, "mistral_instruct")
    assert text_family("qwen2").repo_template == "qwen_1_5" and text_family("llama").template == "vicuna_v1"
    # llama.cpp's llama arch has no window: within the window, windowed attention is full attention
    assert m.context_length({"max_position_embeddings": 32768, "sliding_window": 4096}) == 4096
    assert m.context_length({"max_position_embeddings": 32768, "sliding_window": None}) == 32768
    q = text_family("qwen2")
    assert q.context_length({"max_position_embeddings": 32768, "sliding_window": 4096}) == 32768  # window off
    assert q.context_length({"max_position_embeddings": 32768, "sliding_window": 4096,
                             "use_sliding_window": True}) == 4096
    assert text_family("llama").context_length({"max_position_embeddings": 2048, "sliding_window": 16}) == 2048
    with pytest.raises(InstitError, match="not supported"):
        text_family("gemma")


def test_mistral_text_model_is_a_mistral_checkpoint(real):
    """HF LLaVA with a Mistral LLM (text_config.model_type 'mistral', as llava-v1.6-mistral-7b-hf): loads as
    MistralForCausalLM in torch and is written as llama.cpp's llama arch."""
    import json

    import gguf

    ckpt, bundle = real("spm-mistral")
    cfg = json.loads((Path(ckpt) / "config.json").read_text())
    assert cfg["text_config"]["model_type"] == "mistral"
    r = gguf.GGUFReader(str(Path(bundle) / "llm.f32.gguf"))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert arch == "llama"


def test_mistral_checkpoint_exports_mistral_template(real):
    import json

    _, bundle = real("spm-mistral")
    prompt = json.loads((bundle / "bundle.json").read_text())["prompt"]
    assert prompt["template"] == "mistral_instruct" and prompt["stop"] == ["</s>"] and prompt["add_bos"] is True


def test_tokenizer_larger_than_embedding_is_one_line_error():
    from instit_edge.errors import InstitError
    from instit_edge.export.gguf_vocab import gguf_vocab
    from instit_edge.models.real_tokenizers import load_real_tokenizer

    tok, _ = load_real_tokenizer(SPM_GGUF)
    with pytest.raises(InstitError, match=r"tokenizer has 32000 tokens but the embedding has 31999 rows$"):
        gguf_vocab(tok, 31999)
