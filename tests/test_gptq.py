"""Real GPTQ (gptqmodel) on a tiny model, and its exact mapping into GGUF blocks."""

import shutil

import numpy as np
import pytest

gptqmodel = pytest.importorskip("gptqmodel", reason="GPTQ needs the [gptq] extra (installed by `make setup`)")


@pytest.fixture(scope="module")
def gptq_run(bundles, tmp_path_factory):
    from instit_edge.quant.gptq import gptq_bundle

    dst = tmp_path_factory.mktemp("gptq") / "bundle"
    shutil.copytree(bundles("llava-next-llama-clip"), dst)
    rows = gptq_bundle(dst, n_calib=6)
    return dst, rows


def test_gguf_blocks_carry_the_gptq_weights(gptq_run, tiny_models):
    """GGUF Q4_1 dequantized == GPTQ dequantized (from its own tensors), up to fp16 rounding of m."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoConfig

    from instit_edge.export.gguf_llm import rotary_permute
    from instit_edge.quant.gptq import gptq_layers
    from instit_edge.quant.gptq_gguf import dequantize_gptq

    root, _ = gptq_run
    layers, qcfg = gptq_layers(root / "llm-gptq")
    assert qcfg.get("group_size") == 32 and qcfg.get("sym") is False and not qcfg.get("desc_act")
    cfg = AutoConfig.from_pretrained(tiny_models("llava-next-llama-clip")).text_config
    reader = GGUFReader(str(root / "llm.gptq.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    checked = 0
    for prefix, t in layers.items():
        i = int(prefix.split(".layers.")[1].split(".")[0])
        sub = prefix.split(".layers.")[1].split(".", 1)[1]
        g = tensors[f"blk.{i}.{names[sub]}.weight"]
        assert g.tensor_type.name == "Q4_1"
        ours = dequantize(np.asarray(g.data), g.tensor_type)
        ref = dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], 32)
        if sub == "self_attn.q_proj":
            ref = rotary_permute(ref, cfg.num_attention_heads)
        elif sub == "self_attn.k_proj":
            ref = rotary_permute(ref, cfg.num_key_value_heads)
        step = np.repeat(t["scales"].astype(np.float64).T, 32, axis=1)  # one quantization step per weight
        err = np.abs(ours - ref)
        # m = -scale * zero is stored in fp16: its rounding is the only difference
        assert (err <= step * 8 * 2.0 ** -10 + 1e-7).all(), (prefix, float((err / step).max()))
        checked += 1
    assert checked == 7 * cfg.num_hidden_layers


def test_gptq_weights_are_close_to_the_float_model(gptq_run, tiny_models):
    """The zero-point convention is decoded right: dequantized weights sit within a step of the originals."""
    from transformers import AutoModelForImageTextToText

    from instit_edge.quant.gptq import gptq_layers
    from instit_edge.quant.gptq_gguf import dequantize_gptq

    root, _ = gptq_run
    layers, _ = gptq_layers(root / "llm-gptq")
    model = AutoModelForImageTextToText.from_pretrained(tiny_models("llava-next-llama-clip"))
    sd = {k.replace("model.language_model.", "model."): v for k, v in model.state_dict().items()}
    for prefix, t in layers.items():
        w = sd[prefix + ".weight"].double().numpy()
        deq = dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], 32)
        step = np.repeat(t["scales"].astype(np.float64).T, 32, axis=1)
        rel = np.abs(deq - w) / step
        assert np.median(rel) < 0.5 and rel.max() < 8, (prefix, float(np.median(rel)), float(rel.max()))


def test_gptq_variant_answers_and_is_faithful(gptq_run, rng):
    import numpy as np
    from PIL import Image

    from instit_edge.bundle import Bundle
    from instit_edge.runtime.session import EdgeSession

    root, rows = gptq_run
    b = Bundle.load(root, verify=True)
    assert "gptq" in b.variants("llm") and (root / "llm-gptq" / "config.json").is_file()
    fid = b.entry("llm", "gptq")["fidelity"]
    print(f"gptq: KLD {fid['kld_mean']:.5f}, top-1 {fid['top1']:.3f}")
    assert fid["kld_mean"] < 0.05
    s = EdgeSession.load(b, llm="gptq")
    img = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    assert s.ask("What is [1]?", image=img, max_new_tokens=4).stats["generated_tokens"] >= 1
