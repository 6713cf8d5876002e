"""Inst-IT Bench evaluation: the runner (``eval``, ``merge``), scoring and judges (``score``), and the
quantization accuracy report (``report``)."""
