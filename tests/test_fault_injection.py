"""Fault injection: SIGKILL every task at seeded points, rerun, and compare with an unkilled run.

For each task an uninterrupted reference run (in the test's process) logs every pass of the
library's fault points (hardlabel_jax.faults: training steps, asynchronous checkpoint writes, JSON
renames, table shards, set images, synthesis chunks, scoring epochs). Five points are drawn from
that log with a seeded generator, spread over the kinds of point the task has; the same command is
then killed at each in turn (SIGKILL, in a fresh process each time) and finally run to the end. Its
products must equal the reference's bit for bit: every task is deterministic on one machine.
"""

import signal

import numpy as np
import pytest

import task_harness

KILLS_PER_TASK = 5


@pytest.fixture(scope="module")
def bn_teacher(tiny_bn_teacher):
  return tiny_bn_teacher


def choose_kills(passes: list[str], count: int, seed: int) -> list[tuple[str, int]]:
  """`count` (point, n-th pass) of the reference log, spread over its kinds, in log order."""
  rng = np.random.default_rng(seed)
  kinds = sorted(set(passes))
  occurrences = {k: [i for i, p in enumerate(passes) if p == k] for k in kinds}
  chosen: set[int] = set()
  order = list(rng.permutation(kinds))
  while len(chosen) < min(count, len(passes)):
    for kind in order:
      free = [i for i in occurrences[kind] if i not in chosen]
      if free and len(chosen) < count:
        chosen.add(int(rng.choice(free)))
  kills = []
  for index in sorted(chosen):
    kind = passes[index]
    kills.append((kind, occurrences[kind].index(index) + 1))
  return kills


def test_choose_kills_spreads_over_kinds_and_keeps_log_order():
  passes = ["train_step"] * 20 + ["checkpoint_write", "json_write"] + ["train_step"] * 5
  kills = choose_kills(passes, 5, seed=0)
  assert len(kills) == 5 and {"checkpoint_write", "json_write"} <= {k for k, _ in kills}
  positions = [[i for i, p in enumerate(passes) if p == k][n - 1] for k, n in kills]
  assert positions == sorted(positions)


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(task_harness.TASKS))
def test_killed_task_reruns_to_the_uninterrupted_products(task, bn_teacher, tmp_path, monkeypatch):
  config = task_harness.write_config(str(tmp_path), task, bn_teacher)
  reference_log = str(tmp_path / "reference.log")
  task_harness.run_in_process(config, str(tmp_path / "reference"), reference_log, monkeypatch)
  with open(reference_log) as f:
    passes = [line.strip() for line in f]
  kills = choose_kills(passes, KILLS_PER_TASK, seed=sorted(task_harness.TASKS).index(task))
  assert len(kills) == KILLS_PER_TASK
  chain_log = str(tmp_path / "chain.log")
  survived = []
  for name, n in kills:
    killed = task_harness.launch(config, str(tmp_path / "chain"), f"{chain_log}::{name}:{n}")
    assert killed.returncode == -signal.SIGKILL, (name, n, killed.returncode, killed.stderr[-3000:])
    survived.append(f"{name}:{n}")
  final = task_harness.launch(config, str(tmp_path / "chain"), chain_log)
  assert final.returncode == 0, (survived, final.stderr[-3000:])
  expected = task_harness.products(str(tmp_path / "reference"))
  got = task_harness.products(str(tmp_path / "chain"))
  assert expected, "the reference produced nothing to compare"
  assert sorted(got) == sorted(expected), (survived, set(got) ^ set(expected))
  for key, value in expected.items():
    assert got[key] == value, (key, survived)
  print(f"{task}: survived {len(survived)} kills at {', '.join(survived)}")
