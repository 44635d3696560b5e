"""Reading a reference, and refusing one that cannot be used (exit 2).

A model reference (var, infinity) is `NAME.npz` + `NAME_vae.npz` +
`NAME.json`; a text-encoder reference (t5, minilm) is one self-contained
npz (shared/reference/README.md). Each kind has a `Layout`: the arrays every
such reference must hold and the checks they feed, plus optional groups of
arrays that are complete or absent (a partial group is refused, so that a
reference cannot pass with fewer checks than it claims). Arrays outside a
layout are ignored (e.g. `rope_1m/*` of tests/golden/infinity_8b_tiny, the
MiniLM `tokens` strings).

  ReferenceError  what cannot be read or used: message + file / field / arrays
  read            the files of one reference -> `Reference` (layout checked)
  load            (name, arrays, meta) of `read`
  kind            var | infinity | t5 | minilm, from the state-dict prefixes
  LAYOUTS         required / optional arrays and checks of every kind
  field           one json field, cast, or a ReferenceError naming it
  check_depth     the json depth against the blocks the npz holds
  check_inputs    shapes / dtypes / ranges of the arrays a model reads
  convert         a weight converter whose errors name the npz arrays
  model_weights   `convert` of a model reference's transformer and VAE
  running         a model step whose errors name the arrays it read
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import re
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from toprovar_jax.convert import common as convert_common
from toprovar_jax.weights import strict


class ReferenceError(ValueError):  # pylint: disable=redefined-builtin
  """A reference that cannot be read or used (the CLI's exit 2).

  A ValueError, so that callers reading a reference json for its configs
  (pipeline, convert) refuse it as they refuse other bad values.

  Attributes:
    file: the file at fault (NAME.npz, NAME_vae.npz or NAME.json), if known.
    field: the dotted json field at fault.
    arrays: the npz arrays at fault.
  """

  def __init__(self, message: str, *, file: Optional[str] = None,
               field: Optional[str] = None, arrays: Iterable[str] = ()):
    super().__init__(message)
    self.file, self.field, self.arrays = file, field, list(arrays)

  def in_file(self, file: str) -> "ReferenceError":
    """The same error, located in `file` (json fields are read unnamed)."""
    return ReferenceError(f"{file}: {self}", file=file, field=self.field,
                          arrays=self.arrays)

  def as_json(self) -> Dict[str, Any]:
    out = {"error": str(self)}
    out.update({k: v for k, v in (("file", self.file), ("field", self.field),
                                  ("arrays", self.arrays)) if v})
    return out


@dataclasses.dataclass(frozen=True)
class Group:
  """Arrays that come together, and the checks they feed."""
  name: str
  arrays: Tuple[str, ...]
  checks: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
  """What every reference of one kind holds.

  Attributes:
    json: NAME.json (every hyper-parameter) is required.
    companions: suffixes of the other required npz files (NAME_vae.npz).
    weights: state-dict prefixes that must hold at least one array (the
      converters then check every key and shape).
    required: arrays every such reference holds, and the checks they feed.
    optional: groups absent from some golden files, complete when present.
  """
  json: bool
  companions: Tuple[str, ...]
  weights: Tuple[str, ...]
  required: Group
  optional: Tuple[Group, ...] = ()


LAYOUTS: Dict[str, Layout] = {
    "var": Layout(
        json=True, companions=("_vae",), weights=("var/", "vae/"),
        required=Group("var", (
            "tf/labels", "tf/gt_idx", "tf/x_BLCv_wo_first_l", "tf/logits",
            "tf/f_hat", "vaetest/img_in", "vaetest/f", "vaetest/idx",
            "vaetest/f_hat", "vaetest/img_rec", "sample/labels",
            "sample/idx", "sample/logits_guided", "sample/f_hat",
            "sample/img"), (
                "param_count", "phi_index", "tf_logits", "vae_param_count",
                "tf_f_hat", "tf_inputs", "vae_f", "vae_idx", "vae_f_hat",
                "vae_img_rec", "sample_logits_guided", "sample_argmax",
                "sample_f_hat", "sample_img"))),
    "infinity": Layout(
        json=True, companions=("_vae",), weights=("infinity/", "vae/"),
        required=Group("infinity", (
            "text/kv_compact", "text/lens", "text/cu_seqlens_k",
            "rope/grid_pos", "vaetest/img_in", "vaetest/h", "vaetest/bits",
            "vaetest/z", "vaetest/img_rec", "sample/bits",
            "diag/sample_logits_guided_fp32ca_forced", "sample/summed_codes",
            "sample/img"), (
                "param_count", "rope_positions", "vae_param_count", "vae_h",
                "vae_bits", "vae_z", "vae_img_rec", "sample_logits_guided",
                "sample_argmax", "sample_summed_codes", "sample_img")),
        optional=(
            # Absent from tests/golden/infinity_8b_tiny.
            Group("teacher_forcing", (
                "tf/gt_bits", "tf/x_BLC_wo_prefix", "tf/summed_codes",
                "diag/tf_logits_fp32ca", "tf/logits"), (
                    "tf_logits", "tf_logits_official_bf16ca",
                    "tf_summed_codes", "tf_inputs")),
            Group("official_guided_logits", ("sample/logits_guided",),
                  ("sample_logits_guided_official_bf16ca",)))),
    "t5": Layout(
        json=False, companions=(), weights=("t5/",),
        required=Group("t5", (
            "input_ids", "attention_mask", "last_hidden_state",
            "diag/embeddings", "diag/block_outputs", "diag/position_bias",
            "diag/relative_position", "diag/relative_position_bucket",
            "long/input_ids", "long/attention_mask",
            "long/last_hidden_state"), (
                "param_count", "relative_position_bucket", "embeddings",
                "position_bias", "block_outputs", "last_hidden_state",
                "long_last_hidden_state"))),
    "minilm": Layout(
        json=False, companions=(), weights=(),
        required=Group("minilm", (
            "sentences", "input_ids", "attention_mask", "last_hidden_state",
            "mean_pooled_unnormalized", "sentence_embedding",
            "input_ids_pad256", "attention_mask_pad256",
            "diag/sentence_embedding_pad256", "trunc/text",
            "trunc/input_ids", "trunc/attention_mask",
            "trunc/sentence_embedding"), (
                "input_ids", "attention_mask", "last_hidden_state",
                "mean_pooled", "sentence_embedding", "input_ids_pad256",
                "attention_mask_pad256", "sentence_embedding_pad256",
                "trunc_input_ids", "trunc_sentence_embedding"))),
}


@dataclasses.dataclass(frozen=True)
class Reference:
  """One reference's contents.

  Attributes:
    name: NAME.
    kind: a key of LAYOUTS.
    arrays: every array of the npz files, merged.
    meta: NAME.json ({} for the text kinds).
    files: {array: the npz file it came from}.
    groups: the optional groups it holds.
  """
  name: str
  kind: str
  arrays: Dict[str, np.ndarray]
  meta: Dict[str, Any]
  files: Dict[str, str]
  groups: Tuple[str, ...]

  @property
  def json_name(self) -> str:
    return f"{self.name}.json"

  def file_of(self, key: str) -> str:
    return self.files.get(key, f"{self.name}.npz")

  def checks(self) -> Tuple[str, ...]:
    """Every check this reference must yield."""
    layout = LAYOUTS[self.kind]
    return layout.required.checks + tuple(
        c for g in layout.optional if g.name in self.groups for c in g.checks)


def _read_npz(path: pathlib.Path) -> Dict[str, np.ndarray]:
  try:
    # Our own handle: np.load leaks the one it opens when the zip is bad.
    with open(path, "rb") as fh:
      z = np.load(fh, allow_pickle=False)
      if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError("not an npz archive")
      return {k: z[k] for k in z.files}
  except Exception as e:  # zip / npy / OS errors of every kind
    raise ReferenceError(f"cannot read {path.name} ({path}): {e}",
                         file=path.name) from e


def kind(arrays, meta=None) -> str:
  """The reference kind, from its main npz (state-dict prefixes)."""
  del meta  # The arrays decide; kept for callers that pass it.
  keys = set(arrays)
  for prefix, k in (("var/", "var"), ("infinity/", "infinity"),
                    ("t5/", "t5")):
    if any(key.startswith(prefix) for key in keys):
      return k
  if keys & {"sentences", "sentence_embedding", "trunc/sentence_embedding"}:
    return "minilm"
  raise ReferenceError("unsupported reference kind (no var/, infinity/, t5/ "
                       "keys, nor MiniLM sentences or sentence embeddings)")


def read(npz_path) -> Reference:
  """Reads NAME.npz and the files its kind requires beside it.

  Raises:
    ReferenceError: an unreadable or missing file (named), an unsupported
      kind, missing required arrays or a partial optional group.
  """
  p = pathlib.Path(npz_path)
  name = p.name[:-4] if p.name.endswith(".npz") else p.name
  arrays = _read_npz(p)
  files = {k: p.name for k in arrays}
  k = kind(arrays)
  layout = LAYOUTS[k]
  meta: Dict[str, Any] = {}
  if layout.json:
    meta_path = p.with_name(name + ".json")
    if not meta_path.exists():
      raise ReferenceError(f"missing {meta_path.name} beside {p} (a {k} "
                           "reference takes every hyper-parameter from it)",
                           file=meta_path.name)
    try:
      meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
      raise ReferenceError(f"cannot read {meta_path.name} ({meta_path}): {e}",
                           file=meta_path.name) from e
    if not isinstance(meta, dict):
      raise ReferenceError(f"{meta_path.name} is not a json object",
                           file=meta_path.name)
  for suffix in layout.companions:
    f = p.with_name(f"{name}{suffix}.npz")
    if not f.exists():
      raise ReferenceError(f"missing {f.name} beside {p} (a {k} reference "
                           "keeps its VAE weights and tests there)",
                           file=f.name)
    extra = _read_npz(f)
    arrays.update(extra)
    files.update({key: f.name for key in extra})
  groups = _require(name, k, arrays, sorted(set(files.values())))
  return Reference(name=name, kind=k, arrays=arrays, meta=meta, files=files,
                   groups=groups)


def _require(name, k, arrays, file_names) -> Tuple[str, ...]:
  """The optional groups present; raises on anything missing."""
  layout = LAYOUTS[k]
  missing = [a for a in layout.required.arrays if a not in arrays]
  missing += [f"{p}*" for p in layout.weights
              if not any(key.startswith(p) for key in arrays)]
  problems = [f"missing {', '.join(missing)}"] if missing else []
  groups = []
  for g in layout.optional:
    absent = [a for a in g.arrays if a not in arrays]
    if len(absent) == len(g.arrays):
      continue
    if absent:
      missing += absent
      verb = "is" if len(absent) == 1 else "are"
      problems.append(f"the {g.name} arrays come together, but "
                      f"{', '.join(absent)} {verb} missing")
    groups.append(g.name)
  if problems:
    raise ReferenceError(
        f"{name} ({' + '.join(file_names)}) is an incomplete {k} reference: "
        + "; ".join(problems), arrays=missing)
  return tuple(groups)


def load(npz_path) -> Tuple[str, Dict[str, np.ndarray], Dict[str, Any]]:
  """(NAME, merged arrays, NAME.json) of `read`."""
  ref = read(npz_path)
  return ref.name, ref.arrays, ref.meta


# -- json fields --------------------------------------------------------------

_REQUIRED = object()


def field(meta, path: str, cast: Callable = lambda v: v, default=_REQUIRED):
  """meta[a][b]... for path "a.b...", cast; ReferenceError naming the field."""
  node = meta
  for part in path.split("."):
    if not isinstance(node, dict) or part not in node:
      if default is not _REQUIRED:
        return default
      raise ReferenceError(f"missing field {path}", field=path)
    node = node[part]
  try:
    return cast(node)
  except (TypeError, ValueError) as e:
    raise ReferenceError(f"field {path} = {node!r} is not usable: {e}",
                         field=path) from e


def construct(what: str, cls, **kwargs):
  """cls(**kwargs), the config's own validation errors as ReferenceError."""
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    raise ReferenceError(
        f"the hyper-parameters describe no valid {what}: {e}",
        field="hyperparameters") from e


def as_int(v) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
    raise ValueError("not an integer")
  return int(v)


def as_ints(v) -> Tuple[int, ...]:
  if not isinstance(v, (list, tuple)) or not v:
    raise ValueError("not a non-empty list")
  return tuple(as_int(x) for x in v)


def as_bool(v) -> bool:
  if v not in (0, 1):  # True / False included
    raise ValueError("not a boolean")
  return bool(v)


def as_float(v) -> float:
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise ValueError("not a number")
  return float(v)


# -- arrays -------------------------------------------------------------------

# VAR `blocks.{l}.`, Infinity also `block_chunks.{c}.module.{j}.`.
_BLOCK_RE = re.compile(
    r"^(?:blocks\.(\d+)|block_chunks\.(\d+)\.module\.(\d+))\.")


def check_depth(ref: Reference, prefix: str, depth: int, path: str):
  """Refuses a json depth that disagrees with the blocks the npz holds."""
  blocks = {m.groups() for k in ref.arrays if k.startswith(prefix)
            and (m := _BLOCK_RE.match(k[len(prefix):]))}
  if len(blocks) != depth:
    some = next(k for k in ref.arrays if k.startswith(prefix))
    raise ReferenceError(
        f"{ref.json_name}: {path} is {depth}, but {ref.file_of(some)} holds "
        f"{len(blocks)} transformer blocks under {prefix}", file=ref.json_name,
        field=path)


_DTYPES = {"int": "iu", "bits": "iub", "float": "f", "str": "U"}


def check_inputs(ref: Reference, specs: Mapping[str, Tuple],
                 dims: Optional[Dict[str, int]] = None) -> Dict[str, int]:
  """Refuses arrays that our models cannot read, before anything runs.

  Args:
    ref: the reference.
    specs: {array: (shape, dtype, value range)}: shape entries are ints or
      letters bound across arrays (B: the batch); dtype one of "int",
      "bits" (0 / 1), "float" (finite), "str"; range (lo, hi) for ints
      (lo <= v < hi) or None.
    dims: letters already bound.
  Returns:
    The bound letters.
  Raises:
    ReferenceError: naming the array, its file and what was expected.
  """
  dims = dict(dims or {})
  for key, (shape, dtype, bounds) in specs.items():
    a = ref.arrays[key]
    where = f"{ref.file_of(key)}: {key}"
    fail = lambda why, k=key, w=where: ReferenceError(
        f"{w} {why}", file=ref.file_of(k), arrays=[k])
    ok = a.ndim == len(shape)
    for got, want in zip(a.shape, shape) if ok else ():
      ok = ok and got == (dims.setdefault(want, got)
                          if isinstance(want, str) else want)
    if not ok:
      want = ", ".join(f"{s}={dims[s]}" if s in dims else str(s)
                       for s in shape)
      raise fail(f"has shape {tuple(a.shape)}, expected ({want})")
    if not a.size:
      raise fail(f"is empty (shape {tuple(a.shape)})")
    if a.dtype.kind not in _DTYPES[dtype]:
      raise fail(f"has dtype {a.dtype}, expected {dtype}")
    if dtype == "float" and not np.isfinite(a).all():
      raise fail(f"holds {int(a.size - np.isfinite(a).sum())} non-finite "
                 "values")
    if dtype == "bits" and not np.isin(a, (0, 1)).all():
      raise fail("holds values other than 0 and 1")
    if bounds is not None and (a.min() < bounds[0] or a.max() >= bounds[1]):
      raise fail(f"holds values in [{a.min()}, {a.max()}], outside "
                 f"[{bounds[0]}, {bounds[1]})")
  return dims


def convert(ref: Reference, prefix: str, fn: Callable, what: str):
  """fn(state dict without `prefix`), its errors naming the npz arrays.

  Args:
    ref: the reference.
    prefix: "var/", "vae/", ...
    fn: a converter raising `strict.ConversionError`.
    what: the model the weights should fit, for the message.
  """
  sd = convert_common.strip_prefix(ref.arrays, prefix)
  file = ref.file_of(prefix + next(iter(sd)))
  try:
    return fn(sd)
  except ReferenceError:
    raise
  except strict.ConversionError as e:
    named = [f"missing {', '.join(prefix + k for k in e.missing)}"
             if e.missing else "",
             f"unexpected {', '.join(prefix + k for k in e.unexpected)}"
             if e.unexpected else "",
             "mis-shaped " + ", ".join(
                 f"{prefix}{k} (holds {g}, expected {w})"
                 for k, g, w in e.mismatched) if e.mismatched else ""]
    detail = "; ".join(n for n in named if n) or str(e)
    raise ReferenceError(
        f"{file}: the {prefix} weights do not fit {what}: {detail}",
        file=file, arrays=[prefix + k for k in e.missing + e.unexpected]
        + [prefix + k for k, _, _ in e.mismatched]) from e
  except (TypeError, ValueError) as e:
    raise ReferenceError(f"{file}: the {prefix} weights do not convert for "
                         f"{what}: {e}", file=file) from e


def model_weights(ref: Reference, prefix: str, to_model: Callable,
                  to_vae: Callable, vae: str) -> Tuple[Any, Any]:
  """(transformer, VAE) weights of a model reference, through `convert`.

  Args:
    ref: a var / infinity reference.
    prefix: the transformer's state-dict prefix ("var/", "infinity/").
    to_model, to_vae: converters of the prefix-less state dicts.
    vae: the VAE's name, for messages.
  """
  return (convert(ref, prefix, to_model,
                  f"the model {ref.json_name} describes"),
          convert(ref, "vae/", to_vae, f"the {vae} {ref.json_name} describes"))


@contextlib.contextmanager
def running(ref: Reference, step: str, *keys: str):
  """Turns a failure of a model step into a ReferenceError naming its
  inputs. `check_inputs` refuses bad inputs first; this catches the rest
  (e.g. a combination of hyper-parameters our model cannot run)."""
  try:
    yield
  except ReferenceError:
    raise
  except (TypeError, ValueError, IndexError) as e:
    raise ReferenceError(
        f"{ref.name}: {step} cannot run on {', '.join(keys)}: "
        f"{type(e).__name__}: {e}", arrays=keys) from e
