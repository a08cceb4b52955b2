# The CPU server image: the `serve` extra (ONNX Runtime, FastAPI) and `s3` (boto3, for artifacts
# in a bucket) — never TensorFlow.
# Build from the repository root:  docker build -f docker/api.Dockerfile -t imgserve-api .
# Dependencies come from requirements/serve.txt (exact versions with hashes, written by
# scripts/lock.sh) in a layer of their own, so a source change reinstalls nothing.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/serve.txt ./requirements/serve.txt
RUN pip install --require-hashes -r requirements/serve.txt
COPY pyproject.toml README.md ./
COPY core ./core
COPY app ./app
COPY registry ./registry
COPY training/__init__.py ./training/__init__.py
RUN pip install --no-deps ".[serve,s3]"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SERVE_HOST=0.0.0.0 \
    SERVE_PORT=8000 \
    REGISTRY_ARTIFACTS_DIR=/data/artifacts
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data/artifacts && chown -R app:app /data
USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SERVE_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "app"]
