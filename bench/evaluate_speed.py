"""What starting METEOR's Java process before decoding buys the evaluate stage: `stages/evaluate.py` run in fresh
processes taking turns, METEOR started before decoding (as the stage does) vs when the scores are computed (as it
did before), on the project's current model. Prints each run's wall and CPU seconds and the ratio of the medians.

    python bench/evaluate_speed.py [--rounds 3]     # after dvc repro, from the project root
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
# The stage as it ran before: METEOR starts only when coco_scores first needs it.
LATE = """
import runpy, sys, types
import captioner.evaluation.evaluate as evaluation, captioner.evaluation.metrics as metrics
shim = types.SimpleNamespace(**{name: getattr(metrics, name) for name in dir(metrics) if not name.startswith("__")})
shim.start_meteor = lambda: None
evaluation.metrics = shim
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
EARLY = "import runpy, sys; sys.argv = [sys.argv[1]]; runpy.run_path(sys.argv[0], run_name='__main__')"


def timed(code: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + sys of the child) of one evaluate run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    command = [sys.executable, "-c", code, str(PROJECT / "stages" / "evaluate.py")]
    subprocess.run(command, cwd=PROJECT, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - started, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"METEOR started before decoding": [], "METEOR started late": []}
    for round_number in range(1, arguments.rounds + 1):
        for (name, times), code in zip(runs.items(), (EARLY, LATE), strict=True):
            times.append(timed(code))
            print(f"round {round_number}: {name}: {times[-1][0]:.1f} s wall, {times[-1][1]:.1f} s CPU", flush=True)
    early, late = (statistics.median(wall for wall, _ in times) for times in runs.values())
    print(f"median wall: {early:.1f} s vs {late:.1f} s: {early / late:.2f}× the time")


if __name__ == "__main__":
    main()
