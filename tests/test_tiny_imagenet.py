"""Tiny-ImageNet as distributed (`tiny_imagenet:<root>`): class order, splits, a run, errors."""

import os

import numpy as np
from PIL import Image
import pytest

from hardlabel_jax import plan
from hardlabel_jax.data import tiny_imagenet
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.sources import load_source
from helpers import tiny_config

# LINs-lab/RDED prepare/tinyimagenet.md: the index of each renamed class folder (00000 ... 00199)
# and the wnid it holds, in that index order.
RDED_FOLDERS = """
n01443537 n01629819 n01641577 n01644900 n01698640 n01742172 n01768244 n01770393 n01774384 n01774750
n01784675 n01855672 n01882714 n01910747 n01917289 n01944390 n01945685 n01950731 n01983481 n01984695
n02002724 n02056570 n02058221 n02074367 n02085620 n02094433 n02099601 n02099712 n02106662 n02113799
n02123045 n02123394 n02124075 n02125311 n02129165 n02132136 n02165456 n02190166 n02206856 n02226429
n02231487 n02233338 n02236044 n02268443 n02279972 n02281406 n02321529 n02364673 n02395406 n02403003
n02410509 n02415577 n02423022 n02437312 n02480495 n02481823 n02486410 n02504458 n02509815 n02666196
n02669723 n02699494 n02730930 n02769748 n02788148 n02791270 n02793495 n02795169 n02802426 n02808440
n02814533 n02814860 n02815834 n02823428 n02837789 n02841315 n02843684 n02883205 n02892201 n02906734
n02909870 n02917067 n02927161 n02948072 n02950826 n02963159 n02977058 n02988304 n02999410 n03014705
n03026506 n03042490 n03085013 n03089624 n03100240 n03126707 n03160309 n03179701 n03201208 n03250847
n03255030 n03355925 n03388043 n03393912 n03400231 n03404251 n03424325 n03444034 n03447447 n03544143
n03584254 n03599486 n03617480 n03637318 n03649909 n03662601 n03670208 n03706229 n03733131 n03763968
n03770439 n03796401 n03804744 n03814639 n03837869 n03838899 n03854065 n03891332 n03902125 n03930313
n03937543 n03970156 n03976657 n03977966 n03980874 n03983396 n03992509 n04008634 n04023962 n04067472
n04070727 n04074963 n04099969 n04118538 n04133789 n04146614 n04149813 n04179913 n04251144 n04254777
n04259630 n04265275 n04275548 n04285008 n04311004 n04328186 n04356056 n04366367 n04371430 n04376876
n04398044 n04399382 n04417672 n04456115 n04465501 n04486054 n04487081 n04501370 n04507155 n04532106
n04532670 n04540053 n04560804 n04562935 n04596742 n04597913 n06596364 n07579787 n07583066 n07614500
n07615774 n07695742 n07711569 n07715103 n07720875 n07734744 n07747607 n07749582 n07753592 n07768694
n07871810 n07873807 n07875152 n07920052 n09193705 n09246464 n09256479 n09332890 n09428293 n12267677
""".split()
# The first lines of the release's wnids.txt (not sorted).
RELEASE_FIRST = ("n02124075", "n04067472", "n04540053", "n04099969", "n07749582", "n01641577")


def _save(path, value: int, size: int, gray: bool = False):
  """A flat image of one grey level (JPEG keeps a flat image within a level or two)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.full((size, size) if gray else (size, size, 3), value, np.uint8)
  Image.fromarray(pixels).save(path)


def level(k: int, extension: str) -> int:
  """The grey level of class k's images (line k of wnids.txt): 10 k + 5 in JPEG, which keeps a
  flat image within a level or two; k itself in PNG (200 classes)."""
  return 10 * k + 5 if extension == ".JPEG" else k


def write_layout(root, wnids, train_per_class=2, val=None, size=8, extension=".JPEG"):
  """tiny-imagenet-200's layout. Class k of `wnids` (line order) has flat images of `level(k)`,
  val image j is of class `val[j]` (default: one per class, in reverse line order)."""
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "wnids.txt"), "w") as f:
    f.write("\n".join(wnids) + "\n")
  with open(os.path.join(root, "words.txt"), "w") as f:
    f.writelines(f"{w}\tthing {w}\n" for w in wnids)
  for k, wnid in enumerate(wnids):
    for i in range(train_per_class):
      _save(os.path.join(root, "train", wnid, "images", f"{wnid}_{i}{extension}"),
            level(k, extension), size, gray=i == 1)  # the release holds some grayscale JPEGs
    with open(os.path.join(root, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
      f.write(f"{wnid}_0.JPEG\t0\t0\t{size}\t{size}\n")
  val = list(range(len(wnids)))[::-1] if val is None else val
  lines = []
  for j, k in enumerate(val):
    _save(os.path.join(root, "val", "images", f"val_{j}{extension}"), level(k, extension), size)
    lines.append(f"val_{j}{extension}\t{wnids[k]}\t0\t0\t{size - 1}\t{size - 1}\n")
  with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
    f.writelines(lines)
  _save(os.path.join(root, "test", "images", "test_0.JPEG"), 0, size)  # unlabelled, unread
  return str(root)


def test_labels_are_rdeds_renamed_folder_order_on_the_release_layout(tmp_path):
  """RDED's prepare/tinyimagenet.md renames class folders 00000..00199 to the wnids sorted
  (00000 = n01443537, 00032 = n02124075, 00199 = n12267677), the order torchvision's
  ImageFolder gives the original train/ folders; the release's wnids.txt lists them in another
  order (its first line, n02124075, is RDED's 00032). The source's labels are RDED's indices."""
  assert RDED_FOLDERS == sorted(RDED_FOLDERS) and len(RDED_FOLDERS) == 200
  rest = [w for w in RDED_FOLDERS if w not in RELEASE_FIRST]
  wnids = list(RELEASE_FIRST) + list(np.random.default_rng(0).permutation(rest))
  root = write_layout(tmp_path / "tiny-imagenet-200", wnids, train_per_class=1, extension=".png")
  data_dir = str(tmp_path / "data")
  train = load_source(f"tiny_imagenet:{root}", "train", data_dir)
  assert train.info.class_names == tuple(RDED_FOLDERS) and train.info.num_classes == 200
  rded_index = {w: i for i, w in enumerate(RDED_FOLDERS)}
  assert (rded_index["n01443537"], rded_index["n02124075"], rded_index["n12267677"]) == (0, 32, 199)
  # One image per class, class by class in label order: image i is wnid RDED_FOLDERS[i], whose
  # pixels are the level of its line in wnids.txt.
  np.testing.assert_array_equal(train.labels(), np.arange(200))
  for i in range(200):
    example = train[i]
    assert example["label"] == i and example["image"].shape == (8, 8, 3)
    assert (example["image"] == wnids.index(RDED_FOLDERS[i])).all()
  test = load_source(f"tiny_imagenet:{root}", "test", data_dir)
  # val_j is of the class at line 199 - j of wnids.txt (write_layout); files sorted by name.
  names = sorted(f"val_{j}.png" for j in range(200))
  expected = [rded_index[wnids[199 - int(n[4:-4])]] for n in names]
  np.testing.assert_array_equal(test.labels(), expected)
  for j in range(200):  # each val image carries the label of the class its pixels were drawn for
    example = test[j]
    assert (example["image"] == wnids.index(RDED_FOLDERS[example["label"]])).all()
  assert test.info.class_names == train.info.class_names and test.info.split == "test"
  assert train.info.mean == (0.485, 0.456, 0.406) and train.info.std == (0.229, 0.224, 0.225)
  # 'val' names the same labelled split.
  assert load_source(f"tiny_imagenet:{root}", "val",
                     data_dir).info.fingerprint == (test.info.fingerprint)


def test_wnids_line_order_is_a_class_order_file(tmp_path):
  wnids = ["n03000003", "n01000001", "n02000002"]
  root = write_layout(tmp_path / "tiny", wnids, val=[0, 2, 1, 1])
  data_dir = str(tmp_path / "data")
  sorted_train = load_source(f"tiny_imagenet:{root}", "train", data_dir)
  assert sorted_train.info.class_names == ("n01000001", "n02000002", "n03000003")
  np.testing.assert_array_equal(sorted_train.labels(), [0, 0, 1, 1, 2, 2])
  # The first train image of label 0 (n01000001) has its wnids.txt line's level, 15.
  assert np.abs(sorted_train[0]["image"].astype(int) - 15).max() <= 2
  order = os.path.join(root, "wnids.txt")
  by_line = load_source(f"tiny_imagenet:{root}", "train", data_dir, class_order=order)
  assert by_line.info.class_names == tuple(wnids)
  assert np.abs(by_line[0]["image"].astype(int) - 5).max() <= 2  # n03000003, line 0
  test = load_source(f"tiny_imagenet:{root}", "test", data_dir, class_order=order)
  np.testing.assert_array_equal(test.labels(), [0, 2, 1, 1])  # val_0..val_3 annotated by line
  assert by_line.info.fingerprint != sorted_train.info.fingerprint


def test_a_short_training_run_on_the_layout(tmp_path):
  root = write_layout(tmp_path / "tiny", ["n02000002", "n01000001", "n03000003"], train_per_class=4,
                      size=16)
  config = tiny_config(dataset=f"tiny_imagenet:{root}", image_size=16, images_per_class=0,
                       budget_examples=16 * 2, data_dir=str(tmp_path / "data"))
  out = plan.train(config, str(tmp_path / "w"))
  assert out.results["dataset"] == f"tiny_imagenet:{root}" and out.results["pool_size"] == 12
  assert 0.0 <= out.results["test_top1"] <= 1.0 and np.isfinite(out.results["test_loss"])


def _without(path):
  os.remove(path)


BAD_LAYOUTS = [
    ("no_wnids", lambda r: _without(os.path.join(r, "wnids.txt")), "train", r"wnids.txt not found"),
    ("unannotated_val", lambda r: _save(os.path.join(r, "val", "images", "val_9.JPEG"), 0, 8),
     "test", r"val images 'val_9.JPEG' are not in val/val_annotations.txt"),
    ("unknown_wnid", lambda r: open(os.path.join(r, "val", "val_annotations.txt"), "a").write(
        "val_0.JPEG\tn09999999\t0\t0\t7\t7\n"), "test",
     r"line 4: val_0.JPEG is annotated with 'n09999999', which is not in wnids.txt"),
    ("missing_val_file", lambda r: _without(os.path.join(r, "val", "images", "val_2.JPEG")), "test",
     r"annotates 'val_2.JPEG', which are not in"),
    ("extra_folder", lambda r: os.makedirs(os.path.join(r, "train", "n04000004", "images")), "test",
     r"train/ and wnids.txt disagree: train folders 'n04000004' are not in wnids.txt"),
    ("empty_class", lambda r: [
        _without(os.path.join(r, "train", "n01000001", "images", f))
        for f in os.listdir(os.path.join(r, "train", "n01000001", "images"))
    ], "train", r"class n01000001 has no images"),
    ("repeated_wnid", lambda r: open(os.path.join(r, "wnids.txt"), "a").write("n01000001\n"),
     "train", r"lists 'n01000001' more than once"),
]


@pytest.mark.parametrize("name,damage,split,message", BAD_LAYOUTS, ids=[c[0] for c in BAD_LAYOUTS])
def test_a_bad_layout_is_one_clear_error_and_nothing_is_built(tmp_path, name, damage, split,
                                                              message):
  root = write_layout(tmp_path / name, ["n02000002", "n01000001", "n03000003"])
  damage(root)
  data_dir = tmp_path / "data"
  with pytest.raises(DataSourceError, match=message):
    load_source(f"tiny_imagenet:{root}", split, str(data_dir))
  assert not data_dir.exists()


def test_unknown_split_names_the_ones_there_are(tmp_path):
  root = write_layout(tmp_path / "tiny", ["n01000001", "n02000002"])
  with pytest.raises(DataSourceError, match="has splits 'train' and 'test'.*not 'holdout'"):
    tiny_imagenet.load_tiny_imagenet(root, "holdout", str(tmp_path / "data"))
