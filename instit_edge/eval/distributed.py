"""``instit-edge eval`` under ``torchrun`` / ``accelerate launch``: one command, every rank a shard, rank 0 merges.

A launcher sets ``WORLD_SIZE`` / ``RANK`` (and ``LOCAL_RANK``). Each rank runs
``--shard RANK/WORLD_SIZE`` into ``OUT/shards/rank-R-of-N/`` (resumable like any
run), then leaves a ``DONE`` (or ``FAILED``, with the error) marker. Rank 0 waits
for every marker and merges the shards into ``OUT``. No torch.distributed
process group is needed, so the torch-free bundle backend works the same way.
With a GPU build and ``--gpu-layers``, each rank is pinned to GPU ``LOCAL_RANK``
unless ``CUDA_VISIBLE_DEVICES`` is already set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..atomic import write_json
from ..errors import InstitError

DONE, FAILED = "DONE", "FAILED"


def launcher_rank() -> tuple[int, int] | None:
    """``(rank, world_size)`` when started by torchrun / accelerate with more than one process, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise InstitError("WORLD_SIZE / RANK are not integers; start eval through torchrun or accelerate launch") \
            from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise InstitError(f"RANK={rank} is outside 0..{world - 1}")
    return rank, world


def shard_dir(out: Path, rank: int, world: int) -> Path:
    return Path(out) / "shards" / f"rank-{rank}-of-{world}"


def run_ranked(run, out: Path, rank: int, world: int, *, n_gpu_layers: int = 0, poll_s: float = 0.5,
               timeout_s: float = 7 * 24 * 3600) -> dict:
    """Run ``run(shard_out, (rank, world))`` for this rank; on rank 0 wait for all ranks and merge into ``out``."""
    from .merge import merge_runs

    out = Path(out)
    if n_gpu_layers and "CUDA_VISIBLE_DEVICES" not in os.environ and "LOCAL_RANK" in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["LOCAL_RANK"]
    mine = shard_dir(out, rank, world)
    mine.mkdir(parents=True, exist_ok=True)
    for marker in (DONE, FAILED):
        (mine / marker).unlink(missing_ok=True)
    try:
        meta = run(mine, (rank, world))
    except BaseException as e:
        write_json(mine / FAILED, {"rank": rank, "error": getattr(e, "message", None) or repr(e)})
        raise
    write_json(mine / DONE, {"rank": rank, "done": meta.get("done")})
    if rank != 0:
        return meta
    dirs = [shard_dir(out, r, world) for r in range(world)]
    t0 = time.monotonic()
    while True:
        failed = [d for d in dirs if (d / FAILED).exists()]
        if failed:
            raise InstitError(f"eval: rank {failed[0].name} failed (see {failed[0] / FAILED}); rerun the same "
                              "command to resume every shard")
        if all((d / DONE).exists() for d in dirs):
            break
        if time.monotonic() - t0 > timeout_s:
            missing = [d.name for d in dirs if not (d / DONE).exists()]
            raise InstitError(f"eval: ranks {', '.join(missing)} did not finish; rerun to resume")
        time.sleep(poll_s)
    return merge_runs(dirs, out)
