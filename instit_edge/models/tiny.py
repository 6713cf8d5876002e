"""Build small LLaVA / LLaVA-Next checkpoints offline, with random weights.

No model hub is reachable from our machines or CI, so every parity and
plumbing test runs on models built here. They are real Hugging Face
checkpoints: a byte-level BPE tokenizer trained with ``tokenizers``, a
processor, random weights, ``save_pretrained``; they reload with
``AutoModelForImageTextToText`` / ``AutoProcessor`` and ``generate`` works.

Shapes follow DESIGN.md section 4: LLM row sizes are multiples of 256 so
llama.cpp k-quants really apply, and the vision ``intermediate_size``
differs from ``hidden_size`` (llama.cpp un-swaps the MLP by shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InstitError
from .families import text_family

ARCHS = ("llava", "llava-next", "llava-onevision")
LLMS = ("llama", "mistral", "qwen2")  # text_config.model_type; each an entry of families.TEXT_FAMILIES
VISIONS = ("clip", "siglip")

VICUNA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions. {% endif %}"
    "{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% else %}ASSISTANT: {{ message['content'] }}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# LLaVA-NeXT conv_mistral_instruct (SeparatorStyle.LLAMA_2, empty system): "[INST] q [/INST] a </s>"
MISTRAL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }} </s>{% endif %}"
    "{% endfor %}"
)
_JINJA = {"vicuna_v1": VICUNA_TEMPLATE, "chatml": CHATML_TEMPLATE, "mistral_instruct": MISTRAL_TEMPLATE}


@dataclass
class TinySpec:
    """Everything that decides the shape of a tiny model."""

    arch: str = "llava-next"
    llm: str = "llama"
    vision: str = "clip"
    seed: int = 0
    # text model (row sizes multiples of 256 for k-quants)
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 1024
    max_position_embeddings: int = 4096
    # extra deterministic pseudo-words in the tokenizer corpus (0 = the base corpus); lets the BPE
    # trainer reach a few thousand tokens for the larger presets
    corpus_words: int = 0
    # extra domain text for the tokenizer corpus (e.g. the official prompts and a world's questions),
    # so that fixed prompt text becomes few tokens
    corpus_lines: tuple = ()
    # a real tokenizer instead of the trained one: a SentencePiece tokenizer.model, a llama.cpp vocab GGUF
    # (.gguf / .gguf.xz) or a Hugging Face tokenizer directory (see models/real_tokenizers.py); <image>
    # (and <pad> when it has none) are added on top, and the embedding gets exactly len(tokenizer) rows
    tokenizer: str = ""
    # the checkpoint's chat_template (one of vicuna_v1, chatml, mistral_instruct; "" = the LLM's default)
    chat_template: str = ""
    # vision tower
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_layers: int = 3
    vision_heads: int = 2
    feature_layer: int = -2
    pinpoints: list = field(default_factory=lambda: [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]])

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise InstitError(f"unsupported --arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.llm not in LLMS:
            raise InstitError(f"unsupported --llm {self.llm!r}; choose one of {', '.join(LLMS)}")
        if self.vision not in VISIONS:
            raise InstitError(f"unsupported --vision {self.vision!r}; choose one of {', '.join(VISIONS)}")
        if self.chat_template and self.chat_template not in _JINJA:
            raise InstitError(f"unknown chat_template {self.chat_template!r}; choose one of {', '.join(_JINJA)}")
        if self.vision_intermediate == self.vision_hidden:
            raise InstitError("vision intermediate size must differ from hidden size (llama.cpp un-swaps the MLP by shape)")


PRESETS = ("tiny", "edge")


def preset_spec(name: str = "tiny", **overrides) -> TinySpec:
    """The model shape of a named preset; ``overrides`` replace single fields (arch, llm, vision, seed...).

    - ``tiny`` (default): the small test model (Llama 256 x 2 layers, CLIP 64 x 3 layers).
    - ``edge``: shaped like a real small edge VLM, for benchmarks: a Qwen2-0.5B-sized LLM (hidden 896,
      24 layers, 14 heads / 2 KV heads, intermediate 4864) with a ViT-B/16-224-sized SigLIP tower
      (hidden 768, 12 layers, 12 heads, intermediate 3072), LLaVA-Next AnyRes pinpoints at multiples of
      224, and a BPE vocabulary of a few thousand tokens (the embedding has exactly the tokenizer's rows;
      a real Qwen2 has 151,936, so our output matrix is much smaller). Note 896 is not a multiple of 256:
      as for the real Qwen2-0.5B, llama.cpp's k-quants fall back to other types for the 896-wide rows.
    """
    if name == "tiny":
        spec = TinySpec()
    elif name == "edge":
        spec = TinySpec(
            arch="llava-next", llm="qwen2", vision="siglip",
            hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
            vocab_size=4096, corpus_words=6000, max_position_embeddings=4096,
            image_size=224, patch_size=16, vision_hidden=768, vision_intermediate=3072, vision_layers=12,
            vision_heads=12, feature_layer=-2,
            pinpoints=[[224, 448], [448, 224], [448, 448], [672, 224], [224, 672]],
        )
    else:
        raise InstitError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    for k, v in overrides.items():
        if not hasattr(spec, k):
            raise InstitError(f"unknown TinySpec field {k!r}")
        setattr(spec, k, v)
    spec.validate()
    return spec


# Special tokens of each chat family. <image> is always a special (CONTROL) token.
def _special_tokens(llm: str) -> list[str]:
    if llm == "qwen2":
        return ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    return ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"]


def _corpus(extra_words: int = 0) -> list[str]:
    """Offline training text for the tokenizer: Inst-IT style prompts and captions.

    ``extra_words`` appends that many deterministic pseudo-words (syllable strings), so the BPE
    trainer has enough distinct material to reach a vocabulary of a few thousand tokens.
    """
    colours = "red green blue yellow purple orange white black cyan pink brown grey".split()
    shapes = "circle square triangle star ring cross object instance person cup".split()
    words = []
    for c in colours:
        for s in shapes:
            words.append(f"a {c} {s}")
    lines = [
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        "USER: ASSISTANT: system user assistant You are a helpful assistant.",
        "Based on the image, select the best answer to the following multiple-choice question.",
        "Respond with only the letter (A, B, C, or D) of the correct option. The best answer is: ",
        "Based on the input image, please answer the question: Based on the input video,",
        "What is [1] holding? What changed for [2] between <2> and <5>? [3] [4] [5] at <6> during <7>-<8>",
        "# Task Definition:\n# Guidelines and Rules:\n- Object References: Each object has a unique ID.",
        "The quick brown fox jumps over the lazy dog. 0123456789 left right above below top bottom middle",
        "How many objects are there? Which object is on the left? The object moves to the right.",
    ]
    lines += [" ".join(words[i:i + 8]) for i in range(0, len(words), 8)]
    lines += [f"[{i}] is a {c} {s}." for i, (c, s) in enumerate(zip(colours * 3, shapes * 4), 1)]
    lines = lines * 4
    if extra_words > 0:
        import random

        rng = random.Random(1234)
        onsets = "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr pl pr sc sh sk sl sp st str th tr wh".split()
        vowels = "a e i o u ai au ea ee ie oa oo ou".split()
        codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "nt", "rk", "st", "ck"]
        pseudo = ["".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3)))
                  for _ in range(extra_words)]
        lines += [" ".join(pseudo[i:i + 12]) for i in range(0, len(pseudo), 12)]
        lines += [f"<{t}> [{i}]" for t in range(1, 33) for i in range(1, 21)]
    return lines


def build_real_tokenizer(spec: TinySpec, out_dir: Path):
    """The real tokenizer ``spec.tokenizer`` names, with ``<image>`` (and ``<pad>``) added; writes
    ``tokenizer.model`` into ``out_dir`` for SentencePiece vocabularies."""
    from .real_tokenizers import load_real_tokenizer

    hf, spm = load_real_tokenizer(spec.tokenizer)
    if spm is not None:
        (Path(out_dir) / "tokenizer.model").write_bytes(spm)
    hf.add_special_tokens({"additional_special_tokens": ["<image>"]})  # 32000 in the HF LLaVA conversions
    if hf.pad_token is None:
        hf.add_special_tokens({"pad_token": "<pad>"} if spm is not None else {"pad_token": hf.eos_token})
    default = text_family(spec.llm).template
    hf.chat_template = _JINJA[spec.chat_template or default]
    return hf


def build_tokenizer(spec: TinySpec, out_dir: Path):
    """Train a byte-level BPE tokenizer offline and wrap it as a fast HF tokenizer."""
    if spec.tokenizer:
        return build_real_tokenizer(spec, out_dir)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _special_tokens(spec.llm)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.corpus_words) + list(spec.corpus_lines), trainer=trainer)
    if spec.llm != "qwen2":  # Llama / Mistral: <s> first
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        kw = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_input_names=["input_ids", "attention_mask"],
        extra_special_tokens={"image_token": "<image>"},
        **kw,
    )
    hf.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    hf.chat_template = _JINJA[spec.chat_template or text_family(spec.llm).template]
    return hf


def _vision_config(spec: TinySpec):
    common = dict(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    if spec.vision == "clip":
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(projection_dim=spec.vision_hidden, **common)
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**common)


def _text_config(spec: TinySpec, vocab: int, tokenizer):
    common = dict(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    if spec.llm == "mistral":  # no attention window: what llama.cpp's llama architecture computes
        from transformers import MistralConfig

        return MistralConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, sliding_window=None, **common)
    if spec.llm == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **common,
        )
    from transformers import Qwen2Config

    return Qwen2Config(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, use_sliding_window=False, **common
    )


def build_tiny(out: str | Path, spec: TinySpec | None = None, force: bool = False) -> Path:
    """Build, save and return the path of a tiny LLaVA / LLaVA-Next checkpoint."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    from ..atomic import atomic_dir, guard_output

    spec = spec or TinySpec()
    spec.validate()
    out = guard_output(out, force=force, marker="config.json", what="checkpoint")

    torch.manual_seed(spec.seed)
    with atomic_dir(out, force=force) as tmp:
        tokenizer = build_tokenizer(spec, tmp)
        vocab = len(tokenizer)
        image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        vision = _vision_config(spec)
        text = _text_config(spec, vocab, tokenizer)
        strategy = "default" if spec.vision == "clip" else "full"
        n_extra = 1 if spec.vision == "clip" else 0
        common = dict(
            vision_config=vision,
            text_config=text,
            image_token_id=image_token_id,
            vision_feature_layer=spec.feature_layer,
            vision_feature_select_strategy=strategy,
            projector_hidden_act="gelu",
            tie_word_embeddings=False,
        )
        mean = [0.48145466, 0.4578275, 0.40821073] if spec.vision == "clip" else [0.5, 0.5, 0.5]
        std = [0.26862954, 0.26130258, 0.27577711] if spec.vision == "clip" else [0.5, 0.5, 0.5]
        image_processor_kw = dict(
            size={"shortest_edge": spec.image_size},
            crop_size={"height": spec.image_size, "width": spec.image_size},
            image_mean=mean,
            image_std=std,
            do_center_crop=True,
        )
        if spec.arch == "llava-onevision":
            from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
            from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
                LlavaOnevisionImageProcessorPil,
            )

            # the real checkpoints' schema: image_token_index / video_token_index, vision_aspect_ratio
            # "anyres_max_N" (small N here so that the bilinear downsizing runs on small images), tiles given
            # as size height x width (no centre crop); videos use the <image> placeholder like every bundle
            common.pop("image_token_id")
            config = LlavaOnevisionConfig(image_grid_pinpoints=spec.pinpoints, vision_aspect_ratio="anyres_max_2",
                                          image_token_index=image_token_id, video_token_index=image_token_id,
                                          **common)
            model = LlavaOnevisionForConditionalGeneration(config)
            image_processor = LlavaOnevisionImageProcessorPil(
                image_grid_pinpoints=spec.pinpoints, size={"height": spec.image_size, "width": spec.image_size},
                image_mean=mean, image_std=std)
            # LlavaOnevisionProcessor needs a video processor (torchvision); the parts load without it
            from .parts_processor import PartsProcessor

            processor = PartsProcessor.__new__(PartsProcessor)
            processor.image_processor, processor.tokenizer = image_processor, tokenizer
        elif spec.arch == "llava-next":
            from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

            config = LlavaNextConfig(image_grid_pinpoints=spec.pinpoints, **common)
            model = LlavaNextForConditionalGeneration(config)
            image_processor = LlavaNextImageProcessorPil(image_grid_pinpoints=spec.pinpoints, **image_processor_kw)
            processor = LlavaNextProcessor(
                image_processor=image_processor,
                tokenizer=tokenizer,
                patch_size=spec.patch_size,
                vision_feature_select_strategy=strategy,
                num_additional_image_tokens=n_extra,
                image_token="<image>",
                chat_template=tokenizer.chat_template,
            )
        else:
            config = LlavaConfig(**common)
            model = LlavaForConditionalGeneration(config)
            try:
                from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as _IP
            except ImportError:  # pragma: no cover - older layout
                _IP = CLIPImageProcessor
            image_processor = _IP(**image_processor_kw)
            processor = LlavaProcessor(
                image_processor=image_processor,
                tokenizer=tokenizer,
                patch_size=spec.patch_size,
                vision_feature_select_strategy=strategy,
                num_additional_image_tokens=n_extra,
                image_token="<image>",
                chat_template=tokenizer.chat_template,
            )
        _init_weights(model, spec.seed)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "instit_tiny.json").write_text(json.dumps(spec.__dict__, indent=2) + "\n")
    return out


def _init_weights(model, seed: int) -> None:
    """Give every weight a non-trivial random value (HF init leaves norms at 1, biases at 0).

    Random norms / biases make parity tests meaningful: a swapped or dropped
    norm or bias changes the output.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                if "norm" in name or "ln" in name or "layernorm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if p.ndim == 2 else p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / max(fan_in, 1) ** 0.5)
