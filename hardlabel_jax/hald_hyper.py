"""HALD's per-run learning rate and η, as `Jiacheng8/HALD` `validate/hyper.yaml` tabulates them.

`validate/train_fkd.py` `load_config_from_yaml` sets `args.adamw_lr, args.eta =
cfg['hyperparams'][model][ipc]` for the run's data set, student and images per class; the
schedule is then `LambdaLR(0.5 · (1 + cos(π e / E / η)))`, stepped once per epoch. A config with
`schedule='hald'` and `hald_eta=0` takes η from this table (`resolved_eta`); the learning rate is
a config's own (`official_lr_eta` gives the table's for a config to copy).
"""

from __future__ import annotations

import ml_collections

# hyper.yaml, verbatim: data set → student → images per class → (AdamW lr, η).
HYPER_YAML: dict[str, dict[str, dict[int, tuple[float, float]]]] = {
    "cifar100": {
        "ResNet18": {
            1: (0.0005, 2),
            10: (0.001, 2),
            50: (0.001, 1)
        },
        "ResNet50": {
            1: (0.001, 1),
            10: (0.001, 2),
            50: (0.001, 1)
        },
        "ResNet101": {
            1: (0.0005, 1),
            10: (0.0005, 1),
            50: (0.0005, 1)
        },
    },
    "tiny_imagenet": {
        "ResNet18": {
            1: (0.001, 2),
            10: (0.001, 2),
            50: (0.001, 1)
        },
        "ResNet50": {
            1: (0.0005, 2),
            10: (0.0005, 2),
            50: (0.0005, 1)
        },
        "ResNet101": {
            1: (0.0005, 2),
            10: (0.0005, 2),
            50: (0.0005, 1)
        },
    },
    "imagewoof": {
        "ResNet18": {
            1: (0.0005, 2),
            10: (0.0005, 1),
            50: (0.001, 2)
        },
        "ResNet50": {
            1: (0.0005, 2),
            10: (0.005, 1),
            50: (0.0005, 1)
        },
        "ResNet101": {
            1: (0.001, 1),
            10: (0.0005, 2),
            50: (0.0005, 1)
        },
    },
    "imagenet-nette": {
        "ResNet18": {
            1: (0.0005, 2),
            10: (0.0005, 1),
            50: (0.0005, 2)
        },
        "ResNet50": {
            1: (0.0005, 2),
            10: (0.0005, 1),
            50: (0.0005, 1)
        },
        "ResNet101": {
            1: (0.0005, 2),
            10: (0.0005, 2),
            50: (0.001, 2)
        },
    },
    "imagenet1k": {
        "ResNet18": {
            1: (0.001, 2),
            10: (0.001, 2),
            20: (0.001, 2),
            30: (0.001, 2),
            40: (0.001, 2),
            50: (0.001, 1)
        },
        "ResNet50": {
            1: (0.0005, 2),
            10: (0.001, 2),
            50: (0.001, 1)
        },
        "ResNet101": {
            1: (0.0035, 2),
            10: (0.001, 2),
            50: (0.0005, 1)
        },
        "MobileNetV2": {
            ipc: (0.001, 2) for ipc in (10, 20, 30, 40, 50)
        },
        "Densenet121": {
            ipc: (0.001, 2) for ipc in (10, 20, 30, 40, 50)
        },
    },
}
# Our data set names (the source name, without 'tfds:' or a version) → hyper.yaml's.
DATASETS = {
    "cifar100": "cifar100",
    "imagenet2012": "imagenet1k",
    "imagenet1k": "imagenet1k",
    "tiny_imagenet": "tiny_imagenet",
    "imagewoof": "imagewoof",
    "imagenette": "imagenet-nette",
    "imagenet-nette": "imagenet-nette",
}
# Our students → hyper.yaml's (train_fkd.py uses its small-resolution ResNets up to 64 px).
MODELS = {
    "resnet18": "ResNet18",
    "resnet18_cifar": "ResNet18",
    "resnet50": "ResNet50",
    "resnet50_cifar": "ResNet50",
}


def _dataset_key(dataset: str) -> str:
  """'tfds:imagenet2012:5.1.0' → 'imagenet2012'."""
  name = dataset.split(":", 1)[1] if dataset.startswith("tfds:") else dataset
  return name.split(":")[0].split("/")[0]


def official_lr_eta(dataset: str, model: str, images_per_class: int) -> tuple[float, float] | None:
  """hyper.yaml's (lr, η) for a run, or None where it has no entry."""
  table = HYPER_YAML.get(DATASETS.get(_dataset_key(dataset), ""), {})
  return table.get(MODELS.get(model, ""), {}).get(int(images_per_class))


def resolved_eta(config: ml_collections.ConfigDict) -> float:
  """`hald_eta`, or with 0 hyper.yaml's η for the config's data set, student and IPC.

  `hald_eta_like='cifar100:resnet18'` reads the row of that data set and student instead, at the
  run's own IPC (a data set or student the table does not list borrows a listed one's η).
  """
  if config.hald_eta:
    return float(config.hald_eta)
  dataset, model = config.dataset, config.model
  if config.hald_eta_like:
    dataset, _, model = config.hald_eta_like.partition(":")
  entry = official_lr_eta(dataset, model, config.images_per_class)
  if entry is None:
    field = "hald_eta_like" if config.hald_eta_like else "hald_eta"
    raise ValueError(
        f"config.{field}: hald_eta=0 takes η from Jiacheng8/HALD validate/hyper.yaml, which has no "
        f"entry for dataset={dataset!r}, model={model!r}, "
        f"images_per_class={config.images_per_class}; set hald_eta (the table uses 1 or 2), or "
        "hald_eta_like='<data set>:<student>' of a listed row")
  return float(entry[1])
