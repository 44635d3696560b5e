"""`convert.run`: synthetic official files in every format -> orbax, equal
to the in-memory converters; atomic on failure; bounded memory under a
RLIMIT_DATA cap below the checkpoint's size (a subprocess)."""

import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import ml_dtypes
import numpy as np

from toprovar_jax.convert import bsq_vae
from toprovar_jax.convert import manifest
from toprovar_jax.convert import run
from toprovar_jax.convert import sources
from toprovar_jax.convert import synthetic
from toprovar_jax.convert import transformer
from toprovar_jax.models import config as config_lib
from toprovar_jax.weights import checkpoints
from toprovar_jax.weights import loading
from toprovar_jax.weights import strict

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_QUIET = dict(log=lambda s: None)


def _assert_tree_equal(test, got, want):
  got, want = strict.flatten(got), strict.flatten(want)
  test.assertEqual(sorted(got), sorted(want))
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k], np.float32),
                                  np.asarray(want[k], np.float32), err_msg=k)


class RunTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, self.dir)

  def test_infinity_block_chunks_as_bf16_safetensors_shards(self):
    cfg = config_lib.get_variant("infinity_tiny")
    target = run.target_for("infinity", variant="infinity_tiny")
    keys = synthetic.official_keys(target, chunks=2)
    keys["text_proj_for_sos.ca.zero_k_bias"] = (cfg.width,)  # a buffer
    shards = synthetic.write_sharded(self.dir / "w", keys,
                                     dtype=ml_dtypes.bfloat16,
                                     shard_bytes=1 << 21)
    self.assertGreater(len(shards), 1)
    sd = sources.open_checkpoint(self.dir / "w")
    summary = run.convert(sd, target, self.dir / "out", dtype="bfloat16",
                          **_QUIET)
    self.assertEqual(summary["parameters"], 3_110_180)
    got = checkpoints.restore_params(self.dir / "out",
                                     loading.abstract_transformer(cfg))
    want = transformer.convert_transformer(sd, cfg)
    _assert_tree_equal(self, got, run._cast(want, ml_dtypes.bfloat16))  # pylint: disable=protected-access
    self.assertTrue((self.dir / "out" / run.CONVERSION_RECORD).exists())

  def test_bsq_vae_under_the_vae_key_in_the_bare_spelling(self):
    # The golden test converts the official module spelling
    # (`conv_in.conv.weight`); official loaders also accept the bare one.
    target = manifest.Target("bsq", config_lib.BSQConfig(
        base_ch=32, ch_mult=(1, 1), num_res_blocks=1, codebook_dim=8), "bsq")
    keys = synthetic.official_keys(target)
    spelled = {k: k.replace(".conv.weight", ".weight").replace(
        ".conv.bias", ".bias").replace(".norm.weight", ".weight").replace(
            ".norm.bias", ".bias") for k in keys}
    bare = {spelled[k]: s for k, s in keys.items()}
    self.assertNotEqual(sorted(bare), sorted(keys))
    path = self.dir / "vae.pth"
    synthetic.write_pth(path, bare, wrap="vae", buffers={
        "quantizer.lfq.mask": 2 ** np.arange(7, -1, -1)})
    sd = sources.open_checkpoint(path)
    run.convert(sd, target, self.dir / "out", **_QUIET)
    got = checkpoints.restore_params(
        self.dir / "out", {"params": bsq_vae.abstract_params(target.config)})
    renamed = {k: synthetic.tensor(spelled[k], s) for k, s in keys.items()}
    _assert_tree_equal(self, got, {"params": bsq_vae.convert_bsq_vae(
        renamed, target.config)})

  def test_a_bad_file_fails_before_writing_and_leaves_nothing(self):
    target = run.target_for("var", variant="var_tiny")
    keys = synthetic.official_keys(target)
    keys.pop("head.bias")
    keys["blocks.9.ffn.fc1.weight"] = (2, 2)
    keys["word_embed.weight"] = (3, 3)
    synthetic.write_pth(self.dir / "bad.pth", keys)
    with self.assertRaisesRegex(
        strict.ConversionError,
        r"var_tiny(.|\n)*missing keys \(1\): head\.bias(.|\n)*unexpected keys "
        r"\(1\): blocks\.9\.ffn\.fc1\.weight(.|\n)*mis-shaped keys \(1\): "
        r"word_embed\.weight \(got \(3, 3\), expected \(128, 32\)\)"):
      run.convert(sources.open_checkpoint(self.dir / "bad.pth"), target,
                  self.dir / "out", **_QUIET)
    self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["bad.pth"])

  def test_a_failure_while_writing_leaves_nothing_and_out_is_never_replaced(self):
    target = run.target_for("var", variant="var_tiny")
    synthetic.write_pth(self.dir / "m.pth", synthetic.official_keys(target))
    sd = sources.open_checkpoint(self.dir / "m.pth")
    original = run._save  # pylint: disable=protected-access

    def save_then_fail(path, tree):
      original(path, tree)
      raise OSError("disk full")

    run._save = save_then_fail  # pylint: disable=protected-access
    try:
      with self.assertRaisesRegex(OSError, "disk full"):
        run.convert(sd, target, self.dir / "out", **_QUIET)
    finally:
      run._save = original  # pylint: disable=protected-access
    self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["m.pth"])
    (self.dir / "out").mkdir()
    with self.assertRaisesRegex(FileExistsError, "already exists"):
      run.convert(sd, target, self.dir / "out", **_QUIET)

  def test_variant_style_and_dtype_errors_name_the_flag(self):
    with self.assertRaisesRegex(ValueError, "--variant: infinity_tiny is a "
                                "infinity model, --source=var needs a var"):
      run.target_for("var", variant="infinity_tiny")
    with self.assertRaisesRegex(ValueError, "--variant: give exactly one"):
      run.target_for("var")
    with self.assertRaisesRegex(ValueError, "--dtype: 'fp8'"):
      run.convert({}, run.target_for("var", variant="var_tiny"),
                  self.dir / "o", dtype="fp8", **_QUIET)

  def test_conversion_runs_under_a_memory_cap_below_the_checkpoint_size(self):
    # 16 blocks of width 256: a 79 MB file whose stacked leaves are each
    # < 17 MB. RLIMIT_DATA (private memory) is capped 32 MB above what the
    # process holds after its imports; file-backed maps (the source, the
    # scratch files) do not count, which is the point of streaming.
    script = textwrap.dedent(f"""
        import re, resource, sys
        from toprovar_jax.convert import manifest, run, sources, synthetic
        from toprovar_jax.models import config as config_lib
        cfg = config_lib.replace(config_lib.get_variant("var_d16"), depth=16,
                                 width=256, num_heads=4, mlp_hidden=1024)
        target = manifest.Target("transformer", cfg, "deep")
        size = synthetic.write_pth(sys.argv[1], synthetic.official_keys(target))
        sd = sources.open_checkpoint(sys.argv[1])
        import jax, orbax.checkpoint  # imports before the cap
        status = open("/proc/self/status").read()
        data = int(re.search(r"VmData:\\s+(\\d+)", status).group(1)) * 1024
        cap = 32 << 20
        assert cap < size / 2, (cap, size)
        resource.setrlimit(resource.RLIMIT_DATA, (data + cap, data + cap))
        run.convert(sd, target, sys.argv[2], log=lambda s: None)
        print("converted", size, "bytes under a cap of", cap)
        """)

    env = dict(os.environ, MALLOC_ARENA_MAX="2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(_ROOT))
    # Thread stacks count as data: the child starts with 1 MB default stacks
    # (glibc sizes them from RLIMIT_STACK at exec; inherited from here).
    stack = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, stack[1]))
    try:
      proc = subprocess.run(
          [sys.executable, "-c", script, str(self.dir / "deep.pth"),
           str(self.dir / "out")], env=env, capture_output=True, text=True,
          timeout=300, check=False)
    finally:
      resource.setrlimit(resource.RLIMIT_STACK, stack)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertRegex(proc.stdout, r"converted \d+ bytes under a cap of")
    cfg = config_lib.replace(config_lib.get_variant("var_d16"), depth=16,
                             width=256, num_heads=4, mlp_hidden=1024)
    got = checkpoints.restore_params(self.dir / "out",
                                     loading.abstract_transformer(cfg))
    np.testing.assert_array_equal(
        got["blocks"]["ffn"]["fc1"]["kernel"][11],
        synthetic.tensor("blocks.11.ffn.fc1.weight", (1024, 256)).T)


if __name__ == "__main__":
  absltest.main()
