"""`convert.synthetic`: official layouts and deterministic values."""

import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax.convert import manifest
from toprovar_jax.convert import sources
from toprovar_jax.convert import synthetic
from toprovar_jax.models import config as config_lib


class SyntheticTest(absltest.TestCase):

  def test_block_chunks_layout_and_values(self):
    target = manifest.Target("transformer",
                             config_lib.get_variant("infinity_tiny"), "t")
    flat = synthetic.official_keys(target)
    chunked = synthetic.official_keys(target, chunks=2)
    self.assertIn("blocks.1.ffn.fc1.weight", flat)
    self.assertIn("block_chunks.1.module.0.ffn.fc1.weight", chunked)
    self.assertFalse(any(k.startswith("blocks.") for k in chunked))
    # canonical() undoes the chunking exactly.
    names = manifest.canonical(chunked, depth=2)
    self.assertEqual(sorted(names.values()), sorted(flat))
    a = synthetic.tensor("x", (3, 4), seed=1)
    np.testing.assert_array_equal(a, synthetic.tensor("x", (3, 4), seed=1))
    self.assertFalse(np.array_equal(a, synthetic.tensor("y", (3, 4), seed=1)))

  def test_pth_and_shards_hold_the_same_tensors(self):
    d = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, d)
    keys = {"a.weight": (4, 3), "b.bias": (7,), "c": (2, 2, 2)}
    synthetic.write_pth(f"{d}/m.pth", keys)
    shards = synthetic.write_sharded(f"{d}/s", keys, shard_bytes=40)
    self.assertLen(shards, 3)
    one, two = sources.open_checkpoint(f"{d}/m.pth"), sources.open_checkpoint(
        f"{d}/s")
    for k, shape in keys.items():
      np.testing.assert_array_equal(np.asarray(one[k]), np.asarray(two[k]))
      np.testing.assert_array_equal(np.asarray(one[k]),
                                    synthetic.tensor(k, shape))


if __name__ == "__main__":
  absltest.main()
