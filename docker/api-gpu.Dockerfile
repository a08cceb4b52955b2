# The server on an NVIDIA GPU.
#
# onnxruntime-gpu 1.31.1 from PyPI is built for CUDA 13.0 and cuDNN 9 (its
# capi/build_and_package_info.py says cuda_version '13.0'; the CUDA major version must
# match, cuDNN 8 and 9 are not interchangeable). The base image below provides that
# pair. This exact ONNX Runtime build ran the benchmark on an H100 (driver 580) with
# CUDA 13 / cuDNN 9 libraries: see docs/gpu.md. CUDA 13 needs an NVIDIA
# driver >= 580; on an older driver build the CUDA 12 variant instead:
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg ORT_GPU_VERSION=1.22.0
# SERVE_REQUIRE_GPU is on: a host without a usable GPU fails at start instead of
# serving on CPU unnoticed.
# Build from the repository root:  docker build -f docker/api-gpu.Dockerfile -t imgserve-api-gpu .
# Dependencies come from requirements/gpu.txt (exact versions with hashes for Ubuntu 24.04's
# Python 3.12, written by scripts/lock.sh) in a layer of their own, before the source.
# On the CUDA 12 variant, lock that onnxruntime-gpu version instead (scripts/lock.sh).

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.31.1

FROM ${CUDA_IMAGE} AS build
ARG ORT_GPU_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/gpu.txt ./requirements/gpu.txt
RUN pip install --require-hashes -r requirements/gpu.txt \
    && pip show onnxruntime-gpu | grep -qx "Version: ${ORT_GPU_VERSION}"
COPY pyproject.toml README.md ./
COPY core ./core
COPY app ./app
COPY registry ./registry
COPY training/__init__.py ./training/__init__.py
RUN pip install --no-deps ".[gpu,s3]"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SERVE_HOST=0.0.0.0 \
    SERVE_PORT=8000 \
    SERVE_PROVIDERS=cuda \
    SERVE_REQUIRE_GPU=true \
    REGISTRY_ARTIFACTS_DIR=/data/artifacts
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data/artifacts && chown -R app:app /data
USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SERVE_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "app"]
