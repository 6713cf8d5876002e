"""``--llm auto`` / ``--vision auto``: the bundle variant to run on this device, within a memory budget.

The choice is a rule per device class, in order of preference, from measurements (README "Performance",
DESIGN.md section 8; time to answer of an image question is mostly prefill, which is compute-bound):

- ``gpu`` (llama.cpp GPU build and layers offloaded): f16 first, the GPU has the FLOPs and the memory
  bandwidth; quantized after.
- ``amx`` (Intel Xeons with AMX; llama-cpp-python built without its AMX kernels, as ``make setup`` does
  there): q4_0 first. Measured on the edge preset, 2 threads, one bench run on 2026-12-01 (its report was
  lost with that session's machine; the figures are from its notes, README device table): prefill q4_0 120
  tok/s against 79-91 for f16 / bf16 / q8_0 / q4_k_m, decode 35.5 against 17-27. With the native AMX build, repacking is off (``llm_llamacpp.weight_repacking``) and q4_0
  was still no slower than q8_0 (269 / 45.5 tok/s with repacking against 200 / 36.8 without, measured
  2026-11-30). Then q8_0, the k-quants, bf16.
- ``bf16`` (AVX512-BF16 without AMX: Zen 4): bf16 first. llama.cpp runs BF16 weights on the bf16 units:
  prefill 318 tok/s against 205 (f16) and 208-241 (q8_0, q4_k_m) on the edge preset, 2 Zen 4 threads. Then
  q8_0.
- ``avx512`` (AVX-512 without BF16): q8_0, then the 4-bit types.
- ``avx2`` (most laptops) and ``other`` (e.g. ARM / Jetson CPU): q4_0 first (llama.cpp repacks it for its
  fastest CPU kernels; decode 109 tok/s vs 65-71 for q4_k_m on Zen 4; on an AVX2-only EPYC, 2026-12-02, the
  fastest answer: 14.1 s against 15.7 for f16, 18.3 for q8_0, 20.1 for q4_k_m), then q4_k_m, iq4_xs, q8_0.

Vision: int8 on CPUs (2.6x faster than fp32 at cosine 0.9997, measured), fp16 on a GPU.
A variant whose file is larger than the budget (default: half the available memory) is skipped; when
nothing fits, the smallest one is taken and the reason says so.
"""

from __future__ import annotations

from ..errors import InstitError
from ..system import available_memory, cpu_flags

LLM_PREFERENCE = {
    "gpu": ("f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "iq4_xs", "q4_0", "gptq", "f32"),
    "amx": ("q4_0", "q8_0", "q4_k_m", "iq4_xs", "q5_k_m", "q6_k", "bf16", "gptq", "f16", "f32"),
    "bf16": ("bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "iq4_xs", "gptq", "f16", "f32"),
    "avx512": ("q8_0", "q4_0", "q4_k_m", "iq4_xs", "q5_k_m", "q6_k", "gptq", "bf16", "f16", "f32"),
    "avx2": ("q4_0", "q4_k_m", "iq4_xs", "q5_k_m", "q8_0", "q6_k", "gptq", "f16", "bf16", "f32"),
    "other": ("q4_0", "q4_k_m", "iq4_xs", "q5_k_m", "q8_0", "q6_k", "gptq", "f16", "bf16", "f32"),
}
VISION_PREFERENCE = {
    "gpu": ("fp16", "fp32", "int8"),
    "cpu": ("int8", "int8s", "fp32", "fp16", "int4-hqq", "int4"),
}


def device_class(n_gpu_layers: int = 0, flags: set[str] | None = None) -> str:
    """``gpu`` | ``amx`` | ``bf16`` | ``avx512`` | ``avx2`` | ``other``."""
    if n_gpu_layers:
        try:
            import llama_cpp

            if llama_cpp.llama_supports_gpu_offload():
                return "gpu"
        except Exception:  # noqa: BLE001 - no llama.cpp: a CPU class
            pass
    flags = cpu_flags() if flags is None else flags
    if "amx_tile" in flags or "amx_int8" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def choose(bundle, group: str, *, n_gpu_layers: int = 0, memory_budget: int | None = None,
           cls: str | None = None) -> tuple[str, str]:
    """``(variant, reason)`` for ``group`` (``llm`` or ``vision``) of ``bundle`` on this device."""
    if group not in ("llm", "vision"):
        raise InstitError(f"auto: unknown group {group!r}")
    cls = cls or device_class(n_gpu_layers)
    have = bundle.variants(group)
    if not have:
        raise InstitError(f"bundle {bundle.root} has no {group} variants")
    pref = LLM_PREFERENCE[cls] if group == "llm" else VISION_PREFERENCE["gpu" if cls == "gpu" else "cpu"]
    ranked = [v for v in pref if v in have] + sorted(v for v in have if v not in pref)
    budget = memory_budget if memory_budget is not None else available_memory() // 2
    sizes = {v: int(bundle.entry(group, v).get("size") or 0) for v in ranked}
    for v in ranked:
        if sizes[v] <= budget:
            skipped = [x for x in ranked[:ranked.index(v)]]
            why = f"{cls} device: preferred order {', '.join(ranked)}"
            if skipped:
                why += f"; {', '.join(skipped)} over the {budget / 2**20:.0f} MiB memory budget"
            return v, why
    smallest = min(ranked, key=lambda x: sizes[x])
    return smallest, (f"{cls} device: no {group} variant fits {budget / 2**20:.0f} MiB; took the smallest "
                      f"({sizes[smallest] / 2**20:.0f} MiB)")
