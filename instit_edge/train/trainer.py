"""Continual Inst-IT instruction tuning: LoRA or full fine-tuning of LLM + projector.

One loop, run through ``accelerate`` (one CPU process, one GPU, or many GPUs /
nodes with the FSDP or DeepSpeed configs in ``demos/accelerate/``). bf16 on
GPU, fp32 on CPU. The first K vision layers are frozen (the paper: 12). Loss
on assistant turns only.

Checkpoints (``OUT/checkpoints/step-N/``) hold the trainable weights, the
optimizer, the scheduler, every RNG state and the step; the data order is a
pure function of (seed, epoch), so a killed run resumed from its last
checkpoint continues the uninterrupted run's loss curve.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InstitError


@dataclass
class TrainConfig:
    base: str
    instit: str
    out: str
    general: str | None = None
    ratio: float = 1.0
    lora: int = 0  # rank; 0 = full fine-tuning
    freeze_vision_layers: int = 12
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int = 0  # 0 = from epochs
    batch_size: int = 1
    grad_accum: int = 1
    warmup: float = 0.03
    save_every: int = 50
    seed: int = 0
    max_frame_samples: int = 4
    gradient_checkpointing: bool = False
    merge: bool = True
    stop_after: int = 0  # testing aid: stop (as if killed) after this many steps of this run
    extra: dict = field(default_factory=dict)


def _trainable_setup(model, cfg: TrainConfig):
    """Freeze / unfreeze per the recipe; wrap with LoRA when asked. Returns the model to train."""
    for p in model.parameters():
        p.requires_grad = False
    inner = model.model
    for p in inner.multi_modal_projector.parameters():
        p.requires_grad = True
    if hasattr(inner, "image_newline"):
        inner.image_newline.requires_grad = True
    tower = inner.vision_tower
    layers = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers
    k = min(cfg.freeze_vision_layers, len(layers))
    for layer in layers[k:]:
        for p in layer.parameters():
            p.requires_grad = True
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora, lora_alpha=2 * cfg.lora, lora_dropout=0.0,
                          target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        model = get_peft_model(model, lcfg)
        for n, p in model.named_parameters():
            if any(n.endswith(k_) for k_ in keep):
                p.requires_grad = True
    else:
        for p in inner.language_model.parameters():
            p.requires_grad = True
        for p in model.lm_head.parameters():
            p.requires_grad = True
    return model


def _check_memory(model, cfg: TrainConfig) -> None:
    import torch

    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    need = n_all * 4 + n_train * 12  # weights + grads + Adam moments (fp32)
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        if need > free:
            raise InstitError(f"training needs about {need / 2**30:.1f} GiB of GPU memory before activations but "
                              f"{free / 2**30:.1f} GiB is free; use --lora 16 or a smaller --batch-size")
        return
    from ..system import available_memory

    have = available_memory()
    if need > have:
        raise InstitError(f"training needs about {need / 2**30:.1f} GiB of memory but {have / 2**30:.1f} GiB "
                          "is available; use --lora 16")


def _rng_state():
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s):
    import torch

    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def _latest_checkpoint(out: Path) -> Path | None:
    ck = out / "checkpoints"
    steps = sorted((int(p.name.split("-")[1]), p) for p in ck.glob("step-*") if (p / "state.pt").is_file())
    return steps[-1][1] if steps else None


def _save_checkpoint(out: Path, step: int, model, opt, sched, losses) -> None:
    import torch

    final = out / "checkpoints" / f"step-{step}"
    tmp = out / "checkpoints" / f".step-{step}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"weights": trainable, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": _rng_state(), "step": step, "losses": losses}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
        shutil.rmtree(old, ignore_errors=True)  # keep the last two


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    import torch
    from accelerate import Accelerator

    from ..data.dataset import load_instit_dataset
    from ..models.families import chat_template_for
    from ..models.loading import load_model
    from .encode import MediaEncoder, build_batch, encode_text
    from .instructions import general_samples, instit_samples, mix

    if not 0 < cfg.ratio <= 1:
        raise InstitError(f"--ratio must be in (0, 1] (the share of Inst-IT samples in the mix), got {cfg.ratio}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    from accelerate.utils import DistributedDataParallelKwargs

    # a sample without an image (or a video sample) leaves the image-only parameters without a gradient on
    # that rank: DDP must be told, or it stops at the first such step
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                      mixed_precision="bf16" if torch.cuda.is_available() else "no", cpu=not torch.cuda.is_available(),
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    model, processor = load_model(cfg.base)
    template = chat_template_for(model, processor)  # the template its bundle will record
    records = load_instit_dataset(cfg.instit)
    samples = instit_samples(records, cfg.max_frame_samples, cfg.seed)
    if cfg.general:
        samples = mix(samples, general_samples(cfg.general), cfg.ratio, cfg.seed)
    if not samples:
        raise InstitError(f"no training samples in {cfg.instit}")
    encoded = [encode_text(s, processor.tokenizer, template) for s in samples]
    model = _trainable_setup(model, cfg)
    _check_memory(model, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    media = MediaEncoder(model.base_model.model if cfg.lora else model, processor)

    # one optimizer step takes a global batch: batch_size x grad_accum on each of the processes; rank r
    # trains on its slice, so N processes with batch B equal one process with batch B and grad_accum N
    per_step = cfg.batch_size * cfg.grad_accum * acc.num_processes
    steps_per_epoch = max(1, len(samples) // per_step)
    total = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warm = int(cfg.warmup * total)

    def lr_lambda(s):
        if s < warm:
            return (s + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    # the scheduler stays outside accelerate: prepared, it steps num_processes times per optimizer step (it
    # assumes a sharded dataloader); here it steps once per global batch, whatever the number of processes
    model, opt = acc.prepare(model, opt)

    step, losses = 0, []
    ck = _latest_checkpoint(out)
    if ck is not None:
        state = torch.load(ck / "state.pt", weights_only=False)
        unwrapped = acc.unwrap_model(model)
        missing = set(state["weights"]) - {n for n, _ in unwrapped.named_parameters()}
        if missing:
            raise InstitError(f"checkpoint {ck} does not match this model/recipe ({len(missing)} unknown tensors); "
                              "use a new --out")
        with torch.no_grad():
            named = dict(unwrapped.named_parameters())
            for n, w in state["weights"].items():
                named[n].copy_(w.to(named[n].device))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step, losses = state["step"], state["losses"]
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))

    def order(epoch: int) -> list[int]:
        idx = list(range(len(samples)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(idx)
        return idx

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[sps]:.1f} samples/s"),
                    TimeRemainingColumn(), disable=not progress or not acc.is_main_process)
    task = prog.add_task("train", total=total, completed=step, loss=losses[-1] if losses else float("nan"), sps=0.0)
    t0, seen, ran = time.perf_counter(), 0, 0
    with prog:
        while step < total:
            epoch, pos = divmod(step * per_step, len(samples) - len(samples) % per_step or len(samples))
            idx = order(epoch)
            batch_ids = [idx[(pos + k) % len(idx)] for k in range(per_step)]
            local = cfg.batch_size * cfg.grad_accum
            batch_ids = batch_ids[acc.process_index * local:(acc.process_index + 1) * local]
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                ids = batch_ids[micro * cfg.batch_size:(micro + 1) * cfg.batch_size]
                with acc.accumulate(model):
                    embeds, mask, labels = build_batch(acc.unwrap_model(model), media, [samples[i] for i in ids],
                                                       [encoded[i] for i in ids])
                    outp = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
                    acc.backward(outp.loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(params, 1.0)
                    opt.step()
                    opt.zero_grad()
                step_loss += float(outp.loss.detach()) / cfg.grad_accum
            sched.step()
            if acc.num_processes > 1:  # the logged loss is the mean over the processes, as the gradient is
                step_loss = float(acc.reduce(torch.tensor([step_loss], device=acc.device), reduction="mean")[0])
            step += 1
            ran += 1
            seen += per_step
            losses.append(step_loss)
            prog.update(task, advance=1, loss=step_loss, sps=seen / (time.perf_counter() - t0))
            if acc.is_main_process and (step % cfg.save_every == 0 or step == total):
                _save_checkpoint(out, step, acc.unwrap_model(model), opt, sched, losses)
            if cfg.stop_after and ran >= cfg.stop_after and step < total:
                return {"stopped_at": step, "losses": losses}
            if os.environ.get("INSTIT_TRAIN_KILL_AT") == str(step):  # crash drill for the resume test
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
    elapsed = time.perf_counter() - t0
    final = acc.unwrap_model(model)
    if acc.is_main_process:
        _save_final(final, processor, out / "model", cfg)
        (out / "losses.json").write_text(json.dumps(losses))
    return {"steps": step, "losses": losses, "samples_per_s": seen / elapsed if elapsed else None,
            "model": str(out / "model")}


def _save_final(model, processor, dst: Path, cfg: TrainConfig) -> None:
    """A normal HF checkpoint (LoRA merged unless --no-merge) that `instit-edge export` takes as is."""
    from ..atomic import atomic_dir

    with atomic_dir(dst, force=True) as tmp:
        if cfg.lora and cfg.merge:
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "instit_train.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
