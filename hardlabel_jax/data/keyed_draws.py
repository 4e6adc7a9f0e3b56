"""NumPy's keyed random streams for a whole batch of keys at once, bit for bit.

Every crop is a pure function of its key: `crops._rng` seeds a `np.random.Generator` (PCG64)
from `np.random.SeedSequence([seed, id, slot, stream])` and draws the box, flip and CutMix from
it. Made one key at a time that costs about 25 µs a crop in Python (the SeedSequence, the
Generator, the draws), which on a few CPU cores is as much as the train step of a small student.
Here the same streams are computed for many keys with vectorised uint32/uint64 NumPy arithmetic,
so a batch's crop parameters cost one pass over arrays. The results are NumPy's own, not an
approximation: numpy/random/bit_generator.pyx (`SeedSequence.mix_entropy`, `generate_state`,
`hashmix`, `mix`), numpy/random/src/pcg64/pcg64.h (`pcg64_set_seed`, `pcg_setseq_128_srandom_r`,
the XSL-RR output, `pcg64_next32`'s buffered upper half) and
numpy/random/src/distributions/distributions.c (`next_double`, `random_uniform`,
`buffered_bounded_lemire_uint32`), checked against NumPy on many keys in
tests/test_keyed_draws.py.

Where a vectorised value could differ from the scalar path's, the row is flagged for the caller
to redo one key at a time with the scalar code: Lemire's rejection (a draw below its threshold,
about n/2^32 of them), and in `crops.resized_boxes` a width or height whose rounding sits within
1e-9 of a half-integer (where `np.exp` and `math.exp` could round differently in the last bit).
"""

from __future__ import annotations

import numpy as np

# numpy/random/bit_generator.pyx
_INIT_A = np.uint32(0x43b0d7e5)
_MULT_A = np.uint32(0x931e8875)
_INIT_B = np.uint32(0x8b51f9dd)
_MULT_B = np.uint32(0x58f38ded)
_MIX_MULT_L = np.uint32(0xca01f9dd)
_MIX_MULT_R = np.uint32(0x4973f715)
_XSHIFT = np.uint32(16)
_POOL_SIZE = 4
# numpy/random/src/pcg64/pcg64.h: PCG_DEFAULT_MULTIPLIER_128
_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
_MASK32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)


def _hashmix(value: np.ndarray, hash_const: np.uint32) -> tuple[np.ndarray, np.uint32]:
  value = value ^ hash_const
  hash_const = np.uint32(hash_const * _MULT_A)
  value = value * hash_const
  return value ^ (value >> _XSHIFT), hash_const


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  result = _MIX_MULT_L * x - _MIX_MULT_R * y
  return result ^ (result >> _XSHIFT)


def seed_sequence_pools(keys: np.ndarray) -> np.ndarray:
  """`SeedSequence(list(key)).pool` for each row of `keys` [N, K] (every entry in 0..2^32 − 1)."""
  keys = np.asarray(keys)
  if keys.ndim != 2 or keys.size and (keys.min() < 0 or keys.max() >= 1 << 32):
    raise ValueError("keyed draws need keys [N, K] of integers in 0..2^32 - 1")
  entropy = keys.astype(np.uint32)
  with np.errstate(over="ignore"):
    hash_const = _INIT_A
    mixer = []
    for i in range(_POOL_SIZE):
      word = entropy[:, i] if i < entropy.shape[1] else np.zeros(len(entropy), np.uint32)
      value, hash_const = _hashmix(word, hash_const)
      mixer.append(value)
    for i_src in range(_POOL_SIZE):
      for i_dst in range(_POOL_SIZE):
        if i_src != i_dst:
          value, hash_const = _hashmix(mixer[i_src], hash_const)
          mixer[i_dst] = _mix(mixer[i_dst], value)
    for i_src in range(_POOL_SIZE, entropy.shape[1]):
      for i_dst in range(_POOL_SIZE):
        value, hash_const = _hashmix(entropy[:, i_src], hash_const)
        mixer[i_dst] = _mix(mixer[i_dst], value)
  return np.stack(mixer, axis=1)


def generate_state_uint64(pools: np.ndarray, n_words: int) -> np.ndarray:
  """`SeedSequence.generate_state(n_words, np.uint64)` of each pool [N, 4]: uint64 [N, n_words]."""
  words = []
  hash_const = _INIT_B
  with np.errstate(over="ignore"):
    for i_dst in range(2 * n_words):
      value = pools[:, i_dst % _POOL_SIZE] ^ hash_const
      hash_const = np.uint32(hash_const * _MULT_B)
      value = value * hash_const
      words.append(value ^ (value >> _XSHIFT))
  low, high = np.stack(words[0::2], axis=1), np.stack(words[1::2], axis=1)
  return low.astype(np.uint64) | (high.astype(np.uint64) << _U32)  # little-endian uint32 pairs


def _mul_64x64(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The full 128-bit product of uint64 arrays: (high, low) words."""
  a_lo, a_hi = a & _MASK32, a >> _U32
  b_lo, b_hi = b & _MASK32, b >> _U32
  lo_lo = a_lo * b_lo
  hi_lo = a_hi * b_lo
  lo_hi = a_lo * b_hi
  cross = (lo_lo >> _U32) + (hi_lo & _MASK32) + lo_hi  # < 2^64: no carry is lost
  low = (lo_lo & _MASK32) | (cross << _U32)
  high = a_hi * b_hi + (hi_lo >> _U32) + (cross >> _U32)
  return high, low


class Streams:
  """One PCG64 stream per key, stepped together: `np.random.default_rng(SeedSequence(key))`.

  `next64` and `next_double` advance the streams of `rows` (a boolean mask; all by default) by
  one output; the other rows' streams do not move (their values are not draws). `next32` is
  `pcg64_next32`: the low half of a fresh output, its high half kept for the row's next `next32`.
  """

  def __init__(self, keys: np.ndarray):
    state = generate_state_uint64(seed_sequence_pools(keys), 4)
    # pcg_setseq_128_srandom_r: state 0, inc = (initseq << 1) | 1, step, state += initstate, step.
    init_hi, init_lo = state[:, 0], state[:, 1]
    seq_hi, seq_lo = state[:, 2], state[:, 3]
    with np.errstate(over="ignore"):
      self._inc_hi = (seq_hi << np.uint64(1)) | (seq_lo >> np.uint64(63))
      self._inc_lo = (seq_lo << np.uint64(1)) | np.uint64(1)
      self._hi = np.zeros_like(init_hi)
      self._lo = np.zeros_like(init_lo)
      self._step()
      self._add(init_hi, init_lo)
      self._step()
    self._has32 = np.zeros(len(state), bool)
    self._buffer32 = np.zeros(len(state), np.uint64)

  def _add(self, hi: np.ndarray, lo: np.ndarray) -> None:
    low = self._lo + lo
    self._hi = self._hi + hi + (low < lo).astype(np.uint64)
    self._lo = low

  def _step(self) -> None:
    """state = state · multiplier + inc (mod 2^128)."""
    m_hi, m_lo = np.uint64(_MULTIPLIER >> 64), np.uint64(_MULTIPLIER & ((1 << 64) - 1))
    high, low = _mul_64x64(self._lo, np.full_like(self._lo, m_lo))
    self._hi = high + self._hi * m_lo + self._lo * m_hi
    self._lo = low
    self._add(self._inc_hi, self._inc_lo)

  def next64(self, rows: np.ndarray | None = None) -> np.ndarray:
    """`pcg64_random_r` of `rows`: step, then the XSL-RR output of the new state."""
    held = None if rows is None else (self._hi, self._lo)
    with np.errstate(over="ignore"):
      self._step()
      value = self._hi ^ self._lo
      rotation = self._hi >> np.uint64(58)
      out = (value >> rotation) | (value << ((np.uint64(64) - rotation) & np.uint64(63)))
    if held is not None:
      rows = np.asarray(rows, bool)
      self._hi = np.where(rows, self._hi, held[0])
      self._lo = np.where(rows, self._lo, held[1])
    return out

  def next_double(self, rows: np.ndarray | None = None) -> np.ndarray:
    """`next_double` of `rows`: the top 53 bits of an output as a double in [0, 1)."""
    return (self.next64(rows) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)

  def next32(self, rows: np.ndarray) -> np.ndarray:
    """`pcg64_next32` for `rows` (a boolean mask): other rows' streams and buffers do not move."""
    rows = np.asarray(rows, bool)
    fresh = rows & ~self._has32
    out = np.zeros(len(rows), np.uint64)
    if fresh.any():
      value = self.next64(fresh)  # only the fresh rows consume an output
      out = np.where(fresh, value & _MASK32, out)
      self._buffer32 = np.where(fresh, value >> _U32, self._buffer32)
    buffered = rows & self._has32
    out = np.where(buffered, self._buffer32, out)
    self._has32 = np.where(rows, ~self._has32, self._has32)
    return out

  def bounded(self, rows: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`Generator.integers(0, n)` for `rows` where n > 1 (Lemire's method on `next32`).

    Returns (values, rejected): `rejected` rows hit Lemire's rejection loop, which is not
    followed here; their values (and every later draw of their streams) are not NumPy's.
    """
    n = np.asarray(n, np.uint64)
    with np.errstate(over="ignore"):
      m = self.next32(rows) * n
      leftover = m & _MASK32
      threshold = ((np.uint64(1) << _U32) - n) % np.maximum(n, np.uint64(1))
    return m >> _U32, rows & (leftover < n) & (leftover < threshold)
