# Multi-stage build: one stage installs the service, another installs it with the train extra and trains
# the default checkpoints; the runtime image carries the service's environment (without the training
# dependencies) and the checkpoints, and runs as a non-root user.
#
#   docker build -t lineage .                              # trains the quick-profile models (minutes)
#   docker build -t lineage --build-arg PROFILE=none .     # no training: mount checkpoints instead
#   docker run -p 8000:8000 lineage [--flag value ...]     # flags as `python -m app --help` lists them
#   docker run -p 8000:8000 -v "$PWD/checkpoints:/app/checkpoints:ro" lineage
#
# PYTHON_IMAGE names the base (a registry mirror, or docker/base-image.sh's image where no registry can be
# reached); TORCH_INDEX a pip index holding the CPU build of torch (a mirror, or a loopback one: build with
# --network host). `make docker-test` picks both for the machine it runs on.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU build of torch; the default index would pull a multi-GB CUDA build. Only torch comes from this
# index: its own dependencies come from PyPI with the project's. (A build argument is part of the cache key
# of every later step, so a loopback index keeps one port from build to build.)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-deps --index-url "$TORCH_INDEX" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY models ./models
COPY training ./training
COPY app ./app

FROM base AS service
RUN pip install .

FROM base AS checkpoints
ARG PROFILE=quick
RUN pip install ".[train]"
RUN mkdir -p /opt/checkpoints && \
    if [ "$PROFILE" != "none" ]; then PROGRESS=0 python -m training all --profile "$PROFILE" --out /opt/checkpoints; fi

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 lineage
COPY --from=service /opt/venv /opt/venv
COPY --from=checkpoints --chown=lineage /opt/checkpoints /app/checkpoints
COPY docker/entrypoint.sh /usr/local/bin/lineage-entrypoint
ENV PATH=/opt/venv/bin:$PATH CHECKPOINT_DIR=/app/checkpoints HOST=0.0.0.0 PORT=8000 PYTHONUNBUFFERED=1
WORKDIR /app
USER lineage
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"
ENTRYPOINT ["lineage-entrypoint"]
