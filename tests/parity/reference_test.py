"""`parity.reference`: which file is unreadable, what a reference lacks, and
which json field or input array is unusable, all named before anything runs.

`write_variant` builds malformed references from the golden files in a
temporary folder (the other parity tests use it too); the golden files are
never copied into the repository.
"""

import json
import pathlib
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from toprovar_jax import testing
from toprovar_jax.parity import reference
from toprovar_jax.weights import strict

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden"
_CORRUPT = b"PK\x03\x04 this is not a zip archive"


def source_dir(source: str) -> pathlib.Path:
  """Where the golden `source` files are (shared/ or tests/golden)."""
  return GOLDEN if (GOLDEN / f"{source}.npz").exists() else (
      testing.reference_dir())


def write_variant(folder, source: str, *, drop=(), arrays=None,
                  edit_json=None, leave_out=(), corrupt=(),
                  name: str = "bad") -> pathlib.Path:
  """The golden reference `source`, rewritten as NAME* files in `folder`.

  Args:
    folder: a temporary folder.
    source: the golden reference (var_tiny, infinity_tiny, ...).
    drop: arrays to leave out, whichever file holds them.
    arrays: {array: value} to replace (in the file that holds it) or add
      (to NAME.npz).
    edit_json: fn(meta) that edits the json in place.
    leave_out: files not to write, by suffix ("_vae.npz", ".json").
    corrupt: files written as garbage instead, by suffix.
    name: NAME.
  Returns:
    The path of NAME.npz.
  """
  src, arrays = source_dir(source), dict(arrays or {})
  folder = pathlib.Path(folder)
  for suffix in (".npz", "_vae.npz", ".json"):
    f, out = src / f"{source}{suffix}", folder / f"{name}{suffix}"
    if not f.exists() or suffix in leave_out:
      continue
    if suffix in corrupt:
      out.write_bytes(_CORRUPT)
    elif suffix == ".json":
      meta = json.loads(f.read_text())
      if edit_json:
        edit_json(meta)
      out.write_text(json.dumps(meta))
    else:
      with np.load(f) as z:
        data = {k: z[k] for k in z.files if k not in drop}
        mine = {k: v for k, v in arrays.items()
                if k in z.files or suffix == ".npz"}
      if len(data) == len(z.files) and not mine:
        shutil.copy(f, out)
      else:
        np.savez(out, **{**data, **mine})
  return folder / f"{name}.npz"


class VariantTestCase(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def refused(self, fn, *args) -> reference.ReferenceError:
    with self.assertRaises(reference.ReferenceError) as e:
      fn(*args)
    return e.exception


class ReadTest(VariantTestCase):

  def test_golden_references_hold_their_layouts(self):
    refs = [reference.read(source_dir(s) / f"{s}.npz") for s in (
        "var_tiny", "infinity_tiny", "infinity_8b_tiny", "t5_tiny_reference",
        "minilm_reference")]
    self.assertEqual([r.kind for r in refs],
                     ["var", "infinity", "infinity", "t5", "minilm"])
    self.assertEqual(refs[1].groups,
                     ("teacher_forcing", "official_guided_logits"))
    self.assertEqual(refs[2].groups, ())
    # An optional group is one that some golden file of its kind lacks.
    for k, layout in reference.LAYOUTS.items():
      for g in layout.optional:
        self.assertTrue(any(g.name not in r.groups for r in refs
                            if r.kind == k), g.name)
    self.assertEqual(refs[3].files["t5/shared.weight"],
                     "t5_tiny_reference.npz")
    self.assertEqual(refs[0].files["vaetest/f"], "var_tiny_vae.npz")
    self.assertNotIn("tf_logits", refs[2].checks())

  def test_a_missing_vae_file_is_named(self):
    path = write_variant(self.dir, "var_tiny", leave_out=("_vae.npz",))
    e = self.refused(reference.read, path)
    self.assertEqual(e.file, "bad_vae.npz")
    self.assertIn("missing bad_vae.npz", str(e))

  def test_the_unreadable_file_is_the_one_named(self):
    for suffix, other in (("_vae.npz", ".npz"), (".npz", "_vae.npz")):
      with tempfile.TemporaryDirectory() as d:
        e = self.refused(reference.read, write_variant(
            d, "var_tiny", corrupt=(suffix,)))
      self.assertEqual(e.file, f"bad{suffix}")
      self.assertIn(f"cannot read bad{suffix}", str(e))
      self.assertNotIn(f"bad{other}", str(e))
    e = self.refused(reference.read, write_variant(
        self.dir, "var_tiny", corrupt=(".json",)))
    self.assertEqual(e.file, "bad.json")

  def test_missing_required_arrays_are_named(self):
    path = write_variant(self.dir, "var_tiny",
                         drop=("sample/img", "vaetest/f"))
    e = self.refused(reference.read, path)
    self.assertEqual(e.arrays, ["vaetest/f", "sample/img"])
    self.assertIn("missing vaetest/f, sample/img", str(e))
    self.assertIn("bad.npz + bad_vae.npz", str(e))

  def test_missing_weights_are_named(self):
    with np.load(testing.reference_dir() / "var_tiny_vae.npz") as z:
      vae = [k for k in z.files if k.startswith("vae/")]
    e = self.refused(reference.read,
                     write_variant(self.dir, "var_tiny", drop=vae))
    self.assertEqual(e.arrays, ["vae/*"])

  def test_an_optional_group_is_complete_or_absent(self):
    e = self.refused(reference.read, write_variant(
        self.dir, "infinity_tiny", drop=("tf/logits",)))
    self.assertEqual(e.arrays, ["tf/logits"])
    self.assertIn("teacher_forcing arrays come together", str(e))
    ref = reference.read(write_variant(
        self.dir, "infinity_tiny", name="no_tf",
        drop=reference.LAYOUTS["infinity"].optional[0].arrays))
    self.assertEqual(ref.groups, ("official_guided_logits",))
    self.assertNotIn("tf_inputs", ref.checks())
    self.assertIn("sample_logits_guided_official_bf16ca", ref.checks())

  def test_kind(self):
    self.assertEqual(reference.kind({"t5/x": 0, "input_ids": 0}), "t5")
    # MiniLM without its embeddings is still MiniLM, so what it lacks is
    # named rather than called an unsupported kind.
    self.assertEqual(reference.kind({"sentences": 0}), "minilm")
    with self.assertRaisesRegex(reference.ReferenceError, "unsupported"):
      reference.kind({"input_ids": 0})


class FieldTest(absltest.TestCase):

  def test_fields_are_named(self):
    meta = {"hyperparameters": {"depth": 2, "V": "many", "on": 1},
            "derived": []}
    self.assertEqual(reference.field(meta, "hyperparameters.depth",
                                     reference.as_int), 2)
    self.assertIs(reference.field(meta, "hyperparameters.on",
                                  reference.as_bool), True)
    self.assertEqual(reference.field(meta, "derived.width", int, 7), 7)
    for path, why in (("hyperparameters.Cvae", "missing field"),
                      ("derived.width", "missing field"),
                      ("hyperparameters.V", "not usable: not an integer")):
      with self.assertRaisesRegex(reference.ReferenceError, why) as e:
        reference.field(meta, path, reference.as_int)
      self.assertEqual(e.exception.field, path)
      self.assertIsNone(e.exception.file)
      # pipeline / convert refuse a bad reference json as a ValueError.
      self.assertIsInstance(e.exception, ValueError)
    located = e.exception.in_file("bad.json")
    self.assertEqual((located.file, located.field),
                     ("bad.json", "hyperparameters.V"))
    self.assertTrue(str(located).startswith("bad.json: field "))

  def test_strict_casts(self):
    for cast, value in ((reference.as_int, 2.5), (reference.as_int, True),
                        (reference.as_ints, []), (reference.as_bool, 2),
                        (reference.as_float, "1")):
      with self.assertRaises(ValueError, msg=(cast, value)):
        cast(value)


def _ref(**arrays) -> reference.Reference:
  return reference.Reference(name="r", kind="var", arrays=arrays, meta={},
                             files={k: "r_vae.npz" for k in arrays},
                             groups=())


class StepsTest(absltest.TestCase):

  def test_a_failing_step_names_its_inputs(self):
    ref = _ref(x=np.zeros(2))
    with self.assertRaisesRegex(reference.ReferenceError,
                                "^r: decode cannot run on x: TypeError: bad"):
      with reference.running(ref, "decode", "x"):
        raise TypeError("bad")
    # Neither an already named problem nor a bug of another kind is hidden.
    for error in (reference.ReferenceError("named", arrays=["y"]),
                  AssertionError("a bug")):
      with self.assertRaises(type(error)) as e:
        with reference.running(ref, "decode", "x"):
          raise error
      self.assertIs(e.exception, error)

  def test_converter_errors_name_the_prefixed_arrays(self):
    ref = _ref(**{"t5/a": np.zeros(2), "t5/b": np.zeros(3)})

    def strict_fn(sd):
      self.assertEqual(set(sd), {"a", "b"})
      raise strict.ConversionError(missing=["c"], unexpected=["b"],
                                   mismatched=[("a", (2,), (4,))])
    with self.assertRaises(reference.ReferenceError) as e:
      reference.convert(ref, "t5/", strict_fn, "the model")
    self.assertEqual(e.exception.arrays, ["t5/c", "t5/b", "t5/a"])
    self.assertEqual(str(e.exception),
                     "r_vae.npz: the t5/ weights do not fit the model: "
                     "missing t5/c; unexpected t5/b; mis-shaped t5/a "
                     "(holds (2,), expected (4,))")

    def shapeless(sd):
      raise ValueError("cannot infer the T5 config")
    with self.assertRaisesRegex(reference.ReferenceError,
                                "do not convert for the model: cannot infer"):
      reference.convert(ref, "t5/", shapeless, "the model")


class CheckInputsTest(absltest.TestCase):

  def test_letters_bind_across_arrays(self):
    ref = _ref(x=np.zeros((2, 5, 3), np.float32), y=np.ones((2,), np.int32))
    dims = reference.check_inputs(ref, {"x": (("B", 5, 3), "float", None),
                                        "y": (("B",), "int", (0, 2))})
    self.assertEqual(dims, {"B": 2})

  def test_bad_inputs_are_named_with_their_file(self):
    good = np.zeros((2, 5), np.float32)
    for arrays, spec, why in (
        ({"y": np.zeros((3,), np.int32)}, (("B",), "int", None),
         r"has shape \(3,\), expected \(B=2\)"),
        ({"y": np.zeros((2, 4), np.float32)}, (("B", 5), "float", None),
         r"has shape \(2, 4\), expected \(B=2, 5\)"),
        ({"y": np.zeros((2,), np.float32)}, (("B",), "int", None),
         "has dtype float32, expected int"),
        ({"y": np.full((2,), np.nan, np.float32)}, (("B",), "float", None),
         "holds 2 non-finite values"),
        ({"y": np.full((2,), 7)}, (("B",), "int", (0, 7)),
         r"holds values in \[7, 7\], outside \[0, 7\)"),
        ({"y": np.full((2,), 2, np.uint8)}, (("B",), "bits", None),
         "holds values other than 0 and 1"),
        ({"y": np.zeros((0,), np.int32)}, ((0,), "int", None), "is empty")):
      ref = _ref(x=good, **arrays)
      with self.assertRaisesRegex(reference.ReferenceError,
                                  "^r_vae.npz: y " + why) as e:
        reference.check_inputs(ref, {"x": (("B", 5), "float", None),
                                     "y": spec})
      self.assertEqual((e.exception.file, e.exception.arrays),
                       ("r_vae.npz", ["y"]))


if __name__ == "__main__":
  absltest.main()
