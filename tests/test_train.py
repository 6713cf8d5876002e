"""Continual Inst-IT tuning: loss goes down, a killed run resumes on the same loss curve, bad input."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("peft", reason="training needs the [train] extra (installed by `make setup`)")

from instit_edge.errors import InstitError  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from instit_edge.data.synth import build_world

    root = tmp_path_factory.mktemp("trainworld") / "w"
    build_world(root, seed=7, n_images=2, n_videos=1, n_train_images=6, n_train_videos=2)
    return root


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "instit_edge.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def test_instruction_types_and_label_masking(world, tiny_models):
    from transformers import AutoProcessor

    from instit_edge.data.dataset import load_instit_dataset
    from instit_edge.train.encode import IGNORE, encode_text
    from instit_edge.train.instructions import instit_samples

    samples = instit_samples(load_instit_dataset(world / "dataset"))
    kinds = {s.kind for s in samples}
    assert {"list", "scene", "frame_list", "change", "summary", "qa"} <= kinds
    proc = AutoProcessor.from_pretrained(tiny_models("llava-next-qwen2-siglip"))
    s = next(x for x in samples if x.kind == "qa")
    e = encode_text(s, proc.tokenizer, "chatml")
    labelled = proc.tokenizer.decode([t for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE])
    for _, answer in s.turns:  # every assistant answer is learned, no user text is
        assert answer in labelled
    assert s.turns[0][0] not in labelled and "<|im_end|>" in labelled and e.image_pos >= 0


@pytest.mark.parametrize("template,combo", [("vicuna_v1", "llava-next-llama-clip"), ("chatml", "llava-next-qwen2-siglip")])
def test_first_answer_token_is_learned(tiny_models, template, combo):
    """Byte-level BPE folds the space before a word into its token (vicuna's "ASSISTANT: C" -> " C"):
    the MC letter and the first word of an answer must still carry labels."""
    from transformers import AutoProcessor

    from instit_edge.train.encode import IGNORE, encode_text
    from instit_edge.train.instructions import Sample

    tok = AutoProcessor.from_pretrained(tiny_models(combo)).tokenizer
    for answer in ("C", "[2] is red.", "The circle moves left."):
        e = encode_text(Sample([("Which one?", answer)]), tok, template)
        labelled = tok.decode([t for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE])
        assert labelled.strip().startswith(answer), (template, answer, labelled)
        assert "Which one?" not in labelled


def test_train_loss_goes_down_and_checkpoint_exports(world, tiny_models, tmp_path):
    from instit_edge.export.bundle_writer import export_bundle
    from instit_edge.train.trainer import TrainConfig, train

    r = train(TrainConfig(base=str(tiny_models("llava-next-llama-clip")), instit=str(world / "dataset"),
                          out=str(tmp_path / "run"), lora=8, freeze_vision_layers=2, max_steps=16, lr=2e-3,
                          save_every=8), progress=False)
    first, last = sum(r["losses"][:4]) / 4, sum(r["losses"][-4:]) / 4
    assert last < first * 0.9, r["losses"]
    b = export_bundle(r["model"], tmp_path / "bundle")  # the output is a normal HF checkpoint
    assert "f16" in b.variants("llm")


def test_killed_run_resumes_on_the_same_curve(world, tiny_models, tmp_path):
    base = str(tiny_models("llava-next-qwen2-clip"))
    common = ["train", "--base", base, "--instit", str(world / "dataset"), "--full", "--freeze-vision-layers", "1",
              "--max-steps", "12", "--save-every", "3", "--lr", "5e-4", "--seed", "3"]
    from instit_edge.train.trainer import TrainConfig, train

    train(TrainConfig(base=base, instit=str(world / "dataset"), out=str(tmp_path / "ref"), lora=0,
                      freeze_vision_layers=1, max_steps=12, save_every=3, lr=5e-4, seed=3), progress=False)
    killed = _cli(*common, "--out", str(tmp_path / "run"), env={"INSTIT_TRAIN_KILL_AT": "7"})
    assert killed.returncode != 0  # SIGKILL mid-run: no cleanup, no final model
    assert not (tmp_path / "run" / "model").exists() and (tmp_path / "run" / "checkpoints" / "step-6").is_dir()
    resumed = _cli(*common, "--out", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "ref" / "losses.json").read_text())
    b = json.loads((tmp_path / "run" / "losses.json").read_text())
    assert len(a) == len(b) == 12
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)


def test_bad_training_input(world, tiny_models, tmp_path):
    import json as _json

    from instit_edge.train.instructions import general_samples
    from instit_edge.train.trainer import TrainConfig, train

    with pytest.raises(InstitError, match="ratio"):
        train(TrainConfig(base=str(tiny_models("llava-llama-clip")), instit=str(world / "dataset"),
                          out=str(tmp_path / "x"), ratio=1.5), progress=False)
    g = tmp_path / "general.json"
    img = next((world / "dataset" / "images").iterdir())
    g.write_text(_json.dumps([{"id": "a", "image": str(img), "conversations": [
        {"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "A shape."}]}]))
    with pytest.raises(InstitError, match="no <image>"):
        general_samples(g)
    # a dataset record whose frame is missing
    bad = tmp_path / "ds"
    import shutil

    shutil.copytree(world / "dataset", bad)
    victim = sorted((bad / "videos").iterdir())[0]
    sorted(victim.iterdir())[1].unlink()
    r = _cli("train", "--base", str(tiny_models("llava-llama-clip")), "--instit", str(bad), "--out",
             str(tmp_path / "y"), "--max-steps", "1")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "frame" in errors[0]


def test_two_process_training_matches_one_process_with_the_same_global_batch(world, tiny_models, tmp_path):
    """Two CPU processes (torchrun, gloo; Accelerator sees MULTI_CPU) with batch 1 each == one process with batch 1
    and grad_accum 2: the same samples per optimizer step and the same averaged gradient. Tolerance: 2e-3
    relative on every step's loss (float reduction order and gloo's all-reduce differ; a wrong data split or a
    missing gradient sync moves the curve by far more). `accelerate launch --cpu --num_processes 2` starts a
    single process in accelerate 1.x (its CPU path is the simple launcher unless mpirun is used), so the
    multi-process CPU run goes through torchrun, which accelerate supports as a launcher."""
    import shutil

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    base = str(tiny_models("llava-next-llama-clip"))
    common = ["--base", base, "--instit", str(world / "dataset"), "--lora", "4", "--freeze-vision-layers", "2",
              "--max-steps", "6", "--lr", "2e-3", "--save-every", "100", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    one = subprocess.run([sys.executable, "-m", "instit_edge.cli", "train", *common, "--batch-size", "1",
                          "--grad-accum", "2", "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 400),
                          "-m", "instit_edge.cli", "train", *common, "--batch-size", "1", "--grad-accum", "1",
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "losses.json").read_text())
    b = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x - y) <= 2e-3 * max(abs(x), 1e-6), (a, b)
    assert (tmp_path / "two" / "model" / "config.json").is_file()
