"""Where training runs (captioner.training.distribute): the strategy a name gives, and a cluster's description
checked."""

import subprocess
import sys

import pytest
import tensorflow as tf

from captioner import CaptionerError
from captioner.training import distribute


def test_auto_strategy_is_the_default_one_without_gpus():
    assert distribute.strategy_named("auto") is tf.distribute.get_strategy()
    assert distribute.strategy_named("default").num_replicas_in_sync == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "TF_CONFIG is not JSON"),
        ("{oops", "TF_CONFIG is not JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG: task is missing"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "cluster.worker is \\['a'\\]; it"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "task worker 1 is not in its"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "index is '0'; it must be"),
    ],
)
def test_a_cluster_description_is_checked_before_anything_waits_for_it(config, message):
    with pytest.raises(CaptionerError, match=message):
        distribute.cluster_task(config)
    assert distribute.cluster_task(
        '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}'
    ) == (
        "worker",
        1,
        2,
    )


# A worker of a two-worker cluster whose other worker never starts: TensorFlow waits in a native call holding the GIL.
ALONE = """
from captioner import process
process.prepare()
from captioner.training import distribute
distribute.strategy_named("multi_worker")
print("assembled")
"""


@pytest.mark.e2e  # TensorFlow in processes of its own
def test_a_cluster_missing_a_worker_ends_at_its_deadline_with_one_error_line():
    import json
    import os
    import socket
    import time

    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("localhost", 0))
            ports.append(probe.getsockname()[1])
    cluster = {"cluster": {"worker": [f"localhost:{port}" for port in ports]}, "task": {"type": "worker", "index": 0}}
    environment = os.environ | {"TF_CONFIG": json.dumps(cluster), "CAPTIONER_CLUSTER_TIMEOUT": "4"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", ALONE], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode != 0 and "assembled" not in result.stdout
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: the cluster of TF_CONFIG did not assemble within 4 s; start every worker it lists")
    )
    assert time.monotonic() - started < 60  # TensorFlow's start-up, then the 4 s: not TensorFlow's own long wait
