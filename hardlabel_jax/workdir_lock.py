"""Exclusive locks on workdirs and artefact directories: one writer per directory at a time.

A run holds `<workdir>/.lock` (an artefact it builds: `<artefact>.lock` beside it) for as long as it
writes there. The lock is an `flock` on that file, so the kernel releases it when the holder exits
or is killed; the file records who holds it (host, pid, start time, command) for the message a
second run gets. A file left by a holder that died (the flock is free, the record is not) is taken
over with a warning. On multi-host runs process 0 holds the locks (the others write nothing).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Any, Iterator

import jax

from hardlabel_jax import metrics_log

LOCK_FILE = ".lock"


class LockHeldError(RuntimeError):
  """Another live process holds the lock of the directory this run would write."""


def workdir_lock_path(workdir: str) -> str:
  """A run's own lock: `<workdir>/.lock`."""
  return os.path.join(os.path.abspath(workdir), LOCK_FILE)


def artefact_lock_path(directory: str) -> str:
  """An artefact's lock beside it (`<dir>.lock`): the artefact is renamed into place when done."""
  return os.path.abspath(directory) + ".lock"


def _holder() -> dict[str, Any]:
  return {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join(sys.argv)[:300]
  }


def _describe(record: dict[str, Any]) -> str:
  return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started "
          f"{record.get('started', '?')} ({record.get('command', '')})")


def _read_record(handle) -> dict[str, Any]:
  handle.seek(0)
  text = handle.read()
  try:
    return json.loads(text) if text.strip() else {}
  except json.JSONDecodeError:
    return {}


def _locked_handle(lock_path: str, what: str):
  """The lock file, open and flocked; LockHeldError naming the holder if another process has it."""
  while True:
    handle = open(lock_path, "a+")
    try:
      fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      record = _read_record(handle)
      handle.close()
      raise LockHeldError(f"{what} is in use by another run: {_describe(record)}; wait for it "
                          f"to finish or stop it (lock: {lock_path})") from None
    # A holder that was releasing may have unlinked the file we opened: lock the file that is
    # at the path now, or two runs could each hold a lock on a different file.
    try:
      if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
        return handle
    except FileNotFoundError:
      pass
    handle.close()


@contextlib.contextmanager
def hold(lock_path: str, what: str) -> Iterator[None]:
  """Holds the lock at `lock_path` for `what` (e.g. 'the workdir /x'), or raises LockHeldError.

  The lock file exists only while it is held (or after its holder died): a finished run leaves
  nothing behind, and a workdir made only to hold the lock is removed again.
  """
  if jax.process_index() != 0:
    yield
    return
  directory = os.path.dirname(lock_path)
  created = not os.path.exists(directory)
  os.makedirs(directory, exist_ok=True)
  handle = _locked_handle(lock_path, what)
  try:
    stale = _read_record(handle)
    if stale:
      metrics_log.log_line(f"warning: taking over the lock of {what} from a run that is gone "
                           f"({_describe(stale)})")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_holder()))
    handle.flush()
    try:
      yield
    finally:
      # Deleted while still locked (a run opening it meanwhile sees another inode and retries).
      os.remove(lock_path)
      if created and not os.listdir(directory):
        os.rmdir(directory)  # a run that stopped before writing anything leaves no directory
  finally:
    handle.close()  # releases the flock
