"""End to end with official numbers: the golden reference weights written as
official `.pth` files, converted by `experiments/convert_checkpoint.py`
(--hparams = the reference json), generated from by `experiments/generate.py`
with `configs/reference.py`, match the reference sample.

Everything is read from the json and npz (depth, widths, labels, guidance),
so a reference of another seed or depth runs the same way.
"""

import json
import pathlib
import shutil
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np
from PIL import Image

from experiments import convert_checkpoint
from experiments import generate
from toprovar_jax import parity
from toprovar_jax import testing
from toprovar_jax.convert import common
from toprovar_jax.convert import pth
from toprovar_jax.convert import transformer
from toprovar_jax.weights import checkpoints
from toprovar_jax.weights import loading
from toprovar_jax.weights import strict

FLAGS = flags.FLAGS
_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _main(module, argv):
  with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
    module.main(FLAGS(argv))


def _write_official(arrays, prefix, path, wrap=""):
  sd = common.strip_prefix(arrays, prefix)
  pth.write(path, [(k, v.shape, v.dtype, v) for k, v in sd.items()], wrap=wrap)


def _convert(source, file, hparams, out):
  _main(convert_checkpoint, ["convert_checkpoint", f"--source={source}",
                             f"--file={file}", f"--hparams={hparams}",
                             f"--out={out}"])


class ConvertCheckpointTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, self.dir)

  def test_var_reference_weights_convert_and_reproduce_the_sample(self):
    ref = testing.reference_dir() / "var_tiny.json"
    _, arrays, meta = parity.load(ref.with_suffix(".npz"))
    # var_d*.pth is a bare state dict; so is the VQVAE file.
    _write_official(arrays, "var/", self.dir / "var.pth")
    _write_official(arrays, "vae/", self.dir / "vae.pth")
    ckpt = self.dir / "ckpt"
    _convert("var", self.dir / "var.pth", ref, ckpt / "transformer")
    _convert("var_vae", self.dir / "vae.pth", ref, ckpt / "tokenizer")
    record = json.loads((ckpt / "transformer" / "conversion.json").read_text())
    self.assertEqual(record["parameters"], meta["derived"]["n_params_var"])

    work = self.dir / "gen"
    config = _ROOT / "configs" / "reference.py"
    _main(generate, ["generate",
                     f"--config={config}:json={ref},ckpt_dir={ckpt}",
                     f"--workdir={work}"])
    results = json.loads((work / "results.json").read_text())
    self.assertEqual(results["params_source"], str(ckpt / "transformer"))
    self.assertEqual(results["tokenizer_source"], str(ckpt / "tokenizer"))
    # The reference run is greedy (top_k=1), so its sample is ours: the
    # PNGs (uint8) equal sample/img (in [0, 1]) up to rounding + IMAGE_TOL.
    want = arrays["sample/img"].transpose(0, 2, 3, 1)
    samples = results["samples"]
    self.assertEqual([x["label"] for x in samples],
                     [int(x) for x in arrays["sample/labels"]])
    for i, sample in enumerate(samples):
      got = np.asarray(Image.open(work / sample["file"]), np.float32) / 255
      self.assertLessEqual(np.abs(got - want[i]).max(),
                           0.5 / 255 + parity.IMAGE_TOL + 1e-6)

  def test_infinity_reference_weights_convert_to_the_parity_params(self):
    ref = testing.reference_dir() / "infinity_tiny.json"
    _, arrays, meta = parity.load(ref.with_suffix(".npz"))
    _write_official(arrays, "infinity/", self.dir / "inf.pth")
    _write_official(arrays, "vae/", self.dir / "vae.pth", wrap="vae")
    _convert("infinity", self.dir / "inf.pth", ref, self.dir / "transformer")
    _convert("infinity_vae", self.dir / "vae.pth", ref, self.dir / "tokenizer")  # the `vae` key
    cfg, vcfg = parity.infinity_configs(meta)
    got = checkpoints.restore_params(self.dir / "transformer",
                                     loading.abstract_transformer(cfg))
    # check_parity passes with exactly these params (tests/parity_test.py).
    want = transformer.convert_transformer(
        common.strip_prefix(arrays, "infinity/"), cfg)
    flat_got, flat_want = strict.flatten(got), strict.flatten(want)
    self.assertEqual(sorted(flat_got), sorted(flat_want))
    for k, v in flat_want.items():
      np.testing.assert_array_equal(np.asarray(flat_got[k]), v, err_msg=k)
    record = json.loads((self.dir / "tokenizer" / "conversion.json").read_text())
    self.assertEqual(record["parameters"], 2_154_995)
    checkpoints.restore_params(self.dir / "tokenizer",
                               loading.abstract_tokenizer(cfg, vcfg))

  def test_a_file_that_is_not_the_variant_is_refused(self):
    ref = testing.reference_dir() / "var_tiny.json"
    _, arrays, _ = parity.load(ref.with_suffix(".npz"))
    _write_official(arrays, "var/", self.dir / "var_d16.pth")
    with self.assertRaisesRegex(strict.ConversionError,
                                r"var_d16\):\n  missing keys"):
      _main(convert_checkpoint, [
          "convert_checkpoint", "--source=var",
          f"--file={self.dir / 'var_d16.pth'}", "--variant=var_d16",
          f"--out={self.dir / 'out'}"])
    self.assertFalse((self.dir / "out").exists())


if __name__ == "__main__":
  absltest.main()
