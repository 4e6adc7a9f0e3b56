"""Command-line mistakes as one `error:` line: the flag and config diagnosis behind main.py.

A wrong command line or config (an unknown or misspelt field, a value of the wrong type, a value
`config_schema.validate` or a planner refuses) ends in one `error: ...` line naming the field,
exit code 2; a run the library refuses as asked (a stored artefact or a workdir of another
recipe, a missing teacher or data set, a held workdir) in one `error: ...` line, exit code 1.
Anything else is a bug and keeps its traceback.
"""

import os
import re
import sys
from typing import Any, Callable, NoReturn

from absl import flags
import jax
import ml_collections

from hardlabel_jax import cache
from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import disk_space
from hardlabel_jax import preemption
from hardlabel_jax import workdir_lock
from hardlabel_jax.data import errors as data_errors
from hardlabel_jax.soft_labels import table as table_lib

# Exit codes: the command line or config is wrong; the library refuses the run as asked.
USAGE_ERROR = 2
REFUSED = 1
# What the library raises, with a message that says what to fix, for a run it refuses: a stored
# artefact of another recipe, a missing teacher or data set, a held workdir, a table or checkpoints
# it cannot use. These are the user's to fix, so they end in their message, not a traceback.
_REFUSALS = (cache.IdentityMismatchError, data_errors.DataSourceError, FileNotFoundError,
             table_lib.TableError, workdir_lock.LockHeldError,
             checkpointing.NoUsableCheckpointError)
# A ValueError whose message starts with the config field or the workdir it is about (the
# convention of config_schema, the planners' checks and checkpointing.check_same_run, also for a
# study's cells) is the library refusing the config; any other ValueError may be a bug (a shape
# check deep in the loop) and keeps its traceback.
_REFUSAL_MESSAGE = re.compile(r"(study cell \S+: )?(config\.\w|workdir )")
# `--config.a.b=value`, `--noconfig.a.b`, and `--config=FILE[:ARG]` (ml_collections' syntax).
_OVERRIDE_FLAG = re.compile(r"--?(?:no)?config\.([^=]+)(?:=(.*))?", re.DOTALL)
_CONFIG_FLAG = re.compile(r"--?config(?:=(.*))?", re.DOTALL)


def fail(message: str, exit_code: int) -> NoReturn:
  """Prints `error: message` and exits with `exit_code`."""
  sys.stderr.write(f"error: {message}\n")
  sys.exit(exit_code)


def unloadable(config_arg: str) -> str:
  """Why ml_collections could not load the config file (it returns a placeholder, not an error)."""
  path = config_arg.split(":", 1)[0]
  reason = "no such file" if not os.path.isfile(path) else "it could not be read"
  return f"--config={config_arg}: {reason}"


def _missing_field(config: ml_collections.ConfigDict, path: str) -> str | None:
  """Why `--config.<path>` names no field of `config` (with the closest one), or None."""
  node, where = config, "config"
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      # e.g. teacher_config=None: there is no nested config whose field could be set.
      return f"{where}.{key}: {where} is {node!r}, not a config with fields"
    if key not in node:
      close = config_schema.closest_field(key, node.keys())
      if close is not None:
        return f"{where}.{key}: no such field; did you mean {where}.{close}?"
      if not node.keys():
        return (f"{where}.{key}: no such field ({where} is empty in this config; give the "
                "field a value in the config file to override it)")
      return f"{where}.{key}: no such field ({where} has {', '.join(sorted(node.keys()))})"
    node, where = node[key], f"{where}.{key}"
  return None


def _bad_value(path: str, value: str | None) -> str | None:
  """Why `value` does not parse as the type of config.<path>, or None."""
  name = f"config.{path}"
  if value is None or name not in flags.FLAGS:
    return None
  flag = flags.FLAGS[name]
  try:
    flag.parser.parse(value)
  except (TypeError, ValueError) as e:
    kind = flag.flag_type()
    what = f"a valid {kind}" if kind in ("int", "float", "bool") else "a valid value"
    # absl's boolean parser raises with (message, value) as its args.
    return f"{name}: {value!r} is not {what} ({e.args[0] if e.args else e})"
  return None


def _config_flag_error(argv: list[str], error: Exception) -> str | None:
  """The one-line reason a `--config` or `--config.field=value` flag failed, if one did."""
  text = str(error)
  try:
    argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  except flags.Error:
    return None  # a --flagfile absl could not read: its own message says so
  config_arg, overrides = None, []
  for i, arg in enumerate(argv):
    if match := _CONFIG_FLAG.fullmatch(arg):
      config_arg = match.group(1) if match.group(1) is not None else next(iter(argv[i + 1:]), None)
    elif match := _OVERRIDE_FLAG.fullmatch(arg):
      overrides.append((match.group(1), match.group(2)))
  if "Error whilst parsing config file" in text:
    # The config's get_config raised; a ValueError is its own check of the config argument
    # (e.g. an unknown `method=`), anything else a bug whose traceback absl's message carries.
    last = text.strip().splitlines()[-1]
    return f"--config={config_arg}: {last[len('ValueError: '):]}" if last.startswith(
        "ValueError: ") else None
  if config_arg is None or not overrides:
    return None
  try:
    config = flags.FLAGS["config"].parser.parse(config_arg)
  except (TypeError, ValueError, OSError):
    return None  # the config file itself fails: absl's error says how
  if not isinstance(config, ml_collections.ConfigDict):
    return unloadable(config_arg)
  for path, value in overrides:
    problem = _missing_field(config, path) or _bad_value(path, value)
    if problem is not None:
      return problem
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a wrong `--config`/`--config.field` override is one error line.

  ml_collections raises a bare AttributeError/KeyError (a traceback) for an override of a field
  the config lacks, and absl a "FATAL Flags parsing error" for a value of the wrong type.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, IndexError, TypeError, ValueError, OSError) as e:
    message = _config_flag_error(argv, e)
    if message is None:
      if not isinstance(e, flags.Error):
        raise  # not a command line mistake: keep the traceback
      message = str(e)
    fail(message, USAGE_ERROR)


def run_task(task: Callable[..., Any], config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs `task`; a run the library refuses, a full disk or a preemption ends in one line."""
  try:
    task(config, workdir)
  except preemption.Preempted as e:
    if jax.process_index() == 0:
      sys.stderr.write(f"{e}\n")
    sys.exit(preemption.EXIT_CODE)
  except _REFUSALS as e:
    fail(str(e), REFUSED)
  except Exception as e:  # pylint: disable=broad-except
    if disk_space.is_full_disk(e):
      fail(str(out_of_space(e, config, workdir)), REFUSED)
    if not isinstance(e, ValueError):
      raise
    match = _REFUSAL_MESSAGE.match(str(e))
    if match is None:
      raise
    # A field the planners refuse (no teacher for this regime, a batch the devices cannot
    # split) is a config mistake like validate's; a workdir of another run is not.
    fail(str(e), USAGE_ERROR if match.group(2).startswith("config.") else REFUSED)


def out_of_space(error: BaseException, config: ml_collections.ConfigDict,
                 workdir: str) -> disk_space.OutOfSpaceError:
  """A full disk the writers did not name themselves, about the directory it hit.

  That is the file's directory where the error names one, else the workdir (or the cache where
  the file lies under it).
  """
  path = disk_space.path_of(error)
  directory = os.path.dirname(path) if path else os.path.abspath(workdir)
  for root in (config.get("cache_dir") or "", workdir):
    if root and path and os.path.abspath(path).startswith(os.path.abspath(root) + os.sep):
      directory = os.path.abspath(root)
      break
  return disk_space.as_out_of_space(error, directory, None, "a write")
