"""Baselines on the same stack as the server (FastAPI under uvicorn), started by the harness.

- `trivial_app`: an endpoint that does nothing: the HTTP ceiling.
- `naive_app`: the original's approach without its per-request model loading: decode and
  run ONNX Runtime per request, batch of one, in the app's thread pool (not on the event loop),
  run with as many uvicorn workers as the server has front ends.
- `admission_floor_app`: the server's admission gate (`AdmissionMiddleware`, the same 503s)
  in front of a bare ASGI endpoint that reads the body and answers at once, with no FastAPI
  and no model: what S5's accepted latency can be on this uvicorn and event loop at best.
  It answers so fast that it seldom holds the gate's limit, so under S5 it mostly answers
  everything: the cost of 512 closed-loop clients to one event loop, before any real work.
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
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from starlette.types import Receive, Scope, Send

from app.limits import AdmissionMiddleware, InflightCounter
from app.settings import Settings

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


def _naive_classify(app: FastAPI, body: bytes) -> dict[str, object]:
    contract = app.state.meta["contract"]
    height, width = contract["preprocessing"]["size"]
    opened = Image.open(io.BytesIO(body))
    opened.draft("RGB", (width, height))  # JPEG: decode at the smallest scale that still covers the size
    img = opened.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    batch = np.asarray(img, dtype=np.uint8)[np.newaxis]
    probabilities = app.state.session.run(None, {contract["input"]["name"]: batch})[0][0]
    best = int(np.argmax(probabilities))
    return {"prediction": contract["labels"][best], "score": float(probabilities[best])}


@naive_app.post("/predict")
async def naive_predict(request: Request) -> dict[str, object]:
    body = await request.body()
    return await run_in_threadpool(_naive_classify, request.app, body)


_NOOP_ANSWER = b'{"prediction":"0","score":1.0}'


async def _noop_inference(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_NOOP_ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _NOOP_ANSWER})


admission_floor_app = AdmissionMiddleware(
    _noop_inference,
    max_inflight=Settings().limits.max_inflight_requests,  # the server's, SERVE_LIMITS__* included
    counter=InflightCounter(),
)
