"""The weight unpickler admits numpy arrays and plain containers only; anything else never runs."""
import collections
import os
import pickle

import numpy as np
import pytest

from wm_jax.evaluation import safe_pickle


class _Exploit:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f"touch {self.path}",))


def test_malicious_reduce_is_refused_and_never_runs(tmp_path):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"params": {"w": np.ones(3)}, "x": _Exploit(marker)})
  # Sanity: plain pickle WOULD run it (proves the payload is live).
  probe = tmp_path / "probe"
  pickle.loads(pickle.dumps(_Exploit(probe)))
  assert probe.exists()
  f = tmp_path / "evil.ckpt"
  f.write_bytes(payload)
  with pytest.raises(pickle.UnpicklingError, match=r"(posix|os|nt)\.system.*refused"):
    safe_pickle.load(f)
  assert not marker.exists()


@pytest.mark.parametrize("obj", [eval, print, collections.Counter])
def test_other_globals_refused(obj):
  with pytest.raises(pickle.UnpicklingError, match=obj.__name__):
    safe_pickle.loads(pickle.dumps({"a": obj}))


def test_object_arrays_refused():
  with pytest.raises(pickle.UnpicklingError, match="object dtype"):
    safe_pickle.loads(pickle.dumps(np.array([1, "a"], dtype=object)))


def test_arrays_and_containers_round_trip():
  tree = collections.OrderedDict(
      a={"k": np.arange(6, dtype=np.float32).reshape(2, 3)},
      b=[np.zeros(2, np.int8), (np.float64(2.5), np.ones((1, 1), np.float16))],
      c="name", d=3)
  out = safe_pickle.loads(pickle.dumps(tree, protocol=4))
  np.testing.assert_array_equal(out["a"]["k"], tree["a"]["k"])
  assert out["a"]["k"].dtype == np.float32
  assert out["b"][1][0] == 2.5 and out["b"][1][1].dtype == np.float16
  assert out["c"] == "name" and out["d"] == 3


@pytest.mark.parametrize("content", [b"", b"hello, not a pickle\n", pickle.dumps({"a": 1})[:-3]])
def test_a_file_that_is_no_pickle_is_named(tmp_path, content):
  f = tmp_path / "weights.ckpt"
  f.write_bytes(content)
  with pytest.raises(pickle.UnpicklingError, match=r"weights\.ckpt: not a valid pickle file"):
    safe_pickle.load(f)
