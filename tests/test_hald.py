"""HALD phase schedules: every epoch of every schedule gets the phase DESIGN.md §5 says."""

import pytest

from hardlabel_jax import hald


def _phases(name, epochs, hard_fraction=0.5):
  schedule = hald.parse_schedule(name)
  letter = {"soft": "S", "hard": "H", "hybrid": "Y"}
  return "".join(
      letter[hald.phase_of_epoch(e, epochs, schedule, hard_fraction)] for e in range(epochs))


def test_s6_is_soft_half_hard_soft_half():
  # The paper's 300 epochs: 75 soft / 150 hard / 75 soft.
  phases = _phases("S6", 300)
  assert phases == "S" * 75 + "H" * 150 + "S" * 75
  assert _phases("S6", 8) == "SSHHHHSS"
  assert _phases("S6", 10, hard_fraction=0.2) == "SSSSHHSSSS"


@pytest.mark.parametrize("name, expected", [
    ("S1", "HHHHSSSS"),
    ("S8", "SSSSHHHH"),
    ("S7", "HHSSSSHH"),
    ("alt:1", "SHSHSHSH"),
    ("alt:3", "SSSHHHSS"),
    ("hybrid:0.3", "YYYYYYYY"),
])
def test_named_and_alternating_schedules(name, expected):
  assert _phases(name, 8) == expected


def test_odd_epoch_counts_round_the_hard_share():
  # 5 epochs: round(2.5) = 2 hard, 3 soft; S6 puts 3 // 2 = 1 soft epoch first.
  assert _phases("S6", 5) == "SHHSS"
  assert _phases("S1", 3, hard_fraction=1 / 3) == "HSS"


def test_steps_take_the_phase_of_the_epoch_holding_their_first_example():
  # 10 images, batch 4, 10 steps = 40 examples = 4 epochs; S6 → epochs S H H S.
  phases = hald.StepPhases(hald.parse_schedule("S6"), num_steps=10, global_batch=4, pool_size=10)
  by_step = [phases.of_step(s) for s in range(10)]
  # step s starts at example 4s → epoch (4s)//10: 0,0,0,1,1,2,2,2,3,3
  assert by_step == ["soft"] * 3 + ["hard"] * 5 + ["soft"] * 2
  # Example 10 (epoch 1, hard) sits in step 2 (soft): a batch follows its step, not its rows.
  assert phases.of_position(10) == "soft"
  assert all(phases.of_position(4 * s + i) == by_step[s] for s in range(10) for i in range(4))
  assert phases.counts() == {"soft": 5, "hard": 5}


@pytest.mark.parametrize("bad", ["S2", "alt:0", "alt:x", "hybrid:1.5", "hybrid", "", "s6"])
def test_bad_schedules_name_the_field(bad):
  with pytest.raises(ValueError, match="config.hald_schedule"):
    hald.parse_schedule(bad)


def test_epoch_outside_the_run_is_an_error():
  with pytest.raises(ValueError, match="outside"):
    hald.phase_of_epoch(8, 8, hald.parse_schedule("S6"))
