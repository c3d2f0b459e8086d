"""splits.in_validation: fixed per key, about val_fraction of the keys, nested as it grows."""

from wm_jax.data.splits import in_validation

KEYS = [f"scene-{i:04d}" for i in range(4000)]


def test_share_of_keys_in_validation_follows_val_fraction():
  for fraction in (0.0, 0.15, 0.5, 1.0):
    share = sum(in_validation(k, fraction) for k in KEYS) / len(KEYS)
    assert abs(share - fraction) < 0.03, (fraction, share)


def test_split_is_a_fixed_function_of_the_key():
  # The same on every host and in every run (no per-process hash seed): pinned keys.
  val = [k for k in KEYS if in_validation(k, 0.15)]
  assert val[:5] == ["scene-0001", "scene-0006", "scene-0008", "scene-0018", "scene-0029"]
  assert set(val) <= {k for k in KEYS if in_validation(k, 0.3)}  # a larger share only adds keys
