"""Each train step compiles once per run: no retrace across steps, epochs or HALD phase switches."""

import functools

from hardlabel_jax import plan
from hardlabel_jax import train_steps
from hardlabel_jax import trainer
from helpers import tiny_config


def _count_traces(monkeypatch, *names):
  """Replaces train_steps functions with wrappers counting their Python executions (= traces)."""
  traces = {name: 0 for name in names}
  for name in names:
    original = getattr(train_steps, name)

    @functools.wraps(original)
    def counted(*args, _name=name, _original=original, **kwargs):
      traces[_name] += 1
      return _original(*args, **kwargs)

    monkeypatch.setattr(train_steps, name, counted)
  return traces


def test_hl_run_traces_its_step_and_eval_once(monkeypatch, tmp_path):
  traces = _count_traces(monkeypatch, "hl_train_step", "eval_step")
  results = plan.train(tiny_config(budget_examples=16 * 25), str(tmp_path))
  assert results.results[
      "steps"] == 25 and results.results["epochs"] > 3  # several epochs, 5 eval batches
  assert traces == {"hl_train_step": 1, "eval_step": 1}


def test_hald_traces_one_step_per_phase_kind_across_many_switches(monkeypatch, tmp_path,
                                                                  teacher_dir):
  traces = _count_traces(monkeypatch, "sl_train_step", "hl_train_step")
  config = tiny_config(regime="hald", hald_schedule="alt:1", teacher_workdir=teacher_dir,
                       crops_per_image=2, budget_examples=16 * 30)
  results = plan.train(config, str(tmp_path))
  phases = trainer.step_phases(config, trainer.Budget(16 * 30, 16, 100))
  switches = sum(
      phases.of_step(s) != phases.of_step(s + 1) for s in range(results.results["steps"] - 1))
  assert switches >= 3  # soft, hard, soft, hard, … epoch by epoch
  assert traces == {"sl_train_step": 1, "hl_train_step": 1}


def test_online_teacher_step_traces_once(monkeypatch, tmp_path, teacher_dir):
  traces = _count_traces(monkeypatch, "kd_train_step")
  config = tiny_config(regime="sl_kd", teacher_workdir=teacher_dir, budget_examples=16 * 20)
  plan.train(config, str(tmp_path))
  assert traces == {"kd_train_step": 1}
