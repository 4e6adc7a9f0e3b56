"""External image folders with an explicit class order (config.class_order), and their formats."""

import os

import numpy as np
from PIL import Image
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import run_data
from hardlabel_jax.data import class_order
from hardlabel_jax.data import image_folder
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.sources import load_source

PER_CLASS = 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A build cache holding the embedded MNIST (the test set of every run here), built once."""
  path = str(tmp_path_factory.mktemp("hardlabel_data"))
  load_source("embedded_mnist", "test", path)
  return path


def _pixel(label):
  """The gray value that encodes a true label in the images written here."""
  return 10 + 20 * label


def _write(root, folders, per_class=PER_CLASS, ext=".png"):
  """Writes `per_class` 28x28 gray images into `root/<folder>` whose pixels are its true label."""
  for label, folder in enumerate(folders):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    for i in range(per_class):
      pixels = np.full((28, 28), _pixel(label), dtype=np.uint8)
      Image.fromarray(pixels,
                      "L").save(os.path.join(root, folder, f"class{label:03d}_id{i:03d}{ext}"))


def _config(root, data_dir, rule, test_dataset="embedded_mnist"):
  config = config_schema.default_config()
  config.dataset = f"imagefolder:{root}"
  config.test_dataset = test_dataset
  config.class_order = rule
  config.image_size = 28
  config.data_dir = data_dir
  return config


def _assert_true_labels(source, num_classes=10):
  """Every image's label is the one its pixels encode; class_names are in label order."""
  assert source.info.num_classes == num_classes and source.info.image_shape == (28, 28, 1)
  assert len(source) == num_classes * PER_CLASS
  for i in range(len(source)):
    example = source[i]
    assert example["image"][0, 0, 0] == _pixel(example["label"]), i
  np.testing.assert_array_equal(np.bincount(source.labels()), [PER_CLASS] * num_classes)


def _files(directory):
  return sorted(os.path.join(r, f) for r, _, files in os.walk(directory) for f in files)


# Index names padded unevenly, as hand-renamed folders are: sorted as strings they are out of
# order (new003 < new02 < new1), so the sorted rule would mislabel them.
INDEX_FOLDERS = [f"new{str(c).zfill(c % 3 + 1)}" for c in range(10)]


def test_index_names_map_by_their_number(tmp_path, data_dir):
  _write(tmp_path / "set", INDEX_FOLDERS)
  assert sorted(INDEX_FOLDERS) != INDEX_FOLDERS
  data = run_data.load_run_data(_config(tmp_path / "set", data_dir, "index"))
  _assert_true_labels(data.train)
  assert data.train.info.class_names == tuple(INDEX_FOLDERS)
  sorted_source = run_data.train_source(_config(tmp_path / "set", data_dir, ""))
  assert sorted_source.info.class_names == tuple(sorted(INDEX_FOLDERS))
  # Another mapping of the same files is other data: caches keyed on the fingerprint must differ.
  assert sorted_source.info.fingerprint != data.train.info.fingerprint


def test_class_order_file_maps_synset_folders(tmp_path, data_dir):
  synsets = [f"n0{9 - c}{c:06d}" for c in range(10)]  # label order is not sorted order
  _write(tmp_path / "set", synsets)
  order = tmp_path / "classes.txt"
  order.write_text("# label order\n\n" + "\n".join(f"  {s}" for s in synsets) + "\n")
  data = run_data.load_run_data(_config(tmp_path / "set", data_dir, str(order)))
  _assert_true_labels(data.train)
  assert data.train.info.class_names == tuple(synsets)


def test_test_names_map_by_the_test_sets_class_names(tmp_path, data_dir):
  names = list(load_source("embedded_mnist", "test", data_dir).info.class_names)
  assert names == [str(c) for c in range(10)]
  _write(tmp_path / "set", names)
  data = run_data.load_run_data(_config(tmp_path / "set", data_dir, "test_names"))
  _assert_true_labels(data.train)
  assert data.train.info.class_names == tuple(names)


def test_folder_with_its_own_test_split_maps_both_splits(tmp_path, data_dir):
  folders = [f"new{c}" for c in range(12)]  # sorted: new0, new1, new10, new11, new2, ...
  _write(tmp_path / "set" / "train", folders)
  _write(tmp_path / "set" / "test", folders)
  data = run_data.load_run_data(_config(tmp_path / "set", data_dir, "index", test_dataset=""))
  _assert_true_labels(data.train, 12)
  _assert_true_labels(data.test, 12)
  with pytest.raises(DataSourceError, match="test set of other data"):
    run_data.load_run_data(_config(tmp_path / "set", data_dir, "test_names", test_dataset=""))


def test_empty_class_order_keeps_sorted_labels(tmp_path, data_dir):
  folders = ["cat", "ant", "bee"]
  _write(tmp_path / "set", folders)
  # (A whole run would refuse these 3 classes against the 10 of the test set: test_data_checks.)
  train = run_data.train_source(_config(tmp_path / "set", data_dir, ""))
  plain = image_folder.load_imagefolder(tmp_path / "set", "train", data_dir=data_dir)
  assert train.info == plain.info  # same names, labels and fingerprint as before
  assert train.info.class_names == ("ant", "bee", "cat")
  np.testing.assert_array_equal(train.labels(), np.repeat([0, 1, 2], PER_CLASS))
  pixel_of = {
      _pixel(folders.index(name)): label for label, name in enumerate(("ant", "bee", "cat"))
  }
  for i in range(len(train)):
    assert pixel_of[train[i]["image"][0, 0, 0]] == train[i]["label"]


def _order_file(tmp_path, names):
  path = tmp_path / "order.txt"
  path.write_text("\n".join(names))
  return str(path)


@pytest.mark.parametrize("case", [
    "missing_class", "empty_folder", "extra_folder", "out_of_range", "duplicate_index",
    "unknown_in_file", "file_too_short", "unlisted_folder", "not_a_test_name", "no_such_file",
    "not_a_folder_source"
])
def test_bad_mapping_fails_before_anything_is_written(tmp_path, data_dir, case):
  root = tmp_path / "set"
  folders, rule, match = list(INDEX_FOLDERS), "index", None
  if case == "missing_class":
    folders, match = folders[:9], r"classes '9' have no folder"
  elif case == "empty_folder":
    folders, match = folders[:9], r"'9' have no folder.*without images: \['new009'\]"
    os.makedirs(root / "new009")
  elif case == "extra_folder":
    folders, match = folders + ["extras"], r"'extras' map to no class"
  elif case == "out_of_range":
    folders, match = folders + ["new10"], r"'new10' map to labels 10, outside 0..9"
  elif case == "duplicate_index":
    folders, match = folders + ["new0000"], r"share a label: 'new0' and 'new0000'"
  elif case == "unknown_in_file":
    rule, match = _order_file(tmp_path, folders[:9] + ["n999"]), r"names folders 'n999'"
  elif case == "file_too_short":
    rule, match = _order_file(tmp_path, folders[:9]), r"lists 9 folders for the test set's 10"
  elif case == "unlisted_folder":
    folders = folders + ["stray"]
    rule, match = _order_file(tmp_path, folders[:10]), r"folders 'stray' are not listed"
  elif case == "not_a_test_name":
    folders, rule = [str(c) for c in range(9)] + ["ten"], "test_names"
    match = r"'ten' map to no class.*classes '9' have no folder"
  elif case == "no_such_file":
    rule, match = "indexx", r"class_order='indexx' is neither"
  elif case == "not_a_folder_source":
    match = r"applies to 'imagefolder:<path>' and 'tiny_imagenet:<root>' sources only"
  _write(root, folders)
  config = _config(root, data_dir, rule)
  if case == "not_a_folder_source":
    config.dataset = "embedded_mnist"
  before = _files(data_dir)
  with pytest.raises(DataSourceError, match=match):
    run_data.load_run_data(config)
  with pytest.raises(DataSourceError, match=match):
    run_data.train_source(config)
  assert _files(data_dir) == before  # no cache build, no lock file


def test_jpeg_png_any_case_gray_and_rgb_mixed(tmp_path, data_dir):
  root = tmp_path / "set"
  rng = np.random.default_rng(0)
  names = [f"new{c:03d}" for c in range(10)]
  for c, name in enumerate(names):
    os.makedirs(root / name)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(gray, "L").save(root / name / "a.JPEG")
    Image.fromarray(gray, "L").save(root / name / "b.png")
    rgb = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(root / name / "c.jpg")
    Image.fromarray(rgb, "RGB").save(root / name / "d.PNG")
    Image.fromarray(np.dstack([rgb, gray]), "RGBA").save(root / name / "e.png")
    if c == 0:  # exact pixels are checked on the lossless PNGs of class 0
      expected = {"b.png": np.repeat(gray[..., None], 3, -1), "d.PNG": rgb, "e.png": rgb}
  for cache in (True, False):
    source = image_folder.load_imagefolder(root, "train", data_dir=data_dir, cache=cache,
                                           class_order="index",
                                           reference_classes=[str(c) for c in range(10)])
    assert len(source) == 50 and source.info.image_shape == (28, 28, 3)
    images = [source[i]["image"] for i in range(len(source))]
    assert all(image.shape == (28, 28, 3) and image.dtype == np.uint8 for image in images)
    np.testing.assert_array_equal(source.labels(), np.repeat(np.arange(10), 5))
    for i, file_name in enumerate(["a.JPEG", "b.png", "c.jpg", "d.PNG", "e.png"]):
      if file_name in expected:
        np.testing.assert_array_equal(images[i], expected[file_name])
  data = run_data.load_run_data(_config(root, data_dir, "index"))
  assert data.train.info.image_shape == (28, 28, 3) and len(data.train) == 50


def test_folder_index():
  assert class_order.folder_index("new000") == 0
  assert class_order.folder_index("class_00012") == 12
  assert class_order.folder_index("7") == 7
  assert class_order.folder_index("c7_v12") == 12
  assert class_order.folder_index("cat") is None


def test_folder_labels_rules():
  ref = ("a", "b", "c")
  assert class_order.folder_labels("", ["new2", "new10", "new1"], ref) == {
      "new1": 0,
      "new10": 1,
      "new2": 2
  }
  assert class_order.label_order("index", ["new2", "new0", "new1"], ref) == ("new0", "new1", "new2")
  assert class_order.label_order("index", ["x1", "x0"], None) == ("x0", "x1")
  assert class_order.label_order("test_names", ["c", "a", "b"], ref) == ("a", "b", "c")
  with pytest.raises(DataSourceError, match=r"'d' map to no class.*classes 'c' have no folder"):
    class_order.folder_labels("test_names", ["a", "b", "d"], ref)
  with pytest.raises(DataSourceError, match=r"4 class folders .* 3 classes.*'x3' map to labels 3"):
    class_order.folder_labels("index", ["x0", "x1", "x2", "x3"], ref)
  with pytest.raises(DataSourceError, match=r"classes 2 have no folder"):
    class_order.folder_labels("index", ["x0", "x1", "x01"], None)


def test_order_file(tmp_path):
  path = tmp_path / "order.txt"
  path.write_text("# comment\n\n  b \na\n# c\nc\n")
  assert class_order.read_order_file(str(path)) == ("b", "a", "c")
  assert class_order.label_order(str(path), ["a", "b", "c"], ["x", "y", "z"]) == ("b", "a", "c")
  assert class_order.describe(str(path)) == f"class_order file {path}"
  path.write_text("a\nb\na\n")
  with pytest.raises(DataSourceError, match=r"lists folders 'a' more than once"):
    class_order.read_order_file(str(path))
  path.write_text("# nothing\n")
  with pytest.raises(DataSourceError, match="lists no folder names"):
    class_order.read_order_file(str(path))
  many = [f"f{i}" for i in range(9)]
  path.write_text("\n".join(many))
  with pytest.raises(DataSourceError, match=r"'f0', 'f1', 'f2', 'f3', 'f4' and 4 more"):
    class_order.label_order(str(path), [], None)
