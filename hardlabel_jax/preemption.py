"""Preemption: SIGTERM, or a configured second signal, stops a run at its next safe point, saved.

TPU pods and SLURM stop jobs with a signal: spot and preemptible TPU VMs send SIGTERM, SLURM sends
SIGTERM before SIGKILL, or the `--signal=USR1@N` of the job N seconds before its time limit. A
caught signal only sets a flag. The long loops ask `stop_requested(point)` at their safe points:
after each training step (the trainer then saves that step's checkpoint with the data-iterator
state), after each relabel shard, each synthesised batch and each study cell (all already on
disk there). They then raise `Preempted`, which `main` turns into one line and exit code
`EXIT_CODE`, on which the launch scripts requeue; a rerun of the same command resumes.

With several processes (`--distributed`), every process must stop at the same point or the
collectives of the next step hang. JAX's preemption sync manager agrees on it: the coordination
service catches SIGTERM itself, tells every process, and `reached_preemption_sync_point(n)` turns
True on all of them at the same n (the one orbax's CheckpointManager consults before it saves, so
its own preemption save lands on that step too). Python's handler would replace the service's, so
there SIGTERM is left to it and the second signal is forwarded to it as SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import types
from typing import Iterator

import jax
from jax.experimental import multihost_utils

# sysexits.h's EX_TEMPFAIL: "temporary failure, the user is invited to retry". Distinct from the
# library's error codes (1, 2) and from a death by signal (128 + n), so a launch script can tell a
# saved, resumable stop from a failure.
EXIT_CODE = 75
# Signals that cannot be caught or that the runtime itself relies on.
_UNCATCHABLE = frozenset({"SIGKILL", "SIGSTOP", "SIGTERM", "SIGINT", "SIGSEGV", "SIGCHLD"})


class Preempted(Exception):
  """A run stopped on a preemption signal after saving where it was (`main` exits EXIT_CODE)."""


class _State:
  """What the handlers have seen; one per process (signal handlers are per process too)."""

  def __init__(self):
    self.signal_name: str | None = None
    self.installed = False
    self.agreed = False  # a stop was decided (on every process alike)
    self.last_point = 0  # the last id given to the preemption sync manager


_STATE = _State()


def signal_number(name: str) -> int:
  """The number of a catchable signal name (`SIGUSR1`, `USR1`); ValueError naming the choices."""
  full = name if name.startswith("SIG") else f"SIG{name}"
  number = getattr(signal.Signals, full, None)
  if number is None or full in _UNCATCHABLE:
    raise ValueError(f"config.preemption_signal: {name!r} is not a signal a run can catch as a "
                     "second preemption signal (SIGTERM is always caught); use e.g. SIGUSR1, "
                     "SIGUSR2 or SIGHUP, or '' for none")
  return int(number)


def _distributed() -> bool:
  return jax.process_count() > 1


def _unsynchronised() -> bool:
  """Several processes without JAX's preemption service (`jax_enable_preemption_service` off):
  nothing can make them stop at one step, so signals keep their default action (as before)."""
  return _distributed() and not jax.config.jax_enable_preemption_service


def _on_signal(number: int, frame: types.FrameType | None) -> None:
  del frame
  name = signal.Signals(number).name
  if _STATE.signal_name is None:
    # Printed by the handler, so a person watching the run sees at once that it will stop.
    print(f"preemption: {name} received; stopping at the next safe point", flush=True)
  _STATE.signal_name = _STATE.signal_name or name


def _forward_to_sync_manager(number: int, frame: types.FrameType | None) -> None:
  _on_signal(number, frame)
  os.kill(os.getpid(), signal.SIGTERM)  # the coordination service's notifier takes it from here


@contextlib.contextmanager
def handle_signals(second_signal: str = "") -> Iterator[None]:
  """Catches SIGTERM and `second_signal` ('' for none) for the duration; restores the old handlers.

  Only the main thread may install handlers (Python's rule); elsewhere, and nested inside another
  `handle_signals`, this does nothing and the outer one's handlers stay.
  """
  if (_STATE.installed or threading.current_thread() is not threading.main_thread()
      or _unsynchronised()):
    yield
    return
  handlers = {}
  if not _distributed():
    handlers[signal.SIGTERM] = _on_signal
  if second_signal:
    handlers[signal_number(second_signal)] = (_forward_to_sync_manager
                                              if _distributed() else _on_signal)
  previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
  _STATE.installed, _STATE.signal_name, _STATE.agreed = True, None, False
  try:
    yield
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)
    _STATE.installed, _STATE.signal_name, _STATE.agreed = False, None, False


def stop_requested(step: int | None = None) -> bool:
  """Whether to stop at this safe point: after training step `step`, or (None) at a loop boundary.

  Every process calls it at the same points. With one process it says whether a signal has
  arrived. With several it is their joint answer, True on all of them at the same call: the sync
  manager is asked with the training step (the id orbax asks it with too) or, at a boundary, the
  id after the last one asked, so the first call after a notice is the one that stops. Once True
  it stays True (the study stops between cells after a cell's last step saw it).
  """
  if _STATE.agreed:
    return True
  if _unsynchronised():
    return False
  if _distributed():
    point = step if step is not None else _STATE.last_point + 1
    _STATE.last_point = point
    _STATE.agreed = multihost_utils.reached_preemption_sync_point(point)
  else:
    _STATE.agreed = _STATE.signal_name is not None
  return _STATE.agreed


def received_signal() -> str:
  """The caught signal's name (SIGTERM where the coordination service caught it)."""
  return _STATE.signal_name or "SIGTERM"


def stop(what: str) -> Preempted:
  """The `Preempted` of a loop that saved `what` ('training stopped at step 70 of 585, ...')."""
  return Preempted(f"preempted by {received_signal()}: {what}; run the same command again to "
                   "resume")
