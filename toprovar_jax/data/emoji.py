"""Emoji images and captions for the embedded default model (SPEC §8).

The data is the Noto Color Emoji font (Debian `fonts-noto-color-emoji`)
rendered with Pillow, and the captions are the English names in the PyPI
`emoji` package, pinned to `EMOJI_PACKAGE_VERSION` because its list and names
change between releases. `bash scripts/setup_emoji.sh` installs both.

Pipeline:
  list_emoji()      fully-qualified emoji, no skin-tone variants, sorted by
                    code points; captions like 'red apple'.
  render(e)         one emoji -> (S, S, 4) uint8 RGBA, ink centred; raises
                    `RejectedEmojiError` when the font draws nothing, a
                    placeholder, or several glyphs for it (a ZWJ sequence newer
                    than the font).
  split(captions)   deterministic held-out mask, by emoji.
  make_dataset()    all of the above, in memory; build_dataset() also writes
                    it (one compressed .npz) and load_dataset() reads it.
Compositing over a background and the training augmentation are
`toprovar_jax.data.augment`.

Shapes: N emoji in a dataset, B batch, S image side in pixels; RGBA images
are (..., S, S, 4) uint8 and RGB ones (..., S, S, 3).

Rendering: the font is a bitmap (CBDT) font whose one strike is 109 ppem, so
size 109 draws the 136×128 bitmaps 1:1 with no resampling. Each glyph's ink
is centred, unscaled, on a `RenderConfig.canvas_size` square, so relative
sizes survive ('small blue diamond' stays small), and the margin around the
largest glyph is the augmentation's largest shift, so augmenting never clips
an emoji. The square is then resized once to the training size.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import io
import json
import math
import os
import pathlib
import unicodedata
import zipfile
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
from PIL import features
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
import PIL

from toprovar_jax import io as io_lib

PathLike = Union[str, os.PathLike]

# Keep in sync with scripts/setup_emoji.sh (EMOJI_VERSION).
EMOJI_PACKAGE_VERSION = "2.16.0"
FONT_PATH = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SETUP_HINT = "run `bash scripts/setup_emoji.sh` from the repository root"

# Emoji modifiers (Fitzpatrick skin tones), UTS #51 §2.4.
_SKIN_TONES = range(0x1F3FB, 0x1F3FF + 1)
# Regional indicators (country flags) and tag characters (subdivision flags).
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F1FF + 1)
_TAGS = range(0xE0020, 0xE007F + 1)
# Noto draws any regional-indicator pair it has no flag for as one
# placeholder ('?' on a white flag); "AA" is no region, so it draws that.
_UNKNOWN_FLAG = "\U0001F1E6\U0001F1E6"
# A plain single-glyph emoji whose advance is the unit for multi-glyph checks.
_REFERENCE_EMOJI = "\U0001F600"  # grinning face
# Fixed zip timestamp, so the same dataset always gives the same .npz bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------------------
# Configs and records.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class RenderConfig:
  """How emoji are drawn and which renders are rejected.

  Attributes:
    font_size: Pillow font size; 109 is the font's only bitmap strike.
    canvas_size: side of the square the ink is centred on before resizing.
      146 = ceil(128 / 0.88): the tallest glyph (128 px) keeps a 6 % margin
      on each side, the largest shift `augment.AugmentConfig` makes.
    max_width_ratio: a render whose advance or ink is wider than this many
      reference-glyph advances is several glyphs (issue: "~1.3×").
    min_ink_pixels: a render with fewer non-transparent pixels is blank.
  """
  font_size: int = 109
  canvas_size: int = 146
  max_width_ratio: float = 1.3
  min_ink_pixels: int = 64


@dataclasses.dataclass(frozen=True)
class EmojiEntry:
  """One emoji of the pinned `emoji` package.

  Attributes:
    emoji: the emoji string (possibly several code points).
    caption: its cleaned English name, e.g. 'red apple'.
    codepoints: the code points as hex, e.g. '1F9D1 200D 1FA70'.
    unicode_version: the Emoji version that introduced it, e.g. 15.1.
  """
  emoji: str
  caption: str
  codepoints: str
  unicode_version: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmojiDataset:
  """Rendered emoji with captions and the held-out split.

  Attributes:
    images: (N, S, S, 4) uint8 RGBA, transparent background.
    captions: (N,) str captions.
    codepoints: (N,) str code points in hex, e.g. '1F34E'.
    heldout: (N,) bool, True for the evaluation emoji.
    metadata: provenance (versions, font hash, configs) and the rejected
      emoji with reasons; JSON-serialisable.
  """
  images: np.ndarray
  captions: np.ndarray
  codepoints: np.ndarray
  heldout: np.ndarray
  metadata: dict[str, Any]

  @property
  def emoji(self) -> list[str]:
    """The emoji strings, from `codepoints`."""
    return [_from_codepoints(c) for c in self.codepoints]


class RejectedEmojiError(ValueError):
  """The font cannot draw this emoji as one non-blank glyph.

  Attributes:
    reason: 'blank', 'multi_glyph' or 'placeholder'.
  """

  def __init__(self, emoji: str, reason: str, detail: str):
    super().__init__(f"{_to_codepoints(emoji)} rejected ({reason}): {detail}")
    self.reason = reason


# ---------------------------------------------------------------------------
# Sources: the font and the emoji list.
# ---------------------------------------------------------------------------


def find_font(path: Optional[PathLike] = None) -> pathlib.Path:
  """Returns the Noto Color Emoji font file.

  Args:
    path: a font file to use instead of the Debian one.

  Returns:
    The font path.

  Raises:
    FileNotFoundError: the font is not installed; the message says how.
  """
  font = pathlib.Path(path if path is not None else FONT_PATH)
  if not font.is_file():
    raise FileNotFoundError(
        f"Noto Color Emoji font not found at {str(font)!r}. It comes from the "
        f"Debian package fonts-noto-color-emoji: {SETUP_HINT} (or "
        "`apt-get install -y fonts-noto-color-emoji`).")
  return font


def _emoji_package():
  """Imports the `emoji` package, checking that it is the pinned version."""
  try:
    version = importlib.metadata.version("emoji")
  except importlib.metadata.PackageNotFoundError:
    version = None
  if version != EMOJI_PACKAGE_VERSION:
    # Another version lists other emoji and names, i.e. another dataset.
    raise ImportError(
        f"emoji=={EMOJI_PACKAGE_VERSION} is required (found: "
        f"{version or 'not installed'}); {SETUP_HINT}.")
  return importlib.import_module("emoji")


def _to_codepoints(emoji: str) -> str:
  return " ".join(f"{ord(c):04X}" for c in emoji)


def _from_codepoints(codepoints: str) -> str:
  return "".join(chr(int(c, 16)) for c in codepoints.split())


def clean_name(name: str) -> str:
  """':red_apple:' -> 'red apple'; NFC, case and punctuation kept ('BACK')."""
  text = unicodedata.normalize("NFC", name.strip(":").replace("_", " "))
  return " ".join(text.split())


def is_flag(emoji: str) -> bool:
  """True for country (regional-indicator) and subdivision (tag) flags."""
  return any(ord(c) in _REGIONAL_INDICATORS or ord(c) in _TAGS for c in emoji)


def list_emoji(*, include_flags: bool = True) -> list[EmojiEntry]:
  """The candidate emoji of the pinned `emoji` package, before rendering.

  Keeps status fully_qualified and drops every sequence with a skin-tone
  modifier (the SPEC's ≈1,900 counts one glyph per emoji, not five tones).

  Args:
    include_flags: keep the country and subdivision flags (~260).

  Returns:
    Entries sorted by code points, so related emoji (faces, animals) are
    neighbours and the order does not depend on the package's dict order.

  Raises:
    ImportError: `emoji` is missing or not the pinned version.
    ValueError: two entries share a caption (captions must identify emoji).
  """
  package = _emoji_package()
  fully_qualified = package.STATUS["fully_qualified"]
  entries = []
  for emoji, data in package.EMOJI_DATA.items():
    if data["status"] != fully_qualified:
      continue
    if any(ord(c) in _SKIN_TONES for c in emoji):
      continue
    if not include_flags and is_flag(emoji):
      continue
    entries.append(EmojiEntry(
        emoji=emoji, caption=clean_name(data["en"]),
        codepoints=_to_codepoints(emoji), unicode_version=float(data["E"])))
  entries.sort(key=lambda e: [ord(c) for c in e.emoji])
  repeated = [c for c, n in collections.Counter(
      e.caption for e in entries).items() if n > 1]
  if repeated:
    raise ValueError(f"captions name several emoji: {repeated[:5]}")
  return entries


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
  # Emoji ZWJ sequences, keycaps and flags are ligatures (GSUB), which only
  # the raqm layout applies; Pillow's basic layout would draw their parts.
  if not features.check_feature("raqm"):
    raise RuntimeError(
        "Pillow has no raqm text layout, so emoji sequences would render as "
        f"several glyphs; {SETUP_HINT} (it installs libfribidi0, which "
        "Pillow's wheels load for raqm).")
  return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.RAQM)


def _draw(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray:
  """Draws `text` with room to spare; (H, W, 4) uint8 RGBA."""
  left, top, right, bottom = font.getbbox(text)
  width = max(right - left, math.ceil(font.getlength(text)))
  # Guard band in case ink leaves getbbox (none does in font 2.042), which
  # would otherwise be cut off silently.
  pad = 16
  image = Image.new("RGBA", (width + 2 * pad, bottom - top + 2 * pad))
  ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font,
                             embedded_color=True)
  return np.asarray(image)


@functools.lru_cache(maxsize=4)
def _reference(path: str, size: int) -> tuple[float, bytes]:
  """(advance of one plain glyph, RGBA bytes of the unknown-flag glyph)."""
  font = _load_font(path, size)
  return font.getlength(_REFERENCE_EMOJI), _draw(font, _UNKNOWN_FLAG).tobytes()


def _render_canvas(emoji: str, font_path: str,
                   config: RenderConfig) -> np.ndarray:
  """Draws one emoji, ink centred on the canvas; (C, C, 4) uint8 RGBA."""
  font = _load_font(font_path, config.font_size)
  advance, unknown_flag = _reference(font_path, config.font_size)
  drawn = _draw(font, emoji)
  ys, xs = np.nonzero(drawn[..., 3])
  if ys.size < config.min_ink_pixels:
    # Emoji newer than the font: its .notdef glyph is empty.
    raise RejectedEmojiError(emoji, "blank",
                             f"{ys.size} non-transparent pixels")
  ink_w, ink_h = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
  max_width = config.max_width_ratio * advance
  if font.getlength(emoji) > max_width or ink_w > max_width:
    # A ZWJ sequence the font has no ligature for is drawn as its parts.
    raise RejectedEmojiError(
        emoji, "multi_glyph",
        f"advance {font.getlength(emoji):.0f}px, ink {ink_w}px wide; one "
        f"glyph advances {advance:.0f}px")
  if is_flag(emoji) and drawn.tobytes() == unknown_flag:
    raise RejectedEmojiError(emoji, "placeholder",
                             "drawn as the unknown-flag glyph")
  side = config.canvas_size
  if max(ink_w, ink_h) > side:
    raise RejectedEmojiError(emoji, "multi_glyph",
                             f"ink {ink_w}×{ink_h}px exceeds {side}px")
  canvas = np.zeros((side, side, 4), np.uint8)
  y0, x0 = (side - ink_h) // 2, (side - ink_w) // 2
  canvas[y0:y0 + ink_h, x0:x0 + ink_w] = drawn[
      ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  return canvas


def render(emoji: str, *, image_size: int = 128,
           font_path: Optional[PathLike] = None,
           config: RenderConfig = RenderConfig()) -> np.ndarray:
  """Renders one emoji as a square RGBA image, ink centred.

  Args:
    emoji: the emoji string, e.g. '\\U0001F34E'.
    image_size: output side S (128 for training, 64 also works).
    font_path: font file (default: `find_font()`).
    config: drawing and rejection settings.

  Returns:
    (S, S, 4) uint8 RGBA with a transparent background.

  Raises:
    RejectedEmojiError: blank, placeholder or several glyphs (`.reason`).
    FileNotFoundError: the font is not installed.
  """
  font = str(find_font(font_path))
  canvas = _render_canvas(emoji, font, config)
  if image_size == canvas.shape[0]:
    return canvas
  # Pillow resizes RGBA in premultiplied alpha, so transparent pixels' colour
  # does not bleed into edges; Lanczos keeps the bitmap's fine lines sharp.
  resized = Image.fromarray(canvas).resize(
      (image_size, image_size), Image.Resampling.LANCZOS)
  return np.array(resized)  # a writable copy, like the canvas above


# ---------------------------------------------------------------------------
# Split.
# ---------------------------------------------------------------------------


def _split_group(caption: str) -> str:
  """Captions that differ only by gender or facing share a group.

  'man walking', 'woman walking', 'person walking' and 'man walking facing
  right' are nearly the same picture; splitting them apart would leak the
  held-out emoji into training.
  """
  key = caption.lower()
  for prefix in ("man ", "woman ", "person "):
    if key.startswith(prefix):
      key = key[len(prefix):]
      break
  return key.removesuffix(" facing right")


def split(captions: Sequence[str], heldout_frac: float = 0.06,
          seed: int = 0) -> np.ndarray:
  """Deterministic held-out mask, by emoji.

  Groups of near-identical captions (`_split_group`) are ranked by a SHA-256
  of (seed, group), which is stable across Python runs unlike `hash()`, and
  whole groups are held out in that order until at least
  ceil(heldout_frac · N) captions are. A caption's fate depends only on the
  set of captions, never on their order.

  Args:
    captions: N distinct captions.
    heldout_frac: fraction to hold out, in [0, 1).
    seed: another seed gives another split.

  Returns:
    (N,) bool, True for held-out captions.

  Raises:
    ValueError: repeated captions or a fraction out of range.
  """
  if not 0.0 <= heldout_frac < 1.0:
    raise ValueError(f"heldout_frac must be in [0, 1), got {heldout_frac}")
  if len(set(captions)) != len(captions):
    raise ValueError("captions must be distinct")
  groups = collections.defaultdict(list)
  for i, caption in enumerate(captions):
    groups[_split_group(caption)].append(i)

  def rank(group):
    return hashlib.sha256(f"{seed}\x00{group}".encode("utf-8")).hexdigest()

  target = math.ceil(heldout_frac * len(captions))
  heldout = np.zeros(len(captions), bool)
  for group in sorted(groups, key=rank):
    if heldout.sum() >= target:
      break
    heldout[groups[group]] = True
  return heldout


# ---------------------------------------------------------------------------
# Dataset.
# ---------------------------------------------------------------------------


def _file_sha256(path: PathLike) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def make_dataset(*, image_size: int = 128, include_flags: bool = True,
                 heldout_frac: float = 0.06, seed: int = 0,
                 entries: Optional[Iterable[EmojiEntry]] = None,
                 font_path: Optional[PathLike] = None,
                 config: RenderConfig = RenderConfig()) -> EmojiDataset:
  """Renders every listed emoji and splits them; deterministic, in memory.

  Args:
    image_size: image side S.
    include_flags: keep flags (ignored when `entries` is given).
    heldout_frac: see `split`.
    seed: see `split`.
    entries: emoji to render (default: `list_emoji(...)`).
    font_path: font file (default: `find_font()`).
    config: drawing and rejection settings.

  Returns:
    The dataset; `metadata['rejected']` lists the emoji left out and why.
  """
  font = find_font(font_path)
  entries = list(list_emoji(include_flags=include_flags)
                 if entries is None else entries)
  images, kept, rejected = [], [], []
  for entry in entries:
    try:
      images.append(render(entry.emoji, image_size=image_size,
                           font_path=font, config=config))
      kept.append(entry)
    except RejectedEmojiError as e:
      rejected.append(dict(codepoints=entry.codepoints, caption=entry.caption,
                           unicode_version=entry.unicode_version,
                           reason=e.reason, detail=str(e)))
  captions = [e.caption for e in kept]
  metadata = dict(
      emoji_package_version=EMOJI_PACKAGE_VERSION,
      pillow_version=PIL.__version__,
      font_path=str(font), font_sha256=_file_sha256(font),
      image_size=image_size, include_flags=include_flags,
      heldout_frac=heldout_frac, seed=seed,
      render_config=dataclasses.asdict(config),
      num_candidates=len(entries), num_rejected=len(rejected),
      rejected=rejected)
  return EmojiDataset(
      images=np.stack(images) if images else np.zeros(
          (0, image_size, image_size, 4), np.uint8),
      captions=np.array(captions, dtype=str),
      codepoints=np.array([e.codepoints for e in kept], dtype=str),
      heldout=split(captions, heldout_frac, seed), metadata=metadata)


def save_dataset(path: PathLike, dataset: EmojiDataset) -> pathlib.Path:
  """Writes the dataset as one compressed .npz, atomically.

  The bytes depend only on the dataset (fixed zip timestamps), so rebuilding
  gives an identical file. Strings are stored as fixed-width unicode arrays,
  so `load_dataset` needs no pickle.

  Args:
    path: the .npz file to write (its folder must exist).
    dataset: what to write.

  Returns:
    The path written.
  """
  arrays = dict(images=dataset.images, captions=dataset.captions,
                codepoints=dataset.codepoints, heldout=dataset.heldout,
                metadata=np.array(json.dumps(dataset.metadata, indent=1)))
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, array in arrays.items():
      info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
      info.compress_type = zipfile.ZIP_DEFLATED
      with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
  return io_lib.write_bytes_atomic(path, buffer.getvalue())


def build_dataset(out_path: PathLike, image_size: int = 128,
                  **kwargs) -> EmojiDataset:
  """`make_dataset(image_size=..., **kwargs)`, saved to `out_path` (.npz)."""
  dataset = make_dataset(image_size=image_size, **kwargs)
  save_dataset(out_path, dataset)
  return dataset


def load_dataset(path: PathLike) -> EmojiDataset:
  """Reads a dataset written by `save_dataset` (no pickle)."""
  with np.load(path, allow_pickle=False) as data:
    return EmojiDataset(
        images=data["images"], captions=data["captions"],
        codepoints=data["codepoints"], heldout=data["heldout"],
        metadata=json.loads(str(data["metadata"])))
