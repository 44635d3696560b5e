"""SkipVAR's decision model as data (`sparsity.classifier`)."""

import json
import pathlib
import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax.models import config as config_lib
from toprovar_jax.sparsity import classifier
from toprovar_jax.sparsity import plan as plan_lib


def _spec_dict(**over):
  d = dict(kind="skipvar", model="emoji", decision_scale=10, feature_scale=3,
           freq_ratio=0.4, classes=["skipvar_skip0", "skipvar_skip1"],
           mean=[0.1, 0.2], scale=[1.0, 2.0], weights=[[1.0, -1.0],
                                                      [0.5, 0.0]],
           bias=[0.0, 0.1])
  d.update(over)
  return d


class LogisticTest(absltest.TestCase):

  def test_recovers_a_known_linear_separator(self):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 2)) * [3.0, 0.01] + [5.0, 100.0]
    # Three bands of the first feature: classes 0 | 1 | 2 at 4 and 6.
    y = np.digitize(x[:, 0], [4.0, 6.0])
    model = classifier.fit_logistic(x, y, 3, c=100.0, steps=4000)
    self.assertGreater(np.mean(model.predict(x) == y), 0.97)
    # The learned boundaries sit near 4 and 6 on the first feature.
    grid = np.stack([np.linspace(-4, 14, 1801), np.full(1801, 100.0)], 1)
    pred = model.predict(grid)
    edges = grid[1:, 0][np.diff(pred) != 0]
    np.testing.assert_allclose(edges, [4.0, 6.0], atol=0.25)
    # Standardisation is part of the model.
    np.testing.assert_allclose(model.mean, x.mean(0))

  def test_labels_are_the_cheapest_action_that_keeps_the_target(self):
    ssim = np.array([[1.0, 1.0, 1.0],     # dense
                     [0.9, 0.8, 0.95],    # skip 1
                     [0.86, 0.5, 0.7]])   # skip 2
    flops = np.array([10.0, 5.0, 2.0])
    np.testing.assert_array_equal(
        classifier.labels_from_ssim(ssim, flops, 0.85), [2, 0, 1])
    # None reaches the target: the most expensive action.
    np.testing.assert_array_equal(
        classifier.labels_from_ssim(ssim[1:], flops[1:], 0.99), [0, 0, 0])


class SpecTest(absltest.TestCase):

  def test_round_trip(self):
    spec = classifier.spec_from_dict(_spec_dict(training={"n": 3}))
    self.assertEqual(spec.classes, ("skipvar_skip0", "skipvar_skip1"))
    back = classifier.spec_to_dict(spec)
    self.assertEqual(classifier.spec_from_dict(back).classifier,
                     spec.classifier)
    x = np.array([[0.1, 0.2], [3.0, 0.2]])
    np.testing.assert_allclose(spec.classifier.logits(x),
                               [[0.0, 0.1], [2.9, -2.8]])
    hash(spec)

  def test_bad_fields_are_named(self):
    for over, msg in (
        (dict(weights=[[1.0], [0.5, 0.0]]), "field 'weights'"),
        (dict(scale=[1.0, 0.0]), "field 'scale': must be > 0"),
        (dict(bias=[0.0]), "field 'bias'"),
        (dict(freq_ratio=2), "field 'freq_ratio'"),
        (dict(classes=[]), "field 'classes'"),
        (dict(decision_scale="9"), "field 'decision_scale'")):
      with self.assertRaisesRegex(plan_lib.PlanError, msg):
        classifier.spec_from_dict(_spec_dict(**over), "x.json")
    d = _spec_dict()
    del d["mean"]
    with self.assertRaisesRegex(plan_lib.PlanError,
                                r"^x.json: field 'mean': missing$"):
      classifier.spec_from_dict(d, "x.json")

  def test_load_names_the_file(self):
    with tempfile.TemporaryDirectory() as d:
      path = pathlib.Path(d) / "bad.json"
      path.write_text("{")
      with self.assertRaisesRegex(plan_lib.PlanError,
                                  f"skipvar classifier '{path}': not JSON"):
        classifier.load_spec(path)
      path.write_text(json.dumps(_spec_dict()))
      self.assertEqual(classifier.load_spec(path).decision_scale, 10)

  def test_defaults_follow_skipvar_on_infinity(self):
    inf = config_lib.get_variant("infinity_2b")
    self.assertEqual(classifier.default_feature_scale(inf.schedule), 4)
    self.assertEqual(classifier.default_decision_scale(inf.num_scales), 10)
    emoji = config_lib.get_variant("emoji")  # sides ... 4 ... 32
    self.assertEqual(emoji.schedule[classifier.default_feature_scale(
        emoji.schedule)], (4, 4))


if __name__ == "__main__":
  absltest.main()
