# syntax=docker/dockerfile:1
# Multi-stage build: a builder installs the project and trains the default checkpoints;
# the runtime image carries the virtual environment and the checkpoints, and runs as a non-root user.
#
#   docker build -t lineage .                        # trains the quick-profile models (minutes)
#   docker build -t lineage --build-arg PROFILE=none .   # no training: mount checkpoints instead
#   docker run -p 8000:8000 lineage
#   docker run -p 8000:8000 -v "$PWD/checkpoints:/app/checkpoints:ro" lineage

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# The CPU build of torch; the default index would pull a multi-GB CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PROFILE=quick
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PROGRESS=0
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY app ./app
RUN pip install .
RUN mkdir -p /opt/checkpoints && \
    if [ "$PROFILE" != "none" ]; then python -m training all --profile "$PROFILE" --out /opt/checkpoints; fi

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 lineage
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=lineage /opt/checkpoints /app/checkpoints
COPY docker/entrypoint.sh /usr/local/bin/lineage-entrypoint
ENV PATH=/opt/venv/bin:$PATH CHECKPOINT_DIR=/app/checkpoints HOST=0.0.0.0 PORT=8000 PYTHONUNBUFFERED=1
WORKDIR /app
USER lineage
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"
ENTRYPOINT ["lineage-entrypoint"]
