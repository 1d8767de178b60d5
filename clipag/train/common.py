"""What every clipag training loop shares: the learning-rate schedule, torchrun data
parallelism, and resumable training state."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import ClipagError
from ..fileio import atomic_path


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to zero."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def world_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun; (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world_info()


def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, with this rank's rows keeping their gradient."""
    rank, world = world_info()
    if world == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce and average the gradients over the ranks (a no-op in one process)."""
    _, world = world_info()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def barrier() -> None:
    if world_info()[1] > 1:
        dist.barrier()


def state_path(out: Path) -> Path:
    """Where the resumable state of a run writing `out` lives."""
    return out.with_name(out.name + ".state.pt")


def finished(out: Path, resume: bool) -> bool:
    """True when `out` was written by an earlier run being resumed; refuses to replace it
    otherwise."""
    if not out.exists():
        return False
    if resume:
        return True
    raise ClipagError(f"{out} exists; pass --resume to continue it or --overwrite")


def save_state(path: Path, model, optimizer, scheduler, step: int, position: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "position": position,
             "rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ClipagError(f"cannot resume from {path}: {str(exc).splitlines()[0]}") from None


def restore(state: dict, model, optimizer, scheduler) -> tuple[int, int]:
    """Load a saved state into the run; (step, data position)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["position"]
