"""Soft-label payload formats: `full`, `topk` and `topk_q8` rows, and their error bounds.

Every format stores one teacher distribution `p = softmax(z / T)` per row:

- `full`: `probs` fp16 x C. Decoding gives exactly the stored fp16 values (no renormalisation).
- `topk`: `ids` x k (descending probability, ties by lower class id) and `probs` fp16 x k. The
  remaining mass `max(0, 1 - sum)` is spread evenly over the other C - k classes (FKD).
- `topk_q8`: `ids` x k, `q` int8 x k and a per-row fp16 `scale` with `log p ~= q * scale`. The scale
  is `-min(top-k log p) / 127` rounded up to the next fp16, so `q = round(log p / scale)` lies in
  [-127, 0] and `|q * scale - log p| <= scale / 2` on every top-k entry. Decoding gives
  `exp(q * scale)` at the ids; if these sum to more than 1 they are renormalised and the other
  classes get 0, otherwise the remaining mass is spread evenly as for `topk`.

With k == C there is no class to spread over, so both top-k formats renormalise the k values.

Error bounds, as total variation `TV(p, p') = 1/2 sum |p_i - p'_i|` against the exact
`p = exp(log p)`. Let `t` be the mass outside the top-k and `d` the summed absolute error of the k
decoded top-k values. The spread mass `r = max(0, 1 - sum)` is at most `t + d`, so
`TV <= 1/2 (d + r + t) <= t + d`; when `topk_q8` (or k == C) renormalises, the rescaling moves
`|sum - 1| <= d`, so again `TV <= t + d`. fp16 rounding gives, for `topk`,
`d <= (2^-11 + 2^-22) (1 - t) + k 2^-25` (relative half-ulp plus float32 exp, and the subnormal
half-spacing); for `topk_q8`, `d <= (exp(scale / 2) - 1 + 2^-22) (1 - t)`. `topk_error_bound` and
`topk_q8_error_bound` return these plus `|1 - sum p|` and a 2^-20 slack for float32 decoding.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FORMATS = ("full", "topk", "topk_q8")

# Top-k log-probabilities are clamped here before quantisation so that a zero probability (-inf)
# does not make the row's scale infinite; exp(-100) is below float32's normal range anyway.
LOG_PROB_FLOOR = -100.0
# The smallest positive fp16 keeps the scale usable when every top-k entry has log p = 0.
MIN_SCALE = float(np.finfo(np.float16).smallest_subnormal)
Q_MIN = -127

# Rounding terms of the bounds (see the module docstring).
_FP16_RELATIVE = 2.0**-11 + 2.0**-22
_FP16_SUBNORMAL_HALF_SPACING = 2.0**-25
_FLOAT32_RELATIVE = 2.0**-22
_DECODE_SLACK = 2.0**-20


@dataclasses.dataclass(frozen=True)
class LabelFormat:
  """A payload format together with the class count and k it is instantiated for."""
  name: str
  num_classes: int
  topk: int = 0

  def __post_init__(self):
    if self.name not in FORMATS:
      raise ValueError(f"label_format: must be one of {FORMATS}, got {self.name!r}")
    if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2:
      raise ValueError(f"num_classes: must be an integer >= 2, got {self.num_classes!r}")
    if not isinstance(self.topk, (int, np.integer)):
      raise ValueError(f"topk: must be an integer, got {self.topk!r}")
    if self.name == "full":
      if self.topk != 0:
        raise ValueError(f"topk: must be 0 for label_format='full' (it stores all "
                         f"{self.num_classes} classes), got {self.topk}")
    elif not 1 <= self.topk <= self.num_classes:
      raise ValueError(f"topk: must be in [1, num_classes={self.num_classes}] for "
                       f"label_format={self.name!r}, got {self.topk}")

  @property
  def id_dtype(self) -> np.dtype:
    """Class-id dtype: uint16 while every id fits, else uint32."""
    return np.dtype("<u2") if self.num_classes <= 65535 else np.dtype("<u4")

  @property
  def payload_dtype(self) -> np.dtype:
    """Packed little-endian structured dtype of one payload row."""
    if self.name == "full":
      return np.dtype([("probs", "<f2", (self.num_classes,))])
    if self.name == "topk":
      return np.dtype([("ids", self.id_dtype, (self.topk,)), ("probs", "<f2", (self.topk,))])
    return np.dtype([("ids", self.id_dtype, (self.topk,)), ("q", "<i1", (self.topk,)),
                     ("scale", "<f2")])

  @property
  def payload_bytes_per_row(self) -> int:
    """Bytes of one payload row: 2C (full), k(id+2) (topk), k(id+1)+2 (topk_q8)."""
    return self.payload_dtype.itemsize


def _check_log_probs(log_probs: np.ndarray, fmt: LabelFormat) -> np.ndarray:
  lp = np.asarray(log_probs, dtype=np.float32)
  if lp.ndim != 2 or lp.shape[1] != fmt.num_classes:
    raise ValueError(f"log_probs: expected shape [n, {fmt.num_classes}], got {lp.shape}")
  if np.isnan(lp).any():
    raise ValueError("log_probs: contains NaN (did the teacher diverge?)")
  return lp


def topk_ids(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest entries per row, descending, ties broken by lower index."""
  return np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]


def _round_up_fp16(x: np.ndarray) -> np.ndarray:
  """The smallest fp16 >= x (elementwise, x >= 0), at least MIN_SCALE."""
  x = np.asarray(x, dtype=np.float64)
  y = x.astype(np.float16)
  low = y.astype(np.float64) < x
  y[low] = np.nextafter(y[low], np.float16(np.inf))
  return np.maximum(y, np.float16(MIN_SCALE))


def encode(log_probs: np.ndarray, fmt: LabelFormat) -> np.ndarray:
  """Encodes float32 log-probability rows `[n, C]` into payload rows `[n]` of `fmt`."""
  lp = _check_log_probs(log_probs, fmt)
  out = np.zeros(lp.shape[0], dtype=fmt.payload_dtype)
  if fmt.name == "full":
    out["probs"] = np.exp(lp).astype(np.float16)
    return out
  ids = topk_ids(lp, fmt.topk)
  out["ids"] = ids
  top = np.take_along_axis(lp, ids, axis=1)
  if fmt.name == "topk":
    out["probs"] = np.exp(top).astype(np.float16)
    return out
  top = np.clip(top.astype(np.float64), LOG_PROB_FLOOR, 0.0)
  scale = _round_up_fp16(-top.min(axis=1) / -Q_MIN)
  q = np.rint(top / scale.astype(np.float64)[:, None])
  out["q"] = np.clip(q, Q_MIN, 0).astype(np.int8)
  out["scale"] = scale
  return out


def decode(payload: np.ndarray, fmt: LabelFormat) -> np.ndarray:
  """Decodes payload rows `[n]` (or table rows holding the payload) to float32 `[n, C]`."""
  payload = np.atleast_1d(payload)
  n, c = payload.shape[0], fmt.num_classes
  if fmt.name == "full":
    return payload["probs"].astype(np.float32)
  ids = payload["ids"].astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= c):
    raise ValueError(f"payload: class ids outside [0, {c}); the payload is corrupted or was "
                     "written for another class count")
  rest = c - fmt.topk
  if fmt.name == "topk":
    top = payload["probs"].astype(np.float32)
    total = top.sum(axis=1)
    renormalise = np.zeros(n, dtype=bool)
  else:
    q = payload["q"].astype(np.float32)
    top = np.exp(q * payload["scale"].astype(np.float32)[:, None])
    total = top.sum(axis=1)
    renormalise = total > 1.0
  if not rest:
    renormalise[:] = True  # k == C: there is no other class to take the missing mass.
  renormalise &= total > 0
  top[renormalise] /= total[renormalise, None]
  spread = np.zeros(n, dtype=np.float32)
  if rest:
    spread = np.maximum(np.float32(0.0), 1.0 - top.sum(axis=1)) / np.float32(rest)
    spread[renormalise] = 0.0
  out = np.repeat(spread[:, None], c, axis=1).astype(np.float32)
  np.put_along_axis(out, ids, top, axis=1)
  return out


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """Per-row total-variation distance `1/2 sum |p - q|` (float64)."""
  return 0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum(axis=-1)


def _tail_and_head(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  p = np.asarray(probs, dtype=np.float64)
  ids = topk_ids(p, k)
  head = np.take_along_axis(p, ids, axis=1).sum(axis=1)
  tail = p.sum(axis=1) - head
  off = np.abs(1.0 - p.sum(axis=1))
  return np.maximum(tail, 0.0), head, off


def topk_error_bound(probs: np.ndarray, k: int) -> np.ndarray:
  """Per-row bound on TV(probs, decode(encode(log probs))) for `topk` (see module docstring)."""
  tail, head, off = _tail_and_head(probs, k)
  stored = _FP16_RELATIVE * head + k * _FP16_SUBNORMAL_HALF_SPACING
  return tail + stored + off + _DECODE_SLACK


def topk_q8_error_bound(probs: np.ndarray, k: int, scale: np.ndarray) -> np.ndarray:
  """Per-row bound on TV(probs, decoded) for `topk_q8` given the rows' stored `scale`."""
  tail, head, off = _tail_and_head(probs, k)
  s = np.asarray(scale, dtype=np.float64)
  stored = (np.expm1(s / 2.0) + _FLOAT32_RELATIVE) * head
  return tail + stored + off + _DECODE_SLACK


def topk_q8_log_error_bound(payload: np.ndarray) -> np.ndarray:
  """Per-row bound `scale / 2` on `|q * scale - log p|` for the (clamped) top-k entries."""
  return np.asarray(payload["scale"], dtype=np.float64) / 2.0


def quantised_log_probs(payload: np.ndarray) -> np.ndarray:
  """`q * scale` of `topk_q8` rows `[n, k]` (float64), the log-probabilities before decoding."""
  return payload["q"].astype(np.float64) * payload["scale"].astype(np.float64)[:, None]
