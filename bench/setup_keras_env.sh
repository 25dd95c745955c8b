#!/usr/bin/env bash
# Create the virtual environment that bench/keras_reference.py runs in (TensorFlow/Keras, CPU only).
#
# It lives outside the repository by default (~/.cache/cxr-keras-venv), so nothing needs to be
# git-ignored; set CXR_KERAS_VENV to put it elsewhere (for example bench/.keras-venv, which is then
# to be listed in .gitignore). Re-running the script is cheap: pip skips what is already installed.
#
#   bash bench/setup_keras_env.sh
#   "${CXR_KERAS_VENV:-$HOME/.cache/cxr-keras-venv}/bin/python" bench/keras_reference.py DATA --subset 400
set -euo pipefail

VENV="${CXR_KERAS_VENV:-$HOME/.cache/cxr-keras-venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "tensorflow-cpu==2.21.0" pillow scipy
"$VENV/bin/python" -c "import tensorflow as tf, keras; print('tensorflow', tf.__version__, 'keras', keras.__version__)"
echo "ready: $VENV/bin/python bench/keras_reference.py DATA" >&2
