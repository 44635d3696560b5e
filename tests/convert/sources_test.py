"""`convert.sources`: lazy readers of safetensors (single, sharded with an
index), `.bin` shards and wrapped `.pth` files."""

import json
import os
import shutil
import tempfile

from absl.testing import absltest
import ml_dtypes
import numpy as np
from safetensors import numpy as st_numpy

from toprovar_jax.convert import pth
from toprovar_jax.convert import sources


def _write_sharded(folder, tensors, per_shard=2):
  names = sorted(tensors)
  shards = [names[i:i + per_shard] for i in range(0, len(names), per_shard)]
  weight_map = {}
  for i, keys in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    st_numpy.save_file({k: tensors[k] for k in keys},
                       os.path.join(folder, fname))
    weight_map.update({k: fname for k in keys})
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)


class SourcesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)
    rng = np.random.default_rng(0)
    self.tensors = {
        "a.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "b.bias": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16),
        "c.weight": rng.normal(size=(2, 2, 3)).astype(np.float16),
        "d": np.arange(4, dtype=np.int64),
        "e": rng.normal(size=(1, 1, 6)).astype(np.float32)}

  def _assert_same(self, got):
    self.assertEqual(sorted(got), sorted(self.tensors))
    for k, v in self.tensors.items():
      self.assertIsInstance(got[k], sources.LazyTensor)
      self.assertEqual((got[k].shape, got[k].dtype), (v.shape, v.dtype))
      np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=k)

  def test_sharded_safetensors_folder_and_index(self):
    _write_sharded(self.dir, self.tensors)
    self._assert_same(sources.open_checkpoint(self.dir))
    self._assert_same(sources.open_checkpoint(
        os.path.join(self.dir, "model.safetensors.index.json")))

  def test_missing_shard_is_named(self):
    _write_sharded(self.dir, self.tensors)
    os.remove(os.path.join(self.dir, "model-00002-of-00003.safetensors"))
    with self.assertRaisesRegex(FileNotFoundError,
                                "names shard model-00002-of-00003"):
      sources.open_checkpoint(self.dir)

  def test_bin_shards_with_index(self):
    weight_map = {}
    for i, keys in enumerate((["a.weight", "b.bias"], ["c.weight", "d", "e"])):
      name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
      pth.write(os.path.join(self.dir, name),
                [(k, self.tensors[k].shape, self.tensors[k].dtype,
                  self.tensors[k]) for k in keys])
      weight_map.update({k: name for k in keys})
    with open(os.path.join(self.dir, "pytorch_model.bin.index.json"), "w") as f:
      json.dump({"weight_map": weight_map}, f)
    self._assert_same(sources.open_checkpoint(self.dir))

  def test_vae_wrapper_is_unwrapped_or_required(self):
    path = os.path.join(self.dir, "vae.pth")
    pth.write(path, [(k, v.shape, v.dtype, v)
                     for k, v in self.tensors.items()], wrap="vae")
    self._assert_same(sources.open_checkpoint(path))
    self._assert_same(sources.read_pth(path, wrapper="vae"))
    with self.assertRaisesRegex(ValueError, "no 'ema' key"):
      sources.read_pth(path, wrapper="ema")

  def test_truncated_safetensors_is_refused(self):
    path = os.path.join(self.dir, "x.safetensors")
    st_numpy.save_file(self.tensors, path)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) - 8)
    with self.assertRaisesRegex(ValueError, "do not fit shape"):
      sources.open_checkpoint(path)


if __name__ == "__main__":
  absltest.main()
