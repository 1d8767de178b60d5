"""What every clipag training loop shares: the learning-rate schedule, torchrun data
parallelism, and resumable training state."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from ..device import rank_and_world
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
    """Join the process group when launched by torchrun; (rank, world size). A launcher
    environment that cannot work (WORLD_SIZE not a number, no MASTER_ADDR) is one error."""
    _, world, _ = rank_and_world()
    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ClipagError(f"WORLD_SIZE={world} asks for {world} processes but "
                              f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                              "not set: launch with torchrun, or unset WORLD_SIZE")
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except (RuntimeError, ValueError) as exc:
            raise ClipagError(f"cannot join the {world} processes: "
                              f"{' '.join(str(exc).split())[:200]}") from None
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


def finished(out: Path, resume: bool, overwrite: bool = False) -> bool:
    """True when `out` was written by an earlier run being resumed; with `overwrite` the run
    trains again (the old `out` is replaced only when the new one is complete); refuses to
    replace it otherwise. A training state beside an existing `out` is an --overwrite run
    that did not finish: `resume` continues it. `resume` with nothing to continue is an
    error here, before any work."""
    if overwrite:
        return False
    saved = state_path(out)
    if out.exists():
        if resume:
            return not saved.exists()
        unfinished = (f", or --resume to continue the unfinished run in {saved}"
                      if saved.exists() else "")
        raise ClipagError(f"{out} exists (a finished run); pass --overwrite to train it "
                          f"again{unfinished}")
    if resume and not saved.exists():
        raise ClipagError(f"nothing to resume: no training state at {saved}")
    return False


def resume_hint(overwrite: bool) -> str:
    """How to continue a kept state: --overwrite would ignore it and start over."""
    return ("rerun the same command with --resume instead of --overwrite" if overwrite
            else "rerun the same command")


def part_files(path: Path) -> list[Path]:
    """The temporary files `clipag.fileio.atomic_path` leaves beside `path` when a writer is
    killed before its rename: `.NAME.<random>.part`."""
    prefix = f".{path.name}."
    try:
        return [p for p in path.parent.iterdir()
                if p.name.startswith(prefix) and p.name.endswith(".part")
                and len(p.name) > len(prefix) + len(".part") and p.is_file()]
    except OSError:  # no folder yet: nothing stale
        return []


def clean_stale_parts(paths: Iterable[Path], before: float) -> list[Path]:
    """Delete the temporary parts of `paths` last modified before `before` (this run's start,
    a `time.time()`): what an earlier run killed mid-write left. Returns what was removed."""
    removed = []
    for path in paths:
        for part in part_files(Path(path)):
            try:
                if part.stat().st_mtime < before:
                    part.unlink()
                    removed.append(part)
            except OSError:
                pass  # gone already, or not ours to delete: leave it
    return removed


def check_writable(out: Path) -> None:
    """Fail now, before any work, when `out` cannot be written: its folder cannot be made or
    a file cannot be created in it."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ClipagError(f"cannot write {out}: {exc.strerror or exc}") from None


def check_run(state: dict, run: dict, path: Path) -> None:
    """Refuse to resume a state that belongs to another run: one line naming the fields whose
    recorded value differs from this run's."""
    recorded = state.get("run")
    if not isinstance(recorded, dict):
        raise ClipagError(f"{path} does not record which run it belongs to (an older clipag "
                          "wrote it); pass --overwrite to start over")
    differ = [f"{key} (saved {recorded.get(key)!r}, now {value!r})"
              for key, value in run.items() if recorded.get(key) != value]
    if differ:
        raise ClipagError(f"{path} belongs to another run: {'; '.join(differ)}. Rerun with "
                          "the saved settings to resume, or pass --overwrite to start over")


def save_state(path: Path, model, optimizer, scheduler, step: int, position: int,
               run: dict | None = None) -> None:
    """Write the resumable state atomically; `run` records what it belongs to (plain values,
    compared by `check_run` before a resume)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "position": position,
             "rng": torch.get_rng_state()}
    if run is not None:
        state["run"] = dict(run)
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)  # through Python's file: a full disk is an OSError, not "unexpected pos"


def load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClipagError(f"cannot resume from {path}: {first}; pass --overwrite to start "
                          "over") from None
    if not isinstance(state, dict) or not {"model", "step", "position"} <= set(state):
        raise ClipagError(f"cannot resume from {path}: not a clipag training state; pass "
                          "--overwrite to start over")
    return state


def restore(state: dict, model, optimizer, scheduler, source: Path | str = "the saved state"
            ) -> tuple[int, int]:
    """Load a saved state into the run; (step, data position)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ClipagError(f"cannot resume from {source}: it does not fit this model "
                          f"({first}); pass --overwrite to start over") from None
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["position"]


class TrainingState:
    """The resumable state of a run writing `out`, kept at `state_path(out)`: resumed when it
    belongs to this run, saved every so often, and kept when the final write fails. `run`
    records the settings that shape the training (see `check_run`); `kept` is the step the
    state on disk holds for this run (None: none yet); `on_state(step, path)` hears each
    change of it."""

    def __init__(self, out: Path, run: dict, model, optimizer, scheduler, overwrite: bool = False,
                 on_state: Callable[[int, Path], None] | None = None):
        self.out, self.path, self.run = Path(out), state_path(Path(out)), run
        self.parts = (model, optimizer, scheduler)
        self.overwrite, self.on_state = overwrite, on_state
        self.kept: int | None = None

    def _held(self, step: int) -> None:
        self.kept = step
        if self.on_state:
            self.on_state(step, self.path)

    def resume(self, steps: int) -> tuple[int, int]:
        """(step, data position) to start from: (0, 0), or those of a saved state of this run
        of `steps` steps, restored into the model, optimizer and schedule. A state of other
        settings, or one past `steps`, is refused; --overwrite ignores it."""
        if self.overwrite or not self.path.exists():
            return 0, 0
        state = load_state(self.path)
        check_run(state, self.run, self.path)
        if state["step"] > steps:
            raise ClipagError(f"{self.path} holds step {state['step']}, past --steps {steps}: "
                              f"rerun with --steps {state['step']} or more to resume, or pass "
                              "--overwrite to start over")
        step, position = restore(state, *self.parts, self.path)
        del state
        self._held(step)
        return step, position

    def save(self, step: int, position: int) -> None:
        """Keep the state of `step`; a failed write (a full disk) stops the run saying what
        is still kept."""
        try:
            save_state(self.path, *self.parts, step, position, self.run)
        except OSError as exc:
            raise ClipagError(f"could not save the training state of step {step} to "
                              f"{self.path} ({exc.strerror or exc}); kept: {self.describe()}"
                              ) from None
        self._held(step)

    def finish(self, write: Callable[[], object], step: int, position: int) -> None:
        """Write the final output with `write()`, then drop the state. When the write fails
        (a full disk, a folder made read-only) the finished training is kept as a state, so
        that a rerun only writes the output, and the error says what was kept."""
        try:
            write()
        except OSError as exc:
            if self.kept != step:
                try:
                    save_state(self.path, *self.parts, step, position, self.run)
                    self.kept = step
                except OSError:
                    pass
            previous = " (the previous file is unchanged)" if self.out.exists() else ""
            raise ClipagError(f"could not write {self.out}{previous}: {exc.strerror or exc}; "
                              f"kept: {self.describe()}") from None
        if self.path.exists():
            self.path.unlink()

    def describe(self) -> str:
        """What a run that failed late leaves to resume from, in words."""
        if self.kept is None or not self.path.exists():
            return "no training state (nothing of this run could be saved)"
        return (f"the training state of step {self.kept} in {self.path}; make room and "
                f"{resume_hint(self.overwrite)} to resume from it")
