"""Many prompts, many samples, many processes: plan the outputs, skip finished ones, claim
the rest one by one, batch them, write them.

A task's identity is a key hashed from everything that decides its pixels (prompt, negatives,
seed, settings, model); its sidecar records the key, so a finished file counts as done only
for the task that made it. A task is written under its plain name `NNNN-prompt-sSEED.png`, or,
where that name holds another task's files, under `NNNN-prompt-sSEED-KEY8.png`; both are
stable, so rerunning resumes. Before computing, a process claims each task with a lock file
created atomically beside the output (`.NAME.lock`: pid, host, time, key); a lock whose pid is
dead on this host is stale and reclaimed. So any number of processes (or `torchrun` ranks,
each taking its share of the planned batches) can work on one prompts file and one folder:
every image is made once."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ClipagError
from .fileio import write_text_atomic
from .canvas import CANVASES
from .device import rank_and_world  # noqa: F401  (re-exported: the launcher's environment)
from .generate import (ANCHOR_SIDE, FLOW_ANCHOR, GenerateConfig, Generation, StepInfo, generate,
                       resolved, with_recommended)
from .load import ModelSpec
from .models import DEFAULT_PRESET, PRESETS, Guide
from .images import probe_content
from .output import (companions, image_format, read_sidecar, save_gif, save_image, save_sidecar,
                     save_video, slug)
from .prompts import Job
from .settings import SEED_MAX, SETTINGS, apply
from .style import content_size, style


@dataclass(frozen=True)
class RunConfig:
    """The run-level settings of `clipag generate` (the image settings are GenerateConfig)."""

    samples: int = 1  # images per prompt, seeds seed, seed+1, ...
    batch_size: int = 1  # consecutive tasks with equal settings optimised together
    negative_weight: float = 0.5  # weight of each --negative text
    seed: int = 0
    outdir: str = "outputs"
    overwrite: bool = False
    video: bool = False  # an MP4 of the run beside each image, instead of a GIF


ASSETS = Path(__file__).parent / "assets"  # where the embedded models live

# settings that change no pixel of the image (save_every adds a GIF beside it): a rerun that
# changes only them resumes
NOT_IN_KEY = ("log_every", "view_batch", "save_every")


@dataclass(frozen=True)
class Task:
    """One image to make."""

    prompt: str
    negatives: tuple[str, ...]
    negative_weight: float
    seed: int
    config: GenerateConfig
    key: str  # hash of everything that decides its pixels and files
    names: tuple[Path, ...]  # where it may be written: the plain name, then one with its key
    # the prompts-file line whose settings it has (FILE:LINE, for messages); "" where its
    # settings are the command line's alone
    where: str = ""

    @property
    def png(self) -> Path:
        return self.names[0]


# --- identity -------------------------------------------------------------------------------

def file_fingerprint(path: Path) -> dict[str, Any]:
    """A cheap identity for a weights file: its size and a hash of its first and last MiB
    (any retrained or different file differs there; renaming or moving it does not)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
        h.update(f.read(1 << 20))
    return {"bytes": size, "sha256_ends": h.hexdigest()[:32]}


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What names the model before it is loaded: the preset or architecture name, the
    pretrained tag, and a fingerprint of every weights file named (a checkpoint, or the files
    of a guide mix)."""
    name = spec.model if (spec.model or spec.checkpoint) else DEFAULT_PRESET
    files = {}
    parts = [spec.checkpoint or "", *re.split(r"[+*]", name or "")]
    for part in parts:
        preset = PRESETS.get(part.strip()) if not spec.checkpoint else None
        if preset is not None and preset.source.startswith("embedded:"):  # rebuilt? new key
            parts.append(str(ASSETS / preset.source.split(":", 1)[1]))
    for part in parts:
        part = part.strip()
        if part and Path(part).is_file():
            try:
                files[Path(part).name] = file_fingerprint(Path(part))
            except OSError as exc:
                raise ClipagError(f"cannot read {part}: {exc.strerror or exc}") from None
    return {"model": name, "pretrained": spec.pretrained, "files": files}


def task_key(prompt: str, negatives: Sequence[str], negative_weight: float, seed: int,
             config: GenerateConfig, model: dict[str, Any]) -> str:
    settings = dataclasses.asdict(config)
    for name in NOT_IN_KEY:
        settings.pop(name, None)
    # settings added with the canvases are in the key only where they differ from what every
    # image was before them, so that earlier pixel images still count as finished
    settings.pop("canvas")
    if config.canvas.name != "pixels":
        settings["canvas"] = config.canvas.active()
        settings.pop("threshold")  # the pixels' projection only
        if not CANVASES[config.canvas.name].from_images:  # no start image: no start settings
            for name in ("init", "init_image", "init_candidates", "flow"):
                settings.pop(name)
    if config.keep == "best":
        settings.pop("keep")
    if config.style is None:
        settings.pop("style")
    else:  # style transfer: no start settings; the content file itself is part of the task
        for name in ("init", "init_image", "init_candidates", "flow", "size", "scales",
                     "anchor", "anchor_side"):
            settings.pop(name)
        settings["content_file"] = file_fingerprint(Path(config.style.content))
    if config.style is None and (config.anchor is None or config.anchor_side is None):
        # what an unset anchor becomes (generate.for_start): a new default is a new task
        settings["anchor_auto"] = [FLOW_ANCHOR, ANCHOR_SIDE]
    identity = {"prompt": prompt, "negatives": list(negatives),
                "negative_weight": negative_weight if negatives else None, "seed": seed,
                "settings": settings, "model": model}
    text = json.dumps(identity, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def suffixes(config: GenerateConfig) -> tuple[str, ...]:
    """The extra files a task's canvas writes beside its image (".svg" for strokes)."""
    return CANVASES[config.canvas.name].suffixes


def output_name(path: Path, config: GenerateConfig) -> Path:
    """The image an `--output` names: itself, or for a canvas that writes an SVG, `-o X.svg`
    names X.png (both are written)."""
    if path.suffix.lower() == ".svg" and ".svg" in suffixes(config):
        return path.with_suffix(".png")
    if path.suffix.lower() == ".svg":
        raise ClipagError(f"cannot write {path}: only the strokes canvas writes SVG "
                          f"(this run's canvas is {config.canvas.name})")
    if ".svg" in suffixes(config) and image_format(path) != "PNG":
        raise ClipagError(f"cannot write {path}: the {config.canvas.name} canvas writes a PNG "
                          "and an SVG; name the output .png or .svg")
    return path


# --- planning -------------------------------------------------------------------------------

def job_config(config: GenerateConfig, job: Job, recommended: Sequence[tuple[str, Any]] = (),
               explicit: frozenset[str] = frozenset()) -> tuple[GenerateConfig, dict[str, Any]]:
    """A job's settings applied over `config`, then the preset's recommended settings where
    neither the command line (`explicit`, GenerateConfig field names) nor the line set one;
    with what the recommendation changed. Checked without a model."""
    values = {k: v for k, v in job.settings.items() if SETTINGS[k].path}
    config = apply(config, values)
    line_fields = {SETTINGS[k].path[-1].lstrip("*") for k in values}
    config, changed = with_recommended(config, recommended, set(explicit) | line_fields)
    try:
        config.check()
        config = resolved(config)
        if config.init_image and not Path(config.init_image).is_file():
            raise ClipagError(f"init image not found: {config.init_image}")
    except ClipagError as exc:
        raise ClipagError(f"{job.where}: {exc}" if job.settings else str(exc)) from None
    return config, changed


def plan(jobs: list[Job], config: GenerateConfig, run: RunConfig, model: dict[str, Any],
         negatives: tuple[str, ...] = (), output: Path | None = None,
         recommended: Sequence[tuple[str, Any]] = (),
         explicit: frozenset[str] = frozenset()) -> tuple[list[Task], dict[str, Any]]:
    """Every image to make, with stable output names, and the recommended settings applied
    (by setting name). Pure: it reads no output folder, so every process plans the same."""
    tasks, changed = [], {}
    outdir = Path(run.outdir)
    for j, job in enumerate(jobs):
        cfg, rec = job_config(config, job, recommended, explicit)
        changed.update(rec)
        line = job.settings
        job_negatives = negatives + tuple(line.get("negative", ()))
        weight = line.get("negative_weight", run.negative_weight)
        base_seed, samples = line.get("seed", run.seed), line.get("samples", run.samples)
        if base_seed + samples - 1 > SEED_MAX:
            raise ClipagError(f"{job.where}: seeds {base_seed}..{base_seed + samples - 1} "
                              f"pass the largest seed {SEED_MAX}")
        for s in range(samples):
            seed = base_seed + s
            key = task_key(job.prompt, job_negatives, weight, seed, cfg, model)
            if output is not None:
                names = (output_name(output, cfg),)
            else:
                stem = f"{j:04d}-{slug(job.prompt)}-s{seed}"
                names = (outdir / f"{stem}.png", outdir / f"{stem}-{key[:8]}.png")
            tasks.append(Task(job.prompt, job_negatives, weight, seed, cfg, key, names,
                              job.where if job.settings else ""))
    if output is not None:
        if len(tasks) > 1:
            raise ClipagError("--output names one file; use --outdir for several images")
        check_output(tasks[0].png, tasks[0].config, run)
    return tasks, changed


def check_tasks(tasks: Sequence[Task], guide: Guide) -> None:
    """Check every task's settings against the model (its input size decides the output side,
    which --size, --scales and patch views must fit) before any image is made: a bad line 3 of
    a prompts file is refused before lines 1 and 2 are generated, its message naming the line.
    Style tasks are checked by style transfer itself."""
    seen: set[int] = set()
    for task in tasks:
        if id(task.config) in seen or task.config.style is not None:
            continue  # the tasks of one line share their settings
        seen.add(id(task.config))
        try:
            task.config.validate(guide)
        except ClipagError as exc:
            raise ClipagError(f"{task.where}: {exc}" if task.where else str(exc)) from None


def plan_style(contents: list[Path], target: str, config: GenerateConfig, run: RunConfig,
               model: dict[str, Any], output: Path | None = None) -> list[Task]:
    """Every restyled image to make: each content image x samples, named after the content
    and the target (`NAME-TARGET-sSEED.png`). Each content file's header is checked here (a
    missing, foreign, animated or tiny image is refused before any work)."""
    tasks = []
    if run.seed + run.samples - 1 > SEED_MAX:
        raise ClipagError(f"seeds {run.seed}..{run.seed + run.samples - 1} pass the largest "
                          f"seed {SEED_MAX}")
    stems = [c.stem for c in contents]
    for content in contents:
        # every content's header checked before the first image is made
        probe_content(content, lambda h, w: content_size(h, w, config.style.max_side))
        cfg = dataclasses.replace(config, style=dataclasses.replace(config.style,
                                                                     content=str(content)))
        # two contents with one name (a/x.png, b/x.jpg) get their folder's name too
        stem = content.stem if stems.count(content.stem) == 1 else \
            f"{content.parent.name}-{content.stem}"
        for s in range(run.samples):
            seed = run.seed + s
            key = task_key(target, (), 0.0, seed, cfg, model)
            if output is not None:
                names = (output,)
            else:
                name = f"{slug(stem, 40)}-{slug(target)}-s{seed}"
                names = (Path(run.outdir) / f"{name}.png", Path(run.outdir) / f"{name}-{key[:8]}.png")
            tasks.append(Task(target, (), 0.0, seed, cfg, key, names))
    if output is not None:
        if len(tasks) > 1:
            raise ClipagError("--output names one file; use --outdir for several images")
        check_output(output, tasks[0].config, run)
    return tasks


def check_output(output: Path, config: GenerateConfig, run: RunConfig) -> None:
    """An --output that can be written: a known format, not a folder, and nothing it would
    replace unless --overwrite."""
    image_format(output)
    if output.exists() and output.is_dir():
        raise ClipagError(f"--output {output} is a folder")
    if not run.overwrite:
        for path in companions(output, frames=bool(config.save_every),
                               extra=suffixes(config), video=run.video):
            if path.exists():
                raise ClipagError(f"{path} exists; pass --overwrite to replace it")


def batches(tasks: list[Task], batch_size: int) -> list[list[Task]]:
    """Consecutive tasks with identical settings, at most `batch_size` at a time."""
    out: list[list[Task]] = []
    for task in tasks:
        if (out and len(out[-1]) < batch_size and task.config == out[-1][0].config
                and task.negative_weight == out[-1][0].negative_weight):
            out[-1].append(task)
        else:
            out.append([task])
    return out


def share(groups: list[list[Task]], rank: int, world: int) -> list[list[Task]]:
    """This rank's batches: every world-th planned batch, so a batch holds the same images
    whatever the number of processes."""
    return groups[rank::world]


# --- what the folder holds ------------------------------------------------------------------

def state(png: Path, key: str) -> str:
    """What is at an output name for the task `key`: "done" (its image and a sidecar recording
    this task), "ours" (a sidecar of this task, no image: an interrupted write), "free"
    (nothing) or "taken" (another task's or someone's files)."""
    files = [p for p in companions(png) if p.exists()]
    if not files:
        return "free"
    meta = read_sidecar(png.with_suffix(".json"))
    if meta is None or meta.get("task") != key:
        return "taken"
    return "done" if png.is_file() else "ours"


def finished(task: Task) -> Path | None:
    """Where the task's finished image is, if anywhere."""
    for png in task.names:
        if state(png, task.key) == "done":
            return png
    return None


def check_writable(folder: Path) -> None:
    """Refuse, before any work, a folder that cannot be written: test by creating and removing
    a file in it (or in its nearest existing parent, which is not created here)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.is_symlink():  # a link to nothing, or a loop of links
            raise ClipagError(f"cannot write to {folder}: {probe} is a symlink that leads "
                              "nowhere")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ClipagError(f"cannot write to {folder}: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".clipag-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ClipagError(f"cannot write to {folder}: {exc.strerror or exc}") from None


# --- claims ---------------------------------------------------------------------------------

class WriteError(ClipagError):
    """An output or its claim could not be written (disk full, permissions...)."""


HOST = socket.gethostname()


def lock_path(png: Path) -> Path:
    return png.with_name(f".{png.name}.lock")


LOCK_FIELDS = ("pid", "host", "task")  # what every lock clipag writes holds


def _read_lock(lock: Path) -> tuple[bytes, dict[str, Any] | None]:
    """A lock's bytes and its fields (None where it is not a complete clipag lock). Only a
    regular file is read: a FIFO would block the read forever."""
    check_lock_entry(lock)
    try:
        raw = lock.read_bytes()
    except OSError:
        return b"", None
    try:
        info = json.loads(raw)
    except ValueError:
        return raw, None
    if not isinstance(info, dict) or not all(k in info for k in LOCK_FIELDS):
        return raw, None
    return raw, info


def check_lock_entry(lock: Path) -> None:
    """A lock name taken by something that is not a regular file (a folder, a FIFO, a link)
    is no lock clipag wrote and nothing clipag may delete: one clear error."""
    try:
        mode = os.lstat(lock).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ClipagError(f"cannot read the lock {lock}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a symlink" if stat.S_ISLNK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file")
        raise ClipagError(f"{lock} is {kind}, not a lock clipag wrote: move it away, then "
                          "rerun")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def is_stale(lock: Path, info: dict[str, Any] | None, grace: float = 30.0) -> bool:
    """A lock is stale when its pid is dead on this host, or when it is unreadable and older
    than `grace` seconds (a process killed between creating and writing it). Locks of other
    hosts are never judged here: delete them by hand if that host is gone."""
    if info is None:
        try:
            return time.time() - lock.stat().st_mtime > grace
        except OSError:
            return False
    if info.get("host") != HOST or not isinstance(info.get("pid"), int):
        return False
    return not _pid_alive(info["pid"])


def _remove_if_unchanged(lock: Path, raw: bytes) -> None:
    """Remove `lock` if it still holds `raw`: move it aside atomically, compare, and put back a
    lock another process wrote meanwhile."""
    aside = lock.with_name(f"{lock.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    try:
        if aside.read_bytes() != raw:
            try:
                os.link(aside, lock)
            except FileExistsError:
                pass
    finally:
        aside.unlink(missing_ok=True)


@dataclass(frozen=True)
class Lock:
    path: Path
    raw: bytes

    def release(self) -> None:
        """Remove the lock if it is still this one."""
        try:
            if self.path.read_bytes() == self.raw:
                self.path.unlink()
        except OSError:
            pass


def try_lock(png: Path, key: str) -> tuple[Lock | None, dict[str, Any] | None]:
    """Claim an output name: (the lock, None), or (None, what the live holder wrote)."""
    lock = lock_path(png)
    raw = json.dumps({"pid": os.getpid(), "host": HOST, "time": time.time(), "task": key,
                      "token": uuid.uuid4().hex}).encode()
    for _ in range(3):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held, info = _read_lock(lock)
            if not held and not lock.exists():
                continue  # released between our open and read
            if is_stale(lock, info):
                _remove_if_unchanged(lock, held)
                continue
            return None, info or {}
        except OSError as exc:
            raise WriteError(f"cannot claim {png} (creating {lock.name}): "
                             f"{exc.strerror or exc}") from None
        try:
            os.write(fd, raw)
        except OSError as exc:
            os.close(fd)
            lock.unlink(missing_ok=True)
            raise WriteError(f"cannot claim {png}: {exc.strerror or exc}") from None
        os.close(fd)
        return Lock(lock, raw), None
    return None, {}


@dataclass
class Claim:
    task: Task
    png: Path  # the name it will be written under
    lock: Lock


def claim(task: Task, overwrite: bool = False) -> tuple[Claim | None, str]:
    """Claim a task: (the claim, "claimed"), or (None, why not: "done" or "busy", a live
    process of this or another run making it)."""
    if not overwrite and finished(task):
        return None, "done"
    names = task.names[:1] if overwrite else task.names
    for png in names:
        if not overwrite and state(png, task.key) == "taken":
            continue
        lock, holder = try_lock(png, task.key)
        if lock is None:
            if holder and holder.get("task") not in (None, task.key) and not overwrite:
                continue  # another task is being written under this name: take the next
            return None, "busy"
        now = state(png, task.key)
        if not overwrite and now != "free" and now != "ours":
            lock.release()
            if now == "done":
                return None, "done"
            continue
        return Claim(task, png, lock), "claimed"
    taken = ", ".join(str(p) for p in names)
    raise ClipagError(f"no free output name for {task.prompt!r} seed {task.seed}: {taken} hold "
                      "other files; move them or use another --outdir")


def claim_batch(group: list[Task], overwrite: bool = False) -> tuple[list[Claim], dict[str, int]]:
    claims, counts = [], {"done": 0, "busy": 0}
    try:
        for task in group:
            c, why = claim(task, overwrite)
            if c is None:
                counts[why] += 1
            else:
                claims.append(c)
    except BaseException:
        release(claims)
        raise
    return claims, counts


def release(claims: list[Claim]) -> None:
    for c in claims:
        c.lock.release()


_PART = re.compile(r"^\.(?P<name>.+\.(?:png|json|gif|mp4|svg|jpe?g|webp))\.[A-Za-z0-9_]{8}\.part$")
_ASIDE = re.compile(r"^\..+\.lock\.\d+\.[0-9a-f]{8}\.stale$")


def _regular(path: Path) -> bool:
    """A regular file itself (not through a link)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _held(lock: Path) -> bool:
    """Whether a lock may still be held (a live holder, or anything odd under its name)."""
    try:
        return lock.exists() and not is_stale(lock, _read_lock(lock)[1])
    except ClipagError:
        return True


def sweep(folder: Path, before: float, names: set[str] | None = None) -> int:
    """Clear what killed runs left in `folder`: stale locks, and hidden `.NAME.*.part`
    temporaries older than `before` (the run's start) whose output is not claimed by a live
    process; with `names`, only those outputs' files. Returns how many files went."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        n = entry.name
        if not n.startswith(".") or not _regular(entry):
            continue  # odd entries (folders, FIFOs, links) are never clipag's to clear
        try:
            if n.endswith(".lock"):
                if names is not None and n[1:-5] not in names:
                    continue
                raw, info = _read_lock(entry)
                if raw and is_stale(entry, info):
                    _remove_if_unchanged(entry, raw)
                    removed += not entry.exists()
            elif (m := _PART.match(n)) is not None:
                png = Path(m["name"]).with_suffix("")
                owners = [f".{png.name}{ext}.lock" for ext in (".png", ".jpg", ".jpeg", ".webp")]
                if names is not None and not any(o[1:-5] in names for o in owners):
                    continue
                live = any(_held(folder / o) for o in owners)
                if entry.stat().st_mtime < before and not live:
                    entry.unlink()
                    removed += 1
            elif _ASIDE.match(n) and entry.stat().st_mtime < before:
                entry.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


# --- computing and writing ------------------------------------------------------------------

def run_batch(guide: Guide, claims: list[Claim], model_info: dict[str, Any],
              on_step: Callable[[StepInfo], None] | None = None, video: bool = False
              ) -> Generation:
    """Make and save one batch of claimed images with the same settings (see `write_outputs`)."""
    tasks = [c.task for c in claims]
    config = tasks[0].config
    if config.style is not None:
        result = style(None, [t.prompt for t in tasks], guide, config, [t.seed for t in tasks],
                       on_step)
    else:
        result = generate([t.prompt for t in tasks], guide, config, [t.seed for t in tasks],
                          [list(t.negatives) for t in tasks], tasks[0].negative_weight, on_step)
    for b, c in enumerate(claims):
        meta = {**result.records[b], "model": model_info, "task": c.task.key,
                "negative_weight": c.task.negative_weight}
        files = dict(result.files[b]) if result.files else {}
        frames = [f[b] for f in result.frames] + [result.images[b]] if result.frames else []
        write_outputs(c.png, result.images[b], meta, files, frames, video)
    return result


def write_outputs(png: Path, image, meta: dict[str, Any], files: dict[str, str],
                  frames: list, video: bool = False) -> None:
    """One image's files as one change: its GIF (or MP4), its canvas's extra files, its
    sidecar, then the image last, each atomically. Whatever an earlier run left under these
    names is moved aside first and deleted only once all are written; if a write fails, the
    new files go and the old ones come back, so an image and its sidecar always describe the
    same run (never an old image under a new sidecar, which a rerun would take as finished)."""
    movie = png.with_suffix(".mp4" if video else ".gif") if frames else None
    # every companion an earlier run may have written, whether this run writes it or not
    targets = list(dict.fromkeys(png.with_suffix(s) for s in (
        ".gif", ".mp4", ".svg", *files, ".json", png.suffix)))
    aside: list[tuple[Path, Path]] = []
    path, writing = png, False
    try:
        for p in targets:
            if p.exists() or p.is_symlink():
                hidden = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.part")
                os.replace(p, hidden)
                aside.append((p, hidden))
        writing = True
        if movie is not None:
            path = movie
            (save_video if video else save_gif)(movie, frames)
        for suffix, text in files.items():
            path = png.with_suffix(suffix)
            write_text_atomic(path, text)
        path = png.with_suffix(".json")
        save_sidecar(path, meta)
        path = png
        save_image(png, image, meta)
    except OSError as exc:
        if writing:  # every old file is aside: what stands under the names is new
            for p in targets:
                p.unlink(missing_ok=True)
        for p, hidden in aside:
            os.replace(hidden, p)
        raise WriteError(f"could not write {path}: {exc.strerror or exc}") from None
    for _, hidden in aside:
        hidden.unlink(missing_ok=True)
