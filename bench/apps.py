"""Baselines on the same stack as the server (FastAPI under uvicorn), started by the harness.

- `trivial_app`: an endpoint that does nothing: the HTTP ceiling.
- `naive_app`: the original's approach without its per-request model loading: decode and
  run ONNX Runtime per request, batch of one, on the event loop.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from PIL import Image

trivial_app = FastAPI()


@trivial_app.post("/ping")
@trivial_app.get("/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}


@asynccontextmanager
async def _load_model(app: FastAPI) -> AsyncIterator[None]:
    app.state.meta = json.loads(Path(os.environ["BENCH_META"]).read_text())  # noqa: ASYNC240 - start-up only
    providers = os.environ.get("BENCH_PROVIDERS", "CPUExecutionProvider").split(",")
    app.state.session = ort.InferenceSession(os.environ["BENCH_MODEL"], providers=providers)
    yield


naive_app = FastAPI(lifespan=_load_model)


@naive_app.post("/predict")
async def naive_predict(request: Request) -> dict[str, object]:
    contract = request.app.state.meta["contract"]
    height, width = contract["preprocessing"]["size"]
    body = await request.body()
    img = Image.open(io.BytesIO(body)).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    batch = np.asarray(img, dtype=np.uint8)[np.newaxis]
    probabilities = request.app.state.session.run(None, {contract["input"]["name"]: batch})[0][0]
    best = int(np.argmax(probabilities))
    return {"prediction": contract["labels"][best], "score": float(probabilities[best])}
