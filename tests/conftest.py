"""Process-wide JAX set-up for the test suite (STYLE.md §9.26).

Four fake CPU devices, set once before any JAX computation, so sharding tests
can build a 4-device mesh; fp32 matmuls at full precision for parity tests;
where the golden files are (`toprovar_jax.testing.reference_dir`).
"""

import os
import pathlib

# The official-code golden files sit beside the checkout (CI places shared/
# there); the library does not know the checkout's layout, the tests do.
os.environ.setdefault(
    "TOPROVAR_REFERENCE_DIR",
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"))
os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the flags above)

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_threefry_partitionable", True)
