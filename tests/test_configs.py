"""Every experiment config loads and validates; recipe values match the papers they cite."""

import glob
import os

import numpy as np
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import hald
from hardlabel_jax import hald_hyper
from hardlabel_jax import run_data
from hardlabel_jax import study
from hardlabel_jax.soft_labels import table as table_lib

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))
# Every argument each config's docstring and get_config document, alone and with runlocal.
_SELECT = [
    f"method={m},ipc={i}" for m in ("random", "el2n_easy", "el2n_hard", "ccs", "cad_prune", "rded",
                                    "ca2d") for i in (10, 50)
]
_CA2D = [
    f"method={m},ipc={i}" for m in ("ca2d", "rded", "cad_prune", "random") for i in (10, 50, 100)
]
DOCUMENTED_ARGS = {
    "check_set.py": ["set=/data/syn_data", "set=/s,class_order=test_names,seeds=5,teacher=/t"],
    "cifar100_study.py": [],
    "demo.py": [],
    "embedded_drift.py": ["crops=2,seed=1"],
    "embedded_hald.py": [
        "crops=2,seed=1", "crops=16", "regime=hl", "regime=sl", "regime=sl_kd",
        "crops=4,task=relabel"
    ],
    "embedded_hl.py": ["norm=batch"],
    "embedded_kd_rld.py": [f"loss={loss},seed=1" for loss in ("kd", "rld", "dkd", "nkd", "ce")],
    "embedded_select.py": _SELECT + [
        "method=ccs,ipc=10,seed=1", "method=ca2d,ipc=10,task=distill",
        "method=rded,ipc=50,task=distill"
    ],
    "embedded_sre2l.py": [
        "task=synthesize,method=cda,seed=1", "task=synthesize,batching=class",
        "method=cda,batching=class", "method=rded"
    ],
    "fashion_hald.py": ["seeds=1"],
    "fashion_hl.py": [],
    "fashion_study.py": ["seeds=1"],
    "imagenet_ca2d_ipc10.py": _CA2D + ["seed=1"],
    "imagenet_hald_ipc10.py": ["ipc=50", "crops=5,seed=1", "task=relabel", "regime=sl"],
    "imagenet_hl_resnet18.py": ["ipc=50"],
    "imagenet_study.py": [],
    "fashion_paper.py": ["seeds=1"],
    "fashion_premise.py": ["seeds=1"],
    "fashion_hald_drift.py": ["set=random", "set=sre2l,ipc=50", "teacher=eval"],
    "fashion_hald_paper.py": [
        "seeds=1", "ablation=label_smoothing", "ablation=t2_weight", "ablation=eval_teacher",
        "ablation=phase_curve,seeds=1", "ablation=label_smoothing,tables=all,seeds=1",
        "ablation=schedule_s8"
    ],
}
CONFIG_ARGS = [(name, arg)
               for name in sorted(DOCUMENTED_ARGS)
               for base in [None, *DOCUMENTED_ARGS[name]]
               for arg in (base, ",".join(filter(None, [base, "runlocal"])))]


def _batch_sizes(config, where="config"):
  """`global_batch_size` of a config and of the runs it nests (teacher, scoring run)."""
  sizes = {where: config.global_batch_size}
  for field in ("teacher_config", "score_config"):
    if config[field] is not None:
      sizes.update(_batch_sizes(config[field], f"{where}.{field}"))
  return sizes


def test_every_config_file_has_its_arguments_listed():
  assert sorted(DOCUMENTED_ARGS) == [os.path.basename(p) for p in CONFIGS]


@pytest.mark.parametrize("name, arg", CONFIG_ARGS, ids=lambda v: str(v))
def test_config_validates_and_its_batches_split_over_8_devices(name, arg):
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, name), arg)
  config_schema.validate(config)  # teacher_config and score_config too, as runs of their own
  assert {k: v for k, v in _batch_sizes(config).items() if v % 8} == {}


def test_field_groups_partition_the_defaults():
  grouped = [field for fields in config_schema.FIELD_GROUPS.values() for field in fields]
  assert len(grouped) == len(set(grouped))
  assert sorted(grouped) == sorted(config_schema.default_config().keys())


def _config(**overrides):
  config = config_schema.default_config()
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize(
    "overrides, field, read",
    [
        ({}, "label_smoothing", True),
        ({
            "regime": "sl",
            "teacher_workdir": "/t"
        }, "label_smoothing", False),
        ({
            "task": "score",
            "score_epochs": 2
        }, "label_smoothing", True),
        ({
            "regime": "kd"
        }, "distillation_kwargs", True),
        ({
            "regime": "sl_kd"
        }, "kd_warmup_epochs", False),
        ({
            "regime": "sl_kd"
        }, "logit_standardization", True),
        ({
            "regime": "hald"
        }, "logit_standardization", False),
        ({}, "temperature", False),
        ({
            "task": "drift"
        }, "temperature", True),
        ({
            "task": "drift"
        }, "label_format", False),
        ({
            "task": "relabel"
        }, "crops_per_image", True),
        ({
            "regime": "sl"
        }, "topk", False),
        ({
            "regime": "sl",
            "label_format": "topk_q8"
        }, "topk", True),
        ({
            "regime": "sl"
        }, "hald_schedule", False),
        ({
            "schedule": "hald"
        }, "hald_eta", True),
        ({
            "regime": "hald"
        }, "hald_eta", False),
        ({
            "optimizer": "adamw"
        }, "momentum", False),
        ({
            "optimizer": "adamw"
        }, "adam_b2", True),
        ({
            "schedule": "step"
        }, "step_gamma", True),
        ({}, "teacher_config", False),
        ({
            "selection": "rded",
            "images_per_class": 1
        }, "teacher_workdir", True),
        ({
            "selection": "ccs",
            "images_per_class": 1
        }, "ccs_strata", True),
        ({
            "selection": "ccs",
            "images_per_class": 1
        }, "subset_ids_file", False),
        ({
            "selection": "ca2d",
            "images_per_class": 1
        }, "cad_direction", True),
        ({
            "selection": "cad_prune",
            "images_per_class": 1
        }, "cad_window", False),
        ({
            "task": "score",
            "score_epochs": 2
        }, "cad_downstream_epochs", False),
        ({
            "task": "score",
            "score_epochs": 0
        }, "cad_downstream_epochs", True),
        ({
            "task": "relabel"
        }, "learning_rate", False),
        ({
            "task": "relabel"
        }, "num_workers", True),
        ({
            "task": "study",
            "study_regimes": ("hl",)
        }, "temperature", False),
        ({
            "task": "study",
            "study_regimes": ("hl", "sl")
        }, "temperature", True),
        ({
            "task": "study"
        }, "images_per_class", False),  # every cell sets its own
        ({
            "task": "study",
            "study_methods": ("random",)
        }, "seed", False),
        ({
            "task": "study",
            "study_methods": ("ccs",)
        }, "seed", True),  # the scoring run's seed
    ])
def test_fields_read_follows_task_regime_selection_and_optimizer(overrides, field, read):
  assert (field in config_schema.fields_read(_config(**overrides))) == read


def test_a_distillation_loss_under_sl_kd_is_refused_naming_the_field():
  config = _config(regime="sl_kd", teacher_workdir="/t", distillation_loss="dkd")
  with pytest.raises(
      ValueError, match=r"config\.distillation_loss: set to 'dkd' but "
      r"task=train, regime=sl_kd \(selection=random\) never reads it.*regime=kd"):
    config_schema.validate(config)


def test_a_temperature_under_hl_is_refused():
  with pytest.raises(ValueError, match=r"config\.temperature: set to 4\.0 .* regime=hl"):
    config_schema.validate(_config(temperature=4.0))
  config_schema.validate(_config(temperature=4.0, regime="sl", teacher_workdir="/t"))


def test_hald_eta_is_read_by_the_hald_schedule_whatever_the_regime():
  config_schema.validate(_config(schedule="hald", hald_eta=2.0))
  with pytest.raises(ValueError, match=r"config\.hald_eta:.*schedule=hald"):
    config_schema.validate(_config(regime="hald", teacher_workdir="/t", hald_eta=2.0))


def test_study_fields_under_train_are_refused():
  with pytest.raises(ValueError, match=r"config\.study_regimes: .* never reads it.*task=study"):
    config_schema.validate(_config(study_regimes=("hl", "sl")))


def test_nested_runs_are_validated_with_their_field_as_prefix():
  teacher = _config(temperature=4.0)
  with pytest.raises(ValueError, match=r"config\.teacher_config\.temperature: set to 4\.0"):
    config_schema.validate(_config(regime="kd", teacher_config=teacher))
  with pytest.raises(ValueError, match=r"config\.teacher_config\.regime: 'sl'"):
    config_schema.validate(
        _config(regime="kd", teacher_config=_config(regime="sl", teacher_workdir="/t")))
  with pytest.raises(ValueError, match=r"config\.score_config\.task: 'train'"):
    config_schema.validate(
        _config(selection="el2n_hard", images_per_class=1, score_config=_config()))


def test_a_study_resets_what_each_cell_does_not_read():
  config = _config(task="study", study_regimes=("hl", "sl"), study_methods=("random", "ccs"),
                   temperature=4.0, teacher_workdir="/t", budget_examples=1000,
                   study_score_epochs=1)
  config_schema.validate(config)
  counts = np.full(10, 400)
  hl = study.cell_config(config, study.Cell("hl", "random", 10, 0), counts, "/cache")
  sl = study.cell_config(config, study.Cell("sl", "random", 10, 0), counts, "/cache")
  ccs = study.cell_config(config, study.Cell("hl", "ccs", 10, 0), counts, "/cache")
  assert (hl.temperature, hl.teacher_workdir) == (20.0, "")
  assert (sl.temperature, sl.teacher_workdir) == (4.0, "/t")
  assert (ccs.score_config.temperature, ccs.score_config.teacher_workdir) == (20.0, "")
  for cell_cfg in (hl, sl, ccs):
    config_schema.validate(cell_cfg)


def test_imagenet_hald_recipe_is_the_papers():
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "imagenet_hald_ipc10.py"))
  assert (config.model, config.global_batch_size, config.optimizer) == ("resnet18", 16, "adamw")
  assert (config.learning_rate, config.weight_decay, config.hald_eta) == (1e-3, 0.01, 0.0)
  assert hald_hyper.resolved_eta(config) == 2.0 and config.crops_per_image == 10
  assert (config.temperature, config.hald_label_smoothing, config.hald_cutmix_alpha) == (20, .8, 1)
  pool, epochs = 1000 * config.images_per_class, config.num_epochs
  steps = int(epochs * pool) // config.global_batch_size
  phases = hald.StepPhases(hald.parse_schedule(config.hald_schedule), steps,
                           config.global_batch_size, pool)
  per_epoch = pool // config.global_batch_size
  # S6 over 300 epochs: 75 soft, 150 hard, 75 soft.
  assert phases.counts() == {"soft": 150 * per_epoch, "hard": 150 * per_epoch}
  assert phases.of_step(75 * per_epoch - 1) == "soft"
  assert phases.of_step(75 * per_epoch) == "hard"
  assert phases.of_step(225 * per_epoch) == "soft"


@pytest.mark.parametrize("field, value", [
    ("regime", "soft"),
    ("task", "bogus"),
    ("label_format", "fp8"),
    ("temperature", 0.0),
    ("crops_per_image", 0),
    ("label_keep_fraction", 0.0),
    ("teacher_bn_mode", "train"),
    ("hald_schedule", "S5"),
])
def test_bad_soft_label_fields_name_the_field(field, value):
  config = config_schema.default_config()
  config.regime = "hald"
  config[field] = value
  with pytest.raises(ValueError, match=f"config.{field}"):
    config_schema.validate(config)


@pytest.mark.parametrize("overrides, field", [
    ({
        "selection": "el2n_hard"
    }, "scores_file"),
    ({
        "selection": "coreset",
        "scores_file": "x.npz"
    }, "selection"),
    ({
        "task": "score",
        "score_epochs": 0
    }, "score_epochs"),
    ({
        "cad_window": 1
    }, "cad_window"),
])
def test_bad_selection_fields_name_the_field(overrides, field):
  config = config_schema.default_config()
  for key, value in overrides.items():
    config[key] = value
  with pytest.raises(ValueError, match=f"config.{field}"):
    config_schema.validate(config)


def test_label_pruning_is_read_where_a_fraction_is_pruned_and_defaults_to_lpld_batches():
  assert config_schema.default_config().label_pruning == "lpld_batches"
  sl = dict(regime="sl", teacher_workdir="/t")
  assert "label_pruning" not in config_schema.fields_read(_config(**sl))  # f = 1: nothing pruned
  assert "label_pruning" in config_schema.fields_read(_config(**sl, label_keep_fraction=0.5))
  assert "label_pruning" in config_schema.fields_read(
      _config(regime="hald", teacher_workdir="/t", label_keep_fraction=0.5))
  config_schema.validate(_config(**sl, label_keep_fraction=0.5, label_pruning="per_image"))
  with pytest.raises(
      ValueError, match=r"config\.label_pruning: set to 'per_image' but .*never "
      r"reads it.*label_keep_fraction=0\.5"):
    config_schema.validate(_config(**sl, label_pruning="per_image"))
  with pytest.raises(ValueError, match=r"config\.label_pruning: 'batch' is not one of"):
    config_schema.validate(_config(**sl, label_keep_fraction=0.5, label_pruning="batch"))
  # A study's regime may prune on its own: its override decides what its cells read.
  study_config = _config(
      task="study", study_regimes=("hl", "sl"), teacher_workdir="/t", budget_examples=1000,
      study_regime_overrides={"sl": {
          "label_keep_fraction": 0.5,
          "label_pruning": "per_image"
      }})
  config_schema.validate(study_config)


def test_cad_windows_shrink_is_a_scoring_field_and_the_cad_configs_set_it():
  defaults = config_schema.default_config()
  assert (defaults.cad_window_rule, defaults.cad_windows_shrink) == ("span", False)
  assert (defaults.cad_window, defaults.cad_num_windows) == (6, 2)
  config_schema.validate(
      _config(task="score", score_epochs=2, cad_window_rule="fixed", cad_windows_shrink=True))
  with pytest.raises(ValueError, match=r"config\.cad_windows_shrink: set to True .*task=train"):
    config_schema.validate(_config(cad_windows_shrink=True))
  # Under the spanning rule J is K − W: the literal J and the shrink are read by 'fixed' only.
  for field, value in (("cad_window", 4), ("cad_windows_shrink", True)):
    with pytest.raises(ValueError, match=rf"config\.{field}: .* cad_window_rule=fixed"):
      config_schema.validate(_config(task="score", score_epochs=2, **{field: value}))
  # Configs whose compute-matched K is below J + W = 8 shrink explicitly, at the paper's J, W.
  for name, arg in (("embedded_select.py", "method=cad_prune,ipc=10"),
                    ("embedded_select.py", "method=ca2d,ipc=50"), ("imagenet_ca2d_ipc10.py",
                                                                   "method=ca2d,ipc=10")):
    score = config_schema.load_config_file(os.path.join(CONFIG_DIR, name), arg).score_config
    assert (score.cad_window, score.cad_num_windows, score.cad_windows_shrink) == (6, 2, True)
  el2n = config_schema.load_config_file(os.path.join(CONFIG_DIR, "embedded_select.py"),
                                        "method=el2n_hard").score_config
  assert (el2n.cad_window, el2n.cad_num_windows, el2n.cad_windows_shrink) == (6, 2, False)
  demo = config_schema.load_config_file(os.path.join(CONFIG_DIR, "demo.py"))
  assert (demo.cad_window, demo.cad_num_windows, demo.cad_windows_shrink) == (6, 2, True)


def test_imagenet_hald_table_stores_cutmix_partners_as_sre2l_relabels():
  # VILA-Lab/SRe2L SRe2L/relabel/relabel.sh relabels with `--mix-type 'cutmix'` (alpha 1.0):
  # each stored row carries the CutMix partner, lambda and box next to its soft label.
  for arg in (None, "task=relabel", "regime=sl"):
    config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "imagenet_hald_ipc10.py"), arg)
    spec = run_data.crop_spec(config)
    assert spec.cutmix_alpha == 1.0 and config.hald_cutmix_alpha == 1.0
  table_spec = table_lib.TableSpec(dataset_name="imagenet2012", dataset_fingerprint="fp",
                                   ids=np.arange(10_000), num_classes=1000, teacher_fingerprint="t",
                                   crop_seed=config.crop_seed,
                                   crop_spec={"cutmix_alpha": spec.cutmix_alpha},
                                   temperature=config.temperature, label_format=config.label_format,
                                   slots_per_image=config.crops_per_image)
  assert table_spec.cutmix
  assert {"partner_id", "mix_lambda", "cut_box"} <= set(table_lib.row_dtype(table_spec).names)
  # 23 bytes of crop and CutMix metadata + 1,000 fp16 probabilities per row; 10 rows per image
  # (SLC 100 at IPC10).
  assert table_lib.bytes_per_row(table_spec) == 2_023
  assert table_spec.num_rows * table_lib.bytes_per_row(table_spec) == 202_300_000
