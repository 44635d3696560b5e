#!/usr/bin/env bash
# Installs what the emoji data pipeline (toprovar_jax/data/emoji.py, SPEC §8)
# needs:
#   * the Noto Color Emoji font, Debian package fonts-noto-color-emoji, which
#     toprovar_jax.data.emoji.find_font() expects at
#     /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf;
#   * the PyPI `emoji` package at the pinned version, the source of the emoji
#     list and the captions (another version gives another dataset);
#   * libfribidi0, only if Pillow's raqm text layout is missing (raqm draws an
#     emoji sequence as one glyph).
#
#   bash scripts/setup_emoji.sh          # PYTHON=... to pick the interpreter
#
# Idempotent: each step is skipped when already satisfied, so a rerun is
# quick, offline and changes nothing. apt-get needs root (or sudo).
set -euo pipefail

# Keep in sync with toprovar_jax/data/emoji.py:EMOJI_PACKAGE_VERSION.
EMOJI_VERSION="2.16.0"
FONT_PACKAGE="fonts-noto-color-emoji"
FONT_PATH="/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
PYTHON="${PYTHON:-python3}"

if [[ "$(id -u)" -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi

log() { echo "setup_emoji: $*"; }

apt_install() {
  # A fresh container has empty apt lists, so the package is unknown until an
  # update; updating only then keeps reruns offline and fast.
  if ! apt-cache show "$1" >/dev/null 2>&1; then
    log "apt-get update ($1 unknown to apt)"
    ${SUDO} apt-get update
  fi
  log "installing $1"
  ${SUDO} env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "$1"
}

has_raqm() {
  "${PYTHON}" - <<'PY' 2>/dev/null
from PIL import features
raise SystemExit(not features.check_feature("raqm"))
PY
}

# --- Font (apt) ---------------------------------------------------------------
if dpkg-query -W -f='${Status}' "${FONT_PACKAGE}" 2>/dev/null \
    | grep -q "install ok installed" && [[ -f "${FONT_PATH}" ]]; then
  log "${FONT_PACKAGE} already installed"
else
  apt_install "${FONT_PACKAGE}"
fi
if [[ ! -f "${FONT_PATH}" ]]; then
  log "${FONT_PATH} missing after installing ${FONT_PACKAGE}" >&2
  exit 1
fi

# --- emoji (pip, pinned) ------------------------------------------------------
installed="$("${PYTHON}" -c \
  'import importlib.metadata as m; print(m.version("emoji"))' 2>/dev/null \
  || true)"
if [[ "${installed}" == "${EMOJI_VERSION}" ]]; then
  log "emoji==${EMOJI_VERSION} already installed"
else
  log "installing emoji==${EMOJI_VERSION} (found: ${installed:-none})"
  "${PYTHON}" -m pip install --no-input "emoji==${EMOJI_VERSION}"
fi

# --- Pillow text layout -------------------------------------------------------
# Emoji sequences (ZWJ, keycaps, flags) are font ligatures that only Pillow's
# raqm layout applies; Pillow's PyPI wheels bundle raqm but load the system
# libfribidi at run time.
if has_raqm; then
  log "Pillow raqm layout available"
else
  apt_install libfribidi0
  if ! has_raqm; then
    log "Pillow still lacks raqm; reinstall Pillow from a PyPI wheel" >&2
    exit 1
  fi
fi
log "done (font ${FONT_PATH}, emoji==${EMOJI_VERSION})"
