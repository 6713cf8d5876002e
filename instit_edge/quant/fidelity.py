"""Fidelity of quantized variants against the bundle's reference, on held-out multimodal prompts.

LLM: mean per-token KL divergence KL(reference || variant) and top-1 agreement
over every text position of each prompt (image rows give no logits).
Vision: mean cosine similarity of the projected features against fp32.
Runs on the device stack only (ONNX Runtime + llama.cpp).
"""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl_top1(ref_logits: np.ndarray, q_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token KL(ref || q) and top-1 agreement (bool)."""
    lp, lq = log_softmax(ref_logits), log_softmax(q_logits)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return kl, ref_logits.argmax(-1) == q_logits.argmax(-1)


def reference_logits(session, prompts) -> list[np.ndarray]:
    return [session.logits(p.question, **p.media()) for p in prompts]


def llm_fidelity(ref: list[np.ndarray], session, prompts) -> dict:
    kls, agree = [], []
    for r, p in zip(ref, prompts):
        k, a = kl_top1(r, session.logits(p.question, **p.media()))
        kls.append(k)
        agree.append(a)
    kl = np.concatenate(kls)
    ag = np.concatenate(agree)
    return {"kld_mean": float(kl.mean()), "kld_p99": float(np.quantile(kl, 0.99)), "top1": float(ag.mean()),
            "tokens": int(len(kl)), "prompts": len(prompts)}


def vision_fidelity(ref_vision, vision, pixels: np.ndarray) -> dict:
    a = ref_vision(pixels).reshape(-1, ref_vision(pixels[:1]).shape[-1])
    b = vision(pixels).reshape(a.shape)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "crops": int(len(pixels))}
