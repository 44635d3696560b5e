"""Parameter trees for the weights tests: abstract trees of the tiny models
filled with numpy values (no init is ever compiled)."""

import functools
import tempfile

import jax
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import loading


def tempdir(test):
  """A fresh folder removed after `test` (absl's create_tempdir needs parsed
  flags, which pytest does not provide)."""
  d = tempfile.TemporaryDirectory()
  test.addCleanup(d.cleanup)
  return d.name


@functools.lru_cache(maxsize=None)
def abstract(name):
  """(transformer, tokenizer) ShapeDtypeStruct trees of a tiny model."""
  return loading.abstract_params(config_lib.get_variant(name),
                                 config_lib.get_tokenizer(name))


def fill(abstract, seed=0):
  """Random numpy arrays with the shapes and dtypes of `abstract`."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)


def drop(tree, path):
  """Copy of a nested dict without the leaf at `path` ('a/b/c')."""
  *parents, leaf = path.split("/")
  out = jax.tree.map(lambda x: x, tree)
  node = out
  for p in parents:
    node = node[p]
  del node[leaf]
  return out
