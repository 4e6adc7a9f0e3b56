"""Checkpoint fallback and workdir locks (issue 17)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hardlabel_jax import checkpointing
from hardlabel_jax import plan
from hardlabel_jax import workdir_lock
from helpers import Killed
from helpers import tiny_config


def _truncate_checkpoint(workdir: str, step: int) -> int:
  """Cuts every file of checkpoint `step` to half its size (a full disk, a partial copy)."""
  cut = 0
  for root, _, names in os.walk(os.path.join(workdir, "checkpoints", str(step))):
    for name in names:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)
      cut += 1
  return cut


def _finished_checkpoints(workdir: str) -> list[int]:
  """The checkpoint steps once the save the kill interrupted has landed (orbax saves async)."""
  directory = os.path.join(workdir, "checkpoints")
  for _ in range(100):
    names = os.listdir(directory)
    if all(name.isdigit() for name in names):
      break
    time.sleep(0.1)
  time.sleep(0.5)
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _kill_at(step):

  def hook(current):
    if current == step:
      raise Killed()

  return hook


@pytest.mark.slow
def test_a_truncated_latest_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
  config = tiny_config(checkpoint_every_steps=2)  # 10 steps; checkpoints 2, 4, 6, ...
  whole = plan.train(config, str(tmp_path / "whole")).results
  workdir = str(tmp_path / "run")
  with pytest.raises(Killed):
    plan.train(config, workdir, step_hook=_kill_at(7))
  steps = _finished_checkpoints(workdir)
  assert steps == [4, 6]  # at least two are kept
  previous, latest = steps
  assert _truncate_checkpoint(workdir, latest) > 0
  capsys.readouterr()
  resumed = plan.train(config, workdir).results
  out = capsys.readouterr().out
  assert f"checkpoint {latest} in" in out and "does not restore" in out
  assert f"starting at step {previous}" in out
  # Kept for inspection, not deleted.
  assert os.path.isdir(os.path.join(workdir, checkpointing.FAILED_DIR, str(latest)))
  assert (resumed["test_top1"], resumed["test_loss"]) == (whole["test_top1"], whole["test_loss"])


@pytest.mark.slow
def test_no_restorable_checkpoint_is_a_clear_error(tmp_path):
  config = tiny_config(checkpoint_every_steps=2)
  workdir = str(tmp_path / "run")
  with pytest.raises(Killed):
    plan.train(config, workdir, step_hook=_kill_at(5))
  for step in _finished_checkpoints(workdir):
    _truncate_checkpoint(workdir, step)
  with pytest.raises(checkpointing.NoUsableCheckpointError, match="no checkpoint .* restores"):
    plan.train(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_a_second_run_on_a_held_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir_lock.workdir_lock_path(workdir), "the test's own hold"):
    with pytest.raises(workdir_lock.LockHeldError, match=f"pid {os.getpid()}") as error:
      plan.train(tiny_config(), workdir)
    assert os.uname().nodename in str(error.value) and "started" in str(error.value)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_a_lock_held_by_another_process_then_gone_is_taken_over(tmp_path):
  lock = workdir_lock.workdir_lock_path(str(tmp_path / "w"))
  holder = subprocess.Popen([
      sys.executable, "-c", "import sys, time; from hardlabel_jax import workdir_lock\n"
      f"with workdir_lock.hold({lock!r}, 'x'):\n  print('held', flush=True); time.sleep(600)"
  ], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lock.LockHeldError, match=f"pid {holder.pid}"):
      with workdir_lock.hold(lock, "the workdir"):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)  # dies holding it: the record stays, the flock goes
    holder.wait()
  record = json.loads(open(lock).read())
  assert record["pid"] == holder.pid
  started = time.time()
  with workdir_lock.hold(lock, "the workdir"):
    assert json.loads(open(lock).read())["pid"] == os.getpid()
  assert time.time() - started < 5
  assert not os.path.exists(lock)  # released cleanly: the next run sees no stale record


def test_taking_over_a_stale_lock_warns(tmp_path, capsys):
  lock = workdir_lock.workdir_lock_path(str(tmp_path / "w"))
  os.makedirs(os.path.dirname(lock))
  with open(lock, "w") as f:
    json.dump({"host": "node7", "pid": 123456, "started": "2026-01-01T00:00:00"}, f)
  with workdir_lock.hold(lock, "the workdir"):
    pass
  assert "taking over the lock of the workdir from a run that is gone (host node7, pid 123456" \
      in capsys.readouterr().out
