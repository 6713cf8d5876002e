"""Shared, session-scoped fixtures: tiny models and bundles are built once per test run."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COMBOS = [f"{a}-{m}-{v}" for a, m, v in itertools.product(("llava-next", "llava"), ("llama", "qwen2"), ("clip", "siglip"))]
COMBOS.append("llava-onevision-qwen2-siglip")  # the real OneVision pairing (Qwen2 + SigLIP)


def _spec(combo: str):
    from instit_edge.models.tiny import TinySpec

    parts = combo.split("-")
    vision, llm = parts[-1], parts[-2]
    arch = "-".join(parts[:-2])
    return TinySpec(arch=arch, llm=llm, vision=vision, seed=sum(map(ord, combo)))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def tiny_models(workdir):
    """combo name -> checkpoint path (built lazily, once)."""
    from instit_edge.models.tiny import build_tiny

    cache: dict[str, Path] = {}

    def get(combo: str) -> Path:
        if combo not in cache:
            cache[combo] = build_tiny(workdir / "tiny" / combo, _spec(combo))
        return cache[combo]

    return get


@pytest.fixture(scope="session")
def bundles(workdir, tiny_models):
    """combo name -> bundle path with f16 + f32 LLMs and fp32 + fp16 vision (exported once)."""
    from instit_edge.export.bundle_writer import export_bundle

    cache: dict[str, Path] = {}

    def get(combo: str) -> Path:
        if combo not in cache:
            out = workdir / "bundles" / combo
            export_bundle(str(tiny_models(combo)), out, llm_types=("f16", "f32"))
            cache[combo] = out
        return cache[combo]

    return get


def default_world(tmp_path_factory, name: str, seed: int, images: int, videos: int) -> Path:
    """A small synthetic world at the default model's 128 px, as many training items as bench items."""
    from instit_edge.data.synth import build_world

    out = tmp_path_factory.mktemp(name) / "world"
    build_world(out, seed=seed, n_images=images, n_videos=videos, image_size=(128, 128), n_train_images=images,
                n_train_videos=videos)
    return out


def draw_seed(what: str) -> int:
    """A fresh seed for one random test (or ``INSTIT_SEED`` from the environment), printed so that a failure
    shows how to replay it: ``INSTIT_SEED=<seed> pytest ...``."""
    env = os.environ.get("INSTIT_SEED")
    seed = int(env) if env else int(np.random.SeedSequence().entropy % 2**31)
    print(f"{what}: seed {seed} (replay with INSTIT_SEED={seed})")
    return seed


@pytest.fixture
def seed(request) -> int:
    """The test's seed, drawn once (see :func:`draw_seed`)."""
    return draw_seed(request.node.nodeid)


@pytest.fixture
def rng(seed) -> np.random.Generator:
    """A numpy generator from the test's printed seed."""
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def tok():
    """The committed default model's real tokenizer (a module may override ``tok`` with another)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "models" / "default")
