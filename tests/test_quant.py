"""Quantized variants: GGUF k-quants (+ multimodal imatrix), ONNX int8 / int4 / fp16."""

import shutil

import numpy as np
import pytest
from PIL import Image

from instit_edge.errors import InstitError

LLM_TYPES = ["bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "iq4_xs"]
VISION_TYPES = ["int8", "int8s", "int4", "int4-hqq", "fp16"]


@pytest.fixture(scope="module")
def qbundle(bundles, tmp_path_factory):
    from instit_edge.quant.recipe import quantize_bundle

    dst = tmp_path_factory.mktemp("q") / "bundle"
    shutil.copytree(bundles("llava-next-llama-clip"), dst)
    rows = quantize_bundle(dst, LLM_TYPES, VISION_TYPES)
    return dst, rows


def test_every_variant_loads_and_answers(qbundle, rng):
    from instit_edge.bundle import Bundle
    from instit_edge.runtime.session import EdgeSession

    root, rows = qbundle
    b = Bundle.load(root, verify=True)  # manifest updated with sizes + sha256 of the new files
    assert set(LLM_TYPES) <= set(b.variants("llm")) and set(VISION_TYPES) <= set(b.variants("vision"))
    img = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    for q in LLM_TYPES:
        s = EdgeSession.load(b, llm=q, vision="fp32", verify=False)
        a = s.ask("What is [1]?", image=img, max_new_tokens=4)
        assert a.stats["generated_tokens"] >= 1
    for v in VISION_TYPES:
        s = EdgeSession.load(b, llm="q4_k_m", vision=v, verify=False)
        assert s.ask("What is [1]?", image=img, max_new_tokens=2).stats["image_rows"] > 0
    for r in rows:  # fidelity recorded for every new variant
        entry = b.entry(r["group"], r["variant"])
        assert "fidelity" in entry and "recipe" in entry
    assert b.entry("vision", "int8")["fidelity"]["cosine_mean"] > 0.99
    assert b.entry("llm", "q8_0")["fidelity"]["kld_mean"] < b.entry("llm", "q4_k_m")["fidelity"]["kld_mean"]
    assert b.entry("llm", "bf16")["fidelity"]["kld_mean"] < b.entry("llm", "q4_k_m")["fidelity"]["kld_mean"]


@pytest.mark.parametrize("qtype,main", [("bf16", {"BF16"}), ("q8_0", {"Q8_0"}), ("q6_k", {"Q6_K"}), ("q4_k_m", {"Q4_K", "Q6_K"}),
                                        ("q5_k_m", {"Q5_K", "Q6_K"}), ("iq4_xs", {"IQ4_XS", "Q6_K"})])
def test_gguf_tensor_types_are_the_ones_asked_for(qbundle, qtype, main):
    from gguf import GGUFReader

    root, _ = qbundle
    r = GGUFReader(str(root / f"llm.{qtype}.gguf"))
    mats = {t.name: t.tensor_type.name for t in r.tensors if len(t.shape) == 2}
    assert set(mats.values()) <= main, mats
    first = sorted(main)[0] if qtype != "q4_k_m" else "Q4_K"
    assert sum(v == first for v in mats.values()) >= len(mats) // 2
    norms = {t.tensor_type.name for t in r.tensors if len(t.shape) == 1}
    assert norms == {"F32"}


def test_multimodal_imatrix_vs_none_on_held_out_prompts(bundles, tmp_path, record_property):
    """Measures (records and prints) q4_k_m's held-out KLD with and without the multimodal imatrix; it asserts no
    direction: on a random-weight tiny model the imatrix can move KLD either way. Asserted: both are finite, the
    imatrix changed the quantized weights, and its file round-trips."""
    from instit_edge.bundle import Bundle
    from instit_edge.quant.imatrix import read_imatrix_dat
    from instit_edge.quant.recipe import quantize_bundle

    kld = {}
    for mode in ("on", "off"):
        dst = tmp_path / mode
        shutil.copytree(bundles("llava-next-qwen2-siglip"), dst)
        quantize_bundle(dst, ["q4_k_m"], [], imatrix=mode)
        b = Bundle.load(dst)
        kld[mode] = b.entry("llm", "q4_k_m")["fidelity"]["kld_mean"]
        assert b.entry("llm", "q4_k_m")["recipe"]["imatrix"] is (mode == "on")
    record_property("kld_q4_k_m_imatrix", kld["on"])
    record_property("kld_q4_k_m_plain", kld["off"])
    print(f"q4_k_m KLD on held-out multimodal prompts: with multimodal imatrix {kld['on']:.5f}, without {kld['off']:.5f}")
    assert all(np.isfinite(v) and v > 0 for v in kld.values())
    # the imatrix really steered the quantizer, and its file round-trips
    assert (tmp_path / "on" / "llm.q4_k_m.gguf").read_bytes() != (tmp_path / "off" / "llm.q4_k_m.gguf").read_bytes()
    imat, ncall = read_imatrix_dat(tmp_path / "on" / "imatrix.dat")
    assert ncall > 0 and "blk.0.attn_q.weight" in imat and "output.weight" in imat
    assert imat["blk.0.ffn_down.weight"].shape == (512,) and (imat["blk.0.attn_q.weight"] > 0).all()


def test_row_size_fallback_is_reported(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from instit_edge.export.gguf_llm import write_llm_gguf
    from instit_edge.models.tiny import TinySpec, build_tiny
    from instit_edge.quant.gguf_quant import quantize_gguf

    ck = build_tiny(tmp_path / "odd", TinySpec(hidden_size=320, intermediate_size=640, num_heads=4, num_kv_heads=2))
    m = AutoModelForImageTextToText.from_pretrained(ck)
    write_llm_gguf(m, AutoTokenizer.from_pretrained(ck), tmp_path / "odd.gguf", "f16")
    report = quantize_gguf(tmp_path / "odd.gguf", tmp_path / "odd.q4_k_m.gguf", "q4_k_m")
    assert report["fallbacks"], report
    assert all(f["row_size"] % 256 != 0 for f in report["fallbacks"])


def test_bad_quant_requests(bundles, tmp_path):
    from instit_edge.quant.recipe import quantize_bundle

    dst = tmp_path / "b"
    shutil.copytree(bundles("llava-llama-clip"), dst)
    with pytest.raises(InstitError, match="valid: bf16, q8_0"):
        quantize_bundle(dst, ["q4_k_x"], [])
    with pytest.raises(InstitError, match="valid: int8"):
        quantize_bundle(dst, [], ["int3"])
    with pytest.raises(InstitError, match="nothing to do"):
        quantize_bundle(dst, [], [])
    empty = tmp_path / "emptybench"
    empty.mkdir()
    with pytest.raises(InstitError):
        quantize_bundle(dst, ["q8_0"], [], calib=empty)
    with pytest.raises(InstitError, match="not found"):
        quantize_bundle(dst, ["q8_0"], [], calib=tmp_path / "nope")


def test_auto_variant_by_device_class_and_memory_budget(qbundle):
    """--llm auto: bf16 first on AVX512-BF16 CPUs, q4_0 on AMX Xeons, q8_0 on AVX-512, 4-bit on AVX2; a variant
    over the memory budget is skipped; int8 vision on CPUs."""
    from instit_edge.bundle import Bundle
    from instit_edge.runtime.auto import choose, device_class
    from instit_edge.runtime.session import EdgeSession

    b = Bundle.load(qbundle[0], verify=False)
    assert device_class(flags={"avx2", "avx512f", "avx512_bf16"}) == "bf16"
    assert device_class(flags={"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}) == "amx"
    assert choose(b, "llm", cls="amx", memory_budget=1 << 40)[0] == "q8_0"  # no q4_0 in this bundle
    assert device_class(flags={"avx2", "avx512f"}) == "avx512"
    assert device_class(flags={"avx2"}) == "avx2" and device_class(flags=set()) == "other"
    assert choose(b, "llm", cls="bf16", memory_budget=1 << 40)[0] == "bf16"
    assert choose(b, "llm", cls="avx512", memory_budget=1 << 40)[0] == "q8_0"
    assert choose(b, "llm", cls="avx2", memory_budget=1 << 40)[0] == "q4_k_m"  # no q4_0 in this bundle
    bf16 = b.entry("llm", "bf16")["size"]
    name, why = choose(b, "llm", cls="bf16", memory_budget=bf16 - 1)
    assert name == "q8_0" and "bf16" in why and "budget" in why
    name, why = choose(b, "llm", cls="bf16", memory_budget=1)
    assert "no llm variant fits" in why
    assert choose(b, "vision", cls="avx2", memory_budget=1 << 40)[0] == "int8"
    s = EdgeSession.load(b, llm="auto", vision="auto", verify=False)
    assert s.llm_variant in b.variants("llm") and s.auto_choice["llm"]
