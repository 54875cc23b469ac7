#!/bin/sh
# The container's entrypoint (the tests run it too): serve the checkpoints in CHECKPOINT_DIR.
# Inside the image HOST defaults to 0.0.0.0 so a published port reaches it. Arguments (`docker run IMAGE
# --max-connections 200`) are python -m app's flags: one per setting; an unknown one stops it with a message.
set -eu
: "${CHECKPOINT_DIR:=/app/checkpoints}"
: "${HOST:=0.0.0.0}"
: "${PORT:=8000}"
export CHECKPOINT_DIR HOST PORT
if [ ! -d "$CHECKPOINT_DIR" ] || [ -z "$(ls -A "$CHECKPOINT_DIR" 2>/dev/null)" ]; then
    echo "warning: no checkpoints in $CHECKPOINT_DIR; mount some (-v \$PWD/checkpoints:$CHECKPOINT_DIR) or build" \
         "the image with training (the default); /ready answers 503 until a model is loaded" >&2
fi
exec "${PYTHON:-python}" -m app "$@"
