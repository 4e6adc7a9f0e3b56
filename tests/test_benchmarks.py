"""Benchmarks: every `--quick` run writes the rows it promises, with positive rates."""

import json
import os

# The suite runs two pytest workers on two cores: OpenMP threads that spin while waiting make a
# PyTorch step 20× slower on oversubscribed cores. Set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from hardlabel_jax.benchmarks import pipeline  # pylint: disable=wrong-import-position
from hardlabel_jax.benchmarks import relabel  # pylint: disable=wrong-import-position
from hardlabel_jax.benchmarks import report  # pylint: disable=wrong-import-position
from hardlabel_jax.benchmarks import scaling  # pylint: disable=wrong-import-position
from hardlabel_jax.benchmarks import score  # pylint: disable=wrong-import-position
from hardlabel_jax.benchmarks import train_step  # pylint: disable=wrong-import-position


def _saved(path, returned):
  saved = json.loads(path.read_text())
  assert saved["rows"] == json.loads(json.dumps(returned["rows"]))  # the JSON is what was shown
  assert saved["environment"]["devices"] >= 1
  return saved


def test_train_step_quick(tmp_path):
  out = tmp_path / "train_step.json"
  saved = _saved(out, train_step.main(["--quick", "--out", str(out)]))
  cells = [(r["model"], r["regime"], r["batch"]) for r in saved["rows"]]
  assert cells == [("convnet_d3", regime, 16) for regime in train_step.REGIMES]
  for row in saved["rows"]:
    assert row["jax_examples_per_sec"] > 0 and row["jax_compile_seconds"] > 0
  assert set(saved["models"]) == set(train_step.MODELS)
  if train_step.torch_available():
    for row in saved["rows"]:
      assert row["torch_examples_per_sec"] > 0
      assert row["jax_over_torch"] == pytest.approx(row["jax_examples_per_sec"]
                                                    / row["torch_examples_per_sec"])
    for counts in saved["models"].values():  # the quick widths of both models
      assert counts["jax_params"] == counts["torch_params"]
  else:
    assert all(row["torch_examples_per_sec"] is None for row in saved["rows"])


def test_train_step_without_torch_reports_jax_only(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(train_step, "torch_available", lambda: False)
  out = tmp_path / "train_step.json"
  saved = _saved(out, train_step.main(["--quick", "--regimes", "hl", "--out", str(out)]))
  assert train_step.TORCH_MISSING in capsys.readouterr().out
  assert saved["torch"] is None and "torch_params" not in saved["models"]["convnet_d3"]
  (row,) = saved["rows"]
  assert row["jax_examples_per_sec"] > 0 and row["torch_examples_per_sec"] is None


def test_torch_twins_have_the_parameter_counts_of_the_jax_models():
  pytest.importorskip("torch")
  for name, width in train_step.DEFAULT_WIDTHS.items():
    counts = train_step.parameter_counts(name, width)
    assert counts["jax_params"] == counts["torch_params"], name
  assert train_step.parameter_counts("resnet18_cifar", 64)["torch_params"] == 11_220_132


@pytest.mark.parametrize("name,width", [("convnet_d3", 16), ("resnet18_cifar", 8)])
def test_torch_twins_compute_what_the_jax_models_compute(name, width):
  torch = pytest.importorskip("torch")
  import jax  # pylint: disable=g-import-not-at-top

  from hardlabel_jax import models  # pylint: disable=g-import-not-at-top
  from hardlabel_jax.benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
  model = models.create_model(name, 100, width=width)
  # Random values in the variables' shapes: one compile (the jitted apply), not two.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(
      lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32) * rng.choice([-0.1, 0.1], s.shape)
      .astype(np.float32), shapes)
  twin = torch_models.create_model(name, 100, width, 3, 32).train()
  torch_models.copy_jax_params(twin, variables["params"])
  # Train mode: BatchNorm normalises with the batch's statistics in both frameworks.
  expected = jax.jit(lambda v: model.apply(v, images, train=True, mutable=["batch_stats"])[0])(
      variables)
  with torch.no_grad():
    got = twin(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  assert np.abs(np.asarray(expected)).std() > 1e-2  # logits that tell networks apart
  np.testing.assert_allclose(got, np.asarray(expected), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("regime", train_step.REGIMES + train_step.OPTIONAL_REGIMES)
def test_torch_resnet_step_runs_every_regime(regime):
  pytest.importorskip("torch")
  batch = train_step.make_batch(regime, 4, (32, 32, 3), 100)
  step = train_step.TorchStep("resnet18_cifar", 8, regime, batch, 100)
  before = [p.detach().clone() for p in step.model.parameters()]
  loss, accuracy, grad_norm = (x.item() for x in step())
  assert np.isfinite(loss) and grad_norm > 0 and 0 <= accuracy <= 1
  assert any((p != b).any() for p, b in zip(step.model.parameters(), before, strict=True))


def test_pipeline_quick(tmp_path):
  out = tmp_path / "pipeline.json"
  saved = _saved(out, pipeline.main(["--quick", "--out", str(out)]))
  cells = [(r["stream"], r["num_workers"]) for r in saved["rows"]]
  assert cells == [(kind, workers) for kind in pipeline.KINDS for workers in (0, 1)]
  for row in saved["rows"]:
    assert row["crops_per_sec"] > 0 and row["step_examples_per_sec"] > 0
    assert row["bottleneck"] == ("yes"
                                 if row["crops_per_sec"] < row["step_examples_per_sec"] else "no")
  assert saved["table"]["rows"] == 100 * 2 and saved["hl_step"]["examples_per_sec"] > 0


def _steady_images(benchmark, settings, row):
  """Images a row's steady rate covers at least; checks the row's overall rate on the way."""
  if benchmark is relabel:
    per_shard = settings["positions_per_shard"]
    assert row["shards"] == -(-row["images"] // per_shard)
    assert row["images_per_sec"] == pytest.approx(row["images"] / row["wall_seconds"])
    return row["images"] - per_shard  # every shard after the first
  batch = settings["batch"]
  assert row["images_per_sec"] == pytest.approx(row["items"] / row["wall_seconds"])
  return (row["items"] // batch - 1) * batch  # every step after the first


@pytest.mark.parametrize("benchmark", [relabel, score], ids=["relabel", "score"])
def test_scaling_benchmarks_quick(tmp_path, benchmark):
  out = tmp_path / "scaling.json"
  saved = _saved(out, benchmark.main(["--quick", "--out", str(out)]))
  rows = saved["rows"]
  assert [r["images_per_class"] for r in rows] == list(scaling.QUICK_IMAGES_PER_CLASS)
  assert [r["images"] for r in rows] == [10 * n for n in scaling.QUICK_IMAGES_PER_CLASS]
  for row in rows:
    assert row["images_per_sec"] > 0 and row["wall_seconds"] > 0
    assert row["peak_rss_mb"] >= row["baseline_rss_mb"] > 0
    # The steady rate covers at least `steady_images` inside the run's wall time, so it can be no
    # lower than steady_images / wall (and is measured at every quick size).
    steady_images = _steady_images(benchmark, saved["settings"], row)
    assert steady_images > 0 and row["steady_images_per_sec"] is not None
    assert row["steady_images_per_sec"] * row["wall_seconds"] >= steady_images * (1 - 1e-9)
  assert saved["summary"]["images_ratio"] == 4.0 and saved["summary"]["peak_rss_ratio"] > 0


def test_table_is_aligned_and_shows_missing_values():
  columns = (("name", "name", report.fmt_text), ("rate", "ex/s", report.fmt_number),
             ("ratio", "ratio", report.fmt_ratio))
  rows = [{"name": "hl", "rate": 1234.5, "ratio": 2.0}, {"name": "sl_kd"}]
  lines = report.format_table(rows, columns).splitlines()
  assert len({len(line) for line in lines}) == 1
  assert lines[2].split() == ["hl", "1,234", "2.00×"] and lines[3].split() == ["sl_kd", "-", "-"]


def test_step_profile_quick_times_every_part_in_both_frameworks(tmp_path):
  pytest.importorskip("torch")
  from hardlabel_jax.benchmarks import step_profile  # pylint: disable=g-import-not-at-top
  out = tmp_path / "step_profile.json"
  saved = _saved(out, step_profile.main(["--quick", "--out", str(out)]))
  assert [r["part"] for r in saved["rows"]] == [
      "forward, norm=instance", "forward+backward, norm=instance", "forward, norm=none",
      "forward+backward, norm=none", "instance norm 32×32, forward+backward (autodiff)",
      "instance norm 32×32, forward+backward (custom VJP)", "one conv 16×16, forward",
      "one conv 16×16, input+kernel grads"
  ]
  # One PyTorch GroupNorm reference for both JAX norm rows.
  assert saved["rows"][4]["torch_ms"] == saved["rows"][5]["torch_ms"]
  for row in saved["rows"]:
    assert row["jax_ms"] > 0 and row["torch_ms"] > 0
    assert row["jax_over_torch_time"] == pytest.approx(row["jax_ms"] / row["torch_ms"])


def test_cell_steady_rate_is_the_logged_intervals_compilation_and_phase_switches_left_out(tmp_path):
  from hardlabel_jax.benchmarks import cell  # pylint: disable=g-import-not-at-top
  rows = [{
      "step": 1,
      "loss": 2.0
  }, {
      "step": 11,
      "loss": 1.0,
      "examples_per_sec": 100.0
  }, {
      "step": 21,
      "loss": 1.0,
      "examples_per_sec": 50.0
  }, {
      "step": 31,
      "loss": 1.0,
      "examples_per_sec": 200.0
  }, {
      "step": 31,
      "test_top1": 0.5
  }]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  # batch 10: 100 examples in 1 s, 100 in 2 s, 100 in 0.5 s.
  assert cell.steady_rate(str(tmp_path), 10) == pytest.approx(300 / 3.5)
  # Step 15 starts a phase (its step compiles): the interval 11..21 is left out.
  assert cell.steady_rate(str(tmp_path), 10, [15]) == pytest.approx(200 / 1.5)


@pytest.mark.slow
def test_cell_quick_runs_every_regime_against_its_step(tmp_path):
  from hardlabel_jax.benchmarks import cell  # pylint: disable=g-import-not-at-top
  out = tmp_path / "cell.json"
  saved = _saved(out, cell.main(["--quick", "--workdir",
                                 str(tmp_path / "runs"), "--out",
                                 str(out)]))
  assert [r["regime"] for r in saved["rows"]] == ["hl", "sl", "sl_kd", "hald"]
  for row in saved["rows"]:
    assert row["step_examples_per_sec"] > 0
    for backend in ("host", "device"):  # both inputs, side by side
      assert row[f"{backend}_examples_per_sec"] > 0
      assert row[f"{backend}_over_step"] == pytest.approx(row[f"{backend}_examples_per_sec"]
                                                          / row["step_examples_per_sec"])
    assert row["device_over_host"] == pytest.approx(row["device_examples_per_sec"]
                                                    / row["host_examples_per_sec"])
  assert set(saved["rows"][3]["step_phases"]) == {"soft_examples_per_sec", "hard_examples_per_sec"}
