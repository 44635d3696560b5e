"""Which weights a run uses: the load-or-init policy (SPEC §1, §8).

`load_or_init` reads the transformer and tokenizer weights from the
packaged assets ("embedded:<model>", `weights.embedded`), an npz-shard
export folder (`weights.shards`) or an orbax checkpoint
(`weights.checkpoints`), each checked leaf by leaf against the model's
abstract tree (`weights.strict`), or initialises them randomly when no path
is given, which is logged and reported (`ParamsSource`) so that random
images are never mistaken for a model's.

  abstract_transformer / abstract_tokenizer / abstract_params
                  the models' ShapeDtypeStruct trees (no allocation)
  load_or_init    (params, vae_params, ParamsSource)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp

from toprovar_jax.models import bsq_vae
from toprovar_jax.models import config as config_lib
from toprovar_jax.models import transformer
from toprovar_jax.models import vqvae
from toprovar_jax.weights import checkpoints
from toprovar_jax.weights import embedded
from toprovar_jax.weights import shards

Array = jax.Array

RANDOM_INIT = "random-init"


@dataclasses.dataclass(frozen=True)
class ParamsSource:
  """Where the parameters came from.

  Attributes:
    transformer, tokenizer: "embedded:<model>" (the packaged weights), the
      path of an npz export or orbax checkpoint, or RANDOM_INIT.
    transformer_step, tokenizer_step: the training step an npz export's
      manifest records (None for orbax and random init).
  """
  transformer: str
  tokenizer: str
  transformer_step: Optional[int] = None
  tokenizer_step: Optional[int] = None

  @property
  def random_init(self) -> bool:
    return RANDOM_INIT in (self.transformer, self.tokenizer)


def _init_tokenizer(model: config_lib.TransformerConfig, tokenizer: Any,
                    rng: Array) -> Dict[str, Any]:
  """Random tokenizer variables {"params": ...} (the full module tree).

  The smallest image that passes every level (one latent pixel) is enough:
  parameter shapes do not depend on the image size.
  """
  if model.style == "var":
    down = 2 ** (len(tokenizer.ch_mult) - 1)
    img = jnp.zeros((1, down, down, tokenizer.in_channels))

    def touch_all(module, img):
      f = module.encode(img)
      module.quantize.touch_all(f)
      return module.decode(f)

    return vqvae.VQVAE(tokenizer).init(rng, img, method=touch_all)
  img = jnp.zeros((1, tokenizer.stride, tokenizer.stride,
                   tokenizer.in_channels))
  return bsq_vae.BSQVAE(tokenizer).init(rng, img)


def _init_options() -> Optional[Dict[str, Any]]:
  # Init runs once; on CPU, XLA's optimisation passes cost 3x the compile time
  # of the tiny VQVAE init (17 s vs 51 s) and save nothing worth having.
  if jax.default_backend() == "cpu":
    return {"xla_backend_optimization_level": 0}
  return None


@functools.lru_cache(maxsize=None)
def _init_transformer_fn(model):
  return jax.jit(functools.partial(transformer.init_params, model),
                 compiler_options=_init_options())


@functools.lru_cache(maxsize=None)
def _init_tokenizer_fn(model, tokenizer):
  return jax.jit(functools.partial(_init_tokenizer, model, tokenizer),
                 compiler_options=_init_options())


def abstract_transformer(model: config_lib.TransformerConfig) -> Any:
  """ShapeDtypeStruct tree of the transformer params; no allocation."""
  return jax.eval_shape(functools.partial(transformer.init_params, model),
                        jax.random.key(0))


def abstract_tokenizer(model: config_lib.TransformerConfig,
                       tokenizer: Any) -> Any:
  """ShapeDtypeStruct tree of the tokenizer variables {"params": ...}."""
  return jax.eval_shape(functools.partial(_init_tokenizer, model, tokenizer),
                        jax.random.key(0))


def abstract_params(model: config_lib.TransformerConfig,
                    tokenizer: Any) -> Tuple[Any, Any]:
  """(transformer, tokenizer) trees of ShapeDtypeStruct; no allocation.

  These are the layouts `weights.checkpoints` restores into and the
  checkpoint converter must write.
  """
  return (abstract_transformer(model), abstract_tokenizer(model, tokenizer))


def _load_or_init_one(field: str, path: str, *, model_name: str,
                      export_name: str, abstract, init):
  """Loads the weights `path` names, or calls `init()` when path is ''.

  Returns:
    (tree, source, step): see `ParamsSource`.
  """
  context = f"config.{field} of {model_name}"
  if not path:
    logging.warning("config.%s is empty: %s uses RANDOM-INIT parameters; its "
                    "outputs are not meaningful images.", field, model_name)
    return init(), RANDOM_INIT, None
  if path.startswith(embedded.EMBEDDED_PREFIX):
    name = path[len(embedded.EMBEDDED_PREFIX):]
    try:
      directory = embedded.embedded_dir(name)
    except shards.WeightsError as e:
      raise shards.WeightsError(f"{context}: {e}") from None
    if not shards.is_export(directory, export_name):
      raise FileNotFoundError(
          f"{context}: no embedded {export_name} weights {path!r} (looked "
          f"for {shards.manifest_path(directory, export_name)}); "
          f"packaged: {list(embedded.embedded_names())}")
    tree, manifest = shards.load_params(directory, export_name, abstract(),
                                        context=context)
    return tree, path, shards.step_of(manifest)
  if shards.is_export(path, export_name):
    # An npz-shard export folder (training's export/, or a copy of it).
    tree, manifest = shards.load_params(path, export_name, abstract(),
                                        context=context)
    return (tree, str(checkpoints.checkpoint_path(path)),
            shards.step_of(manifest))
  tree = checkpoints.restore_params(path, abstract(), context=context)
  return tree, str(checkpoints.checkpoint_path(path)), None


def load_or_init(model: config_lib.TransformerConfig, tokenizer: Any, *,
                 transformer_path: str, tokenizer_path: str, rng: Array
                 ) -> Tuple[Any, Any, ParamsSource]:
  """Loads the weights two paths name, or initialises randomly.

  The paths are `config.ckpt.transformer` / `config.ckpt.tokenizer`
  (`pipeline.params_from_config`; messages name those fields), each one of:
    "embedded:<model>"  the weights packaged under toprovar_jax/assets/<model>
                        (npz-shard exports `transformer` / `tokenizer`);
    a folder holding `transformer.manifest.json` (resp. `tokenizer...`),
                        i.e. a training export/ folder;
    an orbax checkpoint directory;
    ''                  random init from `rng`, logged as a warning and
                        reported in the returned source (SPEC: say so in
                        logs and results).
  Every kind is checked leaf by leaf against the model before use.

  Args:
    model: the transformer config.
    tokenizer: its tokenizer config (VQVAEConfig or BSQConfig).
    transformer_path, tokenizer_path: where the weights are (see above).
    rng: PRNG key for the random init.

  Returns:
    (params, vae_params, source): transformer params {"stem", "blocks"},
    tokenizer variables {"params": ...} (VAR VQVAE or Infinity BSQ VAE; the
    sampler needs them for VAR, decoding for both) and a ParamsSource.

  Raises:
    FileNotFoundError: configured weights do not exist (the file is named).
    ConversionError: weights with missing / extra / mis-shaped leaves.
    WeightsError: a malformed npz export (the leaf or file is named).
  """
  k_tf, k_tok = jax.random.split(rng)
  params, tf_source, tf_step = _load_or_init_one(
      "ckpt.transformer", transformer_path, model_name=model.name,
      export_name=shards.TRANSFORMER,
      abstract=lambda: abstract_transformer(model),
      init=lambda: _init_transformer_fn(model)(k_tf))
  vae_params, tok_source, tok_step = _load_or_init_one(
      "ckpt.tokenizer", tokenizer_path, model_name=model.name,
      export_name=shards.TOKENIZER,
      abstract=lambda: abstract_tokenizer(model, tokenizer),
      init=lambda: _init_tokenizer_fn(model, tokenizer)(k_tok))
  return params, vae_params, ParamsSource(tf_source, tok_source, tf_step,
                                          tok_step)
