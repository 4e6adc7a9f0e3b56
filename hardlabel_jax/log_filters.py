"""Filters for the expected warnings and progress output of the libraries a run uses.

A normal run prints its own progress and results only. Each filter here names one message that a
run of this library provokes by design, and says why it is harmless; every other warning, of these
libraries too, still shows. `main.py` installs them; the library itself never does (a program that
imports it keeps its own logging).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any, Callable

from absl import logging as absl_logging
import tensorflow_datasets as tfds

from hardlabel_jax import disk_space

_ORBAX_NO_METADATA = "Metadata file does not exist: %s"
_CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
_TFDS_CUSTOM_CONFIG = "Using custom data configuration: %s"
# data/local_builder.py's BuilderConfig descriptions start with this.
_LOCAL_SET = "hardlabel_jax local set"
# multiprocessing's resource tracker at exit: "resource_tracker: There appear to be 20 leaked
# shared_memory objects to clean up at shutdown" (and, for a block already gone, "resource_tracker:
# '/psm_…': [Errno 2] …"). With Grain workers (num_workers > 0) the batches they had prefetched
# when the run stopped reading are shared-memory blocks nobody unlinked; the tracker removes them,
# so nothing leaks. A -W option cannot hold the colon of the full message: it names the message's
# first word and the tracker's module instead.
_TRACKER_WARNOPTION = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"

_installed = False


def _is_item_metadata_notice(record: logging.LogRecord) -> bool:
  """Orbax on reading one item of a composite checkpoint (a teacher's `state`, checkpointing.py).

  The item directory has no metadata file of its own; the step directory above it holds the
  checkpoint's. Only that case is expected: a step directory without one still warns.
  """
  if record.msg != _ORBAX_NO_METADATA or not record.args:
    return False
  path = os.fspath(record.args[0])
  step_dir = os.path.dirname(os.path.dirname(path))
  return (os.path.basename(path) == _CHECKPOINT_METADATA
          and os.path.exists(os.path.join(step_dir, _CHECKPOINT_METADATA)))


def _is_local_set_config_notice(record: logging.LogRecord) -> bool:
  """TFDS on building a local set (data/local_builder.py): its configs are custom by design."""
  if record.msg != _TFDS_CUSTOM_CONFIG or not record.args:
    return False
  return str(getattr(record.args[0], "description", "")).startswith(_LOCAL_SET)


def _is_full_disk_report(record: logging.LogRecord) -> bool:
  """Orbax's save threads on a full disk: each logs the failure with a traceback, and asyncio
  logs each abandoned write's future ("exception was never retrieved") at exit.

  The same error reaches the main thread at the next save or wait, where the run ends in one
  `error:` line naming the directory and the space (hardlabel_jax.disk_space); these records
  (about 80 lines per failed save) would bury it.
  """
  from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
  if record.levelno < logging.ERROR or not (from_orbax or record.name == "asyncio"):
    return False
  text = record.getMessage()
  if record.exc_info and record.exc_info[1] is not None:
    text += f" {record.exc_info[1]}"
  return disk_space.mentions_full_disk(text)


def _is_preemption_sync_notice(record: logging.LogRecord) -> bool:
  """Orbax and JAX on reaching the preemption sync point (warned once per call, 3+ per stop).

  The run says it in its own line: which step it saved and how to resume
  (hardlabel_jax.preemption).
  """
  return "Reached preemption sync point" in record.getMessage()


class _ExpectedNotices(logging.Filter):
  """Drops the absl log records of the expected notices above; passes every other record."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (_is_item_metadata_notice(record) or _is_local_set_config_notice(record)
                or _is_full_disk_report(record) or _is_preemption_sync_notice(record))


def _is_closed_loop_callback(unraisable: Any) -> bool:
  """tensorstore completing a write that orbax abandoned (a failed save) on a closed event loop.

  Its C++ thread calls the loop's `call_soon_threadsafe`, which raises "Event loop is closed";
  tensorstore reports it as unraisable (no object), one traceback per write. Only a traceback
  that lies wholly in asyncio is that: any other unraisable error still prints.
  """
  error = unraisable.exc_value
  if unraisable.object is not None or not isinstance(error, RuntimeError):
    return False
  if str(error) != "Event loop is closed":
    return False
  files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(unraisable.exc_traceback)]
  return bool(files) and all(f"{os.sep}asyncio{os.sep}" in name for name in files)


def _quiet_unraisable_hook(previous: Callable[[Any], None]) -> Callable[[Any], None]:

  def hook(unraisable: Any) -> None:
    if not _is_closed_loop_callback(unraisable):
      previous(unraisable)

  return hook


def _log_build(builder: Any) -> None:
  """Replaces TFDS's printed build banners: the build is logged at INFO (`--verbosity=0`)."""
  absl_logging.info("TFDS: building %s in %s", builder.name, builder.data_dir)


def _quiet_tfds_builds() -> None:
  """TFDS's progress bars and stdout banners of a data set build, for the local sets.

  The library builds only its local sets in-process (data/local_builder.py): nothing is
  downloaded, yet TFDS prints "Downloading and preparing dataset Unknown size ..." and bars per
  split. Real TFDS sets are built beforehand with the `tfds build` command, outside the run.
  """
  tfds.disable_progress_bar()
  builder = tfds.core.DatasetBuilder
  for name in ("_log_download_bytes", "_log_download_done"):
    # Private TFDS methods (termcolor prints, which no logging filter reaches): where a TFDS
    # release renames them, the banners print again and nothing breaks.
    if hasattr(builder, name):
      setattr(builder, name, _log_build)


def install() -> None:
  """Installs the filters for this process and the Python processes it starts (idempotent)."""
  global _installed
  if _installed:
    return
  _installed = True
  absl_logging.get_absl_logger().addFilter(_ExpectedNotices())
  logging.getLogger("asyncio").addFilter(_ExpectedNotices())
  sys.unraisablehook = _quiet_unraisable_hook(sys.unraisablehook)
  _quiet_tfds_builds()
  # The resource tracker is a separate interpreter started by multiprocessing, which passes it
  # this process's -W options (sys.warnoptions); a filter set with `warnings` would not reach it.
  sys.warnoptions.append(_TRACKER_WARNOPTION)
