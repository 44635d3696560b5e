"""Compositing over a background and the training augmentation, on rendered
emoji."""

from absl.testing import absltest
import numpy as np

from tests.data import emoji_test as fixtures
from toprovar_jax.data import augment
from toprovar_jax.data import emoji as emoji_data

_APPLE = fixtures._APPLE
_DOG = fixtures._DOG
_EmojiTestCase = fixtures._EmojiTestCase
_GRINNING = fixtures._GRINNING
_RAINBOW_FLAG = fixtures._RAINBOW_FLAG
_SIZE = fixtures._SIZE
_alpha_moments = fixtures._alpha_moments


class CompositeAndAugmentTest(_EmojiTestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.batch = np.stack([emoji_data.render(e, image_size=_SIZE)
                          for e in (_APPLE, _GRINNING, _DOG, _RAINBOW_FLAG)])

  def test_composite_white_where_transparent(self):
    rgb = augment.composite(self.batch)
    self.assertEqual(rgb.shape, self.batch.shape[:-1] + (3,))
    clear = self.batch[..., 3] == 0
    self.assertTrue(clear.any())
    self.assertTrue((rgb[clear] == 255).all())
    opaque = self.batch[..., 3] == 255
    np.testing.assert_array_equal(rgb[opaque], self.batch[..., :3][opaque])

  def test_deterministic_given_the_rng(self):
    def run(seed):
      return augment.augment(np.random.default_rng(seed), self.batch,
                                image_size=_SIZE)
    np.testing.assert_array_equal(run(0), run(0))
    self.assertFalse(np.array_equal(run(0), run(1)))
    out = augment.augment(np.random.default_rng(0), self.batch,
                             image_size=_SIZE, normalize=True)
    self.assertEqual(out.dtype, np.float32)
    self.assertBetween(float(out.min()), -1.0, 1.0)
    self.assertBetween(float(out.max()), -1.0, 1.0)

  def test_whole_pixel_shift_is_exact(self):
    dy, dx = 3, -2
    params = augment.AugmentParams(
        background=np.array([[10, 200, 30]] * 4, np.uint8),
        scale=np.ones(4), shift=np.array([[dy, dx]] * 4, np.float64))
    shifted = np.zeros_like(self.batch)
    shifted[:, dy:, :_SIZE + dx] = self.batch[:, :_SIZE - dy, -dx:]
    np.testing.assert_array_equal(
        augment.apply_augment(self.batch, params),
        augment.composite(shifted, (10, 200, 30)))

  def test_preserves_the_emoji_up_to_scale_and_shift(self):
    params = augment.sample_augment_params(
        np.random.default_rng(3), batch_size=4, image_size=_SIZE)
    # Coverage from the same warp over black and over white backgrounds.
    over = {}
    for value in (0, 255):
      p = augment.AugmentParams(
          background=np.full((4, 3), value, np.uint8), scale=params.scale,
          shift=params.shift)
      over[value] = augment.apply_augment(self.batch, p).astype(float)
    coverage = 1.0 - (over[255] - over[0]).mean(-1) / 255.0
    mass, centroid = _alpha_moments(coverage)
    mass0, centroid0 = _alpha_moments(self.batch[..., 3] / 255.0)
    # No ink is lost off the edges (the render margin covers the largest
    # shift) and the ink moves exactly as the draws say.
    np.testing.assert_allclose(mass, mass0 * params.scale**2, rtol=0.03)
    centre = _SIZE / 2
    expected = centre + params.scale[:, None] * (centroid0 - centre) + (
        params.shift)
    np.testing.assert_allclose(centroid, expected, atol=0.3)
    # Corners are pure background.
    out = augment.apply_augment(self.batch, params)
    np.testing.assert_array_equal(out[:, 0, 0], params.background)


if __name__ == "__main__":
  absltest.main()
