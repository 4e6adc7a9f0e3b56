"""Artefact identity: digests of exactly what an artefact depends on, recorded and checked on reuse.

Every artefact under `cache_dir` (teacher, score file, distilled set, soft-label table) lives in a
directory named by the digest of its identity: the config fields it reads and the identities of
its inputs. The identity is written next to it as `identity.json` and compared on reuse, so a
directory can never serve another recipe's artefact, even when renamed or pointed at by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import ml_collections

from hardlabel_jax import config_schema
from hardlabel_jax import metrics_log

IDENTITY_FILE = "identity.json"


class IdentityMismatchError(ValueError):
  """A stored artefact was made by another recipe than the one this run asks for."""


def canonical(value: Any) -> Any:
  """`value` as plain JSON types (tuples → lists, ConfigDicts → dicts), keys sorted on dump."""
  return json.loads(json.dumps(value, sort_keys=True, default=_to_json))


def _to_json(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not part of an identity")


def run_recipe(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """The fields a run's task and regime read, without run control: what its result depends on."""
  if not isinstance(config, ml_collections.ConfigDict):
    # A run_config.json written before a field existed lacks it; it had its default then.
    config = ml_collections.ConfigDict({**config_schema.default_config().to_dict(), **config})
  return canonical(
      config_schema.with_model_defaults({
          k: canonical(config[k])
          for k in sorted(config_schema.fields_read(config))
          if k not in config_schema.RESUMABLE_FIELDS
      }))


def digest(identity: Any) -> str:
  """12 hex digits of SHA-256 over the canonical JSON of `identity`."""
  text = json.dumps(canonical(identity), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def file_sha256(path: str) -> str:
  """SHA-256 over a file's bytes, in hex."""
  sha = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      sha.update(block)
  return sha.hexdigest()


def file_digest(path: str) -> str:
  """16 hex digits of SHA-256 over a file's bytes (the identity of a file given by path)."""
  return file_sha256(path)[:16]


def read_identity(directory: str) -> dict[str, Any] | None:
  """The identity recorded in `directory`, or None when it records none."""
  path = os.path.join(directory, IDENTITY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_identity(directory: str, identity: Mapping[str, Any], what: str) -> None:
  """Raises IdentityMismatchError, naming the fields, if `directory` holds another recipe."""
  saved = read_identity(directory)
  if saved is None:
    return
  diff = config_schema.differences(saved, canonical(identity))
  if diff:
    raise IdentityMismatchError(
        f"{what} in {directory} was made by another recipe ({'; '.join(diff[:6])}). Use another "
        "cache_dir or directory, or remove it to rebuild.")


def write_identity(directory: str, identity: Mapping[str, Any]) -> None:
  """Records `identity` in `directory` (atomically)."""
  os.makedirs(directory, exist_ok=True)
  metrics_log.write_json_atomic(os.path.join(directory, IDENTITY_FILE), canonical(identity))
