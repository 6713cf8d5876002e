"""Real GPTQ (gptqmodel, the maintained successor of auto-gptq) calibrated on multimodal sequences.

gptqmodel calibrates from token ids. To calibrate on what the LLM really sees
(image feature rows between the text), the text LLM is extracted into a
standalone causal-LM checkpoint whose embedding table is extended with one
"virtual token" per image row of the calibration set; the calibration
sequences then reference those ids. After quantization the extra rows are cut
off again. Outputs:

- ``llm-gptq/``: an HF GPTQ checkpoint (4-bit, group 32, asymmetric,
  desc_act off) for GPU serving with transformers / vLLM;
- ``llm.gptq.gguf``: the same weights as GGUF Q4_1 blocks (exact up to the
  fp16 rounding of m), embeddings / norms / lm_head from the F16 export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..bundle import Bundle
from ..errors import InstitError


def _check_memory(n_params: int) -> None:
    need = n_params * 4 * 4  # fp32 weights, a copy, Hessians and activations: a conservative 4x
    from ..system import available_memory

    have = available_memory()
    if need > have:
        raise InstitError(f"GPTQ needs about {need / 2**30:.1f} GiB of memory for this model but "
                          f"{have / 2**30:.1f} GiB is available; run it on a larger machine or a GPU")


def build_calibration_llm(torch_session, prompts, out_dir: Path) -> tuple[list[dict], int]:
    """Save the text LLM with virtual image tokens; return (calibration rows, original vocab size)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = torch_session.model
    tcfg = model.config.text_config
    if getattr(tcfg, "tie_word_embeddings", False) or getattr(model.config, "tie_word_embeddings", False):
        raise InstitError("tied input / output embeddings are not supported by the GPTQ path yet")
    emb = model.get_input_embeddings().weight.detach().float()
    vocab = emb.shape[0]
    extra, rows = [], []
    img_id = model.config.image_token_id
    for p in prompts:
        ids, embeds, _ = torch_session._inputs(p.question, **p.media())
        ids = ids[0].tolist()
        e = embeds[0].float()
        out_ids = []
        # positions whose embedding is not the token's own embedding row are image rows
        j = 0
        pos = [i for i, t in enumerate(ids) if t == img_id]
        n_rows = e.shape[0] - (len(ids) - len(pos))
        start = pos[0] if pos else len(ids)
        for i in range(start):
            out_ids.append(ids[i])
        for r in range(n_rows):
            out_ids.append(vocab + len(extra))
            extra.append(e[start + r])
        for t in ids[start + len(pos):]:
            out_ids.append(t)
        j += 1
        rows.append({"input_ids": out_ids, "attention_mask": [1] * len(out_ids)})
    cfg = AutoConfig.for_model(tcfg.model_type, **{k: v for k, v in tcfg.to_dict().items()
                                                   if k not in ("model_type", "architectures")})
    cfg.vocab_size = vocab + len(extra)
    cfg.tie_word_embeddings = False
    llm = AutoModelForCausalLM.from_config(cfg)
    sd = {}
    for k, v in model.state_dict().items():
        for prefix in ("model.language_model.", "language_model.model."):
            if k.startswith(prefix):
                sd["model." + k[len(prefix):]] = v
        if k.startswith("lm_head."):
            sd[k] = v
    big = torch.cat([emb, torch.stack(extra)]) if extra else emb
    sd["model.embed_tokens.weight"] = big
    head = sd["lm_head.weight"].float()
    sd["lm_head.weight"] = torch.cat([head, torch.zeros(len(extra), head.shape[1])]) if extra else head
    missing, unexpected = llm.load_state_dict(sd, strict=False)
    if [m for m in missing if "rotary" not in m] or unexpected:
        raise InstitError(f"could not extract the text LLM (missing {missing[:3]}, unexpected {unexpected[:3]})")
    llm.save_pretrained(out_dir)
    torch_session.processor.tokenizer.save_pretrained(out_dir)
    return rows, vocab


def run_gptq(calib_llm_dir: Path, rows: list[dict], out_dir: Path, group_size: int = 32, sym: bool = False) -> None:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 2))
    try:
        from gptqmodel import GPTQModel, QuantizeConfig
    except ImportError as e:
        raise InstitError(f"GPTQ needs gptqmodel (pip install 'instit-edge[gptq]'): {str(e).splitlines()[0]}") from None
    qcfg = QuantizeConfig(bits=4, group_size=group_size, sym=sym, desc_act=False)
    # absolute before the chdir below: a relative path would then name a folder that does not exist
    calib_llm_dir, out_dir = Path(calib_llm_dir).absolute(), Path(out_dir).absolute()
    cwd = os.getcwd()
    os.chdir(calib_llm_dir.parent)  # gptqmodel writes logs/ into the working directory: keep them in the work dir
    try:
        model = GPTQModel.load(str(calib_llm_dir), qcfg, device="cpu")
        model.quantize(rows, batch_size=1)
        model.save(str(out_dir))
    finally:
        os.chdir(cwd)


def trim_gptq_checkpoint(out_dir: Path, vocab: int) -> None:
    """Cut the virtual image tokens off the saved checkpoint's embedding / lm_head."""
    import torch
    from safetensors.torch import load_file, save_file

    for f in out_dir.glob("*.safetensors"):
        sd = load_file(str(f))
        changed = False
        for k in list(sd):
            if k.endswith("embed_tokens.weight") or k == "lm_head.weight":
                if sd[k].shape[0] > vocab:
                    sd[k] = sd[k][:vocab].contiguous()
                    changed = True
        if changed:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(f), metadata={"format": "pt"})
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["vocab_size"] = vocab
    cfg_path.write_text(json.dumps(cfg, indent=2))
    del torch


def gptq_layers(ckpt: Path) -> tuple[dict[str, dict], dict]:
    """{hf linear prefix: {qweight, qzeros, scales}} and the quantize config from a GPTQ checkpoint."""
    from safetensors.numpy import load_file

    layers: dict[str, dict] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        try:
            sd = load_file(str(f))
        except Exception:  # bf16 tensors cannot be loaded by the numpy loader
            import torch
            from safetensors.torch import load_file as tload

            sd = {k: (v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()) for k, v in tload(str(f)).items()}
        for k, v in sd.items():
            for part in ("qweight", "qzeros", "scales"):
                if k.endswith("." + part):
                    layers.setdefault(k[: -len(part) - 1], {})[part] = v
    cfg = json.loads((ckpt / "config.json").read_text()).get("quantization_config", {})
    if not layers:
        raise InstitError(f"{ckpt} has no GPTQ tensors (qweight / qzeros / scales)")
    return layers, cfg


def gptq_bundle(bundle_dir, calib=None, model: str | None = None, n_calib: int = 16, group_size: int = 32,
                sym: bool = False, progress=None) -> list[dict]:
    """Run GPTQ for a bundle: write ``llm-gptq/`` and ``llm.gptq.gguf``; return the table row."""
    from ..export.gguf_llm import write_llm_gguf
    from ..runtime.torch_ref import TorchSession
    from .calib import load_calibration
    from .gptq_gguf import gptq_to_blocks

    step = progress or (lambda name: None)
    b = Bundle.load(bundle_dir, verify=True)
    src = model or b.manifest.get("source", {}).get("model")
    if not src or not Path(src).exists():
        raise InstitError(f"source checkpoint {src!r} not found: pass --model PATH for GPTQ")
    ts = TorchSession.load(src)
    _check_memory(sum(p.numel() for p in ts.model.parameters()))
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".gptq-", dir=b.root))
    try:
        cal, held = load_calibration(calib, n=n_calib, workdir=work)
        rows, vocab = build_calibration_llm(ts, cal, work / "calib-llm")
        run_gptq(work / "calib-llm", rows, work / "llm-gptq", group_size=group_size, sym=sym)
        trim_gptq_checkpoint(work / "llm-gptq", vocab)
        layers, qcfg = gptq_layers(work / "llm-gptq")
        overrides = {}
        for prefix, t in layers.items():
            raw, ty = gptq_to_blocks(t["qweight"], t["qzeros"], t["scales"], group_size, sym)
            overrides[prefix] = (raw, ty)
        write_llm_gguf(ts.model, ts.processor.tokenizer, work / "llm.gptq.gguf", dtype="f16", overrides=overrides)
        if (b.root / "llm-gptq").exists():
            shutil.rmtree(b.root / "llm-gptq")
        os.replace(work / "llm-gptq", b.root / "llm-gptq")
        os.replace(work / "llm.gptq.gguf", b.root / "llm.gptq.gguf")
        fid = _record_gptq(b, held, group_size, sym)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    step("gptq")
    return [{"group": "llm", "variant": "gptq", "size_mb": (b.root / "llm.gptq.gguf").stat().st_size / 1e6,
             "imatrix": False, "kld": fid["kld_mean"], "top1": fid["top1"], "fallbacks": 0,
             "seconds": time.perf_counter() - t0}]


def _record_gptq(b: Bundle, held, group_size: int, sym: bool) -> dict:
    """Add the GPTQ files to the manifest with their fidelity on the held-out prompts; save it."""
    from ..atomic import write_json
    from ..runtime.session import EdgeSession
    from .fidelity import llm_fidelity, reference_logits

    b.add_file("llm", "gptq", "llm.gptq.gguf", recipe={"type": "gptq", "bits": 4, "group_size": group_size,
                                                        "sym": sym, "desc_act": False, "tool": "gptqmodel",
                                                        "gguf_blocks": "Q4_0" if sym else "Q4_1",
                                                        "calibration": "multimodal (virtual image tokens)",
                                                        "hf_checkpoint": "llm-gptq/"})
    for f in sorted((b.root / "llm-gptq").rglob("*")):
        if f.is_file():
            rel = str(f.relative_to(b.root))
            b.add_file("gptq_hf", rel, rel)
    ref_name = "f32" if "f32" in b.variants("llm") else "f16"
    ref = reference_logits(EdgeSession.load(b, llm=ref_name, verify=False), held)
    fid = llm_fidelity(ref, EdgeSession.load(b, llm="gptq", verify=False), held)
    b.manifest["files"]["llm"]["gptq"]["fidelity"] = fid
    write_json(b.root / "bundle.json", b.manifest)
    return fid
