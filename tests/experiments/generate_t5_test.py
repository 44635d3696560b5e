"""End to end: `experiments/generate.py` with a Flan-T5 folder (`t5_dir=`)
at another official resolution (`h_div_w=1.5,pixels=0.06M`), on the tiny
Infinity model: the prompts are real T5 features, the image is 336x224."""

import json
import os
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np
from PIL import Image

from experiments import generate
from tests.text import flan_t5_test

FLAGS = flags.FLAGS
_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "tiny.py")


class GenerateWithT5Test(absltest.TestCase):

  def test_t5_prompts_at_h_div_w_1_5(self):
    root = tempfile.mkdtemp()
    t5_dir = flan_t5_test.write_folder(os.path.join(root, "flan-t5-tiny"),
                                       d_model=256)  # infinity_tiny's Ct
    workdir = os.path.join(root, "run")
    argv = ["generate", f"--config={_TINY}:model=infinity_tiny,batch_size=2,"
            f"t5_dir={t5_dir},h_div_w=1.5,pixels=0.06M",
            "--config.sampling.prompts=('a red fox in snow', 'the lighthouse')",
            f"--workdir={workdir}"]
    with flagsaver.flagsaver(), mock.patch.object(sys, "argv", argv):
      generate.main(FLAGS(argv))
    with open(os.path.join(workdir, "results.json")) as f:
      r = json.load(f)
    self.assertEqual(r["text_features"], "flan-t5:flan-t5-tiny")
    self.assertEqual([s["text_tokens"] for s in r["samples"]], [6, 4])
    self.assertEqual(r["schedule"][-1], [21, 14])  # h/w 1.5 at 0.06M
    self.assertEqual(r["image_shape"], [336, 224, 3])  # stride 16
    with Image.open(os.path.join(workdir, "sample_0000.png")) as img:
      image = np.asarray(img)
    self.assertEqual(image.shape, (336, 224, 3))
    self.assertGreater(image.std(), 0.0)


if __name__ == "__main__":
  absltest.main()
