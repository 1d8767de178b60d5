"""The wheels a GPU box that has only torch, torchvision and numpy needs to run clipag's checks.

On a connected machine (bench/gpu-wheels.sh calls this):

    python bench/wheels.py download --python-version 3.12 [--dest bench/wheels]

computes the list from clipag's own requirements (pyproject.toml) plus pytest: `pip download
--no-deps` of each, then the Requires-Dist of every wheel read from its METADATA (markers
evaluated for manylinux x86_64 and the given Python), until nothing new is named. What the box
has is skipped: torch, torchvision, numpy and everything torch itself requires (read from the
torch installed here). Versions are pinned to the ones installed here, so the box runs what the
tests ran here. A MANIFEST.txt lists what came and why.

On the GPU box, with no network (bench/gpu.sh calls this):

    python bench/wheels.py install bench/wheels --target /tmp/clipag-site

installs only the wheels whose distribution the box lacks, with pip when it has pip, else by
unpacking them (a wheel is a zip laid out for site-packages).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Callable, Iterable

BOX_HAS = ("torch", "torchvision", "numpy")
EXTRA_ROOTS = ("pytest",)  # the GPU check runs the CUDA tests
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
SIZE_TARGET_MB = 40
ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class WheelName:
    name: str  # canonical
    version: str
    python: tuple[str, ...]  # e.g. ("cp312",) or ("py3",) or ("py2", "py3")
    abi: str
    platform: str

    @classmethod
    def parse(cls, filename: str) -> "WheelName":
        parts = filename[:-len(".whl")].split("-") if filename.endswith(".whl") else []
        if len(parts) not in (5, 6):
            raise ValueError(f"not a wheel file name: {filename}")
        name, version, *_, python, abi, platform = parts
        return cls(canonical(name), version, tuple(python.split(".")), abi, platform)


def runs_on(wheel: WheelName, major: int, minor: int) -> bool:
    """Whether CPython major.minor on linux x86_64 can import this wheel."""
    platform_ok = wheel.platform == "any" or (
        "x86_64" in wheel.platform and wheel.platform.startswith(("manylinux", "linux")))
    if not platform_ok:
        return False
    for tag in wheel.python:
        if tag in ("py3", f"py{major}{minor}", f"py{major}") and wheel.abi == "none":
            return True
        if tag == f"cp{major}{minor}" and wheel.abi in (f"cp{major}{minor}", "abi3", "none"):
            return True
        if wheel.abi == "abi3" and tag.startswith(f"cp{major}"):
            low = tag[len(f"cp{major}"):]
            if low.isdigit() and int(low) <= minor:
                return True
    return False


# ---- download side (a connected machine; uses `packaging`, which pip's environment has) ----

def marker_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker values of CPython `python_version` on manylinux x86_64."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "platform_release": "", "platform_version": "", "extra": ""}


def applicable(lines: Iterable[str], env: dict[str, str]) -> list:
    """The requirements among Requires-Dist `lines` that apply in `env` (no extras)."""
    from packaging.requirements import Requirement

    out = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.append(req)
    return out


def wheel_requirements(wheel: Path, env: dict[str, str]) -> list:
    """The Requires-Dist of a wheel file that apply in `env`."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = [n for n in archive.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(metadata) != 1:
            raise ValueError(f"{wheel.name}: expected one .dist-info/METADATA")
        text = archive.read(metadata[0]).decode("utf-8")
    return applicable(Parser().parsestr(text).get_all("Requires-Dist") or [], env)


def installed_requirements(name: str, env: dict[str, str]) -> list:
    """The requirements of a distribution installed here (none when it is not installed)."""
    try:
        lines = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return applicable(lines, env)


def box_provides(env: dict[str, str], has: Iterable[str] = BOX_HAS,
                 requires: Callable[[str, dict], list] = installed_requirements) -> set[str]:
    """`has` and, recursively, what torch brings with it when installed (canonical names)."""
    provided = {canonical(n) for n in has}
    todo = ["torch"]
    while todo:
        for req in requires(todo.pop(), env):
            name = canonical(req.name)
            if name not in provided:
                provided.add(name)
                todo.append(name)
    return provided


def project_roots(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """clipag's own requirements."""
    import tomllib

    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def closure(roots: Iterable, skip: set[str], fetch: Callable[[object], Path],
            env: dict[str, str]) -> dict[str, tuple[Path, str]]:
    """name -> (wheel, what required it), following Requires-Dist from `roots` and skipping
    `skip`; each name is fetched once (the first requirement naming it decides)."""
    todo = [(req, "clipag") for req in roots]
    got: dict[str, tuple[Path, str]] = {}
    while todo:
        req, parent = todo.pop(0)
        name = canonical(req.name)
        if name in skip or name in got:
            continue
        wheel = fetch(req)
        got[name] = (wheel, parent)
        todo += [(child, name) for child in wheel_requirements(wheel, env)]
    return got


def pin(req) -> str:
    """`name==version` of the version installed here when it satisfies `req`, else `req`'s own
    specifier."""
    try:
        here = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        here = None
    if here is not None and req.specifier.contains(here, prereleases=True):
        return f"{req.name}=={here}"
    return f"{req.name}{req.specifier}"


def find_wheel(dest: Path, spec: str) -> Path:
    """The wheel in `dest` that `spec` (name, optionally ==version or a specifier) names."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    req = Requirement(spec)
    found = []
    for path in dest.glob("*.whl"):
        wheel = WheelName.parse(path.name)
        try:
            version = Version(wheel.version)
        except InvalidVersion:
            continue
        if wheel.name == canonical(req.name) and req.specifier.contains(version, prereleases=True):
            found.append((version, path))
    if not found:
        raise FileNotFoundError(f"pip download left no wheel for {spec} in {dest}")
    return max(found)[1]


def pip_fetch(dest: Path, python_version: str) -> Callable[[object], Path]:
    """A fetch function: `pip download --no-deps` one binary wheel for the target."""
    def fetch(req) -> Path:
        spec = pin(req)
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", python_version, "--implementation", "cp", *platforms,
                   "-d", str(dest), "-q", spec]
        print(f"  pip download {spec}", file=sys.stderr)
        subprocess.run(command, check=True)
        return find_wheel(dest, spec)

    return fetch


def download(python_version: str, dest: Path, box_has: Iterable[str] = ()
             ) -> dict[str, tuple[Path, str]]:
    from packaging.requirements import Requirement

    dest.mkdir(parents=True, exist_ok=True)
    env = marker_environment(python_version)
    skip = box_provides(env, (*BOX_HAS, *box_has))
    roots = [Requirement(r) for r in [*project_roots(), *EXTRA_ROOTS]]
    got = closure(roots, skip, pip_fetch(dest, python_version), env)
    keep = {path for path, _ in got.values()}
    lines = [f"# wheels for CPython {python_version} manylinux x86_64; the box has: "
             f"{', '.join(sorted(skip))}"]
    total = 0
    for _, (path, parent) in sorted(got.items()):
        size = path.stat().st_size
        total += size
        lines.append(f"{path.name}\t{size / 2**20:.2f} MB\trequired by {parent}")
    lines.append(f"# total {total / 2**20:.1f} MB in {len(got)} wheels")
    (dest / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    stale = [p.name for p in dest.glob("*.whl") if p not in keep]
    print("\n".join(lines))
    if stale:
        print(f"# not needed (left in place): {', '.join(sorted(stale))}")
    if total > SIZE_TARGET_MB * 2**20:
        print(f"# over the {SIZE_TARGET_MB} MB target by {total / 2**20 - SIZE_TARGET_MB:.1f} MB")
    return got


# ---- install side (the GPU box: plain Python, no `packaging`, maybe no pip) ----

def is_installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def to_install(wheels: Iterable[Path], installed: Callable[[str], bool] = is_installed,
               version: tuple[int, int] = sys.version_info[:2]) -> list[Path]:
    """The wheels whose distribution is missing; an error when one of those cannot run on this
    Python."""
    chosen, wrong = [], []
    for path in sorted(wheels):
        wheel = WheelName.parse(path.name)
        if installed(wheel.name):
            continue
        (chosen if runs_on(wheel, *version) else wrong).append(path)
    if wrong:
        raise SystemExit(f"error: {', '.join(p.name for p in wrong)} cannot run on Python "
                         f"{version[0]}.{version[1]}: rerun bench/gpu-wheels.sh "
                         f"{version[0]}.{version[1]} on a connected machine")
    return chosen


def unpack(wheels: Iterable[Path], target: Path) -> None:
    """Install wheels without pip: unzip into `target` (their .data/purelib and platlib too)."""
    target.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                parts = member.split("/")
                if ".." in parts or member.startswith("/"):
                    raise SystemExit(f"error: {wheel.name} has an unsafe path {member}")
                if len(parts) > 2 and parts[0].endswith(".data") and parts[1] in ("purelib",
                                                                                   "platlib"):
                    dest = target.joinpath(*parts[2:])
                elif parts[0].endswith(".data"):
                    continue  # scripts and headers: not needed to import
                else:
                    dest = target / member
                if member.endswith("/"):
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(archive.read(member))


def has_pip() -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True
                          ).returncode == 0


def install(folder: Path, target: Path) -> list[Path]:
    wheels = to_install(folder.glob("*.whl"))
    if not wheels:
        print("every wheel's distribution is already installed")
        return []
    print(f"installing {len(wheels)} wheels into {target}: "
          f"{', '.join(WheelName.parse(w.name).name for w in wheels)}")
    if has_pip():
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                        "--disable-pip-version-check", "--no-compile", "-q", "--target", str(target),
                        *map(str, wheels)], check=True)
    else:
        unpack(wheels, target)
    return wheels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    down = sub.add_parser("download", help="fetch the wheels (needs the network)")
    down.add_argument("--python-version", required=True, help="e.g. 3.12")
    down.add_argument("--dest", type=Path, default=ROOT / "bench" / "wheels")
    down.add_argument("--box-has", default="",
                      help="comma-separated packages the box already has (skipped with what "
                           "only they need), e.g. scipy,click,rich,pillow")
    inst = sub.add_parser("install", help="install the missing ones (offline)")
    inst.add_argument("folder", type=Path)
    inst.add_argument("--target", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "download":
        if not re.fullmatch(r"3\.\d+", args.python_version):
            parser.error(f"--python-version must look like 3.12, got {args.python_version!r}")
        download(args.python_version, args.dest,
                 [n.strip() for n in args.box_has.split(",") if n.strip()])
    else:
        if not args.folder.is_dir():
            raise SystemExit(f"error: no wheel folder {args.folder}: run bench/gpu-wheels.sh "
                             "on a connected machine and copy bench/wheels here")
        install(args.folder, args.target)


if __name__ == "__main__":
    main()
