# The training job image. TensorFlow CPU by default; for NVIDIA GPUs build with
#   docker build -f docker/train.Dockerfile --build-arg TRAIN_EXTRA=train-gpu -t imgserve-train-gpu .
# Build from the repository root. Dependencies come from requirements/$TRAIN_EXTRA.txt (exact
# versions with hashes, written by scripts/lock.sh) in a layer of their own, before the source.

ARG TRAIN_EXTRA=train

FROM python:3.11-slim AS build
ARG TRAIN_EXTRA
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/${TRAIN_EXTRA}.txt ./requirements/
RUN pip install --require-hashes -r "requirements/${TRAIN_EXTRA}.txt"
COPY pyproject.toml README.md ./
COPY core ./core
COPY app ./app
COPY registry ./registry
COPY training ./training
RUN pip install --no-deps ".[${TRAIN_EXTRA},s3]"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    REGISTRY_ARTIFACTS_DIR=/data/artifacts
COPY --from=build /opt/venv /opt/venv
COPY docker/train-entrypoint.sh /usr/local/bin/train-entrypoint
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data/artifacts /data/runs /data/input && chown -R app:app /data \
    && chmod 0755 /usr/local/bin/train-entrypoint
USER app
WORKDIR /data
ENTRYPOINT ["train-entrypoint"]
