"""How fast the command line answers, against the floor of importing click and rich.

    python bench/startup.py [--reps 5]

Prints the median wall time of `clipag --help`, `clipag --version`, `clipag generate --help`
and `python -c "import click, rich"`, and each as a ratio to the last (target for the
top-level answers: <= 3x)."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "clipag --help": [sys.executable, "-m", "clipag", "--help"],
    "clipag --version": [sys.executable, "-m", "clipag", "--version"],
    "clipag generate --help": [sys.executable, "-m", "clipag", "generate", "--help"],
    "import click, rich": [sys.executable, "-c", "import click, rich"],
}


def median_seconds(command: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    seconds = {name: median_seconds(cmd, args.reps) for name, cmd in CASES.items()}
    floor = seconds["import click, rich"]
    for name, s in seconds.items():
        print(f"{name:26s} {s:6.3f} s  {s / floor:5.1f}x")


if __name__ == "__main__":
    main()
