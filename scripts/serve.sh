#!/usr/bin/env bash
# The main job on a fresh machine: install, make sure a `digits` model is in production
# (training one if none is), then serve on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
HOST=${SERVE_HOST:-127.0.0.1}
PORT=${SERVE_PORT:-8000}
MODEL=${MODEL:-digits}

# Install only on the first start, or when pyproject.toml changed since the last install: a
# restart with nothing to install starts at once and needs no package index.
STAMP=.venv/.installed-pyproject.sha256
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "installing into .venv (first start, or pyproject.toml changed)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[serve,train]'
  echo "$WANT" >"$STAMP"
fi

.venv/bin/registry db upgrade
if ! .venv/bin/registry show "$MODEL@production" >/dev/null 2>&1; then
  echo "no $MODEL@production in the registry: training the built-in digits model (5 epochs, under a minute)"
  .venv/bin/python -m training --dataset digits --epochs 5 --register "$MODEL" --promote production
fi
.venv/bin/registry show "$MODEL@production"

SAMPLE=var/samples/digit-7.png
if [ ! -f "$SAMPLE" ]; then
  .venv/bin/python - "$SAMPLE" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

digits = load_digits()
index = int(np.flatnonzero(digits.target == 7)[-1])
out = Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8), mode="L").save(out)
PY
fi

cat <<MSG

Serving on http://$HOST:$PORT. Try:

  curl -F image=@$SAMPLE http://$HOST:$PORT/predict
  curl -F images=@$SAMPLE "http://$HOST:$PORT/v1/models/$MODEL/predict?top_k=3"

MSG
exec .venv/bin/python -m app --host "$HOST" --port "$PORT"
