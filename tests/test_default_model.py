"""The committed default model, exported to a bundle, answers a synthetic bench it never saw.

The bench is built with seed 99 (training used the world seed 1000); official prompts, the official MC rule,
greedy decoding, through the bundle runtime (llama.cpp + ONNX Runtime). What the model has learned is
asserted (well-formed MC letters, OE answers that name the instance asked about, the asked instance's colour),
and so is issue 14's guard, image MC >= 70: the weights with stage 4 and its layer-0 term (2026-12-07,
sixteenth session) score 78.3 here (108 / 138), eleven answers above it (the fifteenth session's 75.4, stage
3: 73.2). Until stage 3 it was an xfail: the stage-2f weights scored 70.3
(97 / 138), one answer above, and one answer can flip with the CPU's llama.cpp kernels.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"
IMAGE_MC_GUARD = 70.0
EVAL_SEED = 99


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory):
    from instit_edge.data.synth import build_world
    from instit_edge.eval.runner import run_eval
    from instit_edge.export.bundle_writer import export_bundle
    from instit_edge.train.default_model import WORLD_SEED_OFFSET

    assert (DEFAULT / "config.json").is_file(), "the embedded default model is missing (make train-default)"
    assert EVAL_SEED != WORLD_SEED_OFFSET
    root = tmp_path_factory.mktemp("default")
    build_world(root / "world", seed=EVAL_SEED, n_images=40, n_videos=10, image_size=(128, 128),
                n_train_images=1, n_train_videos=1)
    bundle = export_bundle(str(DEFAULT), root / "bundle", llm_types=("f16",), vision_types=("fp32",), mmproj=False)
    run_eval(bundle.root, root / "world" / "bench", root / "run", llm="f16", n_threads=2)
    return root / "run"


def _records(run):
    from instit_edge.eval.store import read_predictions

    return read_predictions(run / "predictions.jsonl")


def test_default_model_answers_in_form_and_names_the_instance(default_runs):
    """Learned: an MC letter for every question; OE answers about [k] start with [k] (the ID is copied from the
    question, which a from-scratch LLM learns late)."""
    import re

    from instit_edge.eval.scoring import score_items, summarize

    recs = _records(default_runs)
    s = summarize(score_items([r for r in recs if r["format"] == "mc"]))
    print({g: round(v["accuracy"], 1) for g, v in s.items() if v.get("accuracy") is not None})
    for g in ("image/mc", "video/mc"):
        assert s[g]["total"] >= 30 and s[g]["valid"] >= 0.95 * s[g]["total"], s[g]
    asked = [r for r in recs if r["split"] == "image" and r["format"] == "oe"
             and re.search(r"(color|shape) of \[(\d+)\]", r["question"])]
    hits = [r for r in asked if re.match(r"\s*\[" + re.search(r"of \[(\d+)\]", r["question"]).group(1) + r"\]",
                                         r["model_prediction"])]
    assert len(asked) >= 20 and len(hits) >= 0.75 * len(asked), (len(hits), len(asked))  # measured 56 / 56


def test_default_model_reads_the_asked_instance_colour(default_runs):
    """Learned: the colour of the instance the question names, and image MC well above chance (measured on this
    bench with stage 4: colour 96.7 of 30 questions, image MC 78.3; the fifteenth session's stage 4: 100 / 75.4;
    stage 3: 96.7 / 73.2; chance 25; stage 2f: 93.3 / 70.3, before stage 2f: 93.3 / 69.6, before stage 2e: 93.3
    / 56.5)."""
    from instit_edge.eval.scoring import score_items, summarize

    mc = [r for r in _records(default_runs) if r["format"] == "mc"]
    colour = summarize(score_items([r for r in mc if r["split"] == "image" and r.get("category") == "color"]))
    assert colour["image/mc"]["total"] >= 20 and colour["image/mc"]["accuracy"] >= 70, colour
    assert summarize(score_items(mc))["image/mc"]["accuracy"] >= 60


def test_default_model_reads_the_marks(default_runs):
    """Issue 14's guard (below its target of 80, so noise does not break CI): 78.3 measured, 79.0 on the demo's
    bench."""
    from instit_edge.eval.scoring import score_items, summarize

    s = summarize(score_items([r for r in _records(default_runs) if r["format"] == "mc"]))
    assert s["image/mc"]["accuracy"] >= IMAGE_MC_GUARD, s


def test_default_model_card_is_complete():
    import json

    card = json.loads((DEFAULT / "training.json").read_text())
    for key in ("seed", "world_seed", "vision", "vlm", "hardware"):
        assert key in card
    assert (DEFAULT / "README.md").is_file()
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size <= 30 * 2**20, f"the committed default model is {size / 2**20:.1f} MiB (limit 30)"
