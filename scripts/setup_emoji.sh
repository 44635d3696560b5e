#!/usr/bin/env bash
# Installs what the emoji data pipeline needs (SPEC §8; toprovar_jax/data/emoji.py):
#   * the Noto Color Emoji font, Debian package fonts-noto-color-emoji, which
#     toprovar_jax.data.emoji.find_font() expects at
#     /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf;
#   * the PyPI `emoji` package at the pinned version, the source of the emoji
#     list and the captions (a different version changes the dataset).
#
#   bash scripts/setup_emoji.sh
#
# Idempotent: each step is skipped when already satisfied, so rerunning it is
# cheap and changes nothing. Needs root (or sudo) for apt-get.
set -euo pipefail

# Keep in sync with toprovar_jax/data/emoji.py:EMOJI_PACKAGE_VERSION.
EMOJI_VERSION="2.16.0"
FONT_PACKAGE="fonts-noto-color-emoji"
FONT_PATH="/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
PYTHON="${PYTHON:-python3}"

if [[ "$(id -u)" -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi

# --- Font (apt) ---------------------------------------------------------------
if dpkg-query -W -f='${Status}' "${FONT_PACKAGE}" 2>/dev/null \
    | grep -q "install ok installed" && [[ -f "${FONT_PATH}" ]]; then
  echo "setup_emoji: ${FONT_PACKAGE} already installed"
else
  # A fresh container has empty apt lists, so the package is "unknown" until
  # an update; only update then, to keep reruns offline and fast.
  if ! apt-cache show "${FONT_PACKAGE}" >/dev/null 2>&1; then
    echo "setup_emoji: apt-get update (${FONT_PACKAGE} unknown to apt)"
    ${SUDO} apt-get update
  fi
  echo "setup_emoji: installing ${FONT_PACKAGE}"
  DEBIAN_FRONTEND=noninteractive ${SUDO} apt-get install -y --no-install-recommends \
    "${FONT_PACKAGE}"
fi
if [[ ! -f "${FONT_PATH}" ]]; then
  echo "setup_emoji: ${FONT_PATH} missing after installing ${FONT_PACKAGE}" >&2
  exit 1
fi

# --- emoji (pip, pinned) ------------------------------------------------------
installed="$("${PYTHON}" -c 'import importlib.metadata as m; print(m.version("emoji"))' \
  2>/dev/null || true)"
if [[ "${installed}" == "${EMOJI_VERSION}" ]]; then
  echo "setup_emoji: emoji==${EMOJI_VERSION} already installed"
else
  echo "setup_emoji: installing emoji==${EMOJI_VERSION} (found: ${installed:-none})"
  "${PYTHON}" -m pip install --no-input "emoji==${EMOJI_VERSION}"
fi
echo "setup_emoji: done (font ${FONT_PATH}, emoji==${EMOJI_VERSION})"
