"""Data sources: embedded MNIST, Fashion-MNIST IDX, image folders, TFDS; none needs TensorFlow."""

import hashlib
import io
import os
import pickle
import sys
import threading

from etils import epath
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from hardlabel_jax.data import embedded
from hardlabel_jax.data import fashion_mnist
from hardlabel_jax.data import local_builder
from hardlabel_jax.data.image_folder import FolderSource
from hardlabel_jax.data.image_folder import load_imagefolder
from hardlabel_jax.data.source import ImageSource
from hardlabel_jax.data.sources import DataSourceError
from hardlabel_jax.data.sources import list_known_sources
from hardlabel_jax.data.sources import load_source


def _all(source):
  """Every example of a source, read in one batched call."""
  return source._getitems(list(range(len(source))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One build cache per module, so each local set is built once (and nothing lands in ~)."""
  return str(tmp_path_factory.mktemp("hardlabel_data"))


@pytest.fixture(scope="module")
def mnist(data_dir):
  return {split: load_source("embedded_mnist", split, data_dir) for split in ("train", "test")}


def test_embedded_mnist_sizes_shapes_and_ids(mnist):
  for split, per_class in (("train", 400), ("test", 100)):
    source = mnist[split]
    assert isinstance(source, ImageSource)
    assert len(source) == 10 * per_class
    np.testing.assert_array_equal(np.bincount(source.labels()), [per_class] * 10)
    examples = _all(source)
    assert [e["id"] for e in examples] == list(range(len(source)))
    assert [e["label"] for e in examples] == source.labels().tolist()
    assert all(e["image"].dtype == np.uint8 and e["image"].shape == (28, 28, 1) for e in examples)
    assert source.info.image_shape == (28, 28, 1) and source.info.num_classes == 10
    assert source.info.mean == (0.1307,) and source.info.std == (0.3081,)


def test_embedded_mnist_ids_follow_the_documented_split_rule(mnist):
  table = np.loadtxt(embedded.csv_path(), delimiter=",")
  rows = embedded.split_rows()
  for split, source in mnist.items():
    images = np.stack([e["image"] for e in _all(source)])
    np.testing.assert_array_equal(images.reshape(len(source), -1), table[rows[split], :-1])
    np.testing.assert_array_equal(source.labels(), table[rows[split], -1])


def test_embedded_mnist_fingerprints_and_disjoint_splits(mnist, data_dir):
  again = load_source("embedded_mnist", "train", data_dir)
  assert again.info.fingerprint == mnist["train"].info.fingerprint
  assert mnist["train"].info.fingerprint != mnist["test"].info.fingerprint
  digests = {
      split: {hashlib.sha256(e["image"].tobytes()).digest() for e in _all(source)}
      for split, source in mnist.items()
  }
  assert not digests["train"] & digests["test"]


def test_embedded_mnist_pickles_for_grain_workers(mnist):
  source = mnist["train"]
  source[5]  # opens the reader, which must not travel in the pickle
  clone = pickle.loads(pickle.dumps(source))
  assert clone.info == source.info and len(clone) == len(source)
  a, b = source[123], clone[123]
  np.testing.assert_array_equal(a["image"], b["image"])
  assert (a["label"], a["id"]) == (b["label"], b["id"])
  with pytest.raises(IndexError):
    source[len(source)]


def test_embedded_mnist_in_grain_worker_processes(mnist):
  from absl import flags
  import grain
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags; pytest parses none
  source = mnist["test"]
  dataset = grain.MapDataset.source(source).batch(100).to_iter_dataset()
  batches = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=1))
  ids = np.concatenate([batch["id"] for batch in batches])
  np.testing.assert_array_equal(ids, np.arange(len(source)))


def test_local_build_runs_once_when_threads_race(tmp_path):
  calls = []
  images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)

  def make_splits():
    calls.append(1)
    return {"train": local_builder.LocalSplit(images, np.array([0, 1]))}

  paths = []
  threads = [
      threading.Thread(target=lambda: paths.append(
          local_builder.prepare_local("race", "k", make_splits, image_shape=(4, 4, 1), class_names=
                                      ("a", "b"), data_dir=str(tmp_path)))) for _ in range(3)
  ]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1 and len(set(paths)) == 1 and len(paths) == 3


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_DIR),
                    reason="needs `apt-get install dataset-fashion-mnist`")
def test_fashion_mnist_local(data_dir, monkeypatch):
  monkeypatch.delenv(fashion_mnist.ENV_DIR, raising=False)
  train = load_source("fashion_mnist_local", "train", data_dir)
  test = load_source("fashion_mnist_local", "test", data_dir)
  assert (len(train), len(test)) == (60000, 10000)
  for source, per_class in ((train, 6000), (test, 1000)):
    labels = source.labels()
    assert labels.min() >= 0 and labels.max() <= 9
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
  assert train.info.class_names[0] == "T-shirt/top" and train.info.num_classes == 10
  with open(os.path.join(fashion_mnist.DEBIAN_DIR, "t10k-images-idx3-ubyte.gz"), "rb") as f:
    first = fashion_mnist.read_idx(f.read(), 0x00000803)[0]
  np.testing.assert_array_equal(test[0]["image"][..., 0], first)
  assert test[0]["image"].shape == (28, 28, 1) and test[9999]["id"] == 9999


def test_fashion_mnist_missing_says_apt_get(tmp_path, monkeypatch):
  monkeypatch.setenv(fashion_mnist.ENV_DIR, str(tmp_path))
  with pytest.raises(DataSourceError, match="apt-get install dataset-fashion-mnist"):
    load_source("fashion_mnist_local", "train", str(tmp_path))


def _write_folder(root, classes=("cat", "ant", "bee"), per_class=4, size=(8, 8), mode="RGB"):
  """Writes random PNGs; returns {(class, index): pixels}."""
  rng = np.random.default_rng(0)
  written = {}
  for name in classes:
    os.makedirs(os.path.join(root, name))
    for i in range(per_class):
      shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
      pixels = rng.integers(0, 256, shape, dtype=np.uint8)
      Image.fromarray(pixels, mode).save(os.path.join(root, name, f"img{i}.png"))
      written[name, i] = pixels
  with open(os.path.join(root, classes[0], "notes.txt"), "w") as f:  # non-images are ignored
    f.write("not an image")
  return written


@pytest.mark.parametrize("cache", [True, False])
def test_imagefolder_labels_pixels_and_ids(tmp_path, cache):
  written = _write_folder(tmp_path / "distilled" / "train")
  name = f"imagefolder:{tmp_path / 'distilled'}"
  if cache:
    source = load_source(name, "train", str(tmp_path / "cache"))
  else:
    source = load_imagefolder(tmp_path / "distilled", "train", cache=False)
  assert len(source) == 12 and source.info.class_names == ("ant", "bee", "cat")
  assert source.info.image_shape == (8, 8, 3) and source.info.num_classes == 3
  np.testing.assert_array_equal(source.labels(), np.repeat([0, 1, 2], 4))
  for example in _all(source) if cache else [source[i] for i in range(12)]:
    class_name = source.info.class_names[example["label"]]
    np.testing.assert_array_equal(example["image"], written[class_name, example["id"] % 4])
  again = load_imagefolder(tmp_path / "distilled", "train", data_dir=str(tmp_path / "cache"),
                           cache=cache)
  assert again.info.fingerprint == source.info.fingerprint
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(again))[7]["image"], source[7]["image"])


def test_imagefolder_whole_folder_reference_classes_gray_and_mixed_sizes(tmp_path):
  _write_folder(tmp_path / "flat", classes=("n02", "n01"), mode="L")
  source = load_imagefolder(tmp_path / "flat", "test", ("n00", "n01", "n02"),
                            data_dir=str(tmp_path / "cache"))
  assert source.info.num_classes == 3 and source.info.image_shape == (8, 8, 1)
  np.testing.assert_array_equal(source.labels(), np.repeat([1, 2], 4))  # reference order
  assert source[0]["image"].shape == (8, 8, 1)
  with pytest.raises(DataSourceError, match="not among"):
    load_imagefolder(tmp_path / "flat", "test", ("n00", "n01"))
  _write_folder(tmp_path / "mixed" / "a", classes=("x",), size=(8, 6))
  _write_folder(tmp_path / "mixed" / "b", classes=("y",), size=(5, 7))
  os.rename(tmp_path / "mixed" / "a" / "x", tmp_path / "mixed" / "x")
  os.rename(tmp_path / "mixed" / "b" / "y", tmp_path / "mixed" / "y")
  mixed = load_imagefolder(tmp_path / "mixed", "train")
  assert isinstance(mixed, FolderSource) and mixed.info.image_shape == (None, None, 3)
  assert mixed[0]["image"].shape == (6, 8, 3) and mixed[4]["image"].shape == (7, 5, 3)
  with pytest.raises(DataSourceError, match="class directories"):
    load_imagefolder(tmp_path / "nowhere", "train")


def test_tfds_mocked_cifar10(tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    source = load_source("tfds:cifar10", "train", str(tmp_path))
    assert len(source) == 20 and source.info.num_classes == 10
    assert source.info.image_shape == (32, 32, 3) and source.info.mean[0] == 0.4914
    examples = [source[i] for i in range(20)]
    assert all(e["image"].dtype == np.uint8 and e["image"].shape == (32, 32, 3) for e in examples)
    assert all(0 <= e["label"] < 10 for e in examples)
    assert [e["id"] for e in examples] == list(range(20))
    np.testing.assert_array_equal(source.labels(), [e["label"] for e in examples])
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[3]["image"], examples[3]["image"])
  assert "tensorflow" not in sys.modules


class HardlabelTestTinyPng(tfds.core.GeneratorBasedBuilder):
  """A real on-disk TFDS set with PNG-encoded `Image` features, built without TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = epath.Path(__file__).parent

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(6, 5, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(10)}

  def _generate_examples(self, n):
    for i, pixels in enumerate(_tiny_pixels(n)):
      buffer = io.BytesIO()
      Image.fromarray(pixels).save(buffer, format="PNG")  # bytes in: TFDS needs no TF to encode
      yield i, {"image": buffer.getvalue(), "label": i % 3}


def _tiny_pixels(n):
  return np.random.default_rng(1).integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)


def test_tfds_prepared_array_record_set(tmp_path):
  builder = HardlabelTestTinyPng(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  source = load_source("tfds:hardlabel_test_tiny_png", "train", str(tmp_path))
  assert len(source) == 10 and source.info.class_names == ("a", "b", "c")
  assert source.info.image_shape == (6, 5, 3) and source.info.mean == (0.5, 0.5, 0.5)
  examples = _all(source)
  assert [e["label"] for e in examples] == source.labels().tolist()
  pixels = {p.tobytes(): i for i, p in enumerate(_tiny_pixels(10))}
  for e in examples:  # TFDS shuffles records at build time; ids are record indices
    assert e["label"] == pixels[e["image"].tobytes()] % 3
  cached = tmp_path / "hardlabel_labels" / f"{source.info.fingerprint}.npy"
  np.testing.assert_array_equal(np.load(cached), source.labels())
  sliced = load_source("tfds:hardlabel_test_tiny_png", "train[:4]", str(tmp_path))
  assert len(sliced) == 4 and sliced.info.fingerprint != source.info.fingerprint
  with pytest.raises(DataSourceError, match="splits"):
    load_source("tfds:hardlabel_test_tiny_png", "validation", str(tmp_path))
  assert "tensorflow" not in sys.modules


def test_tfds_not_prepared_says_how_to_build(tmp_path):
  with pytest.raises(DataSourceError, match="tfds build cifar100 .*--file_format=array_record"):
    load_source("tfds:cifar100", "train", str(tmp_path))
  with pytest.raises(DataSourceError, match="downloads/manual") as error:
    load_source("tfds:imagenet2012", "train", str(tmp_path))
  assert "ILSVRC2012_img_train.tar" in str(error.value) and "tfds build" in str(error.value)


def test_unknown_names():
  assert list_known_sources() == ("embedded_mnist", "fashion_mnist_local")
  with pytest.raises(DataSourceError, match="tfds:"):
    load_source("cifar10", "train")
  with pytest.raises(DataSourceError, match="no TFDS data set"):
    load_source("tfds:no_such_dataset_xyz", "train")
  with pytest.raises(DataSourceError, match="splits"):
    load_source("embedded_mnist", "validation")
