"""Local semantic drift of few-crop soft labels (DESIGN.md §5), as pure functions plus writers.

For an image with teacher prediction `p_img` on the whole (centre) view and soft labels
`p_1 … p_m` on its first `m` stored crops, drift at `m` crops is

  * `kl`: `KL(p_img ‖ mean_j p_j)`, how far the crop average a student learns from is from
    what the teacher says about the whole image (0 when they agree);
  * `crop_mismatch`: the fraction of the `m` crops whose teacher argmax is not the image label;
  * `mean_label_mismatch`: whether the argmax of the crop average is not the image label.

HALD's claim is that drift is worst with few crops; `drift_curve` measures it.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from hardlabel_jax import config_schema
from hardlabel_jax import inference
from hardlabel_jax import metrics_log
from hardlabel_jax import run_data
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax.data import pipeline

CSV_COLUMNS = ("crops_per_image", "kl", "kl_std", "crop_mismatch", "mean_label_mismatch", "images")


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def image_drift_stats(crop_log_probs: np.ndarray, image_log_probs: np.ndarray, labels: np.ndarray,
                      crop_counts: Sequence[int]) -> dict[str, np.ndarray]:
  """Per-image drift statistics, each `[images, len(crop_counts)]`.

  `crop_log_probs` is `[images, slots, classes]` (log-probabilities of the stored crops in slot
  order), `image_log_probs` `[images, classes]`, `labels` `[images]`.
  """
  crop_log_probs = np.asarray(crop_log_probs, np.float64)
  image_log_probs = _log_softmax(np.asarray(image_log_probs, np.float64))
  labels = np.asarray(labels)
  images, slots, _ = crop_log_probs.shape
  if image_log_probs.shape != (images, crop_log_probs.shape[-1]) or labels.shape != (images,):
    raise ValueError(f"shapes disagree: crops {crop_log_probs.shape}, image "
                     f"{image_log_probs.shape}, labels {labels.shape}")
  if max(crop_counts) > slots or min(crop_counts) < 1:
    raise ValueError(f"crop counts {tuple(crop_counts)} must lie in [1, {slots}]")
  probs = np.exp(crop_log_probs)
  crop_wrong = probs.argmax(-1) != labels[:, None]  # [images, slots]
  image_probs = np.exp(image_log_probs)
  out = {"kl": [], "crop_mismatch": [], "mean_label_mismatch": []}
  for m in crop_counts:
    mean = probs[:, :m].mean(axis=1)
    log_mean = np.log(np.maximum(mean, 1e-30))
    out["kl"].append(np.sum(image_probs * (image_log_probs - log_mean), axis=-1))
    out["crop_mismatch"].append(crop_wrong[:, :m].mean(axis=1))
    out["mean_label_mismatch"].append((mean.argmax(-1) != labels).astype(np.float64))
  return {k: np.stack(v, axis=1) for k, v in out.items()}


def drift_curve(stats: dict[str, np.ndarray], crop_counts: Sequence[int]) -> list[dict]:
  """Averages per-image statistics into one row per crop count (the CSV rows)."""
  rows = []
  for j, m in enumerate(crop_counts):
    kl = stats["kl"][:, j]
    rows.append({
        "crops_per_image": int(m),
        "kl": float(kl.mean()),
        "kl_std": float(kl.std()),
        "crop_mismatch": float(stats["crop_mismatch"][:, j].mean()),
        "mean_label_mismatch": float(stats["mean_label_mismatch"][:, j].mean()),
        "images": int(kl.shape[0]),
    })
  return rows


def write_csv(rows: list[dict], path: str) -> None:
  """Writes the curve as CSV (atomically)."""
  metrics_log.write_csv_atomic(path, rows, CSV_COLUMNS)


def plot(rows: list[dict], path: str, title: str) -> None:
  """Two panels against crops per image (log2 axis): KL to the whole-image label, mismatch rates."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  m = [r["crops_per_image"] for r in rows]
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  left.errorbar(m, [r["kl"] for r in rows], yerr=[r["kl_std"] for r in rows], marker="o", capsize=3)
  left.set_ylabel("KL(whole image ‖ crop average)")
  right.plot(m, [r["crop_mismatch"] for r in rows], marker="o", label="crop argmax ≠ label")
  right.plot(m, [r["mean_label_mismatch"] for r in rows], marker="s",
             label="crop-average argmax ≠ label")
  right.set_ylabel("fraction")
  right.legend(fontsize=8)
  for axis in (left, right):
    axis.set_xscale("log", base=2)
    axis.set_xticks(m, [str(v) for v in m])
    axis.set_xlabel("crops per image")
    axis.grid(alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)


def _crop_grid(outputs, start: int, stop: int, slots: int, num_classes: int) -> np.ndarray:
  """`[stop − start, slots, C]` log-probabilities of pool positions [start, stop) from outputs
  that carry each crop's grid `row` (position · slots + slot)."""
  grid = np.zeros((stop - start, slots, num_classes), np.float32)
  for out in outputs:
    position, slot = np.divmod(out["row"], slots)
    grid[position - start, slot] = out["log_probs"]
  return grid


def measure(config: ml_collections.ConfigDict, workdir: str, data: run_data.RunData,
            teacher: teacher_lib.Teacher, mesh: jax.sharding.Mesh) -> list[dict]:
  """Drift of the teacher's crop labels on the pool; writes CSV, JSON and PNG to `workdir`."""
  counts = sorted({int(m) for m in config.drift_crop_counts})
  whole_image = inference.log_probs_fn(teacher.model, mesh, config.temperature)
  image_log_probs = inference.pool_center_outputs(whole_image, teacher.variables, data, config,
                                                  mesh)["log_probs"]
  slots = counts[-1]
  # The crops a table of `slots` crops per image stores (its CutMix within relabel batches too).
  example = run_data.table_crop_example(config, data, slots=slots)
  device = run_data.device_crops(data, mesh)
  labels = np.asarray(data.train.labels())[data.pool_ids]
  loading = pipeline.LoaderOptions.from_config(config)
  num_classes = data.train.info.num_classes
  if config_schema.resolved_teacher_bn_mode(config) == "batch_stats":
    # BSSL labels depend on their relabel batch, drawn from the whole pool as a table's are
    # (relabel_batches.group_rows over `slots` relabel epochs): one pass over every crop.
    predict = inference.bssl_log_probs_fn(teacher.model, mesh, config.temperature,
                                          config.relabel_batch_size)
    outputs = inference.bssl_crop_outputs(example, slots=slots,
                                          group_size=config.relabel_batch_size,
                                          seed=config.crop_seed, predict=predict,
                                          variables=teacher.variables, mesh=mesh,
                                          batch_size=config.eval_batch_size, loading=loading,
                                          device=device)
    crop_log_probs = _crop_grid(outputs, 0, len(data.pool_ids), slots, num_classes)
    stats = [image_drift_stats(crop_log_probs, image_log_probs, labels, counts)]
  else:
    predict = inference.log_probs_fn(teacher.model, mesh, config.temperature)
    # One block of whole images at a time: per-image statistics only, memory independent of n.
    block = max(1, config.eval_batch_size // slots)
    stats = []
    for start in range(0, len(data.pool_ids), block):
      stop = min(start + block, len(data.pool_ids))
      outputs = inference.crop_outputs(example, slots=slots, first_row=start * slots,
                                       num_rows=(stop - start) * slots, predict=predict,
                                       variables=teacher.variables, mesh=mesh,
                                       batch_size=config.eval_batch_size, loading=loading,
                                       device=device)
      crop_log_probs = _crop_grid(outputs, start, stop, slots, num_classes)
      stats.append(
          image_drift_stats(crop_log_probs, image_log_probs[start:stop], labels[start:stop],
                            counts))
  merged = {k: np.concatenate([s[k] for s in stats]) for k in stats[0]}
  rows = drift_curve(merged, counts)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    write_csv(rows, os.path.join(workdir, "drift.csv"))
    teacher_top1 = float(np.mean(image_log_probs.argmax(-1) == labels))
    summary = {
        "rows": rows,
        "teacher": teacher.describe(),
        "pool_size": len(data.pool_ids),
        "teacher_pool_top1_whole_image": teacher_top1,
        "temperature": config.temperature,
        "crop_seed": config.crop_seed,
        "dataset": data.train.info.name,
        "config": json.loads(config.to_json_best_effort())
    }
    metrics_log.write_json_atomic(os.path.join(workdir, "drift.json"), summary)
    plot(
        rows, os.path.join(workdir, "drift.png"),
        f"local semantic drift: {data.train.info.name}, {len(data.pool_ids)} images, "
        f"teacher {teacher.describe()['model']}, T={config.temperature:g}")
  for row in rows:
    metrics_log.log_line(
        f"{row['crops_per_image']:>4} crops/image: KL {row['kl']:.4f} ± {row['kl_std']:.4f}, "
        f"crop argmax ≠ label {row['crop_mismatch']:.3f}, crop-average argmax ≠ label "
        f"{row['mean_label_mismatch']:.3f}")
  return rows
