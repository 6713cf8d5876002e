"""What a benchmark run measures and against which goals: the targets and :class:`BenchConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InstitError

TARGETS = {
    "speedup": 3.0,         # q4_k_m time-to-answer >= 3x faster than transformers fp32
    "speedup_bf16": 1.5,    # ... and >= 1.5x faster than transformers bf16 (its best config on an AMX / BF16 CPU)
    "prefill_compute": 0.60,  # prefill >= 60% of the measured bf16 GEMM peak
    "prefetch_ttft_s": 0.3,   # time to first token of a question about a prefetched frame <= 0.3 s
    "rss_ratio": 0.5,       # q4_k_m peak RSS <= 0.5x transformers fp32
    "roofline": 0.60,       # decode >= 60% of the memory-bandwidth bound
    "vision_speedup": 1.5,  # int8 vision >= 1.5x faster than fp32
    "vision_cosine": 0.99,  # ... with cosine >= 0.99 to it
}
TARGET_PRESET = "edge"
BASELINE_REF = "sdpa"  # the transformers attention implementation the ratios are taken against
BASELINE_BF16 = "sdpa-bf16"  # the second baseline of the targets
BASELINES = ("eager", "sdpa", "eager-bf16", "sdpa-bf16")


@dataclass
class BenchConfig:
    target: str                                   # a bundle directory or a preset name (tiny, edge)
    out: Path
    variants: list = field(default_factory=lambda: ["f16", "q8_0", "q4_k_m", "gptq"])
    vision: list = field(default_factory=lambda: ["fp32", "int8"])
    threads: int = 2
    reps: int = 3
    rounds: int = 2                               # each configuration's reps split over rounds in A B / B A order
    warmup: int = 1
    new_tokens: int = 64
    # transformers baselines: attention implementation, "-bf16" for bf16 weights and activations
    baseline: list = field(default_factory=lambda: ["eager", "sdpa", "sdpa-bf16"])
    baseline_reps: int | None = None              # default: reps
    baseline_shared_process: bool = False         # eager and sdpa in one subprocess (quick mode: saves an import)
    budgets: list = field(default_factory=lambda: [0, 1, 2, 4])  # --max-tiles values of the token-budget table
    mtmd: bool = True
    marker: bool = True
    profile: bool = True                          # a perf profile of the deploy variant's prefill (if perf works)
    marker_frames: int = 120
    roofline_mb: int = 512
    image_size: tuple = (640, 480)
    image: str | None = None                      # default: a synthetic marked scene at image_size
    question: str | None = None                   # default: the scene's first open-ended bench question
    child_timeout_s: int = 900
    quick: bool = False

    def __post_init__(self):
        self.out = Path(self.out)
        if self.threads < 1 or self.reps < 1 or self.rounds < 1 or self.warmup < 0 or self.new_tokens < 2:
            raise InstitError("bench needs --threads >= 1, --reps >= 1, --rounds >= 1, --warmup >= 0 and "
                              "--new-tokens >= 2")
        bad = [b for b in self.baseline if b not in BASELINES]
        if bad:
            raise InstitError(f"unknown baseline(s) {bad}; use {', '.join(BASELINES)}")
        if not self.variants:
            raise InstitError("give at least one LLM variant (--variants)")
        if not self.vision:
            raise InstitError("give at least one vision variant (--vision)")
