"""Benchmarks: the bundle runtime against transformers, llama.cpp's own vision path and the memory roofline.

One run measures, on the same image and question (the official Inst-IT open-ended prompt about a 640x480
marked synthetic scene), with warm-up and repetitions:

- the bundle runtime (llama.cpp + ONNX Runtime) per LLM variant: vision ms, prefill tok/s, time to first
  token, decode tok/s at a fixed generation length (end-of-generation ignored), time-to-answer, peak RSS;
- the baseline: the same checkpoint in transformers fp32 (``attn_implementation`` eager and sdpa);
- vision: our ONNX tower (fp32, int8, ...) against llama.cpp's libmtmd on ``mmproj.f16.gguf``;
- the marker: frames/s at 640x480 per detector (when :mod:`instit_edge.marker` has a pipeline);
- the roofline: measured memory read bandwidth, weight bytes read per decoded token, the bound and the
  fraction of it that decode reaches.

Every measured configuration runs in its own fresh subprocess (``python -m instit_edge.bench.children``)
so that peak RSS (``ru_maxrss`` / ``VmHWM``) belongs to that configuration alone and no library state leaks
between runs. The parent only orchestrates (numpy, matplotlib; no torch). Results: ``results.json``,
``report.md``, ``time_to_answer.png``, ``roofline.png``.

Modules: :mod:`.spec` (targets, :class:`BenchConfig`), :mod:`.measure` (repetition summaries, peak RSS,
machine facts, GGUF weight bytes), :mod:`.children` (the measured configurations, one subprocess each),
:mod:`.runner` (the parent: :func:`run_benchmark`), :mod:`.analysis` (roofline, ratios, noise, targets),
:mod:`.report` (Markdown and plots), :mod:`.profile` (a perf profile of the prefill alone, grouped by kind of
work), :mod:`.commands` (``instit-edge bench``).

Measurements of one part each, outside ``instit-edge bench`` (each ``python -m instit_edge.bench.NAME --help``;
a ``measure_*`` / ``soak`` function returns the numbers, ``main`` prints them and writes JSON):
:mod:`.marker_speed` (the marker on one pinned core: per-stage ms, fps and track quality per mark style),
:mod:`.demo_latency` (the demo engine: marked fps, time to first token cached / uncached, ``<t>`` questions),
:mod:`.demo_soak` (many viewers for minutes: RSS growth, fps and latency over time),
:mod:`.serve_load` (``instit-edge serve`` through the openai client: requests/s, time to first token).

    from instit_edge.bench.runner import BenchConfig, run_benchmark
    res = run_benchmark(BenchConfig(target="edge", out=Path("out/bench")))
"""
