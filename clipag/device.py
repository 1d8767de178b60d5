"""Choosing the compute device, once, from a user's `--device` string."""

from __future__ import annotations

import os

import torch

from .errors import ClipagError


def rank_and_world(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them; (0, 1, 0) when unset."""
    env = os.environ if env is None else env
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ClipagError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ClipagError(f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}: need "
                          "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return rank, world, local


def resolve_device(spec: str = "auto", env: dict[str, str] | None = None) -> torch.device:
    """Turn `auto`, `cpu`, `cuda` or `cuda:N` into a device that exists, or fail clearly.
    Under torchrun (WORLD_SIZE > 1), `auto` and `cuda` mean this process's own GPU,
    cuda:LOCAL_RANK, so the ranks of every command spread over the node's GPUs."""
    spec = (spec or "auto").strip().lower()
    env = os.environ if env is None else env
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        _, world, local = rank_and_world(env)
        if world > 1:
            spec = f"cuda:{local}"
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ClipagError(f"--device {spec} was asked for but no CUDA device is available "
                              "(use --device cpu or auto)")
        index = spec.partition(":")[2]
        if index:
            if not index.isdigit():
                raise ClipagError(f"bad device {spec!r}: expected cuda:N with N a number")
            if int(index) >= torch.cuda.device_count():
                raise ClipagError(f"--device {spec}: only {torch.cuda.device_count()} CUDA "
                                  "device(s) present")
        return torch.device(spec)
    raise ClipagError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")


def autocast(device: torch.device):
    """fp16 autocast on CUDA, a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.float16,
                          enabled=device.type == "cuda")
