"""Scale-out (`toprovar_jax.sharding`) on 4 fake CPU devices (conftest).

Meshes from (axis, size) pairs and their errors; rows placed over `data`
with the runner's keys bit for bit; parameters split by the axis rules;
per-row statistics reduced identically on any mesh. The equalities of
SPEC §10 on the micro Infinity model (4 scales, 3 layers) with a one-level
BSQ tokenizer, fp32:

  * `generate_images` on 4 devices makes byte-identical images to the
    unsharded program, dense and with a sparse plan (entropy probe, cached
    restore, exit scale, guidance drop), with padding rows;
  * the same plan's tokens and latents are identical, and a row's result
    does not depend on which device it lands on; its recorded entropies
    (calibration statistics) agree to fp32 rounding (~5e-7: XLA's CPU GEMMs
    round a 1-row-per-device batch differently from the whole batch);
  * tensor parallelism (data 2 x model 2: heads and FFN split, KV cache
    split along heads) gives the replicated program's tokens, logits
    within 1e-5.
"""

import dataclasses
import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from toprovar_jax import sharding
from toprovar_jax import testing
from toprovar_jax.models import config as config_lib
from toprovar_jax.sampling import conditions as conditions_lib
from toprovar_jax.sampling import runner
from toprovar_jax.sampling import sampler as sampler_lib
from toprovar_jax.sparsity import plan as plan_lib
from toprovar_jax.sparsity import validation

_T = 8
_TOK = config_lib.BSQConfig(base_ch=32, ch_mult=(1,), num_res_blocks=0,
                            codebook_dim=4)
_KW = dict(seed=3, cfg_scale=3.0, tau=1.0)


@functools.lru_cache(maxsize=None)
def _setup():
  cfg, params, vae, _, text, mask = testing.micro_infinity_run(6)
  cond = conditions_lib.Conditions(text=text, text_mask=mask)
  return cfg, params, vae, cond


def sparse_plan(cfg) -> plan_lib.SparsityPlan:
  """Scales 0-1 dense; scale 2 keeps 8 of 16 tokens in layers 1-2 by a
  layer-0 entropy probe, restores the rest from scale 1's branches, runs
  without the unconditional branch; scale 3 is not generated."""
  dense = plan_lib.dense_plan(cfg)
  s2 = dataclasses.replace(
      dense.scales[2], layers="FSS", keep=8, probe_layer=0,
      scorer="entropy", entropy_from="probe", restore="cached", cache_from=1,
      guidance=False)
  return validation.validate_plan(dataclasses.replace(
      dense, name="sparse", exit_scale=3,
      scales=dense.scales[:2] + (s2,)), cfg)


def _spec(x):
  """x's partition spec, one entry per dimension (None = whole)."""
  spec = tuple(x.sharding.spec)
  return spec + (None,) * (x.ndim - len(spec))


def _sampler(cfg, plan=None, **sampling):
  return sampler_lib.Sampler(model=cfg, tokenizer=_TOK, plan=plan,
                             sampling=sampler_lib.SamplingConfig(**sampling))


class MeshTest(absltest.TestCase):

  def test_default_is_one_data_axis_over_all_devices(self):
    mesh = sharding.make_mesh()
    self.assertEqual(sharding.mesh_axes(mesh), {"data": 4})
    self.assertEqual(mesh.size, 4)
    if hasattr(jax.sharding, "AxisType"):
      self.assertEqual(tuple(mesh.axis_types),
                       (jax.sharding.AxisType.Auto,))
    tp = sharding.make_mesh((("data", 2), ("model", -1)))
    self.assertEqual(sharding.mesh_axes(tp), {"data": 2, "model": 2})
    one = sharding.make_mesh(devices=jax.devices()[:1])
    self.assertEqual(sharding.mesh_axes(one), {"data": 1})

  def test_bad_meshes_name_the_field(self):
    for spec, msg in (
        ((("rows", -1),), r"config.mesh: unknown axis 'rows'"),
        ((("data", 3),), r"config.mesh: sizes \[3\] make 3 devices, but "
         r"there are 4"),
        ((("data", -1), ("model", -1)), r"config.mesh: sizes must be >= 1, "
         r"with at most one -1"),
        ((("data", -1), ("data", 2)), r"config.mesh: names an axis twice"),
        ((("data", -1), ("model", 3)), r"config.mesh: 4 devices do not "
         r"split"),
        ((), r"config.mesh: is empty"),
        (("data",), r"config.mesh: must be \(axis, size\) pairs")):
      with self.assertRaisesRegex(ValueError, msg):
        sharding.make_mesh(spec)

  def test_one_process_needs_no_initialize_and_bad_launches_are_named(self):
    sharding.initialize()  # one process: nothing to do
    for args, msg in (((":1", 0), r"--num_processes: must be >= 1"),
                      (("", 2), r"--coordinator: host:port of process 0"),
                      (("h:1", 2, 2), r"--process_id: must be in \[0, 2\)")):
      with self.assertRaisesRegex(ValueError, msg):
        sharding.initialize(*args)

  def test_model_axis_must_divide_heads(self):
    mesh = sharding.make_mesh((("model", 4),))
    with self.assertRaisesRegex(ValueError, r"config.mesh: the model axis "
                                r"\(4\) does not divide micro_infinity's "
                                r"num_heads \(2\)"):
      sharding.check_model(mesh, testing.micro_infinity())

  def test_rows_per_call(self):
    mesh = sharding.make_mesh()
    self.assertEqual([sharding.rows_per_call(b, mesh) for b in (1, 4, 6)],
                     [4, 4, 8])
    self.assertEqual(sharding.rows_per_call(3, None), 3)


class PlacementTest(absltest.TestCase):

  def test_row_keys_are_the_runner_keys_split_over_data(self):
    mesh = sharding.make_mesh()
    keys = sharding.row_keys(7, range(3, 11), mesh)
    self.assertEqual(keys.sharding.spec, P("data"))
    np.testing.assert_array_equal(
        np.asarray(jax.random.key_data(keys)),
        np.asarray(jax.random.key_data(runner.image_keys(7, range(3, 11)))))
    rows = sharding.put_rows(np.arange(8.0).reshape(4, 2), mesh)
    self.assertEqual(rows.sharding.spec, P("data"))
    self.assertEqual(len(rows.addressable_shards), 4)

  def test_params_split_heads_and_ffn_over_model(self):
    cfg, params, _, _ = _setup()
    mesh = sharding.make_mesh((("data", 2), ("model", 2)))
    placed = sharding.put_params(params, mesh)
    b = placed["blocks"]
    self.assertEqual(_spec(b["ffn"]["fc1"]["kernel"]), (None, None, "model"))
    self.assertEqual(_spec(b["sa"]["proj"]["kernel"]), (None, "model", None))
    self.assertEqual(_spec(b["sa"]["mat_qkv"]["kernel"]), (None,) * 3)
    self.assertEqual(_spec(placed["stem"]["head"]["kernel"]), (None, None))
    # Each device holds half of the FFN's hidden columns.
    shard = b["ffn"]["fc1"]["kernel"].addressable_shards[0]
    self.assertEqual(shard.data.shape, (cfg.depth, cfg.width,
                                        cfg.mlp_hidden // 2))

  def test_sum_rows_is_the_host_sum_in_float64(self):
    mesh = sharding.make_mesh()
    x = np.random.default_rng(0).normal(size=(3, 8, 5)).astype(np.float32)
    xs = jax.device_put(x, sharding.row_sharding(mesh, axis=1))
    got = sharding.sum_rows({"e": xs}, axis=1, num_rows=6)
    np.testing.assert_array_equal(got["e"],
                                  x[:, :6].astype(np.float64).sum(1))
    np.testing.assert_array_equal(
        sharding.gather_rows(xs, axis=1, num_rows=6), x[:, :6])


class GenerateTest(parameterized.TestCase):

  @parameterized.named_parameters(("dense", False), ("sparse", True))
  def test_four_devices_make_the_same_images(self, sparse):
    cfg, params, vae, cond = _setup()
    smp = _sampler(cfg, sparse_plan(cfg) if sparse else None)
    # Batch 3 -> 4 rows per call on 4 devices: 6 images in 2 calls.
    one = runner.generate_images(smp, params, vae, cond, batch_size=3, **_KW)
    four = runner.generate_images(smp, params, vae, cond, batch_size=3,
                                  mesh=sharding.make_mesh(), **_KW)
    self.assertEqual(four.images.shape, (6, 6, 6, 3))
    np.testing.assert_array_equal(four.images, one.images)
    self.assertEqual(four.mesh, {"data": 4})
    self.assertIsNone(one.mesh)
    self.assertEqual(four.batches, (0, 0, 0, 0, 1, 1))

  def test_tokens_and_statistics_do_not_depend_on_placement(self):
    cfg, params, _, cond = _setup()
    smp = _sampler(cfg, sparse_plan(cfg), record_entropy=True)
    mesh = sharding.make_mesh()
    slots = range(4)
    g = (jnp.float32(3.0), jnp.float32(1.0))
    keys, arrays = runner.batch_inputs(smp, cond, slots, seed=3)
    ref = runner.compile_generate(smp, params, None, keys, arrays,
                                  options=runner.compiler_options())
    want = ref.fn(params, None, keys, *g, **arrays)
    placed = sharding.put_params(params, mesh)
    gs = sharding.put_replicated(g, mesh)
    keys4, arrays4 = runner.batch_inputs(smp, cond, slots, seed=3, mesh=mesh)
    prog = runner.compile_generate(smp, placed, None, keys4, arrays4,
                                   options=runner.compiler_options(),
                                   mesh=mesh)
    got = prog.fn(placed, None, keys4, *gs, **arrays4)
    self.assertEqual(got.tokens.sharding.spec, P("data"))
    np.testing.assert_array_equal(np.asarray(got.tokens),
                                  np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.latent),
                                  np.asarray(want.latent))
    # Calibration statistics: per-layer entropy sums over the images.
    stats = lambda e: sharding.sum_rows(e, axis=1)
    for a, b in zip(stats(got.entropy), stats(want.entropy)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
    # The same images on other devices (rows reversed): the same rows.
    perm = [3, 2, 1, 0]
    keys_p, arrays_p = runner.batch_inputs(
        smp, conditions_lib.Conditions(text=cond.text[perm],
                                       text_mask=cond.text_mask[perm]),
        range(4), seed=3, mesh=mesh)
    keys_p = sharding.row_keys(3, perm, mesh)
    moved = prog.fn(placed, None, keys_p, *gs, **arrays_p)
    np.testing.assert_array_equal(np.asarray(moved.tokens),
                                  np.asarray(got.tokens)[perm])

  def test_tensor_parallel_equals_replicated(self):
    cfg, params, _, cond = _setup()
    smp = _sampler(cfg, return_logits=True)
    mesh = sharding.make_mesh((("data", 2), ("model", 2)))
    g = (jnp.float32(3.0), jnp.float32(1.0))
    keys, arrays = runner.batch_inputs(smp, cond, range(2), seed=5)
    want = smp.generate(params, None, keys, *g, **arrays)
    placed = sharding.put_params(params, mesh)
    keys2, arrays2 = runner.batch_inputs(smp, cond, range(2), seed=5,
                                         mesh=mesh)
    prog = runner.compile_generate(smp, placed, None, keys2, arrays2,
                                   options=None, mesh=mesh)
    got = prog.fn(placed, None, keys2, *sharding.put_replicated(g, mesh),
                  **arrays2)
    np.testing.assert_array_equal(np.asarray(got.tokens),
                                  np.asarray(want.tokens))
    np.testing.assert_allclose(np.asarray(got.logits),
                               np.asarray(want.logits), atol=1e-5, rtol=0)
    # Megatron-style: partial sums of the split projections all-reduced.
    self.assertIn("all-reduce", prog.fn.as_text())

  def test_kv_cache_is_split_along_heads(self):
    cfg, params, _, cond = _setup()
    smp = _sampler(cfg)
    mesh = sharding.make_mesh((("data", 2), ("model", 2)))
    placed = sharding.put_params(params, mesh)
    _, arrays = runner.batch_inputs(smp, cond, range(2), seed=0, mesh=mesh)

    def init(params, text, text_mask):
      with sharding.axes.axis_rules(mesh):
        st = smp.init_state(smp.program(params), params, text=text,
                            text_mask=text_mask)
      return st.caches, st.text_kv

    caches, text_kv = jax.jit(init)(placed, arrays["text"],
                                    arrays["text_mask"])
    # (L_seg, R, M, H, D): rows over data, heads over model.
    self.assertEqual(_spec(caches[0][0]), (None, "data", None, "model", None))
    # Cross-attention keys (L, R, T, H, D): heads over model too.
    self.assertEqual(_spec(text_kv[0])[3], "model")


if __name__ == "__main__":
  absltest.main()
