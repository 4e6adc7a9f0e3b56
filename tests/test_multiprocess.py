"""Two processes × 4 CPU devices end like one process × 8: HL and SL training and the relabel.

The processes are real (`python -m hardlabel_jax.main --distributed`, coordinator on 127.0.0.1,
CPU collectives over gloo); each reads only its own slice of every global batch.
"""

import filecmp
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from hardlabel_jax import checkpointing
from hardlabel_jax import faults
from hardlabel_jax import plan
from hardlabel_jax import preemption
from hardlabel_jax.soft_labels import table as table_lib
from helpers import tiny_config

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
CONFIG = f'''
import sys
sys.path.insert(0, {TESTS_DIR!r})
from helpers import tiny_config


def get_config(arg):
  return tiny_config(regime=arg, budget_examples=16 * 6, checkpoint_every_steps=3,
                     **({{"crops_per_image": 2}} if arg == "sl" else {{}}))
'''


def _config(regime, **overrides):
  # Stored crops per image only where a table is read (an HL run refuses the unread field).
  table = {"crops_per_image": 2} if regime == "sl" else {}
  return tiny_config(
      regime=regime, **{
          "budget_examples": 16 * 6,
          "checkpoint_every_steps": 3,
          **table,
          **overrides
      })


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(config_file, regime, workdir, *overrides, process_env=({}, {}),
                       returncode=0):
  port = _free_port()
  env = {
      **os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
      "JAX_PLATFORMS": "cpu"
  }
  commands = [[
      sys.executable, "-m", "hardlabel_jax.main", f"--config={config_file}:{regime}",
      f"--workdir={workdir}", "--distributed", f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2", f"--process_id={i}", *overrides
  ] for i in range(2)]
  processes = [
      subprocess.Popen(c, cwd=REPO, env={
          **env,
          **extra
      }, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for c, extra in zip(commands, process_env, strict=True)
  ]
  outputs = []
  for process in processes:
    try:
      outputs.append(process.communicate(timeout=400)[0])
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise
  for i, (process, output) in enumerate(zip(processes, outputs, strict=True)):
    assert process.returncode == returncode, f"process {i} ended {process.returncode}:\n" \
        f"{output[-4000:]}"
  return outputs


def _variables(workdir):
  checkpointer = checkpointing.Checkpointer(workdir, save_every_steps=1)
  try:
    return checkpointer.restore_variables()
  finally:
    checkpointer.close()


def _assert_same_parameters(a, b):
  leaves_a, leaves_b = jax.tree.leaves(_variables(a)), jax.tree.leaves(_variables(b))
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b, strict=True):
    # The 8-way gradient all-reduce runs over gloo instead of in one process: the sum order may
    # differ in the last bit, nothing more.
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _files(directory):
  return sorted(
      os.path.relpath(os.path.join(root, name), directory)
      for root, _, names in os.walk(directory)
      for name in names)


@pytest.mark.slow
def test_two_processes_train_and_relabel_like_one_process_with_eight_devices(tmp_path):
  assert jax.device_count() == 8
  config_file = tmp_path / "two_process_config.py"
  config_file.write_text(CONFIG)
  single, multi = tmp_path / "one_process", tmp_path / "two_processes"

  hl = plan.train(_config("hl"), str(single / "hl"))
  outputs = _run_two_processes(config_file, "hl", multi / "hl")
  assert "on 8 devices" in outputs[0] and "on 8 devices" in outputs[1]
  _assert_same_parameters(single / "hl", multi / "hl")
  with open(multi / "hl" / "results.json") as f:
    multi_hl = json.load(f)
  assert multi_hl["process_count"] == 2 and multi_hl["device_count"] == 8
  assert multi_hl["test_top1"] == pytest.approx(hl.results["test_top1"], abs=1e-3)

  # SL on the single-process teacher: the table is labelled by both processes' devices (process 0
  # writes it), then replayed.
  teacher = str(single / "hl")
  plan.train(_config("sl", teacher_workdir=teacher), str(single / "sl"))
  _run_two_processes(config_file, "sl", multi / "sl", f"--config.teacher_workdir={teacher}")
  tables = [d / "tables" for d in (single / "sl", multi / "sl")]
  assert _files(tables[0]) == _files(tables[1]) and _files(tables[0])
  match, mismatch, errors = filecmp.cmpfiles(tables[0], tables[1], _files(tables[0]), shallow=False)
  assert not mismatch and not errors, mismatch
  _assert_same_parameters(single / "sl", multi / "sl")

  # The same SL run with the pool on every process's devices and the crops made there: each
  # process places the pool on its own devices and sends its rows' crop fields in one packed
  # transfer; the table's rows and the weights are those of the host-cropped single process.
  _run_two_processes(config_file, "sl", multi / "sl_device", f"--config.teacher_workdir={teacher}",
                     "--config.crop_backend=device")
  (host_table,) = [t for t in _table_dirs(single / "sl")]
  (device_table,) = [t for t in _table_dirs(multi / "sl_device")]
  host_rows, device_rows = (_all_rows(t) for t in (host_table, device_table))
  for name in host_rows.dtype.names:
    np.testing.assert_array_equal(device_rows[name], host_rows[name], err_msg=name)
  assert table_lib.SoftLabelTable.open(device_table).spec.crop_spec["resampler"] == "device_crops"
  _assert_same_parameters(single / "sl", multi / "sl_device")


def _table_dirs(workdir):
  root = workdir / "tables"
  return [str(root / name) for name in sorted(os.listdir(root))]


def _all_rows(directory):
  table = table_lib.SoftLabelTable.open(directory)
  positions = np.arange(table.num_positions).repeat(table.spec.slots_per_image)
  slots = np.tile(np.arange(table.spec.slots_per_image), table.num_positions)
  return table.gather(positions, slots)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_the_rerun_matches(tmp_path):
  # JAX's preemption sync manager (the coordination service catches SIGTERM) picks the step:
  # every process saves it and exits 75; started again, they end as one uninterrupted process.
  config_file = tmp_path / "two_process_config.py"
  config_file.write_text(CONFIG)
  single, multi = tmp_path / "one_process", tmp_path / "two_processes"
  # Long enough for the notice to reach the other process (the service relays it in about 0.3 s).
  steps = 60
  plan.train(_config("hl", budget_examples=16 * steps), str(single))
  term = {faults.ENV: f"{tmp_path / 'faults.log'}::train_step:2:term"}
  budget = f"--config.budget_examples={16 * steps}"
  outputs = _run_two_processes(config_file, "hl", multi, budget, process_env=({}, term),
                               returncode=preemption.EXIT_CODE)
  stopped = re.search(
      r"preempted by SIGTERM: training stopped at step (\d+) of 60, checkpoint "
      r"\1 saved", outputs[0])
  assert stopped, outputs[0][-3000:]
  step = int(stopped.group(1))
  assert 2 < step < steps  # after the step the notice came in, before the end
  assert "Reached preemption sync point" not in outputs[0]  # our one line says it
  checkpointer = checkpointing.Checkpointer(str(multi), save_every_steps=3)
  assert checkpointer.latest_step() == step  # saved there, on the interval (3) or not
  checkpointer.close()
  _run_two_processes(config_file, "hl", multi, budget)
  _assert_same_parameters(single, multi)
