"""Which llama.cpp settings matter for the edge preset on this CPU: n_ubatch, flash attention, weight type.

Prefill of N random tokens and decode of M tokens through llama-cpp-python, each setting in alternating order
(A B ... then ... B A) so a drifting machine affects all of them; ratios against n_ubatch = n_batch = 1024
with flash attention left to llama.cpp ("default"), measured in the same run. The runtime itself uses
n_batch = n_ubatch = 512 (``LlamaCppLLM``). Run on a quiet machine:

    .venv/bin/python benchmarks/llamacpp_settings.py out/bench-edge/models/edge/bundle --out out/llamacpp-settings
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def measure(gguf: str, n_ubatch: int, flash: bool | None, prompt: int, decode: int, threads: int) -> dict:
    import llama_cpp
    import numpy as np

    kw = {} if flash is None else {"flash_attn": flash}
    llm = llama_cpp.Llama(gguf, n_ctx=prompt + decode + 8, n_batch=1024, n_ubatch=n_ubatch, n_threads=threads,
                          n_threads_batch=threads, verbose=False, **kw)
    rng = np.random.default_rng(0)
    toks = [int(t) for t in rng.integers(10, llm.n_vocab() - 10, prompt)]
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(toks)
    t1 = time.perf_counter()
    for t in toks[:decode]:
        llm.eval([t])
    t2 = time.perf_counter()
    llm.close()
    return {"prefill_tok_s": prompt / (t1 - t0), "decode_tok_s": decode / (t2 - t1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--out", default="out/llamacpp-settings")
    ap.add_argument("--types", default="q4_0,q4_k_m,f16")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    settings = [("default", 1024, None), ("ubatch 512", 512, None), ("ubatch 256", 256, None),
                ("flash on", 1024, True), ("flash off", 1024, False)]
    configs = [(t, *s) for t in a.types.split(",") for s in settings]
    load_start = os.getloadavg()
    print(f"load average at start: {load_start}")
    res: dict = {}
    from tqdm import tqdm

    order = []
    for r in range(a.rounds):
        order += configs if r % 2 == 0 else configs[::-1]
    for t, name, ub, fa in tqdm(order, desc="settings"):
        m = measure(str(Path(a.bundle) / f"llm.{t}.gguf"), ub, fa, a.prompt, a.decode, a.threads)
        res.setdefault(f"{t}|{name}", []).append(m)
    rows = []
    for t in a.types.split(","):
        base = statistics.median(x["prefill_tok_s"] for x in res[f"{t}|default"])
        based = statistics.median(x["decode_tok_s"] for x in res[f"{t}|default"])
        for name, _, _ in settings:
            xs = res[f"{t}|{name}"]
            p = statistics.median(x["prefill_tok_s"] for x in xs)
            d = statistics.median(x["decode_tok_s"] for x in xs)
            rows.append({"type": t, "setting": name, "prefill_tok_s": round(p, 1), "prefill_vs_default": round(p / base, 3),
                         "decode_tok_s": round(d, 1), "decode_vs_default": round(d / based, 3)})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps({"load_start": load_start, "load_end": os.getloadavg(), "rows": rows, "raw": res}, indent=1))
    print("| type | setting | prefill tok/s | vs default | decode tok/s | vs default |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {r['setting']} | {r['prefill_tok_s']} | {r['prefill_vs_default']:.2f}x | "
              f"{r['decode_tok_s']} | {r['decode_vs_default']:.2f}x |")


if __name__ == "__main__":
    main()
