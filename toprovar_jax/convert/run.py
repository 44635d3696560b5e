"""Official file -> orbax checkpoint, streaming and atomic (the convert CLI).

  SOURCES       --source values and the target kind each converts into
  target_for    (source, variant | reference json, file) -> manifest.Target
  convert       checks the file against the manifest, converts it group by
                group, writes one orbax directory atomically; returns a summary

Streaming. A transformer converts one block at a time: the stem and block
l's tensors go through `transformer.convert_transformer` with a depth-1
config, and each converted block leaf is written into its (depth, ...) slot
of a memory-mapped scratch file. Tensors are read from the source file by
`sources.LazyTensor` memory maps, never all at once. Orbax then writes the
tree of memory-mapped leaves (numpy handler without its defensive deepcopy,
at most 1.25x the largest leaf in flight). Process memory thus stays near one
block (a tensor group) plus the stem, not the checkpoint: the 2B transformer
is 8.8 GB fp32, one block 0.27 GB. The VAEs (<= 0.5 GB) and the T5 encoder
convert as one group each.

Atomic. Everything is written under a hidden sibling `.NAME.partial-PID` and
renamed to `--out` only when complete; on any error it is removed, so a
failed conversion leaves nothing under the target name. An existing target
is refused before any work.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import time
from typing import Any, Callable, Dict, Mapping, Optional

import ml_dtypes
import numpy as np

from toprovar_jax.convert import manifest
from toprovar_jax.weights import strict

# --source -> (target kind, model style it belongs to).
SOURCES = {"var": "transformer", "var_vae": "vqvae", "infinity": "transformer",
           "infinity_vae": "bsq", "t5": "t5"}
DTYPES = {"float32": np.dtype(np.float32),
          "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# Bytes orbax may have in flight, as a multiple of the largest leaf.
IN_FLIGHT_LEAVES = 1.25
CONVERSION_RECORD = "conversion.json"
_STYLE = {"var": "var", "var_vae": "var", "infinity": "infinity",
          "infinity_vae": "infinity"}


def _fail(field: str, message: str):
  raise ValueError(f"{field}: {message}")


def target_for(source: str, *, variant: str = "", hparams: str = "",
               sd: Optional[Mapping[str, Any]] = None,
               t5_config: str = "") -> manifest.Target:
  """The model a file must convert into.

  Args:
    source: a key of SOURCES.
    variant: a `models.config.VARIANTS` name (VAE sources take the
      variant's tokenizer).
    hparams: instead of a variant, a reference json (`../shared/reference/
      NAME.json`: its `hyperparameters` and `derived` objects).
    sd: the file's tensors (t5: the architecture is read from their shapes).
    t5_config: t5: a HF config.json for what shapes do not show (eps,
      relative_attention_max_distance); '' = T5 defaults.
  """
  from toprovar_jax.models import config as config_lib  # pylint: disable=import-outside-toplevel
  if source not in SOURCES:
    _fail("--source", f"{source!r} is not one of {sorted(SOURCES)}")
  kind = SOURCES[source]
  if kind == "t5":
    from toprovar_jax.convert import t5  # pylint: disable=import-outside-toplevel
    extra = {}
    if t5_config:
      hf = json.loads(pathlib.Path(t5_config).read_text())
      extra = {k: hf[k] for k in ("layer_norm_epsilon",
                                  "relative_attention_max_distance") if k in hf}
    return manifest.Target("t5", t5.config_from_state_dict(sd, **extra),
                           "T5 encoder")
  if bool(variant) == bool(hparams):
    _fail("--variant", "give exactly one of --variant and --hparams")
  if hparams:
    from toprovar_jax import parity  # pylint: disable=import-outside-toplevel
    try:
      meta = json.loads(pathlib.Path(hparams).read_text())
      model, vae = (parity.var_configs(meta) if _STYLE[source] == "var"
                    else parity.infinity_configs(meta))
    except (OSError, ValueError, KeyError, TypeError) as e:
      _fail("--hparams", f"{hparams}: not a reference json for "
            f"{_STYLE[source]} ({type(e).__name__}: {e})")
    name = pathlib.Path(hparams).name
  else:
    model = config_lib.get_variant(variant)
    vae = config_lib.get_tokenizer(variant)
    name = variant
  if model.style != _STYLE[source]:
    _fail("--variant", f"{name} is a {model.style} model, --source={source} "
          f"needs a {_STYLE[source]} one")
  return manifest.Target(kind, model if kind == "transformer" else vae, name)


def _cast(tree, dtype):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda x: np.asarray(x, dtype), tree)


def _unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  out: Dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def _transformer_tree(sd, cfg, scratch: pathlib.Path, dtype, log):
  from toprovar_jax.convert import transformer  # pylint: disable=import-outside-toplevel
  from toprovar_jax.models import config as config_lib  # pylint: disable=import-outside-toplevel
  names = manifest.canonical(sd.keys(), cfg.depth)
  stem, layers = {}, [dict() for _ in range(cfg.depth)]
  for key, tensor in sd.items():
    layer = manifest.layer_of(names[key])
    if layer < 0:
      stem[key] = tensor
    else:
      layers[layer][re.sub(r"^blocks\.\d+\.", "blocks.0.", names[key])] = tensor
  one = config_lib.replace(cfg, depth=1)
  out_stem, blocks = None, None
  for layer in range(cfg.depth):
    params = transformer.convert_transformer({**stem, **layers[layer]}, one)
    if out_stem is None:
      out_stem = _cast(params["stem"], dtype)
    flat = strict.flatten(params["blocks"])
    if blocks is None:
      blocks = {k: np.memmap(scratch / f"{i}.bin", dtype, "w+",
                             shape=(cfg.depth,) + v.shape[1:])
                for i, (k, v) in enumerate(sorted(flat.items()))}
    for k, v in flat.items():
      blocks[k][layer] = v[0]
    del params, flat
    log(f"  block {layer + 1}/{cfg.depth}")
  for m in blocks.values():
    m.flush()
  readonly = {k: np.asarray(np.memmap(m.filename, dtype, "r", shape=m.shape))
              for k, m in blocks.items()}
  return {"stem": out_stem, "blocks": _unflatten(readonly)}


def _whole_tree(sd, target: manifest.Target, dtype):
  cfg = target.config
  if target.kind == "vqvae":
    from toprovar_jax.convert import vqvae  # pylint: disable=import-outside-toplevel
    tree = vqvae.convert_vqvae(sd, cfg)
  elif target.kind == "bsq":
    from toprovar_jax.convert import bsq_vae  # pylint: disable=import-outside-toplevel
    tree = {"params": bsq_vae.convert_bsq_vae(sd, cfg)}
  else:
    from toprovar_jax.convert import t5  # pylint: disable=import-outside-toplevel
    tree = t5.convert_state_dict(sd, cfg)
  return _cast(tree, dtype)


def _save(path: pathlib.Path, tree) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint import type_handlers  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  registry = type_handlers.create_type_handler_registry(
      (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, type_handlers.ArrayHandler()))
  largest = max(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
  handler = ocp.PyTreeCheckpointHandler(
      save_concurrent_gb=(IN_FLIGHT_LEAVES * largest + (1 << 20)) / 1e9,
      type_handler_registry=registry, use_ocdbt=False,
      use_compression=False)
  with ocp.Checkpointer(handler) as ckptr:
    ckptr.save(path.absolute(), args=ocp.args.PyTreeSave(tree))


def _count(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return int(sum(np.prod(np.shape(x), dtype=np.int64)
                 for x in jax.tree.leaves(tree)))


def convert(sd: Mapping[str, Any], target: manifest.Target, out, *,
            dtype: str = "float32", record: Optional[Mapping] = None,
            source_file: str = "", log: Callable[[str], None] = print
            ) -> Dict[str, Any]:
  """Converts a file's tensors (`sources.open_checkpoint`) to orbax at `out`.

  Args:
    sd: {official key: LazyTensor} (or arrays).
    target: `target_for(...)`.
    out: the orbax directory to create (must not exist).
    dtype: 'float32' | 'bfloat16', the stored dtype.
    record: a `third_party/.../manifests/*.json` record for this file; it
      must agree with our architecture (`manifest.compare_json`).
    source_file: recorded in `out/conversion.json`.
  Returns:
    The summary written to `out/conversion.json`.
  Raises:
    FileExistsError, ValueError (bad --dtype / record), ConversionError.
  """
  out = pathlib.Path(out).expanduser().absolute()
  if dtype not in DTYPES:
    _fail("--dtype", f"{dtype!r} is not one of {sorted(DTYPES)}")
  if out.exists():
    raise FileExistsError(f"--out: {out} already exists; conversions never "
                          "overwrite (remove it or choose another name)")
  t0 = time.perf_counter()
  want = manifest.expected(target)
  if record is not None:
    diffs = manifest.compare_json(record, target, want)
    if diffs:
      _fail("manifest", f"{record.get('file')} record differs from our "
            f"{target.name} architecture in {', '.join(diffs)}; regenerate "
            "it with experiments/make_manifests.py")
  total = manifest.check(sd, target, want)
  log(f"{target.name}: {len(sd)} tensors, {total:,} parameters match the "
      "manifest")
  partial = out.parent / f".{out.name}.partial-{os.getpid()}"
  scratch = out.parent / f".{out.name}.scratch-{os.getpid()}"
  try:
    scratch.mkdir(parents=True)
    if target.kind == "transformer":
      tree = _transformer_tree(sd, target.config, scratch, DTYPES[dtype], log)
    else:
      tree = _whole_tree(sd, target, DTYPES[dtype])
    converted = _count(tree)
    if converted != total:
      raise strict.ConversionError(context=(
          f"{target.name}: converted {converted:,} parameters, the file "
          f"holds {total:,}"))
    _save(partial, tree)
    del tree
    summary = {"target": target.kind, "model": target.name, "dtype": dtype,
               "source_file": source_file, "tensors": len(sd),
               "parameters": total, "seconds": round(time.perf_counter() - t0, 2)}
    (partial / CONVERSION_RECORD).write_text(json.dumps(summary, indent=1))
    os.rename(partial, out)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
  log(f"wrote {out} ({total:,} parameters, {dtype}, "
      f"{summary['seconds']} s)")
  return summary
