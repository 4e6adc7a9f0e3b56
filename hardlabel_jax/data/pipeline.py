"""Grain pipelines: a training stream of crops over a pool of example ids, and evaluation batches.

Everything is index-based (as Grain recommends): the element at global position `g` of the
training stream is a pure function of `(seed, g)`, so the stream is identical for any number of
worker processes or hosts, and the iterator state that orbax checkpoints is just a position.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

from absl import flags
import grain
import numpy as np

from hardlabel_jax.data import crops
from hardlabel_jax.data import relabel_batches
from hardlabel_jax.data.source import ImageSource


def epoch_shuffle_seed(seed: int, epoch: int) -> int:
  """A 32-bit seed for the permutation of one epoch, derived from the run seed."""
  return int(np.random.SeedSequence([seed, epoch, 0x5EED]).generate_state(1)[0] >> 1)


@functools.lru_cache(maxsize=4)
def epoch_permutation(pool_size: int, seed: int, epoch: int) -> np.ndarray:
  """The pool order of one epoch: a pure function of (pool size, seed, epoch), read-only.

  One NumPy permutation per epoch, cached, rather than Grain's `index_shuffle` per element:
  on the small pools this library trains on, `index_shuffle` cost ~0.8 ms an element (100
  images) and was most of the input pipeline's time. A pool of 1.3 M ids costs ~10 MB a cached
  epoch; a handful of epochs are cached (a step may straddle two).
  """
  order = np.random.default_rng(epoch_shuffle_seed(seed, epoch)).permutation(pool_size)
  order.setflags(write=False)
  return order


@dataclasses.dataclass(frozen=True)
class EpochShuffle:
  """Global stream position -> (pool position, epoch): a fresh permutation every epoch."""

  pool_size: int
  seed: int

  def __call__(self, position: int) -> tuple[int, int]:
    epoch, offset = divmod(int(position), self.pool_size)
    return int(epoch_permutation(self.pool_size, self.seed, epoch)[offset]), epoch

  def many(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`self(position)` of every position: pool positions and epochs, int64 arrays."""
    epochs, offsets = np.divmod(np.asarray(positions, np.int64), self.pool_size)
    pool_positions = np.empty_like(offsets)
    for epoch in np.unique(epochs):
      at = epochs == epoch
      pool_positions[at] = epoch_permutation(self.pool_size, self.seed, int(epoch))[offsets[at]]
    return pool_positions, epochs


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """uint8 pixels -> float32 `(x/255 - mean) / std` per channel."""

  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __call__(self, image: np.ndarray) -> np.ndarray:
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    return (image.astype(np.float32) / 255.0 - mean) / std


# The crop metadata of `CropExample.crop_fields` that stays on the host in training batches.
DEVICE_HOST_METADATA = ("box", "flip", "partner_id")


@dataclasses.dataclass(frozen=True)
class CropExample:
  """(pool position, slot) -> a normalised training crop with its label(s)."""

  source: ImageSource
  pool_ids: np.ndarray
  spec: crops.CropSpec
  seed: int
  normalizer: Normalizer
  # A table's crops CutMixed within their relabel batch (HALD's / FKD's relabel): partner, box and
  # λ per (position, slot) from the plan instead of a partner drawn per crop from the pool.
  cutmix_plan: relabel_batches.CutmixPlan | None = None
  # Crops made on the devices (data/device_pool.py): an element is the crop's fields (what
  # `device_crops.crop_batch` needs, the labels and the crop metadata), never its pixels.
  on_device: bool = False

  def _planned_cutmix(self, params: crops.CropParams, pool_position: int,
                      slot: int) -> crops.CropParams:
    """`params` with the CutMix of its relabel batch (the plan covers the table's slots only)."""
    plan = self.cutmix_plan
    if slot >= plan.partner_position.shape[1]:
      raise ValueError(f"slot {slot} is beyond the {plan.partner_position.shape[1]} relabel "
                       "epochs the CutMix plan covers")
    top, left, height, width = (int(v) for v in plan.cut_box[pool_position, slot])
    return dataclasses.replace(params, partner_position=int(plan.partner_position[pool_position,
                                                                                  slot]),
                               cut_top=top, cut_left=left, cut_height=height, cut_width=width,
                               mix_lambda=float(plan.mix_lambda[pool_position, slot]))

  def raw_crop(self, pool_position: int,
               slot: int) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
    """The uint8 crop of a pool example at `slot`, its label fields and its stored metadata."""
    example_id = int(self.pool_ids[pool_position])
    record = self.source[example_id]
    # With a plan the per-crop partner draw is not made (CutMix has its own random stream, so the
    # box and flip are the same either way); the plan's partner replaces it.
    planned = self.cutmix_plan is not None
    pixels, params, boxed_hw = crops.crop_image(record["image"], self.seed, example_id, slot,
                                                self.spec,
                                                pool_size=0 if planned else len(self.pool_ids))
    if planned:
      params = self._planned_cutmix(params, pool_position, slot)
    partner_label, partner_id = int(record["label"]), -1
    if params.partner_position >= 0:
      partner_id = int(self.pool_ids[params.partner_position])
      partner = self.source[partner_id]
      # The partner's own training crop at this slot (its own patch shuffle, box and flip), as
      # CutMix over a batch of already augmented images mixes in the official code.
      partner_pixels, _, _ = crops.crop_image(partner["image"], self.seed, partner_id, slot,
                                              dataclasses.replace(self.spec, cutmix_alpha=0.0))
      pixels = crops.paste_cutmix(pixels, partner_pixels, params)
      partner_label = int(partner["label"])
    fields = {
        "label": np.int32(record["label"]),
        "partner_label": np.int32(partner_label),
        "mix_lambda": np.float32(params.mix_lambda),
        "id": np.int64(example_id),
        "slot": np.int32(slot),
    }
    metadata = {
        "box": params.box_fractions(boxed_hw),
        "flip": np.uint8(params.flip),
        "partner_id": np.int32(partner_id),
        "cut_box": np.array([params.cut_top, params.cut_left, params.cut_height, params.cut_width],
                            np.int32),
    }
    return pixels, fields, metadata

  def crop_fields(self, pool_position: int, slot: int) -> dict[str, np.ndarray]:
    """`raw_crop`'s label fields and metadata, and what `device_crops.crop_batch` makes its
    pixels from, from the same draws and without touching a pixel.

    Boxes are (top, left, height, width) pixels of the patch-shuffled image; `pool_index` and
    `partner_index` (-1: no CutMix) are pool positions, the rows of a device pool (which holds
    the pool's images in pool order); the patch orders are the identity at shuffle factor 1.
    """
    factor = self.spec.shuffle_factor

    def crop_of(example_id: int, image_hw: tuple[int, int], spec: crops.CropSpec,
                pool_size: int) -> tuple[crops.CropParams, tuple[int, int], np.ndarray, np.ndarray]:
      # As crops.crop_image: the patch orders, then the box in the shuffled image's size.
      boxed_hw = crops.shuffled_hw(image_hw, factor)
      params = crops.crop_params(self.seed, example_id, slot, boxed_hw, spec, pool_size)
      orders = (crops.patch_orders(self.seed, example_id, slot, factor) if factor > 1 else
                (np.arange(factor), np.arange(factor)))
      return params, boxed_hw, *(np.asarray(order, np.int32) for order in orders)

    example_id = int(self.pool_ids[pool_position])
    record = self.source[example_id]
    planned = self.cutmix_plan is not None
    pool_size = 0 if planned else len(self.pool_ids)
    image_hw = record["image"].shape[:2]
    params, boxed_hw, column_order, row_order = crop_of(example_id, image_hw, self.spec, pool_size)
    if planned:
      params = self._planned_cutmix(params, pool_position, slot)
    partner_label, partner_id = int(record["label"]), -1
    partner_box, partner_flip = np.zeros(4, np.int32), np.uint8(0)
    partner_columns = partner_rows = np.arange(factor, dtype=np.int32)
    if params.partner_position >= 0:
      partner_id = int(self.pool_ids[params.partner_position])
      partner = self.source[partner_id]
      # The partner's own training crop at this slot, as raw_crop pastes it.
      own_crop_spec = dataclasses.replace(self.spec, cutmix_alpha=0.0)
      partner_params, _, partner_columns, partner_rows = crop_of(partner_id,
                                                                 partner["image"].shape[:2],
                                                                 own_crop_spec, 0)
      partner_box = np.array(dataclasses.astuple(partner_params)[:4], np.int32)  # t, l, h, w
      partner_flip = np.uint8(partner_params.flip)
      partner_label = int(partner["label"])
    cut_box = np.array([params.cut_top, params.cut_left, params.cut_height, params.cut_width],
                       np.int32)
    return {
        "label": np.int32(record["label"]),
        "partner_label": np.int32(partner_label),
        "mix_lambda": np.float32(params.mix_lambda),
        "id": np.int64(example_id),
        "slot": np.int32(slot),
        "box": params.box_fractions(boxed_hw),
        "flip": np.uint8(params.flip),
        "partner_id": np.int32(partner_id),
        "cut_box": cut_box,
        "pool_index": np.int32(pool_position),
        "crop_box": np.array(dataclasses.astuple(params)[:4], np.int32),
        "crop_flip": np.uint8(params.flip),
        "column_order": column_order,
        "row_order": row_order,
        "partner_index": np.int32(params.partner_position),
        "partner_crop_box": partner_box,
        "partner_flip": partner_flip,
        "partner_column_order": partner_columns,
        "partner_row_order": partner_rows,
    }

  @functools.cached_property
  def _pool_labels(self) -> np.ndarray:
    return np.asarray(self.source.labels(), np.int64)[np.asarray(self.pool_ids, np.int64)]

  def _batched_draws(self) -> bool:
    """Whether `crop_fields_batch` draws a batch at once: one image shape, no per-crop partner
    draw (a relabel batch's CutMix plan is read, not drawn), no patch shuffle."""
    shape = tuple(self.source.info.image_shape)
    one_shape = len(shape) == 3 and all(d is not None and int(d) > 0 for d in shape)
    per_crop_partner = self.spec.cutmix_alpha > 0 and self.cutmix_plan is None
    return one_shape and not per_crop_partner and self.spec.shuffle_factor == 1

  def crop_fields_batch(self, pool_positions: np.ndarray,
                        slots: np.ndarray) -> dict[str, np.ndarray]:
    """`crop_fields` of every (position, slot) pair, stacked as a Grain batch stacks them.

    The boxes and flips of the whole batch come from one vectorised computation of the keys'
    NumPy streams (`crops.crop_boxes`, the same values); specs that draw more per crop (a
    CutMix partner, a patch shuffle) or pools of mixed image sizes take `crop_fields` per pair.
    """
    pool_positions = np.asarray(pool_positions, np.int64)
    slots = np.asarray(slots, np.int64)
    if not self._batched_draws():
      return stack_elements(
          [self.crop_fields(int(p), int(k)) for p, k in zip(pool_positions, slots, strict=True)])
    count = len(pool_positions)
    height, width = (int(d) for d in self.source.info.image_shape[:2])
    pool_ids = np.asarray(self.pool_ids, np.int64)
    ids = pool_ids[pool_positions]
    labels = self._pool_labels[pool_positions]
    boxes, flips = crops.crop_boxes(self.seed, ids, slots, (height, width), self.spec)
    partner_index = np.full(count, -1, np.int64)
    cut_box = np.zeros((count, 4), np.int32)
    mix_lambda = np.ones(count, np.float32)
    partner_box, partner_flip = np.zeros((count, 4), np.int32), np.zeros(count, np.uint8)
    if self.cutmix_plan is not None:
      plan = self.cutmix_plan
      if slots.size and slots.max() >= plan.partner_position.shape[1]:
        raise ValueError(f"slot {slots.max()} is beyond the {plan.partner_position.shape[1]} "
                         "relabel epochs the CutMix plan covers")
      partner_index = plan.partner_position[pool_positions, slots].astype(np.int64)
      cut_box = plan.cut_box[pool_positions, slots].astype(np.int32)
      mix_lambda = plan.mix_lambda[pool_positions, slots].astype(np.float32)
      mixed = partner_index >= 0
      if mixed.any():
        # The partner's own training crop at this slot, as raw_crop pastes it.
        partner_ids = pool_ids[partner_index[mixed]]
        boxes_, flips_ = crops.crop_boxes(self.seed, partner_ids, slots[mixed], (height, width),
                                          dataclasses.replace(self.spec, cutmix_alpha=0.0))
        partner_box[mixed], partner_flip[mixed] = boxes_, flips_
    mixed = partner_index >= 0
    partner_ids = np.where(mixed, pool_ids[np.maximum(partner_index, 0)], -1)
    partner_labels = np.where(mixed, self._pool_labels[np.maximum(partner_index, 0)], labels)
    identity = np.zeros((count, 1), np.int32)
    return {
        "label": labels.astype(np.int32),
        "partner_label": partner_labels.astype(np.int32),
        "mix_lambda": mix_lambda,
        "id": ids,
        "slot": slots.astype(np.int32),
        "box": (boxes / np.array([height, width, height, width], np.float64)).astype(np.float32),
        "flip": flips.astype(np.uint8),
        "partner_id": partner_ids.astype(np.int32),
        "cut_box": cut_box,
        "pool_index": pool_positions.astype(np.int32),
        "crop_box": boxes.astype(np.int32),
        "crop_flip": flips.astype(np.uint8),
        "column_order": identity,
        "row_order": identity.copy(),
        "partner_index": partner_index.astype(np.int32),
        "partner_crop_box": partner_box,
        "partner_flip": partner_flip,
        "partner_column_order": identity.copy(),
        "partner_row_order": identity.copy(),
    }

  def device_batch(self, pool_positions: np.ndarray,
                   slots: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`device_element` of every pair, stacked: the batch's elements and its host metadata."""
    fields = self.crop_fields_batch(pool_positions, slots)
    kept = {k: fields.pop(k) for k in DEVICE_HOST_METADATA if k in fields}
    return fields, {**kept, "cut_box": fields["cut_box"]}

  def host_batch(self, pool_positions: np.ndarray,
                 slots: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`raw_crop` of every pair, stacked: the training elements (normalised pixels and label
    fields) and the crop metadata. The draws are `crop_fields_batch`'s; PIL cuts each crop."""
    if not self._batched_draws():
      made = [self.raw_crop(int(p), int(k)) for p, k in zip(pool_positions, slots, strict=True)]
      elements = [{"image": pixels, **fields} for pixels, fields, _ in made]
      batch = stack_elements(elements)
      batch["image"] = self.normalizer(batch["image"])
      return batch, stack_elements([metadata for _, _, metadata in made])
    fields = self.crop_fields_batch(pool_positions, slots)
    pixels = []
    for k, example_id in enumerate(fields["id"]):
      params = crops.CropParams(*(int(v) for v in fields["crop_box"][k]),
                                flip=bool(fields["crop_flip"][k]))
      crop = crops.apply_crop(self.source[int(example_id)]["image"], params, self.spec.output_size,
                              self.spec.resize)
      if fields["partner_index"][k] >= 0:  # the partner's own crop, pasted into the cut box
        partner = crops.CropParams(*(int(v) for v in fields["partner_crop_box"][k]),
                                   flip=bool(fields["partner_flip"][k]))
        partner_crop = crops.apply_crop(self.source[int(fields["partner_id"][k])]["image"], partner,
                                        self.spec.output_size, self.spec.resize)
        cut = crops.CropParams(0, 0, 0, 0, False, int(fields["partner_index"][k]),
                               *(int(v) for v in fields["cut_box"][k]))
        crop = crops.paste_cutmix(crop, partner_crop, cut)
      pixels.append(crop)
    elements = {"image": self.normalizer(np.stack(pixels))}
    elements.update({k: fields[k] for k in ("label", "partner_label", "mix_lambda", "id", "slot")})
    return elements, {k: fields[k] for k in (*DEVICE_HOST_METADATA, "cut_box")}

  def __call__(self, position_and_slot: tuple[int, int]) -> dict[str, np.ndarray]:
    if self.on_device:
      return self.device_element(*position_and_slot)[0]
    pixels, fields, _ = self.raw_crop(*position_and_slot)
    return {"image": self.normalizer(pixels), **fields}

  def device_element(self, pool_position: int,
                     slot: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A training element of a device-cropped pool, and the crop metadata kept on the host.

    The element holds the labels and the kernel's fields; the metadata (box fractions, flip,
    partner id) is what a table row stores and a replay checks, not sent to the devices.
    """
    fields = self.crop_fields(pool_position, slot)
    kept = {k: fields.pop(k) for k in DEVICE_HOST_METADATA if k in fields}
    return fields, {**kept, "cut_box": fields["cut_box"]}


@dataclasses.dataclass(frozen=True)
class FreshCrops:
  """Global stream position -> a fresh crop: the epoch's shuffle picks the image, slot = epoch.

  `slot_offset` keeps fresh crops apart from the slots a soft-label table stores (HALD's hard
  phase must not replay the table's crops).
  """

  example: CropExample
  order: EpochShuffle
  slot_offset: int = 0

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    pool_position, epoch = self.order(position)
    return self.example((pool_position, epoch + self.slot_offset))

  def batch(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The stacked elements of `positions`, their crop draws made at once."""
    pool_positions, epochs = self.order.many(positions)
    make = self.example.device_batch if self.example.on_device else self.example.host_batch
    return make(pool_positions, epochs + self.slot_offset)[0]


@dataclasses.dataclass(frozen=True)
class ProcessPositions:
  """Local stream index -> global position, giving each process a contiguous slice per batch."""

  global_batch: int
  process_index: int
  process_count: int

  def __call__(self, local_index: int) -> int:
    local_batch = self.global_batch // self.process_count
    step, within = divmod(int(local_index), local_batch)
    return step * self.global_batch + self.process_index * local_batch + within


def check_batch_split(global_batch: int, process_count: int) -> int:
  """Returns the per-process batch, or says why the global batch cannot be split."""
  if global_batch <= 0:
    raise ValueError(f"global batch size must be positive, got {global_batch}")
  if global_batch % process_count:
    raise ValueError(f"global batch size {global_batch} is not divisible by the process count "
                     f"{process_count}")
  return global_batch // process_count


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
  """How batches are read: Grain worker processes, and read threads/buffer inside each process.

  Grain's own defaults (16 threads reading 500 elements ahead) suit remote disks; here every
  element is a whole batch made from in-memory images, so on a few CPU cores those threads only
  compete with XLA for the cores. The train step is dispatched asynchronously, so even a reader
  with no threads prepares the next batch while the device computes the current one.
  """

  num_workers: int = 0
  read_threads: int = 1
  read_buffer: int = 4  # batches read ahead per process

  @classmethod
  def from_config(cls, config: Any) -> "LoaderOptions":
    """The `num_workers`, `read_threads` and `read_buffer` fields of a run config."""
    return cls(config.num_workers, config.read_threads, config.read_buffer)


def to_iterator(
    dataset: grain.MapDataset, loading: LoaderOptions = LoaderOptions()) -> grain.DatasetIterator:
  """A checkpointable iterator over `dataset`, read and prefetched as `loading` says."""
  read_options = grain.ReadOptions(num_threads=loading.read_threads,
                                   prefetch_buffer_size=loading.read_buffer)
  iter_dataset = dataset.to_iter_dataset(read_options)
  if loading.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's worker processes read absl flags; library callers (tests, notebooks) have none.
      flags.FLAGS.mark_as_parsed()
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=loading.num_workers))
  return iter(iter_dataset)


def stack_elements(elements: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Elements stacked leaf by leaf into a batch, as Grain's `batch` stacks them."""
  return {name: np.stack([element[name] for element in elements]) for name in elements[0]}


@dataclasses.dataclass(frozen=True)
class LocalBatch:
  """Batch index -> this process's rows of that global batch, made by `example_at.batch`."""

  example_at: Any  # has `batch(global positions [local batch]) -> stacked elements`
  global_batch: int
  process_index: int
  process_count: int

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    local_batch = self.global_batch // self.process_count
    start = int(batch_index) * self.global_batch + self.process_index * local_batch
    return self.example_at.batch(np.arange(start, start + local_batch, dtype=np.int64))


def process_batches(example_at: Callable[[int], dict[str, np.ndarray]], *, num_batches: int,
                    global_batch: int, process_index: int = 0,
                    process_count: int = 1) -> grain.MapDataset:
  """This process's rows of `num_batches` global batches of `example_at(global position)`.

  An `example_at` with a `batch(positions)` method makes each batch in one call (the same
  stacked elements, drawn at once); otherwise each element is made and Grain stacks them.
  """
  local_batch = check_batch_split(global_batch, process_count)
  if hasattr(example_at, "batch"):
    return grain.MapDataset.range(num_batches).map(
        LocalBatch(example_at, global_batch, process_index, process_count))
  positions = grain.MapDataset.range(num_batches * local_batch)
  positions = positions.map(ProcessPositions(global_batch, process_index, process_count))
  return positions.map(example_at).batch(local_batch, drop_remainder=True)


def position_stream(
    example_at: Callable[[int], dict[str, np.ndarray]], *, global_batch: int, num_steps: int,
    process_index: int = 0, process_count: int = 1,
    loading: LoaderOptions = LoaderOptions()) -> grain.DatasetIterator:
  """Local batches for `num_steps` steps of `example_at(global position)`."""
  dataset = process_batches(example_at, num_batches=num_steps, global_batch=global_batch,
                            process_index=process_index, process_count=process_count)
  return to_iterator(dataset, loading)


def training_stream(
    example: CropExample, *, global_batch: int, num_steps: int, seed: int, process_index: int = 0,
    process_count: int = 1, loading: LoaderOptions = LoaderOptions()) -> grain.DatasetIterator:
  """Local batches of fresh crops for `num_steps` steps; epochs reshuffled, slot = epoch."""
  return position_stream(FreshCrops(example, EpochShuffle(len(example.pool_ids), seed)),
                         global_batch=global_batch, num_steps=num_steps,
                         process_index=process_index, process_count=process_count, loading=loading)


@dataclasses.dataclass(frozen=True)
class PoolView:
  """A pool's images as a split of their own, in pool order (centre views of a subset)."""

  source: ImageSource
  pool_ids: np.ndarray

  def __len__(self) -> int:
    return len(self.pool_ids)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[int(self.pool_ids[index])]


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """Split position -> centre view with label and a validity mask (padding has mask 0)."""

  source: ImageSource
  size: int
  crop_fraction: float
  normalizer: Normalizer

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    valid = position < len(self.source)
    record = self.source[int(position) if valid else 0]
    pixels = crops.center_crop(record["image"], self.size, self.crop_fraction)
    return {
        "image": self.normalizer(pixels),
        "label": np.int32(record["label"]),
        "id": np.int64(record["id"]),
        "mask": np.float32(valid),
    }


def evaluation_batches(
    source: ImageSource, *, size: int, crop_fraction: float, normalizer: Normalizer,
    global_batch: int, process_index: int = 0, process_count: int = 1,
    loading: LoaderOptions = LoaderOptions()) -> Iterator[dict]:
  """One pass over a split in local batches, padded to whole global batches."""
  dataset = process_batches(EvalExample(source, size, crop_fraction, normalizer),
                            num_batches=-(-len(source) // global_batch), global_batch=global_batch,
                            process_index=process_index, process_count=process_count)
  return to_iterator(dataset, loading)
