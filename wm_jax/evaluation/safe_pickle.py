"""A restricted unpickler for weight files: numpy arrays and plain containers, nothing else.

`pickle.load` runs whatever callable a file names (a `__reduce__` that calls `os.system` runs on
load). Weight files only need numpy arrays nested in dicts/lists/tuples, so `load` admits exactly
the globals that rebuild an ndarray and `collections.OrderedDict`; any other global is refused
with an `UnpicklingError` naming it, before it is imported or called. Object arrays (dtype 'O')
are refused too, since their elements would be arbitrary Python objects. A file that is no pickle
at all (empty, text, truncated) raises an `UnpicklingError` naming the file.
"""

import collections
import io
import pickle
import struct

import numpy as np

try:  # numpy >= 2
  from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
  from numpy.core import multiarray as _multiarray


class Refused(pickle.UnpicklingError):
  """A well-formed pickle asked for something a weight file may not contain."""


# What unpickling malformed bytes raises (the C unpickler's errors for each kind of damage).
_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError,
              AttributeError, OverflowError, struct.error)


def _dtype(*args, **kwargs):
  dt = np.dtype(*args, **kwargs)
  if dt.hasobject:
    raise Refused(f"object dtype {dt!r} refused: weight files hold numbers only")
  return dt


# (module, name) -> the object to hand the unpickler. numpy 1.x wrote `numpy.core.*`, numpy 2
# writes `numpy._core.*`; both map to the running numpy's functions.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise Refused(
          f"global '{module}.{name}' refused: weight files may only contain numpy arrays and "
          "dict/list/tuple/OrderedDict containers") from None

  def persistent_load(self, pid):
    raise Refused(f"persistent id {pid!r} refused in a weight file")


def loads(data: bytes):
  """Unpickles `data` admitting only numpy arrays and plain containers."""
  return _RestrictedUnpickler(io.BytesIO(data)).load()


def load(path):
  """Unpickles the file at `path` admitting only numpy arrays and plain containers; a refused
  content or a file that is no valid pickle raises UnpicklingError naming `path`."""
  with open(path, "rb") as f:
    try:
      return _RestrictedUnpickler(f).load()
    except Refused as e:
      raise Refused(f"{path}: {e}") from None
    except _MALFORMED as e:
      raise pickle.UnpicklingError(f"{path}: not a valid pickle file ({type(e).__name__}: "
                                   f"{e})") from None
