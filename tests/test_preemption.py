"""Preemption and a full disk: SIGTERM (or the second signal) saves and exits 75; ENOSPC, one line

Each task runs as `main.py` does, in a fresh process, with a signal sent at a seeded pass of one of
its fault points (hardlabel_jax.faults `...:term`). It must stop at the next safe point, say
where in one line, exit with `preemption.EXIT_CODE`, and a rerun of the same command must end
with the products of an uninterrupted run, bit for bit. A full disk is injected at the named
fault points (any machine) and, where the test may mount one, met on a real small tmpfs.
"""

import asyncio
import errno
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import disk_space
from hardlabel_jax import log_filters
from hardlabel_jax import plan
from hardlabel_jax import preemption
from helpers import tiny_config
import task_harness


@pytest.fixture(scope="module")
def bn_teacher(tiny_bn_teacher):
  return tiny_bn_teacher


def _lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Signals, handlers and the config field.


def test_second_signal_names_and_refusals():
  assert preemption.signal_number("SIGUSR1") == signal.SIGUSR1
  assert preemption.signal_number("USR2") == signal.SIGUSR2
  for bad in ("SIGKILL", "SIGTERM", "SIGFOO", "9"):
    with pytest.raises(ValueError, match=r"^config\.preemption_signal: "):
      preemption.signal_number(bad)
  config = config_schema.default_config()
  config.preemption_signal = "SIGSTOP"
  with pytest.raises(ValueError, match=r"^config\.preemption_signal: 'SIGSTOP'"):
    config_schema.validate(config)
  config.preemption_signal = ""
  config_schema.validate(config)  # '' catches SIGTERM alone


def test_handlers_set_the_flag_and_are_restored():
  before = signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)
  with preemption.handle_signals("SIGUSR2"):
    assert not preemption.stop_requested(1)
    os.kill(os.getpid(), signal.SIGUSR2)
    assert preemption.stop_requested(2) and preemption.stop_requested()  # stays True
    assert preemption.received_signal() == "SIGUSR2"
    assert "preempted by SIGUSR2: x; run the same command again" in str(preemption.stop("x"))
  assert (signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)) == before
  assert not preemption.stop_requested()  # reset on the way out


def test_sigterm_in_process_stops_at_that_step_and_resumes_bit_exactly(tmp_path):
  config = tiny_config(budget_examples=16 * 10, checkpoint_every_steps=4)
  reference = plan.train(config, str(tmp_path / "reference")).results

  def term_at_step_6(step):
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = str(tmp_path / "preempted")
  with preemption.handle_signals(), pytest.raises(preemption.Preempted) as stopped:
    plan.train(config, workdir, step_hook=term_at_step_6)
  assert "training stopped at step 6 of 10, checkpoint 6 saved in" in str(stopped.value)
  # Step 6 is off the checkpoint interval (4): saved only because the signal came.
  assert checkpointing.Checkpointer(workdir, 4).latest_step() == 6
  assert not os.path.exists(os.path.join(workdir, plan.RESULTS_FILE))
  resumed = plan.train(config, workdir).results
  assert resumed["resumed_from_step"] == 6
  assert resumed["test_loss"] == reference["test_loss"]
  chex_equal = jax.tree.map(
      np.array_equal,
      checkpointing.Checkpointer(workdir, 4).restore_variables(),
      checkpointing.Checkpointer(str(tmp_path / "reference"), 4).restore_variables())
  assert all(jax.tree.leaves(chex_equal))


# ---------------------------------------------------------------------------------------------
# Every task, as a command: signal at a pass, exit 75, rerun = uninterrupted.

# (task, fault point, pass, extra overrides, what the one line says). BASE: 50 images, batch 16,
# 12 steps checkpointed every 3; tables of 5 shards; a study's cells train 6 steps each.
_PREEMPTIONS = {
    "train_hl": ("train_hl", "train_step", 7, {}, "training stopped at step 7 of 12, checkpoint 7"),
    "train_sl": ("train_sl", "train_step", 5, {}, "training stopped at step 5 of 12, checkpoint 5"),
    "relabel": ("relabel", "table_shard_write", 2, {}, "relabel stopped after shard 2 of 5"),
    "synthesize": ("synthesize", "synth_iterations", 1, {
        "synth_batch_size": 10
    }, "synthesis stopped after batch 1 of 2"),
    # The second cell's step 3; and the first cell's last step, after which the study itself stops.
    "study_in_cell": ("study", "train_step", 9, {}, "training stopped at step 3 of 6"),
    "study_between_cells": ("study", "train_step", 6, {}, "study stopped before cell 2/2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(_PREEMPTIONS))
def test_sigterm_saves_exits_75_and_the_rerun_equals_an_uninterrupted_run(
    case, bn_teacher, tmp_path, monkeypatch):
  task, point, n, extra, said = _PREEMPTIONS[case]
  config = task_harness.write_config(str(tmp_path), task, bn_teacher, **extra)
  task_harness.run_in_process(config, str(tmp_path / "reference"), str(tmp_path / "ref.log"),
                              monkeypatch)
  log = str(tmp_path / "chain.log")
  stopped = task_harness.launch(config, str(tmp_path / "chain"), f"{log}::{point}:{n}:term")
  assert stopped.returncode == preemption.EXIT_CODE, stopped.stderr[-3000:]
  lines = _lines(stopped.stderr)
  assert len(lines) == 1 and lines[0].startswith("preempted by SIGTERM: "), lines
  assert said in lines[0] and lines[0].endswith("run the same command again to resume")
  assert "preemption: SIGTERM received; stopping at the next safe point" in stopped.stdout
  if point == "train_step" and task != "study":
    work = str(tmp_path / "chain" / "work")
    assert checkpointing.Checkpointer(work, 3).latest_step() == n  # the step reached
  final = task_harness.launch(config, str(tmp_path / "chain"), log)
  assert final.returncode == 0, final.stderr[-3000:]
  expected = task_harness.products(str(tmp_path / "reference"))
  got = task_harness.products(str(tmp_path / "chain"))
  assert expected and sorted(got) == sorted(expected), set(got) ^ set(expected)
  for key, value in expected.items():
    assert got[key] == value, key


@pytest.mark.slow
def test_the_second_signal_is_configurable(bn_teacher, tmp_path):
  config = task_harness.write_config(str(tmp_path), "train_hl", bn_teacher)
  log = str(tmp_path / "a.log")
  stopped = task_harness.launch(config, str(tmp_path / "a"), f"{log}::train_step:4:usr1")
  assert stopped.returncode == preemption.EXIT_CODE, stopped.stderr[-3000:]
  assert _lines(stopped.stderr)[0].startswith("preempted by SIGUSR1: training stopped at step 4")
  # With no second signal, SIGUSR1 keeps its default action: the process dies of it, unsaved.
  log = str(tmp_path / "b.log")
  died = task_harness.launch(config, str(tmp_path / "b"), f"{log}::train_step:4:usr1",
                             "--config.preemption_signal=")
  assert died.returncode == -signal.SIGUSR1, died.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# A full disk: injected at the named fault points.


@pytest.mark.slow
def test_an_injected_full_disk_in_a_table_shard_is_one_line_and_the_rerun_resumes(
    bn_teacher, tmp_path, monkeypatch):
  config = task_harness.write_config(str(tmp_path), "relabel", bn_teacher)
  task_harness.run_in_process(config, str(tmp_path / "reference"), str(tmp_path / "ref.log"),
                              monkeypatch)
  log = str(tmp_path / "chain.log")
  full = task_harness.launch(config, str(tmp_path / "chain"), f"{log}::table_shard_write:3:enospc")
  assert full.returncode == 1, full.stderr[-3000:]
  lines = _lines(full.stderr)
  assert len(lines) == 1, lines
  table_dir = glob.glob(str(tmp_path / "chain" / "cache" / "tables"
                            / "*"))[0].removesuffix(".partial")
  # 10 images × 2 crops per shard, rows of the full format over 10 classes.
  assert lines[0].startswith(f"error: out of space in {table_dir}: shard 2 of the soft-label "
                             "table needs "), lines[0]
  assert " free. Free space there" in lines[0] and lines[0].endswith("resumes")
  assert not glob.glob(str(tmp_path / "chain" / "**" / "*.tmp"), recursive=True)
  assert not os.path.exists(os.path.join(table_dir, "header.json"))  # nothing under a final name
  final = task_harness.launch(config, str(tmp_path / "chain"), log)
  assert final.returncode == 0, final.stderr[-3000:]
  assert task_harness.products(str(tmp_path / "chain")) == task_harness.products(
      str(tmp_path / "reference"))


@pytest.mark.slow
def test_an_injected_full_disk_at_results_names_the_workdir(bn_teacher, tmp_path):
  config = task_harness.write_config(str(tmp_path), "train_hl", bn_teacher)
  log = str(tmp_path / "chain.log")
  full = task_harness.launch(config, str(tmp_path / "chain"), f"{log}::json_write:1:enospc")
  assert full.returncode == 1, full.stderr[-3000:]
  lines = _lines(full.stderr)
  work = str(tmp_path / "chain" / "work")
  assert len(lines) == 1 and lines[0].startswith(f"error: out of space in {work}: "), lines
  assert not os.path.exists(os.path.join(work, plan.RESULTS_FILE))
  assert not glob.glob(os.path.join(work, "*.tmp"))
  final = task_harness.launch(config, str(tmp_path / "chain"), log)
  assert final.returncode == 0 and os.path.exists(os.path.join(work, plan.RESULTS_FILE))


def test_full_disk_errors_are_recognised_in_orbax_form_and_not_for_device_memory():
  orbax = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "step/0" in OCDBT database at local file '
      '"/w/checkpoints/50.orbax-checkpoint-tmp/state/": Failed writing: "/w/'
      'checkpoints/50.orbax-checkpoint-tmp/state/d/e6": Failed to write 988428 bytes '
      "to file 20: No space left on device [os_error_code='28']")
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = orbax
  assert disk_space.is_full_disk(wrapped)
  assert disk_space.path_of(wrapped) == "/w/checkpoints/50.orbax-checkpoint-tmp/state/d/e6"
  assert disk_space.is_full_disk(OSError(28, "No space left on device"))
  assert not disk_space.is_full_disk(
      ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB"))
  error = disk_space.OutOfSpaceError("/w", 1_234_567, 2_000, "a checkpoint")
  assert str(error) == ("out of space in /w: a checkpoint needs 1,234,567 bytes (1.2 MB), "
                        "2,000 bytes (2.0 kB) free. Free space there (or point --workdir / "
                        "config.cache_dir at a larger disk); a rerun of the same command resumes")


# ---------------------------------------------------------------------------------------------
# A real small filesystem (where this process may mount a tmpfs).


@pytest.fixture
def small_fs(tmp_path):
  """A mount function for tmpfs of a given size under tmp_path; skips where mounting is denied."""
  mounted = []

  def mount(size_bytes: int) -> str:
    path = str(tmp_path / f"fs{len(mounted)}")
    os.makedirs(path)
    try:
      done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", path],
                            capture_output=True, text=True, check=False)
      reason = done.stderr.strip() if done.returncode else ""
    except FileNotFoundError:
      reason = "no mount command"
    if reason:
      pytest.skip(f"cannot mount a tmpfs here ({reason}); the injected ENOSPC tests cover the "
                  "fault points")
    mounted.append(path)
    return path

  yield mount
  for path in mounted:
    subprocess.run(["umount", path], check=False)


def test_checkpoints_that_cannot_fit_are_refused_before_the_first_save(small_fs):
  fs = small_fs(256 << 10)
  workdir = os.path.join(fs, "w")
  with pytest.raises(disk_space.OutOfSpaceError) as refused:
    plan.train(tiny_config(), workdir)
  error = refused.value
  assert error.directory == os.path.join(workdir, "checkpoints")
  assert error.free > 0 and error.needed > error.free
  assert error.needed % 3 == 0  # max_to_keep + 1 copies
  assert "3 checkpoint(s) of" in str(error)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == []


# tensorstore completes the abandoned writes on a closed event loop (main.py's log filters drop
# those reports; pytest has its own unraisable hook).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_disk_filling_mid_run_fails_at_a_save_and_the_rerun_resumes_bit_exactly(
    small_fs, tmp_path):
  config = tiny_config(budget_examples=16 * 12, checkpoint_every_steps=4)
  reference = str(tmp_path / "reference")
  plan.train(config, reference)
  fs = small_fs(2 << 20)
  workdir, filler = os.path.join(fs, "w"), os.path.join(fs, "filler")

  def fill_at_step_5(step):
    if step == 5:  # every free block, while step 4's save may still be writing
      fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
      try:
        while True:
          os.write(fd, bytes(4096))
      except OSError as e:
        assert e.errno == errno.ENOSPC
      finally:
        os.close(fd)

  with pytest.raises(disk_space.OutOfSpaceError) as full:
    plan.train(config, workdir, step_hook=fill_at_step_5)
  assert full.value.directory == os.path.join(workdir, "checkpoints")
  assert full.value.needed is not None and full.value.free < full.value.needed
  # What failed was never renamed into place: the last finished checkpoint is step 4's, or step
  # 1's (orbax saves a run's first step) where step 4's asynchronous save was still writing.
  latest = checkpointing.Checkpointer(workdir, 4).latest_step()
  assert latest in (1, 4)
  unfinished = os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp")
  os.remove(filler)
  resumed = plan.train(config, workdir).results
  assert resumed["resumed_from_step"] == latest
  assert not glob.glob(unfinished)  # the resumed run, owning the workdir, removed it
  same = jax.tree.map(np.array_equal,
                      checkpointing.Checkpointer(workdir, 4).restore_variables(),
                      checkpointing.Checkpointer(reference, 4).restore_variables())
  assert all(jax.tree.leaves(same))
  shutil.rmtree(workdir)


def test_a_table_that_cannot_fit_is_refused_before_relabelling(small_fs, teacher_dir):
  fs = small_fs(16 << 10)
  config = tiny_config(regime="sl", teacher_workdir=teacher_dir, crops_per_image=200,
                       label_format="full")
  with pytest.raises(disk_space.OutOfSpaceError, match=r"the soft-label table's 1 unwritten "
                     r"shard\(s\) needs [\d,]+ bytes"):
    plan.relabel_table(config, os.path.join(fs, "w"))
  assert not glob.glob(os.path.join(fs, "w", "**", "shard*"), recursive=True)


# ---------------------------------------------------------------------------------------------
# The launch script passes signals through and requeues on exit 75.

_FAKE_SRUN = '''#!/usr/bin/env bash
# srun stand-in: one task on this machine (no --distributed), with this test's interpreter.
args=()
for arg in "$@"; do
  case "$arg" in
    --kill-on-bad-exit=*|--distributed) ;;
    .venv/bin/python) args+=("{python}") ;;
    *) args+=("$arg") ;;
  esac
done
exec "${{args[@]}}"
'''


@pytest.mark.slow
def test_the_slurm_script_passes_usr1_on_and_requeues_a_saved_run(bn_teacher, tmp_path):
  config = task_harness.write_config(str(tmp_path), "train_hl", bn_teacher)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(_FAKE_SRUN.format(python=sys.executable))
  (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/scontrol\n')
  for name in ("srun", "scontrol"):
    os.chmod(bin_dir / name, 0o755)
  env = {
      **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
      "SLURM_JOB_ID": "4242",
      "SLURM_SUBMIT_DIR": task_harness.REPO,
      "JAX_PLATFORMS": "cpu"
  }
  work = str(tmp_path / "work")
  script = [
      os.path.join(task_harness.REPO, "launch", "gpu_slurm.sh"), config, work,
      "--config.log_every_steps=1"
  ]
  launched = subprocess.Popen(script, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
  for line in launched.stdout:  # SLURM's --signal=USR1@N goes to the batch script's steps
    if line.startswith("step 3/"):
      launched.send_signal(signal.SIGUSR1)
      break
  out, err = launched.communicate(timeout=300)
  assert launched.returncode == preemption.EXIT_CODE, err[-3000:]
  assert _lines(err)[-1].startswith("preempted by SIGUSR1: training stopped at step ")
  assert "requeueing job 4242" in out
  assert (tmp_path / "scontrol").read_text() == "requeue 4242\n"
  # The requeued job resumes and ends normally: no second requeue.
  done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert (tmp_path / "scontrol").read_text() == "requeue 4242\n"
  with open(os.path.join(work, plan.RESULTS_FILE)) as f:
    assert json.load(f)["resumed_from_step"] >= 3


# ---------------------------------------------------------------------------------------------
# What main prints: the expected library noise of a full disk and a preemption is filtered.


def _record(name, pathname, message, level=logging.ERROR):
  return logging.LogRecord(name, level, pathname, 1, message, None, None)


def test_full_disk_and_preemption_notices_are_filtered_and_nothing_else():
  orbax = f"{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}future.py"
  full = "raised an exception: RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"
  notices = log_filters._ExpectedNotices()  # pylint: disable=protected-access
  assert not notices.filter(_record("absl", orbax, full))
  assert not notices.filter(_record("asyncio", "/usr/lib/asyncio/base_events.py", full))
  assert not notices.filter(
      _record("absl", orbax, "[process=0] Reached preemption sync point, step=44", logging.WARNING))
  # Another orbax error, a full-disk message from elsewhere, a warning: they all still show.
  assert notices.filter(_record("absl", orbax, "RESOURCE_EXHAUSTED: Out of memory"))
  assert notices.filter(_record("absl", "/work/hardlabel_jax/relabel.py", full))
  assert notices.filter(_record("absl", orbax, full, logging.WARNING))


def test_only_tensorstores_closed_loop_callbacks_are_dropped_from_unraisable_errors():
  seen = []
  hook = log_filters._quiet_unraisable_hook(seen.append)  # pylint: disable=protected-access
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    from_test = e
  # Raised here, the traceback has this test's frame: it is not tensorstore's callback.
  unraisable = types.SimpleNamespace(exc_type=RuntimeError, exc_value=from_test,
                                     exc_traceback=from_test.__traceback__, object=None)
  hook(unraisable)
  assert seen == [unraisable]
  # tensorstore's: the traceback starts in asyncio (called from C++).
  only_asyncio = from_test.__traceback__.tb_next
  hook(
      types.SimpleNamespace(exc_type=RuntimeError, exc_value=from_test, exc_traceback=only_asyncio,
                            object=None))
  assert seen == [unraisable]
  other = types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("other"),
                                exc_traceback=only_asyncio, object=None)
  hook(other)
  assert seen == [unraisable, other]
