"""Where training runs: one device, mirrored over local devices, or a cluster of machines (``TF_CONFIG``), and
which process of a cluster writes the outputs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import tensorflow as tf

from captioner import CaptionerError, boundary


def strategy_named(name: str) -> tf.distribute.Strategy:
    """``auto``: mirrored over all local GPUs when there are two or more, else the default (one device).

    ``mirrored`` always mirrors (over every GPU, or the CPU when there is none); ``default`` never does.
    ``multi_worker``: one model trained by every machine of the cluster ``TF_CONFIG`` describes, each
    mirroring over its GPUs (or its CPU); create it before any other TensorFlow work.
    """
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "multi_worker":
        task, index, machines = cluster_task(os.environ.get("TF_CONFIG"))
        seconds = _cluster_timeout()
        print(
            f"train: {task} {index} of {machines} machines (TF_CONFIG); waiting for the others, {seconds:g} s at most"
        )
        late = (
            f"the cluster of TF_CONFIG did not assemble within {seconds:g} s; start every worker it lists "
            f"(README: More machines), or wait longer with {CLUSTER_TIMEOUT}"
        )
        with deadline(seconds, late):
            return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()


CLUSTER_TIMEOUT = "CAPTIONER_CLUSTER_TIMEOUT"  # seconds multi-worker training waits for its cluster (600)
ADDRESS = re.compile(r"[^\s:]+:\d{1,5}")  # host:port in TF_CONFIG


def _cluster_timeout() -> float:
    text = os.environ.get(CLUSTER_TIMEOUT, "600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):  # nan too
        raise CaptionerError(f"{CLUSTER_TIMEOUT} is {text!r}; it must be a number of seconds > 0")
    return seconds


def cluster_task(config: str | None) -> tuple[str, int, int]:
    """(task type, task index, machines) of a ``TF_CONFIG``, checked: a CaptionerError naming what is wrong with it,
    before TensorFlow would wait for a cluster that cannot assemble."""
    try:
        parsed = json.loads(config or "")
        cluster, task = boundary.field(parsed, "cluster", dict), boundary.field(parsed, "task", dict)
        kind, index = boundary.field(task, "type", str, "task"), boundary.field(task, "index", int, "task")
        for job, addresses in cluster.items():
            if not isinstance(addresses, list) or not all(ADDRESS.fullmatch(str(a)) for a in addresses):
                raise CaptionerError(f"cluster.{job} is {boundary.shown(addresses)}; it must list host:port addresses")
    except (json.JSONDecodeError, TypeError) as err:
        raise CaptionerError(f"TF_CONFIG is not JSON ({err}); README: More machines shows one") from None
    except CaptionerError as err:
        raise CaptionerError(f"TF_CONFIG: {err}") from None
    if kind not in cluster or not 0 <= index < len(cluster[kind]):
        raise CaptionerError(f"TF_CONFIG: task {kind} {index} is not in its cluster ({boundary.shown(cluster)})")
    return kind, index, sum(len(addresses) for addresses in cluster.values())


# The watchdog process: waits on its stdin for ``seconds``; the block ending (or the process dying) closes it.
_WATCHDOG = """
import os, select, signal, sys
watched, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:
    os.write(2, ("error: " + message + "\\n").encode())
    os.kill(watched, signal.SIGKILL)
"""


@contextlib.contextmanager
def deadline(seconds: float, message: str) -> Iterator[None]:
    """End the process with ``error: <message>`` unless the block ends within ``seconds``: for a wait inside
    TensorFlow that no exception can interrupt. The clock runs in a process of its own, since such a wait
    (``MultiWorkerMirroredStrategy()`` missing a worker) holds the GIL and no Python thread would run; it kills the
    process (SIGKILL: TensorFlow's multi-worker strategy handles SIGTERM itself)."""
    command = [sys.executable, "-I", "-c", _WATCHDOG, str(os.getpid()), repr(seconds), message]
    watchdog = subprocess.Popen(command, stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except on the non-chief workers of a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)
