"""Fault injection for the crash-safety tests: SIGKILL at a chosen pass of a named point.

The library calls `point(name)` where a kill is most harmful (each training step, around checkpoint
saves, between the files of a table shard, a distilled or synthesised set, results.json). With
`HARDLABEL_FAULTS=<log file>` every pass is appended to that log, and with
`HARDLABEL_FAULTS=<log file>::<name>:<n>` the process SIGKILLs itself at the first pass of `name`
whose count in the log (over every process that shared it: a killed run and its reruns) reaches n.
`<log file>::<name>:<n>:<action>` does something else at exactly the n-th pass: `term` or `usr1`
sends the process that signal (a preemption notice: the run goes on to its next safe point), and
`enospc` raises the OSError of a full disk there (writers that call `point` between opening and
renaming a file then fail as on a full filesystem). Unset, `point` costs one dictionary lookup.
"""

from __future__ import annotations

import collections
import errno
import os
import signal

ENV = "HARDLABEL_FAULTS"
_SIGNALS = {"term": signal.SIGTERM, "usr1": signal.SIGUSR1}
ACTIONS = ("kill", *_SIGNALS, "enospc")


class _Injector:
  """The parsed `HARDLABEL_FAULTS` setting and the counts of its log."""

  def __init__(self, setting: str):
    self.log, _, target = setting.partition("::")
    self.name, _, count = target.partition(":")
    count, _, self.action = count.partition(":")
    self.action = self.action or "kill"
    if self.action not in ACTIONS:
      raise ValueError(f"{ENV}: unknown action {self.action!r} (one of {', '.join(ACTIONS)})")
    self.kill_at = int(count) if count else 0
    self.counts = collections.Counter()
    if os.path.exists(self.log):
      with open(self.log) as f:
        self.counts.update(line.strip() for line in f if line.strip())

  def passed(self, name: str) -> None:
    with open(self.log, "a") as f:
      f.write(name + "\n")
    self.counts[name] += 1
    if name != self.name or self.kill_at <= 0:
      return
    if self.action == "kill" and self.counts[name] >= self.kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
    if self.counts[name] != self.kill_at:
      return
    if self.action in _SIGNALS:
      os.kill(os.getpid(), _SIGNALS[self.action])
    elif self.action == "enospc":
      raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")


_INJECTOR = _Injector(os.environ[ENV]) if os.environ.get(ENV) else None


def point(name: str) -> None:
  """A place where the crash-safety tests may kill the process (no-op unless configured)."""
  if _INJECTOR is not None:
    _INJECTOR.passed(name)
