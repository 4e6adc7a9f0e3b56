"""A full disk as one clear error: free space checked before big writes, ENOSPC named where it hits.

Writes that fail for lack of space surface in many forms: an `OSError` with errno ENOSPC from our
own writers, and from orbax's background save threads a `ValueError("RESOURCE_EXHAUSTED: ...
No space left on device [os_error_code='28']")` re-raised in the main thread at the next save.
`writing(directory, needed)` turns any of them into `OutOfSpaceError` (the directory, the bytes
needed where known, the bytes free), which `cli_errors` prints as one `error:` line. Every writer
of this library writes to a temporary name and renames, so nothing is left under a final name and
a rerun on free space resumes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import Iterator

# ENOSPC, and EDQUOT (a user quota, as on shared cluster filesystems).
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# tensorstore's message for ENOSPC (orbax's array writes); RESOURCE_EXHAUSTED alone is also XLA's
# out-of-device-memory status, which is not a disk matter.
_FULL_MESSAGE = re.compile(r"No space left on device|Disk quota exceeded|os_error_code='(28|122)'")
_PATH_IN_MESSAGE = re.compile(r'(?:Failed writing|local file): "([^"]+)"')


class OutOfSpaceError(OSError):
  """A write that needs more space than `directory`'s filesystem has."""

  def __init__(self, directory: str, needed: int | None, free: int | None, what: str):
    self.directory, self.needed, self.free, self.what = directory, needed, free, what
    need = f"needs {format_bytes(needed)}" if needed is not None else "ran out of space"
    super().__init__(
        errno.ENOSPC, f"out of space in {directory}: {what} {need}, "
        f"{format_bytes(free) if free is not None else 'an unknown amount'} free. "
        "Free space there (or point --workdir / config.cache_dir at a larger disk); a rerun of the "
        "same command resumes")

  def __str__(self) -> str:
    return self.strerror


def format_bytes(count: int) -> str:
  """`1234567` -> '1,234,567 bytes (1.2 MB)'."""
  for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if count >= size:
      return f"{count:,} bytes ({count / size:.1f} {unit})"
  return f"{count:,} bytes"


def free_bytes(path: str) -> int | None:
  """Free bytes on the filesystem that holds `path` (or would: its nearest existing parent).

  None for a remote path (gs://, s3://): an object store has no free space to read.
  """
  if "://" in path:
    return None
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def require(directory: str, needed: int, what: str) -> None:
  """Raises OutOfSpaceError before writing `needed` bytes into `directory` if they do not fit."""
  free = free_bytes(directory)
  if free is not None and needed > free:
    raise OutOfSpaceError(directory, needed, free, what)


def mentions_full_disk(text: str) -> bool:
  """Whether a message (an error's, a log record's) reports a full disk or quota."""
  return _FULL_MESSAGE.search(text) is not None


def is_full_disk(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from or during, is a full disk or quota."""
  return _full_disk_error(error) is not None


def _full_disk_error(error: BaseException) -> BaseException | None:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
      return error
    if mentions_full_disk(str(error)):
      return error
    error = error.__cause__ or error.__context__
  return None


def path_of(error: BaseException) -> str | None:
  """The file a full-disk error names (OSError.filename, or the path in tensorstore's message)."""
  found = _full_disk_error(error)
  if found is None:
    return None
  if isinstance(found, OutOfSpaceError):
    return found.directory
  if isinstance(found, OSError) and found.filename:
    return os.fspath(found.filename)
  match = _PATH_IN_MESSAGE.search(str(found))
  return match.group(1) if match else None


def as_out_of_space(error: BaseException, directory: str, needed: int | None,
                    what: str) -> OutOfSpaceError:
  """`error` (a full disk) as OutOfSpaceError about `directory`, with the free bytes now; one a
  writer already raised, anywhere in its chain, as it is (it knows the bytes needed)."""
  found = _full_disk_error(error)
  if isinstance(found, OutOfSpaceError):
    return found
  return OutOfSpaceError(directory, needed, free_bytes(directory), what)


@contextlib.contextmanager
def writing(directory: str, what: str, needed: int | None = None) -> Iterator[None]:
  """A full disk inside the block as OutOfSpaceError about `directory`; other errors pass."""
  try:
    yield
  except OutOfSpaceError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not is_full_disk(e):
      raise
    raise as_out_of_space(e, directory, needed, what) from e


@contextlib.contextmanager
def removed_on_failure(tmp: str) -> Iterator[None]:
  """Removes the temp file `tmp` when the block writing it fails (a full disk gets its space back;
  the final name, written by a rename after the block, never holds half a file)."""
  try:
    yield
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
