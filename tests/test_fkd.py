"""SRe²L's FKD soft-label folders: import, replay of the stored crops, export, refusals.

The official code is VILA-Lab/SRe2L: `SRe2L/relabel/generate_soft_label.py` writes a folder,
`relabel/utils_fkd.py` holds its crop, flip, CutMix and batch-lookup code, `validate/train_FKD.py`
reads it. `_port_generate_soft_label` and `_port_train_fkd_batches` below are small ports of both
sides (torchvision's own RandomResizedCrop and ImageFolder), run on hand-made image folders.
"""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import plan
from hardlabel_jax import study
from hardlabel_jax.data import crops
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import replay
from hardlabel_jax.soft_labels import formats
from hardlabel_jax.soft_labels import table as table_lib
from helpers import tiny_config
from torchvision_import import import_torchvision

torch = pytest.importorskip("torch")
torchvision = import_torchvision()

from hardlabel_jax import fkd_labels  # noqa: E402  (imports torch: only once torch is here)
from hardlabel_jax.soft_labels import fkd  # noqa: E402

transforms = torchvision.transforms
t_F = torchvision.transforms.functional
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 16  # the relabel's --input-size
CLASSES = 3
# Mixed sizes, so a box that belongs to another image of the batch cannot pass for its own.
_SIZES = [(20, 24), (17, 31), (24, 24), (33, 19), (21, 26), (28, 22), (19, 19)]


def _write_set(root, per_class=(3, 2, 2), test_per_class=1):
  """`root/train/c{k}/img{i}.png` (RGB noise of mixed sizes) and a test split of the classes."""
  rng = np.random.default_rng(0)
  sizes = iter(_SIZES * 4)
  for split, counts in (("train", per_class), ("test", (test_per_class,) * CLASSES)):
    for c, count in enumerate(counts):
      os.makedirs(root / split / f"c{c}", exist_ok=True)
      for i in range(count):
        h, w = next(sizes) if split == "train" else (20 + c, 20)
        Image.fromarray(rng.integers(0, 256, (h, w, 3),
                                     dtype=np.uint8)).save(root / split / f"c{c}" / f"img{i}.png")
  return str(root)


class _RandomResizedCropWithCoords(transforms.RandomResizedCrop):
  """utils_fkd.py lines 10-32: draws and stores the box as fractions, or replays stored ones."""

  def __call__(self, img, coords):
    if coords is None:
      i, j, h, w = self.get_params(img, self.scale, self.ratio)
      coords = torch.FloatTensor(
          (i / img.size[1], j / img.size[0], h / img.size[1], w / img.size[0]))
    else:
      i, j = coords[0].item() * img.size[1], coords[1].item() * img.size[0]
      h, w = coords[2].item() * img.size[1], coords[3].item() * img.size[0]
    return t_F.resized_crop(img, i, j, h, w, self.size, self.interpolation), coords


def _flip_with_status(img, status):
  """utils_fkd.py lines 66-85 (RandomHorizontalFlipWithRes.forward, p = 0.5)."""
  if status is not None:
    return (t_F.hflip(img), status) if status else (img, status)
  if torch.rand(1) < 0.5:
    return t_F.hflip(img), True
  return img, False


class _ImageFolderFKD(torchvision.datasets.ImageFolder):
  """utils_fkd.py ImageFolder_FKD_MIX (lines 115-180) with ComposeWithCoords (lines 35-49):
  'fkd_save' draws crops; 'fkd_load' replays those of the batch config loaded for the batch."""

  def __init__(self, root, size, mode="fkd_save"):
    super().__init__(root)
    self.crop = _RandomResizedCropWithCoords(size=size, scale=(0.08, 1.0),
                                             interpolation=transforms.InterpolationMode.BILINEAR)
    self.tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    self.mode, self.batch_config, self.batch_config_idx = mode, None, 0

  def __getitem__(self, index):
    path, target = self.samples[index]
    coords = flip = None
    if self.mode == "fkd_load":
      coords = self.batch_config[0][self.batch_config_idx]
      flip = self.batch_config[1][self.batch_config_idx]
      self.batch_config_idx += 1
    img, coords = self.crop(self.loader(path), coords)
    img, flip = _flip_with_status(img, flip)
    return self.tensor(img), target, flip, coords


def _cutmix(images, alpha=1.0):
  """utils_fkd.py `rand_bbox` and `cutmix` in 'fkd_save' mode (lines 184-217)."""
  rand_index = torch.randperm(images.size()[0])
  lam = np.random.beta(alpha, alpha)
  size = images.size()
  cut_rat = np.sqrt(1.0 - lam)
  cut_w, cut_h = int(size[2] * cut_rat), int(size[3] * cut_rat)
  cx, cy = np.random.randint(size[2]), np.random.randint(size[3])
  bbx1, bby1 = np.clip(cx - cut_w // 2, 0, size[2]), np.clip(cy - cut_h // 2, 0, size[3])
  bbx2, bby2 = np.clip(cx + cut_w // 2, 0, size[2]), np.clip(cy + cut_h // 2, 0, size[3])
  images[:, :, bbx1:bbx2, bby1:bby2] = images[rand_index, :, bbx1:bbx2, bby1:bby2]
  return images, rand_index, lam, [bbx1, bby1, bbx2, bby2]


def _teacher():
  torch.manual_seed(7)
  return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, CLASSES)).eval()


def _port_generate_soft_label(root, fkd_path, *, epochs=3, batch_size=3, mix=True, seed=42):
  """generate_soft_label.py `main_worker` (lines 173-203) and `save` (lines 208-224): a
  RandomSampler seeded --fkd-seed, one DataLoader pass per epoch, CutMix (--mix-type cutmix), the
  teacher's logits saved as fp16 (--use-fp16). Returns every batch's mixed images and logits."""
  torch.manual_seed(0)
  np.random.seed(0)
  dataset = _ImageFolderFKD(root, SIZE)
  generator = torch.Generator()
  generator.manual_seed(seed)
  sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
  loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)
  model, made = _teacher(), {}
  for epoch in range(epochs):
    os.makedirs(os.path.join(fkd_path, f"epoch_{epoch}"))
    for batch_idx, (images, _, flip_status, coords_status) in enumerate(loader):
      mix_index = mix_lam = mix_bbox = None
      if mix:
        images, mix_index, mix_lam, mix_bbox = _cutmix(images)
      with torch.no_grad():
        output = model(images).half()
      torch.save([coords_status, flip_status, mix_index, mix_lam, mix_bbox, output],
                 os.path.join(fkd_path, f"epoch_{epoch}", f"batch_{batch_idx}.tar"))
      made[epoch, batch_idx] = (images.numpy(), output.float().numpy())
  return made


def _set(tmp_path, **kwargs):
  root = _write_set(tmp_path / "set", **kwargs)
  train, files, split_dir = fkd_labels.set_data(root, "", f"imagefolder:{root}")
  return root, train, files, split_dir


def _import(fkd_path, table_dir, train, files, split_dir, **kwargs):
  return fkd.import_folder(str(fkd_path), str(table_dir), train, files, split_dir, image_size=SIZE,
                           **kwargs)


def _replayed(table, train, epoch, ids):
  """The normalised CHW crops the stored-crop replay makes for `ids` at slot `epoch`."""
  stored = replay.StoredCrops(train, np.arange(len(train)), SIZE)
  mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
  out = []
  for example_id in ids:
    pixels, fields = stored.crop(table, int(example_id), epoch)
    assert int(fields["id"]) == int(example_id)
    out.append(((pixels.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
  return np.stack(out)


def test_an_official_folder_imports_and_replays_its_crops_exactly(tmp_path):
  """A folder written by the port of generate_soft_label.py (lines 173-224, utils_fkd.py's crop,
  flip and CutMix) on 7 images of mixed sizes, batches of 3 (3, 3, 1) over 3 epochs: the imported
  table replays every crop pixel for pixel as the port made it (mixed, normalised), its labels
  are fp16 softmax(logits / 20), and its sampler order is the port's DataLoader order."""
  root, train, files, split_dir = _set(tmp_path)
  made = _port_generate_soft_label(os.path.join(root, "train"), tmp_path / "fkd")
  table = _import(tmp_path / "fkd", tmp_path / "table", train, files, split_dir)
  spec = table.spec
  assert spec.stored_crops and spec.cutmix and spec.slots_per_image == 3
  assert spec.stored_batch_size == 3 and spec.temperature == 20.0
  orders = fkd.sampler_orders(len(train), 3, 42)
  id_of_index = fkd.dataset_index_ids(split_dir, files)
  # ImageFolder sorts c0, c1, c2 and their files, as the library numbers them.
  np.testing.assert_array_equal(id_of_index, np.arange(7))
  for (epoch, batch), (images, logits) in made.items():
    ids = id_of_index[orders[epoch, 3 * batch:3 * batch + 3]]
    np.testing.assert_array_equal(_replayed(table, train, epoch, ids), images)
    probs = np.stack([table.probs(int(i), epoch) for i in ids])
    expected = _softmax(logits, 20.0).astype(np.float16)
    np.testing.assert_array_equal(probs, expected.astype(np.float32))
    ranks = [table.metadata(int(i), epoch)["sampler_rank"] for i in ids]
    assert ranks == list(range(3 * batch, 3 * batch + len(ids)))
  np.testing.assert_array_equal(table.batch_orders(), id_of_index[orders])
  assert 0 <= spec.teacher["label_agreement"] <= 1 and spec.teacher["source"] == "fkd"


def _port_train_fkd_batches(root, fkd_path, *, epochs, batch_size, fkd_seed=42, temperature=20.0):
  """train_FKD.py `main` (lines 104-130) and `train` (lines 220-250) with utils_fkd.py's
  `get_FKD_info` (lines 92-113), `get_img2batch_idx_list` (lines 243-257), `load_batch_config`
  (lines 163-177) and the patched `_MapDatasetFetcher` (validate/README.md): per training batch,
  the file found from its first image index, the crops replayed from its coords and flips, the
  stored CutMix pasted ('fkd_load'), and the target softmax(soft_label / T). `torch.load` as
  before torch 2.6 (weights_only=False): the official call fails on torch >= 2.6, which refuses
  the numpy ints of mix_bbox."""

  def number(name):
    return int(name.split("_")[1].split(".tar")[0])

  max_epoch = len(os.listdir(fkd_path))
  batch_list = sorted(os.listdir(os.path.join(fkd_path, "epoch_0")), key=number)

  def load(epoch, batch):
    return torch.load(os.path.join(fkd_path, f"epoch_{epoch}", f"batch_{batch}.tar"),
                      weights_only=False)

  saved_size = load(0, number(batch_list[0]))[1].size()[0]
  num_img = saved_size * (len(batch_list) - 1) + load(0, number(batch_list[-1]))[1].size()[0]
  assert saved_size == batch_size  # "--batch-size should be same in both saving and loading"
  index_sampler = torch.utils.data.BatchSampler(
      torch.utils.data.RandomSampler(range(num_img), generator=torch.Generator().manual_seed(42)),
      batch_size=saved_size, drop_last=False)
  img2batch = [{ids[0]: b for b, ids in enumerate(index_sampler)} for _ in range(max_epoch)]
  dataset = _ImageFolderFKD(root, SIZE, mode="fkd_load")
  sampler = torch.utils.data.RandomSampler(dataset,
                                           generator=torch.Generator().manual_seed(fkd_seed))
  out = {}
  for epoch in range(epochs):
    for batch, indices in enumerate(torch.utils.data.BatchSampler(sampler, batch_size, False)):
      config = load(epoch, img2batch[epoch][indices[0]])  # a KeyError when the orders disagree
      dataset.batch_config, dataset.batch_config_idx = config[:2], 0
      images = torch.stack([dataset[i][0] for i in indices])
      mix_index, _, (bbx1, bby1, bbx2, bby2), soft_label = config[2:]
      images[:, :, bbx1:bbx2, bby1:bby2] = images[mix_index, :, bbx1:bbx2, bby1:bby2]
      target = torch.softmax(soft_label.float() / temperature, dim=1)
      out[epoch, batch] = (list(indices), images.numpy(), target.numpy())
  return out


def _keyed_table(table_dir, train, *, slots=2, crop_seed=3):
  """A table as relabel writes one (relabel._rows_of): keyed crops of `crops.crop_params`, their
  fp16 box fractions and flips, and fp16 softmax(z / 20) of random logits."""
  spec = table_lib.TableSpec(
      dataset_name=train.info.name, dataset_fingerprint=train.info.fingerprint,
      ids=np.arange(len(train)), num_classes=CLASSES, teacher_fingerprint="hand-made",
      crop_seed=crop_seed, crop_spec={
          "output_size": SIZE,
          "scale": [0.08, 1.0],
          "ratio": [3 / 4, 4 / 3],
          "flip": True,
          "cutmix_alpha": 0.0,
          "recipe": "rrc",
          "shuffle_factor": 1
      }, temperature=20.0, label_format="full", slots_per_image=slots)
  crop_spec = crops.CropSpec(output_size=SIZE)
  rows = np.zeros(len(train) * slots, table_lib.row_dtype(spec))
  z = np.random.default_rng(1).normal(0, 40, (rows.size, CLASSES)) / 20.0
  rows["probs"] = formats.encode(z - np.log(np.exp(z).sum(1, keepdims=True)), spec.fmt)["probs"]
  for example_id in range(len(train)):
    hw = train[example_id]["image"].shape[:2]
    for slot in range(slots):
      params = crops.crop_params(crop_seed, example_id, slot, hw, crop_spec)
      rows["box"][example_id * slots + slot] = params.box_fractions(hw).astype(np.float16)
      rows["flip"][example_id * slots + slot] = params.flip
  writer = table_lib.TableWriter(str(table_dir), spec, len(train))
  writer.write_shard(0, rows)
  return writer.finalize()


def _softmax(logits, temperature):
  z = np.asarray(logits, np.float64) / temperature
  p = np.exp(z - z.max(1, keepdims=True))
  return p / p.sum(1, keepdims=True)


def _fp16_ulps(a, b):
  """How many fp16 steps apart two arrays of fp16 values are."""
  a, b = np.asarray(a, np.float16).view(np.int16), np.asarray(b, np.float16).view(np.int16)
  return np.abs(a.astype(np.int64) - b.astype(np.int64))


def test_a_table_exports_to_a_folder_train_fkd_reads_and_imports_back(tmp_path):
  """Our table → FKD folder → our table. The port of train_FKD.py's loading finds every batch's
  file (no KeyError) and trains on the table's boxes and flips, cut as torchvision cuts them,
  which the re-imported table replays pixel for pixel; its targets are the table's labels; the
  re-imported rows hold the keyed crops' exact pixel boxes and the labels to one fp16 step."""
  root, train, files, split_dir = _set(tmp_path)
  table = _keyed_table(tmp_path / "table", train)
  fkd.export_table(table, str(tmp_path / "fkd"), train, files, split_dir, batch_size=3,
                   label_dtype="float32")
  assert sorted(os.listdir(tmp_path / "fkd")) == ["epoch_0", "epoch_1"]
  assert sorted(os.listdir(tmp_path / "fkd" / "epoch_1")) == [f"batch_{b}.tar" for b in range(3)]
  back = _import(tmp_path / "fkd", tmp_path / "back", train, files, split_dir)
  assert not back.spec.cutmix and back.spec.slots_per_image == 2
  trained = _port_train_fkd_batches(os.path.join(root, "train"), str(tmp_path / "fkd"), epochs=2,
                                    batch_size=3)
  assert len(trained) == 6
  for (epoch, _), (indices, images, target) in trained.items():
    np.testing.assert_array_equal(_replayed(back, train, epoch, indices), images)
    stored = np.stack([table.probs(i, epoch) for i in indices])
    np.testing.assert_allclose(target, stored / stored.sum(1, keepdims=True), rtol=1e-5)
  keyed = crops.CropSpec(output_size=SIZE)
  for example_id in range(len(train)):
    hw = train[example_id]["image"].shape[:2]
    for slot in range(2):
      params = crops.crop_params(3, example_id, slot, hw, keyed)
      meta = back.metadata(example_id, slot)
      assert meta["pixel_box"] == (params.top, params.left, params.height, params.width)
      assert meta["flip"] == params.flip
      # softmax(T log p / T) renormalises p: within one fp16 step of the stored value.
      assert _fp16_ulps(back.probs(example_id, slot), table.probs(example_id, slot)).max() <= 1


def test_an_imported_folder_exports_back_to_the_same_files(tmp_path):
  """An official folder → table → folder: coords (bit for bit), flips, mix_index and mix_bbox
  are the original files'; λ is the unpasted area (train_FKD.py reads no λ under CutMix); the
  float16 logits differ but give the same softmax(z / 20) to fp16 rounding."""
  root, train, files, split_dir = _set(tmp_path)
  _port_generate_soft_label(os.path.join(root, "train"), tmp_path / "fkd")
  table = _import(tmp_path / "fkd", tmp_path / "table", train, files, split_dir)
  fkd.export_table(table, str(tmp_path / "again"), train, files, split_dir)
  for epoch in range(3):
    for batch in range(3):
      name = os.path.join(f"epoch_{epoch}", f"batch_{batch}.tar")
      original = fkd.load_batch(str(tmp_path / "fkd" / name))
      again = fkd.load_batch(str(tmp_path / "again" / name))
      np.testing.assert_array_equal(again.coords.view(np.uint32), original.coords.view(np.uint32))
      np.testing.assert_array_equal(again.flip, original.flip)
      np.testing.assert_array_equal(again.mix_index, original.mix_index)
      assert again.mix_bbox == original.mix_bbox and again.logits.dtype == np.float16
      x1, y1, x2, y2 = original.mix_bbox
      assert again.mix_lambda == pytest.approx(1 - (x2 - x1) * (y2 - y1) / SIZE**2, abs=1e-3)
      np.testing.assert_allclose(_softmax(again.logits, 20), _softmax(original.logits, 20),
                                 atol=2e-3)


def _rewrite(path, edit):
  config = torch.load(path, weights_only=False)
  edit(config)
  torch.save(config, path)


def _swap(a, b):
  tmp = a + ".swap"
  os.replace(a, tmp)
  os.replace(b, a)
  os.replace(tmp, b)


_BAD_FOLDERS = {
    "missing batch file":
        (lambda d: os.remove(d / "epoch_1" / "batch_2.tar"), {}, "epoch_1/batch_2.tar: missing"),
    "an extra file":
        (lambda d: open(d / "notes.txt", "w").close(), {}, "notes.txt: not an FKD epoch directory"),
    "an extra batch":
        (lambda d: torch.save(torch.load(d / "epoch_1" / "batch_0.tar", weights_only=False), d /
                              "epoch_1" / "batch_3.tar"), {},
         "epoch_1/batch_3.tar: one batch too many"),
    "a folder of another set": (lambda d: os.remove(d / "epoch_0" / "batch_2.tar"), {},
                                "labels 6 images (2 batches, the last of 3), the set has 7"),
    "wrong class count":
        (lambda d: _rewrite(d / "epoch_2" / "batch_1.tar", lambda c: c.__setitem__(
            5, torch.zeros(3, CLASSES + 1))), {}, "soft labels over 4 classes, but the set has 3"),
    "a batch of the wrong size": (lambda d: _rewrite(
        d / "epoch_1" / "batch_2.tar", lambda c: c.__setitem__(slice(0, 6), [
            c[0].repeat(2, 1), c[1].repeat(2), c[2].repeat(2), c[3], c[4], c[5].repeat(2, 1)
        ])), {}, "holds 2 crops, but the sampler's batch 2"),
    "mix_index outside the batch":
        (lambda d: _rewrite(d / "epoch_0" / "batch_1.tar", lambda c: c[2].__setitem__(0, 3)), {},
         "mix_index[0] = 3 is outside the batch of 3"),
    "batches in another order":
        (lambda d: _swap(str(d / "epoch_0" / "batch_0.tar"), str(d / "epoch_0" / "batch_1.tar")),
         {}, "are not a RandomResizedCrop box of"),
    "another fkd seed": (lambda d: None, {
        "seed": 1
    }, "are not a RandomResizedCrop box of"),
    "another batch size": (lambda d: None, {
        "batch_size": 4
    }, "--batch_size: 4, but"),
    "mixup": (lambda d: [
        _rewrite(d / f"epoch_{e}" / f"batch_{b}.tar", lambda c: c.__setitem__(4, None))
        for e in range(3)
        for b in range(3)
    ], {}, "a mixup folder"),
}


@pytest.mark.parametrize("case", sorted(_BAD_FOLDERS))
def test_a_bad_folder_is_refused_with_one_message_and_nothing_written(tmp_path, case):
  """Each way a folder can disagree with the set and the sampler (the failure modes behind SRe²L
  issues #1, #17, #21, which train_FKD.py meets as a KeyError or a silently wrong batch) is one
  FkdFolderError naming the first mismatch; no table, partial table or staging file is left."""
  edit, kwargs, message = _BAD_FOLDERS[case]
  _, train, files, split_dir = _set(tmp_path)
  _port_generate_soft_label(os.path.join(tmp_path, "set", "train"), tmp_path / "fkd")
  edit(tmp_path / "fkd")
  os.makedirs(tmp_path / "out")
  with pytest.raises(fkd.FkdFolderError) as error:
    _import(tmp_path / "fkd", tmp_path / "out" / "table", train, files, split_dir, **kwargs)
  assert message in str(error.value), str(error.value)
  assert os.listdir(tmp_path / "out") == []


def test_a_set_of_another_size_is_refused(tmp_path):
  """A folder relabelled on 7 images, imported for 8 (get_FKD_info's count of its images)."""
  _port_generate_soft_label(_write_set(tmp_path / "seven") + "/train", tmp_path / "fkd")
  _, train, files, split_dir = _set(tmp_path, per_class=(3, 3, 2))
  with pytest.raises(fkd.FkdFolderError, match="labels 7 images .3 batches, the last of 1., the "
                     "set has 8"):
    _import(tmp_path / "fkd", tmp_path / "table", train, files, split_dir)
  assert not os.path.exists(tmp_path / "table")


def test_fp16_box_fractions_hold_fkd_boxes_below_1024_pixels_only():
  """Why an imported row stores uint16 pixels: a keyed row's fp16 fractions, scaled back and
  rounded as PIL rounds the official replay's box (left + width too), give every box of a 224 or
  500 px side exactly (checked for all boxes; it holds up to 1,366 px), but not at 1,367 px, and
  ImageNet's original images reach 4,000 px."""

  def exact(side):
    start, length = np.meshgrid(np.arange(side + 1), np.arange(1, side + 1), indexing="ij")
    keep = start + length <= side
    start, length = start[keep], length[keep]
    f16 = lambda v: (v / side).astype(np.float16).astype(np.float64) * side
    return (np.array_equal(np.round(f16(start)), start)
            and np.array_equal(np.round(f16(start) + f16(length)), start + length))

  assert exact(224) and exact(500)
  assert not exact(1367)


def test_stored_batches_follow_the_stored_order_in_sequence():
  """An imported table's stored batches: slot s, batch k is `orders[s][k B:(k+1) B]`; the
  'sequential' rule (train_FKD.py) replays them in order, skipping each slot's short last batch."""
  orders = np.array([[4, 2, 0, 1, 3], [1, 0, 3, 4, 2]])
  batches = table_lib.StoredBatches(5, 2, 2, 0, 1.0, "sequential", orders=orders)
  assert batches.batches_per_slot == 3 and batches.drawable().tolist() == [0, 1, 3, 4]
  assert [batches.draw(9, step) for step in range(6)] == [0, 1, 3, 4, 0, 1]
  positions, slot = batches.batch(4)
  assert positions.tolist() == [3, 4] and slot == 1
  assert batches.row(9, 2 * 2 + 1) == (0, 1)  # step 2 replays batch 3 (slot 1: 1, 0), row 1


def test_a_run_on_an_imported_table_steps_in_its_batch_size(tmp_path):
  """train_FKD.py refuses a --batch-size other than the relabel's; a stored-batch mode does too,
  while per-image replay takes any batch."""
  _, train, files, split_dir = _set(tmp_path)
  _port_generate_soft_label(os.path.join(tmp_path, "set", "train"), tmp_path / "fkd")
  spec = _import(tmp_path / "fkd", tmp_path / "table", train, files, split_dir).spec
  assert table_lib.lpld_batches(spec, "fkd_batches", 1.0, 3).draw_rule == "sequential"
  assert table_lib.lpld_batches(spec, "per_image", 1.0, 8) is None
  with pytest.raises(ValueError, match="config.global_batch_size: 8, but label_pruning="):
    table_lib.lpld_batches(spec, "hald_batches", 1.0, 8)


def test_an_imported_table_is_checked_against_the_run(tmp_path):
  """open_imported: the run's pool, image size and temperature, and an imported table only."""
  _, train, files, split_dir = _set(tmp_path)
  _port_generate_soft_label(os.path.join(tmp_path, "set", "train"), tmp_path / "fkd")
  _import(tmp_path / "fkd", tmp_path / "table", train, files, split_dir)
  run = dict(dataset_name=train.info.name, dataset_fingerprint=train.info.fingerprint,
             ids=np.arange(7), num_classes=CLASSES, image_size=SIZE, temperature=20.0)
  assert table_lib.open_imported(str(tmp_path / "table"), **run).spec.stored_crops
  for change, message in ((dict(temperature=4.0), "config.temperature is 4"),
                          (dict(image_size=32), "config.image_size is 32"), (dict(ids=np.arange(6)),
                                                                             "7 ids vs 6")):
    with pytest.raises(table_lib.TableMismatchError, match=message):
      table_lib.open_imported(str(tmp_path / "table"), **{**run, **change})
  _keyed_table(tmp_path / "keyed", train)
  with pytest.raises(table_lib.TableMismatchError, match="was relabelled here"):
    table_lib.open_imported(str(tmp_path / "keyed"), **run)


@pytest.mark.slow
def test_sl_trains_on_an_imported_table_in_its_stored_batch_order(tmp_path):
  """`--import_from` through the CLI's function, then an SL run with `imported_table_dir` and
  label_pruning='fkd_batches': no teacher, every step one stored batch of 8 (epoch 0's, then
  epoch 1's; each epoch's short batch of 2 skipped), as train_FKD.py replays them."""
  root = _write_set(tmp_path / "set", per_class=(4, 3, 3))
  _port_generate_soft_label(os.path.join(root, "train"), tmp_path / "fkd", epochs=2, batch_size=8)
  table = fkd_labels.import_labels(str(tmp_path / "fkd"), str(tmp_path / "table"), root,
                                   class_order="", dataset=f"imagefolder:{root}", image_size=SIZE)
  assert table.spec.stored_batch_size == 8
  config = tiny_config(dataset=f"imagefolder:{root}", images_per_class=0, image_size=SIZE,
                       global_batch_size=8, budget_examples=8 * 3, regime="sl",
                       imported_table_dir=str(tmp_path / "table"), label_pruning="fkd_batches",
                       crop_backend="host")
  planned = plan.make_plan(config, str(tmp_path / "run"))
  assert planned.teacher is None and planned.table.imported
  results = plan.train(config, str(tmp_path / "run")).results
  assert results["table_dir"] == str(tmp_path / "table") and results["stored_batches"] == 4
  assert results["drawable_batches"] == 2 and np.isfinite(results["test_loss"])
  batches = table_lib.StoredBatches(10, 2, 8, 42, 1.0, "sequential", orders=table.batch_orders())
  assert [batches.draw(0, step) for step in range(3)] == [0, 2, 0]


def test_the_check_trains_the_external_sets_sl_cells_on_its_imported_labels(tmp_path):
  """`study_external_table` (configs/check_set.py `labels=DIR`): the external set's augmented SL
  cells read the imported table (no teacher planned for them); random's SL cells and the
  no-augmentation arm (whole images, which the published labels do not label) relabel."""
  root = _write_set(tmp_path / "set", per_class=(2, 2, 2))
  _port_generate_soft_label(os.path.join(root, "train"), tmp_path / "fkd")
  fkd_labels.import_labels(str(tmp_path / "fkd"), str(tmp_path / "table"), root, class_order="",
                           dataset=f"imagefolder:{root}", image_size=SIZE)
  config = tiny_config(task="study", dataset=f"imagefolder:{root}", images_per_class=0,
                       image_size=SIZE, crop_backend="host", teacher_workdir=str(tmp_path / "t"))
  config.study_regimes, config.study_methods = ("hl", "sl"), ("random", "external")
  config.study_external_set, config.study_external_class_order = root, ""
  config.study_external_table = str(tmp_path / "table")
  config.study_seeds, config.study_images_per_class = (0,), ()
  config.study_no_augmentation = True
  counts = study.train_class_counts(config)
  config = study.with_external_size(config, counts)
  configs = study.validate_study(config, counts, str(tmp_path / "cache"))
  imported = {cell.name: cfg.imported_table_dir for cell, cfg in configs.items()}
  assert imported == {
      "hl-random-ipc2-s0": "",
      "hl-random-ipc2-noaug-s0": "",
      "hl-external-ipc2-s0": "",
      "hl-external-ipc2-noaug-s0": "",
      "sl-random-ipc2-s0": "",
      "sl-random-ipc2-noaug-s0": "",
      "sl-external-ipc2-s0": str(tmp_path / "table"),
      "sl-external-ipc2-noaug-s0": ""
  }
  (external,) = [cfg for cell, cfg in configs.items() if cell.name == "sl-external-ipc2-s0"]
  planned = plan.make_plan(external, str(tmp_path / "cell"))
  assert planned.teacher is None and planned.table.imported
  plan.check(planned)  # the table fits the cell's pool, size and temperature
  config.study_methods = ("random",)
  with pytest.raises(ValueError, match="config.study_external_table: the external set's"):
    config_schema.validate(config)


def test_the_sl_replay_serves_an_imported_tables_stored_crops_per_image(tmp_path):
  """`replay.TableCrops` (the trainer's SL stream) on an imported table takes the table's mode:
  each position's crop is the stored one of the slot it draws, with that row's label."""
  _, train, files, split_dir = _set(tmp_path)
  _port_generate_soft_label(os.path.join(tmp_path, "set", "train"), tmp_path / "fkd")
  table = _import(tmp_path / "fkd", tmp_path / "table", train, files, split_dir)
  normalizer = pipeline.Normalizer(MEAN, STD)
  example = pipeline.CropExample(train, np.arange(7), crops.CropSpec(SIZE), 0, normalizer)
  crops_of = replay.TableCrops(example, pipeline.EpochShuffle(7, 5), table.directory, draw_seed=5)
  stored = replay.StoredCrops(train, np.arange(7), SIZE)
  slots = set()
  for position in range(14):
    element = crops_of(position)
    pool_position, epoch = crops_of.order(position)
    slot = crops_of.slot_for(pool_position, epoch)
    slots.add(slot)
    pixels, _ = stored.crop(table, pool_position, slot)
    np.testing.assert_array_equal(element["image"], normalizer(pixels))
    np.testing.assert_array_equal(element["soft_label"], table.probs(pool_position, slot))
    assert int(element["slot"]) == slot and int(element["id"]) == pool_position
  assert len(slots) > 1


def test_the_command_line_refuses_a_bad_folder_in_one_line(tmp_path):
  """`python -m hardlabel_jax.fkd_labels --import_from`: exit code 1, one `error:` line naming
  the first missing file, and no table."""
  root, _, _, _ = _set(tmp_path)
  _port_generate_soft_label(os.path.join(root, "train"), tmp_path / "fkd")
  os.remove(tmp_path / "fkd" / "epoch_2" / "batch_0.tar")
  done = subprocess.run([
      sys.executable, "-m", "hardlabel_jax.fkd_labels", f"--import_from={tmp_path / 'fkd'}",
      f"--table_dir={tmp_path / 'table'}", f"--set={root}", "--class_order=",
      f"--dataset=imagefolder:{root}", f"--image_size={SIZE}"
  ], capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 1, done.stderr
  assert done.stderr.strip().splitlines() == [
      f"error: {tmp_path}/fkd/epoch_2/batch_0.tar: "
      "missing (the folder holds batch files up to "
      "batch_2.tar)"
  ]
  assert not os.path.exists(tmp_path / "table")
