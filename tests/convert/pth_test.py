"""`convert.pth`: torch's zip format, read by an allow-list unpickler and
written one tensor at a time; torch (the test extra) is the oracle."""

import os
import pickle
import shutil
import tempfile
import zipfile

from absl.testing import absltest
import ml_dtypes
import numpy as np
import torch

from toprovar_jax.convert import pth
from toprovar_jax.convert import sources


class PthTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)

  def test_written_file_loads_in_torch_weights_only_mmap(self):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.linspace(-1, 1, 5).astype(ml_dtypes.bfloat16)
    path = os.path.join(self.dir, "m.pth")
    pth.write(path, [("a", a.shape, a.dtype, a),
                     ("b", b.shape, b.dtype, lambda: b)], wrap="vae")
    got = torch.load(path, weights_only=True, mmap=True)
    self.assertEqual(list(got), ["vae"])
    np.testing.assert_array_equal(got["vae"]["a"].numpy(), a)
    self.assertEqual(got["vae"]["b"].dtype, torch.bfloat16)
    np.testing.assert_array_equal(got["vae"]["b"].float().numpy(),
                                  b.astype(np.float32))
    # Storage data starts 64-byte aligned, as torch writes it.
    ours = sources.read_pth(path)
    self.assertEqual(ours["a"].byte_offset % 64, 0)

  def test_reads_torch_save_views_parameters_and_bf16(self):
    base = torch.arange(24.).reshape(4, 6)
    sd = {"t": base.t(), "slice": base[1:3, 2:], "p": torch.nn.Parameter(
        torch.ones(3, dtype=torch.bfloat16) * 3), "i": torch.arange(4)}
    path = os.path.join(self.dir, "t.pth")
    torch.save(sd, path)
    ours = sources.read_pth(path)
    for k, v in sd.items():
      np.testing.assert_array_equal(
          np.asarray(ours[k]).astype(np.float64),
          v.detach().double().numpy(), err_msg=k)
    self.assertEqual(ours["p"].dtype, np.dtype(ml_dtypes.bfloat16))
    self.assertEqual(ours["t"].shape, (6, 4))

  def test_malicious_pickle_is_refused_and_runs_nothing(self):
    marker = os.path.join(self.dir, "pwned")

    class Evil:
      def __reduce__(self):
        return (open, (marker, "w"))

    path = os.path.join(self.dir, "evil.pth")
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
      zf.writestr("archive/version", "3\n")
    # The pickle really would write the file if unpickled normally.
    with zipfile.ZipFile(path) as zf:
      pickle.loads(zf.read("archive/data.pkl"))["w"].close()
    self.assertTrue(os.path.exists(marker))
    os.remove(marker)
    with self.assertRaisesRegex(pth.UnsafePickleError,
                                r"refusing to unpickle global io\.open"):
      sources.read_pth(path)
    self.assertFalse(os.path.exists(marker))

  def test_legacy_and_non_tensor_files_are_refused(self):
    path = os.path.join(self.dir, "legacy.pth")
    with open(path, "wb") as f:
      f.write(pickle.dumps({"a": 1}))
    with self.assertRaisesRegex(ValueError, "not a torch zip checkpoint"):
      sources.read_pth(path)
    path = os.path.join(self.dir, "n.pth")
    torch.save({"step": 3}, path)
    with self.assertRaisesRegex(ValueError, "entries that are not tensors: "
                                "step"):
      sources.read_pth(path)


if __name__ == "__main__":
  absltest.main()
