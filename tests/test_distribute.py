"""Where training runs (captioner.distribute): the strategy a name gives, and a cluster's description checked."""

import subprocess
import sys

import pytest
import tensorflow as tf

from captioner import CaptionerError, distribute


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


@pytest.mark.e2e  # TensorFlow in processes of its own
def test_a_wait_past_its_deadline_ends_the_process_with_one_error_line():
    waits = "import time\nfrom captioner.distribute import deadline\nwith deadline(0.5, 'no cluster'):\n time.sleep(60)"
    result = subprocess.run([sys.executable, "-c", waits], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (1, "error: no cluster")
