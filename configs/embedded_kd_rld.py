"""Online logit distillation on the embedded data: ConvNet-D3 teacher → narrow ConvNet student.

Teacher: ConvNet-D3 (width 128) trained by configs/embedded_hl.py. Student: ConvNet-D3 of width
32 (1/16 of the teacher's conv FLOPs in the wide layers). The student learns from the teacher's
logits on the same crops, computed online in the jitted step, with the loss chosen by `loss=`:

  python -m hardlabel_jax.main --config configs/embedded_kd_rld.py:loss=kd,seed=0 \
      --config.teacher_workdir=/tmp/kd/teacher --workdir /tmp/kd/kd_s0
  python -m hardlabel_jax.main --config configs/embedded_kd_rld.py:loss=rld,seed=0 \
      --config.teacher_workdir=/tmp/kd/teacher --workdir /tmp/kd/rld_s0

The first run trains the teacher into teacher_workdir from teacher_config; later runs reuse it
after checking that it is the teacher teacher_config describes. `loss=ce` trains the same student
on hard labels only, the baseline KD must beat.
"""

from hardlabel_jax import config_schema

_LOSS_SETTINGS = {
    "kd": dict(temperature=4.0, kd_weight=0.9),
    "rld": dict(alpha=1.0, beta=8.0, temperature=4.0, alpha_temperature=4.0),
    "dkd": dict(alpha=1.0, beta=8.0, temperature=4.0),
    "nkd": dict(temperature=1.0, gamma=1.5),
    "ce": {},
}


def get_config(arg=None):
  """`loss=kd|rld|dkd|nkd|ce`, `seed=N`, `runlocal` for a smoke test."""
  args = config_schema.parse_arg(arg, runlocal=False, loss="kd", seed=0)
  if args.loss not in _LOSS_SETTINGS:
    raise ValueError(f"loss={args.loss!r}: choose one of {', '.join(_LOSS_SETTINGS)}")
  # The teacher is exactly configs/embedded_hl.py; the student shares its data, crops, optimizer
  # and budget.
  teacher = config_schema.sibling_config(__file__, "embedded_hl.py", args.runlocal and "runlocal")
  config = config_schema.sibling_config(__file__, "embedded_hl.py", args.runlocal and "runlocal")
  config.regime = "kd"
  config.seed = args.seed
  config.model = "convnet_d3"
  config.model_kwargs.width = 32
  config.teacher_config = teacher
  config.distillation_loss = args.loss
  config.distillation_kwargs = _LOSS_SETTINGS[args.loss]
  # DKD/RLD ramp their terms in over 20 of 240 epochs in mdistiller; here over the first epoch.
  config.kd_warmup_epochs = 1.0 if args.loss in ("dkd", "rld") else 0.0
  return config
