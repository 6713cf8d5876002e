# instit-edge — two commands set up a fresh machine:
#   make demo   export the embedded default model, quantize it, evaluate f16 vs quantized on a synthetic Inst-IT
#               bench it never saw, write the quantization report, ask it two questions
#   make test   run the test suite
# Both create the virtual environment (.venv) first when it is missing.

VENV      ?= .venv
PY        := $(VENV)/bin/python
CLI       := $(VENV)/bin/instit-edge
# torch for export / GPTQ / tests only (the device runtime never imports torch). 2.14.1 is what gptqmodel needs.
TORCH_SPEC ?= torch==2.14.1
OUT       ?= out
# the embedded default model (trained by `make train-default`) and the worlds the demo evaluates on
DEFAULT_MODEL ?= models/default
WORLD_SEED ?= 7
CALIB_SEED ?= 11
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# llama.cpp's AMX matmul crashes on quantized weights (ggml-org/llama.cpp#20824), and -march=native on an AMX
# CPU always compiles it in, which forces weight repacking off (llm_llamacpp.weight_repacking). On such a CPU
# llama-cpp-python is built for the same AVX-512 family by hand, without AMX, so repacking stays on. Its wheel
# goes to its own pip cache: pip keys built wheels by the sdist alone, so a native wheel would be reused.
AMX_CPU   := $(shell grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && echo yes)
LLAMA_SPEC ?= llama-cpp-python==0.3.36
LLAMA_NOAMX_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test bench lint clean train-default

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	@echo "installing instit-edge[dev] (the first llama-cpp-python install compiles llama.cpp: ~15 min on 2 cores)"
ifeq ($(AMX_CPU),yes)
	@echo "AMX CPU: llama.cpp built without its AMX kernels (see LLAMA_NOAMX_ARGS)"
	CMAKE_ARGS="$(LLAMA_NOAMX_ARGS)" PIP_CACHE_DIR="$${XDG_CACHE_HOME:-$$HOME/.cache}/pip-llama-noamx" \
		$(PY) -m pip install --quiet "$(LLAMA_SPEC)"
endif
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(CLI) doctor
	$(CLI) synth --out $(OUT)/world --seed $(WORLD_SEED) --images 40 --videos 10 --force
	$(CLI) synth --out $(OUT)/calib --seed $(CALIB_SEED) --images 12 --videos 4 --force
	$(CLI) export $(DEFAULT_MODEL) --out $(OUT)/bundle --llm-types f16,f32 --force
	$(CLI) quantize $(OUT)/bundle --llm q8_0,q4_k_m,iq4_xs --vision int8 --gptq --calib $(OUT)/calib/bench
	$(CLI) ask $(OUT)/bundle --list
	rm -rf $(OUT)/runs  # the bundle was just re-exported: a resumed eval would keep the old model's answers
	$(CLI) eval $(OUT)/bundle --bench $(OUT)/world/bench --llm f16 --out $(OUT)/runs/f16
	$(CLI) eval $(OUT)/bundle --bench $(OUT)/world/bench --llm q4_k_m --vision int8 --out $(OUT)/runs/q4_k_m
	$(CLI) eval $(OUT)/bundle --bench $(OUT)/world/bench --llm gptq --out $(OUT)/runs/gptq
	$(CLI) report $(OUT)/runs/f16 $(OUT)/runs/q4_k_m $(OUT)/runs/gptq --reference $(OUT)/runs/f16 --out $(OUT)/report
	$(CLI) mark $(OUT)/world/bench/videos_vpt/001 --detector static --out $(OUT)/marked.mp4 --json $(OUT)/instances.jsonl --force
	@echo "--- two questions a person can check: the picture is $(OUT)/world/bench/images_vpt/001.jpg"
	@$(PY) -c "import json; i=json.load(open('$(OUT)/world/ground_truth.json'))['bench']['images']['001']['instances']['1']; print('ground truth: [1] is a', i['color'], i['shape'])"
	$(CLI) ask $(OUT)/bundle --image $(OUT)/world/bench/images_vpt/001.jpg -q "What is the color of [1]?" --oe --max-new-tokens 24
	$(CLI) ask $(OUT)/bundle --image $(OUT)/world/bench/images_vpt/001.jpg -q "What is the shape of [1]?" --oe --max-new-tokens 24

test: setup
	$(PY) -m pytest -q --junitxml=$(OUT)/junit.xml

bench: setup
	$(PY) benchmarks/bench_runtime.py --out $(OUT)/bench

# Train the embedded default model (models/default): world at 128 px, the vision tower on per-patch targets,
# tower + projector into a readable per-patch code, the LLM on oracle rows (short lookups), then on the
# tower's code rows (MC lookups, the letter step, bench questions, the lookup supervised, then the relation /
# extreme / count lookups supervised, then the option-span head of the letter step), then (stage 3) the tower and
# code again on two more worlds, the LLM untouched, then (stage 4) the LLM again on that code, open-ended answers'
# lookups supervised at the word and a layer-0 head on what tells MC options ending alike apart. ~155 CPU minutes on 2
# cores; resumable.
# TRAIN_ARGS="--from-model DIR" runs only the stages after 2d (or 2e, 2f, 3) from a model trained up to there
# (the 2f weights are models/default at commit 6ae69d2, the stage-3 weights at 5c98534); from the 2f weights,
# "--count-steps 400 --refresh-steps 0 --oe-steps 0 --out models/count" the counting experiment (stage 2g, off by
# default: it did not help; the later --out wins).
train-default: setup
	$(PY) -m instit_edge.train.default_model --out models/default $(TRAIN_ARGS)

lint: setup
	$(PY) -m ruff check instit_edge tests benchmarks

clean:
	rm -rf $(OUT) .pytest_cache
