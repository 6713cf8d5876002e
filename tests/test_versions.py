"""The stack the code was written for. pip has silently backtracked before (to gradio 3.36 when the
whole stack was resolved without lower bounds), so the versions are asserted, not assumed."""

from importlib.metadata import PackageNotFoundError, distributions, version

import pytest


def _v(pkg):
    try:
        return tuple(int(x) for x in version(pkg).split("+")[0].split(".")[:3] if x.isdigit())
    except PackageNotFoundError:
        pytest.fail(f"{pkg} is not installed (run `make setup`)")


@pytest.mark.parametrize("pkg,minimum", [
    ("llama-cpp-python", (0, 3, 36)), ("onnxruntime", (1, 22)), ("numpy", (2, 0)), ("transformers", (5, 20)),
    ("torch", (2, 14, 1)), ("gguf", (0, 19)), ("gptqmodel", (7, 0)), ("gradio", (6, 0)), ("peft", (0, 17)),
    ("typer", (0, 16)), ("opencv-contrib-python", (4, 10)),
])
def test_minimum_versions(pkg, minimum):
    assert _v(pkg) >= minimum, f"{pkg} {version(pkg)} < {minimum}"


def test_gptqmodel_is_the_7_6_line():
    assert _v("gptqmodel")[:2] == (7, 6)  # 7.7 needs pillow>=13, which gradio 6 refuses


def test_one_opencv_wheel():
    names = {d.metadata["Name"].lower() for d in distributions()}
    cv2_wheels = {n for n in names if n.startswith("opencv")}
    assert cv2_wheels == {"opencv-contrib-python"}, cv2_wheels  # two wheels share one cv2/ folder and collide


def test_auto_gptq_is_not_used():
    names = {d.metadata["Name"].lower() for d in distributions()}
    assert "auto-gptq" not in names and "auto_gptq" not in names


def test_llama_cpp_build_matches_the_cpu():
    """On an AMX CPU `make setup` builds llama.cpp without its (crashing) AMX kernels, so weight repacking is on;
    a venv built by hand with -march=native there has them, and repacking is then switched off."""
    from instit_edge.runtime.llm_llamacpp import build_has_amx, cpu_has_amx, weight_repacking

    if not cpu_has_amx():
        assert not build_has_amx() and weight_repacking()
        return
    assert not build_has_amx(), "llama.cpp was built with AMX kernels here: rebuild with `rm -rf .venv && make setup`"
    assert weight_repacking()


def test_amx_build_detection_reads_the_system_info(monkeypatch):
    import llama_cpp

    from instit_edge.runtime import llm_llamacpp

    monkeypatch.delenv("INSTIT_LLAMA_REPACK", raising=False)
    monkeypatch.setattr(llm_llamacpp, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CPU : AVX512 = 1 | AMX_INT8 = 1 | ")
    assert llm_llamacpp.build_has_amx() and not llm_llamacpp.weight_repacking()
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CPU : AVX512 = 1 | AVX512_BF16 = 1 | ")
    assert not llm_llamacpp.build_has_amx() and llm_llamacpp.weight_repacking()
    monkeypatch.setenv("INSTIT_LLAMA_REPACK", "0")
    assert not llm_llamacpp.weight_repacking()
