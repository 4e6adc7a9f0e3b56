"""Shared test helpers."""

from hardlabel_jax import config_schema


def tiny_config(**overrides):
  """A seconds-long run on the embedded data: 10 images per class, a narrow ConvNet."""
  config = config_schema.default_config()
  config.dataset = "embedded_mnist"
  config.images_per_class = 10
  config.model_kwargs.width = 8
  config.global_batch_size = 16
  config.eval_batch_size = 200
  config.budget_examples = 16 * 10
  config.checkpoint_every_steps = 4
  config.log_every_steps = 5
  config.learning_rate = 0.05
  config.tensorboard = False
  for key, value in overrides.items():
    config[key] = value
  return config


class Killed(Exception):
  """The simulated preemption that a test's step hook raises."""
