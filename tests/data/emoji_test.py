"""Tests for toprovar_jax.data.emoji and experiments/build_emoji_dataset.py.

They need the real font and the pinned `emoji` package: without them every
test fails (never skips) with a message naming scripts/setup_emoji.sh, since a
silently skipped data pipeline would let a broken training set through.

The full 64 px dataset is built once, by running the experiment script in a
subprocess (absl flags of different experiments/*.py mains would clash in the
pytest process), and the dataset tests read what it wrote.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from toprovar_jax.data import emoji as emoji_data

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_SETUP = os.path.join(_ROOT, "scripts", "setup_emoji.sh")
_SIZE = 64
_MIN_EMOJI = 1500  # SPEC §8 says ≈1,900; fewer means a broken font or list.
_APPLE, _GRINNING, _DOG = "\U0001F34E", "\U0001F600", "\U0001F436"
# Found by rendering every candidate with fonts-noto-color-emoji 2.042:
# 'ballet dancer' (Emoji 17.0) is a ZWJ sequence the font has no ligature
# for, so it draws person + ballet shoes side by side; 'harp' (16.0) has no
# glyph; 'Sark' (16.0) falls back to the unknown-flag placeholder.
_BALLET_DANCER = "\U0001F9D1\u200D\U0001FA70"
_HARP = "\U0001FA89"
_SARK = "\U0001F1E8\U0001F1F6"
_RAINBOW_FLAG = "\U0001F3F3\uFE0F\u200D\U0001F308"  # a supported ZWJ sequence


def _require_setup():
  """Fails (AssertionError) when the font or the pinned package is missing."""
  try:
    emoji_data.find_font()
    emoji_data.list_emoji()
    emoji_data.render(_APPLE)
  except (FileNotFoundError, ImportError, RuntimeError) as e:
    raise AssertionError(
        f"emoji data set-up missing: run `bash scripts/setup_emoji.sh`. {e}"
    ) from e


def _alpha_moments(coverage):
  """Total mass and (y, x) centroid of (..., S, S) coverage in [0, 1]."""
  size = coverage.shape[-1]
  grid = np.arange(size) + 0.5
  mass = coverage.sum(axis=(-2, -1))
  cy = (coverage.sum(-1) * grid).sum(-1) / mass
  cx = (coverage.sum(-2) * grid).sum(-1) / mass
  return mass, np.stack([cy, cx], -1)


class _EmojiTestCase(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    _require_setup()


class ListEmojiTest(_EmojiTestCase):

  def test_count_is_plausible_and_deterministic(self):
    entries = emoji_data.list_emoji()
    self.assertEqual(entries, emoji_data.list_emoji())
    self.assertBetween(len(entries), _MIN_EMOJI, 2500)
    keys = [[ord(c) for c in e.emoji] for e in entries]
    self.assertEqual(keys, sorted(keys))

  def test_known_captions(self):
    by_emoji = {e.emoji: e.caption for e in emoji_data.list_emoji()}
    self.assertEqual(by_emoji[_APPLE], "red apple")
    self.assertEqual(by_emoji[_GRINNING], "grinning face")
    self.assertEqual(by_emoji[_DOG], "dog face")

  def test_no_skin_tones_and_optional_flags(self):
    entries = emoji_data.list_emoji()
    self.assertFalse([e for e in entries
                      if any(0x1F3FB <= ord(c) <= 0x1F3FF for c in e.emoji)])
    no_flags = emoji_data.list_emoji(include_flags=False)
    self.assertFalse([e for e in no_flags if emoji_data.is_flag(e.emoji)])
    self.assertBetween(len(entries) - len(no_flags), 200, 300)

  @parameterized.parameters(
      (":red_apple:", "red apple"), (":keycap_#:", "keycap #"),
      (":O_button_(blood_type):", "O button (blood type)"),
      (":woman’s_boot:", "woman’s boot"))
  def test_clean_name(self, name, caption):
    self.assertEqual(emoji_data.clean_name(name), caption)


class RenderTest(_EmojiTestCase):

  @parameterized.parameters(128, 64)
  def test_non_blank_square(self, size):
    for emoji in (_APPLE, _GRINNING, _DOG, _RAINBOW_FLAG):
      image = emoji_data.render(emoji, image_size=size)
      self.assertEqual(image.shape, (size, size, 4))
      self.assertEqual(image.dtype, np.uint8)
      self.assertGreater((image[..., 3] > 0).mean(), 0.3)
      self.assertGreater(image[..., :3].std(), 10.0)
      np.testing.assert_array_equal(
          image, emoji_data.render(emoji, image_size=size))

  def test_ink_is_centred_on_the_canvas(self):
    side = emoji_data.RenderConfig().canvas_size
    ys, xs = np.nonzero(emoji_data.render(_DOG, image_size=side)[..., 3])
    self.assertLessEqual(abs(ys.min() - (side - 1 - ys.max())), 1)
    self.assertLessEqual(abs(xs.min() - (side - 1 - xs.max())), 1)

  @parameterized.named_parameters(
      ("multi_glyph_zwj", _BALLET_DANCER, "multi_glyph"),
      ("blank_newer_than_font", _HARP, "blank"),
      ("placeholder_flag", _SARK, "placeholder"))
  def test_rejects(self, emoji, reason):
    with self.assertRaises(emoji_data.RejectedEmojiError) as caught:
      emoji_data.render(emoji)
    self.assertEqual(caught.exception.reason, reason)

  def test_missing_font_names_the_setup_script(self):
    with self.assertRaisesRegex(FileNotFoundError, "scripts/setup_emoji.sh"):
      emoji_data.find_font("/nonexistent/NotoColorEmoji.ttf")


class SplitTest(_EmojiTestCase):

  def setUp(self):
    super().setUp()
    self.captions = [e.caption for e in emoji_data.list_emoji()]

  def test_deterministic_disjoint_and_large_enough(self):
    heldout = emoji_data.split(self.captions)
    np.testing.assert_array_equal(heldout, emoji_data.split(self.captions))
    held = {c for c, h in zip(self.captions, heldout) if h}
    train = {c for c, h in zip(self.captions, heldout) if not h}
    self.assertEmpty(held & train)
    self.assertLen(held | train, len(self.captions))
    self.assertBetween(heldout.mean(), 0.05, 0.08)

  def test_stable_under_reordering(self):
    order = np.random.default_rng(0).permutation(len(self.captions))
    shuffled = [self.captions[i] for i in order]
    np.testing.assert_array_equal(
        emoji_data.split(shuffled), emoji_data.split(self.captions)[order])

  def test_seed_changes_the_split(self):
    self.assertFalse(np.array_equal(emoji_data.split(self.captions, seed=0),
                                    emoji_data.split(self.captions, seed=1)))

  def test_near_duplicates_stay_together(self):
    for seed in range(5):
      heldout = dict(zip(self.captions,
                         emoji_data.split(self.captions, seed=seed)))
      self.assertEqual(heldout["man walking"], heldout["woman walking"])
      self.assertEqual(heldout["man walking"], heldout["person walking"])
      self.assertEqual(heldout["man walking"],
                       heldout["man walking facing right"])

  def test_rejects_repeated_captions(self):
    with self.assertRaises(ValueError):
      emoji_data.split(["a", "b", "a"])


class DatasetTest(_EmojiTestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    run = subprocess.run(
        [sys.executable, "-m", "experiments.build_emoji_dataset",
         f"--workdir={cls.workdir}", f"--image_size={_SIZE}"],
        cwd=_ROOT, capture_output=True, text=True, check=False,
        env=dict(os.environ, PYTHONPATH=_ROOT))
    assert run.returncode == 0, run.stderr[-3000:]
    cls.path = os.path.join(cls.workdir, f"emoji_{_SIZE}.npz")
    cls.dataset = emoji_data.load_dataset(cls.path)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_script_outputs(self):
    self.assertEqual(sorted(os.listdir(self.workdir)),
                     ["captions.txt", f"emoji_{_SIZE}.npz", "preview.png",
                      "preview_augmented.png", "summary.json"])
    with open(os.path.join(self.workdir, "captions.txt"),
              encoding="utf-8") as f:
      self.assertEqual(f.read().splitlines(), self.dataset.captions.tolist())
    with open(os.path.join(self.workdir, "summary.json")) as f:
      summary = json.load(f)
    self.assertEqual(summary["num_emoji"], len(self.dataset.captions))
    self.assertEqual(summary["num_emoji"] + summary["num_rejected"],
                     summary["num_candidates"])
    self.assertLen(summary["rejected"], summary["num_rejected"])
    self.assertEqual(summary["emoji_package_version"],
                     emoji_data.EMOJI_PACKAGE_VERSION)

  def test_refuses_a_non_empty_workdir(self):
    run = subprocess.run(
        [sys.executable, "-m", "experiments.build_emoji_dataset",
         f"--workdir={self.workdir}"], cwd=_ROOT, capture_output=True,
        text=True, check=False, env=dict(os.environ, PYTHONPATH=_ROOT))
    self.assertNotEqual(run.returncode, 0)
    self.assertIn("--overwrite", run.stderr)

  def test_contents(self):
    ds = self.dataset
    n = len(ds.captions)
    self.assertGreaterEqual(n, _MIN_EMOJI)
    self.assertEqual(ds.images.shape, (n, _SIZE, _SIZE, 4))
    self.assertEqual(ds.images.dtype, np.uint8)
    self.assertEqual((ds.codepoints.shape, ds.heldout.shape), ((n,), (n,)))
    self.assertGreaterEqual(ds.heldout.mean(), 0.05)
    np.testing.assert_array_equal(ds.heldout, emoji_data.split(ds.captions))
    self.assertTrue((ds.images[..., 3].reshape(n, -1).max(-1) > 0).all())
    captions = dict(zip(ds.emoji, ds.captions))
    self.assertEqual(captions[_APPLE], "red apple")
    self.assertEqual(captions[_DOG], "dog face")
    rejected = {r["codepoints"]: r["reason"] for r in ds.metadata["rejected"]}
    self.assertEqual(rejected[emoji_data._to_codepoints(_BALLET_DANCER)],
                     "multi_glyph")
    self.assertNotIn(_BALLET_DANCER, captions)

  def test_images_match_render(self):
    for i in (0, len(self.dataset.captions) // 2, -1):
      np.testing.assert_array_equal(
          self.dataset.images[i],
          emoji_data.render(self.dataset.emoji[i], image_size=_SIZE))

  def test_build_is_deterministic_to_the_byte(self):
    entries = emoji_data.list_emoji()[:40]
    paths = [os.path.join(self.workdir, f"small_{i}.npz") for i in range(2)]
    for path in paths:
      emoji_data.build_dataset(path, _SIZE, entries=entries)
    with open(paths[0], "rb") as a, open(paths[1], "rb") as b:
      self.assertEqual(a.read(), b.read())
    small = emoji_data.load_dataset(paths[0])
    self.assertLen(small.captions, 40)
    index = {c: i for i, c in enumerate(self.dataset.codepoints)}
    np.testing.assert_array_equal(
        small.images, self.dataset.images[[index[c] for c in small.codepoints]])
    for path in paths:
      os.unlink(path)


class SetupScriptTest(absltest.TestCase):

  def test_pins_the_same_emoji_version(self):
    with open(_SETUP) as f:
      pinned = re.search(r'^EMOJI_VERSION="([^"]+)"', f.read(), re.M)
    self.assertEqual(pinned.group(1), emoji_data.EMOJI_PACKAGE_VERSION)
    subprocess.run(["bash", "-n", _SETUP], check=True)


if __name__ == "__main__":
  absltest.main()
