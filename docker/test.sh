#!/usr/bin/env bash
# `make docker-test`: build the image with the tiny profile, run it with a published port, and check it:
# /health, /ready listing the models, a fill-mask call, a flag given to `docker run` reaching the server,
# an unknown flag refused, the server running as a non-root user, and no training dependencies in the image.
#
# Afterwards it removes the image and the stage images its build made (about 2.5 GB a run, which would
# otherwise pile up from run to run on a CI machine); KEEP_IMAGE=1 keeps them, with the image as $TAG.
# Before building it checks that Docker's data directory has MIN_FREE_GB (default 6) free.
#
# PYTHON_IMAGE and TORCH_INDEX are passed to the build when set. Otherwise:
# - PYTHON_IMAGE is python:3.11-slim when it can be pulled, else docker/base-image.sh's image from Debian
#   packages (made here when missing: root and debootstrap needed);
# - TORCH_INDEX is a loopback index serving the CPU torch wheel from pip's find-links folder when it holds
#   one, else the build's default (download.pytorch.org). The build runs with --network host so that a
#   loopback index is reachable; everything else comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-lineage:docker-test}
NAME=lineage-docker-test-$$
CONTAINER_PORT=8001  # not the image's default, so that reaching it proves `docker run IMAGE --port` works
say() { echo "docker-test: $*"; }
# The given port when it is free, else any free one.
free_port() {
    python3 - "${1:-0}" <<'EOF'
import socket
import sys

with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
EOF
}
HOST_PORT=${HOST_PORT:-$(free_port)}

docker info >/dev/null 2>&1 || { say "no Docker engine answers (docker info failed); start dockerd first"; exit 1; }

# The build peaks at about 4.5 GB: torch in the base stage, the train extra and the checkpoints in another,
# the service environment copied into the runtime image.
MIN_FREE_GB=${MIN_FREE_GB:-6}
docker_root=$(docker info --format '{{.DockerRootDir}}')
free_gb=$(df -P -BG "$docker_root" 2>/dev/null | awk 'NR == 2 {print $4 + 0}')
if [ -n "$free_gb" ] && [ "$free_gb" -lt "$MIN_FREE_GB" ]; then
    say "$docker_root has $free_gb GB free; the build needs about $MIN_FREE_GB GB (MIN_FREE_GB)."
    say "'docker image prune' removes untagged images, 'docker system df' shows what Docker holds."
    exit 1
fi

# Every image present before the build, so that cleanup removes only the ones this run made.
images_before=$(docker images --all --quiet --no-trunc | sort -u)
work=$(mktemp -d)
index_pid=""
cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    [ -n "$index_pid" ] && kill "$index_pid" 2>/dev/null || true
    rm -rf "$work"
    if [ "${KEEP_IMAGE:-0}" != 1 ]; then
        docker rmi "$TAG" >/dev/null 2>&1 || true
        # The stage images are untagged; removing one removes the untagged layers under it that no other
        # image uses (the base stage with torch among them), so the next run starts clean.
        made=$(comm -13 <(echo "$images_before") <(docker images --quiet --no-trunc --filter dangling=true | sort -u))
        [ -n "$made" ] && docker rmi $made >/dev/null 2>&1 || true
        say "removed $TAG and the stage images of its build (KEEP_IMAGE=1 keeps them)"
    fi
}
trap cleanup EXIT

if [ -z "${PYTHON_IMAGE:-}" ]; then
    if docker image inspect python:3.11-slim >/dev/null 2>&1 || docker pull python:3.11-slim >/dev/null 2>&1; then
        PYTHON_IMAGE=python:3.11-slim
    else
        PYTHON_IMAGE=lineage-python:bookworm
        say "python:3.11-slim cannot be pulled; base image $PYTHON_IMAGE from Debian packages"
        docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 || sh docker/base-image.sh "$PYTHON_IMAGE"
    fi
fi

if [ -z "${TORCH_INDEX:-}" ]; then
    find_links=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
    wheel=""
    for folder in $find_links; do
        folder=${folder#file://}
        for candidate in "$folder"/torch-2.13.0+cpu-*.whl; do
            [ -f "$candidate" ] && wheel=$candidate
        done
    done
    if [ -n "$wheel" ]; then
        # A simple index in http.server's directory listings: /torch/ lists the wheel.
        mkdir -p "$work/index/torch"
        ln -s "$wheel" "$work/index/torch/"
        index_port=$(free_port 8808)  # the same port each time, so the build's cache holds (see the Dockerfile)
        python3 -m http.server --bind 127.0.0.1 --directory "$work/index" "$index_port" >"$work/index.log" 2>&1 &
        index_pid=$!
        TORCH_INDEX=http://127.0.0.1:$index_port/
        say "torch from $wheel, served at $TORCH_INDEX"
    fi
fi

build_args=(--build-arg PROFILE=tiny --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "${TORCH_INDEX:-}" ] && build_args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
say "docker build ${build_args[*]} -t $TAG ."
docker build --network host "${build_args[@]}" -t "$TAG" .

say "an unknown flag is refused"
if refusal=$(docker run --rm "$TAG" --workers 2 2>&1); then
    say "the container accepted --workers:"; echo "$refusal"; exit 1
fi
echo "$refusal" | tail -n 1
echo "$refusal" | grep -q "unrecognized arguments: --workers" || { say "no message naming the flag"; exit 1; }

say "docker run -p 127.0.0.1:$HOST_PORT:$CONTAINER_PORT $TAG --port $CONTAINER_PORT"
docker run -d --name "$NAME" -p "127.0.0.1:$HOST_PORT:$CONTAINER_PORT" "$TAG" --port "$CONTAINER_PORT" >/dev/null

status=0
python3 - "http://127.0.0.1:$HOST_PORT" <<'EOF' || status=$?
import json
import sys
import time
import urllib.error
import urllib.request

url = sys.argv[1]


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


deadline = time.monotonic() + 120
while True:
    try:
        status, health = call("/health")
        break
    except (urllib.error.URLError, ConnectionError):
        if time.monotonic() > deadline:
            sys.exit("docker-test: /health did not answer within 120 s")
        time.sleep(1)
assert status == 200 and health == {"status": "ok"}, (status, health)
print("docker-test: GET /health ->", status, health)

status, ready = call("/ready")
loaded = sorted(c["id"] for c in ready["checkpoints"] if c["status"] == "loaded")
print(f"docker-test: GET /ready -> {status}, {len(loaded)} models loaded: {', '.join(loaded)}")
assert status == 200 and ready["ready"] and "bert" in loaded and "word2vec-sg" in loaded, ready

status, filled = call("/v1/fill-mask", {"text": "to be or not to [MASK]", "top_k": 3})
print("docker-test: POST /v1/fill-mask ->", status, json.dumps(filled)[:300])
assert status == 200 and len(filled["predictions"]) == 1 and len(filled["predictions"][0]) == 3, filled
EOF

uid=$(docker exec "$NAME" sh -c "awk '/^Uid:/ {print \$2}' /proc/1/status")
say "the server (PID 1 in the container) runs as uid $uid ($(docker exec "$NAME" id -un))"
[ "$uid" != 0 ] || { say "the server runs as root"; status=1; }

if docker exec "$NAME" python -c "import gensim, numba, sacrebleu, sklearn" 2>/dev/null; then
    say "the runtime image carries the train extra"; status=1
else
    say "the runtime image serves without the train extra (gensim, numba, sacrebleu, sklearn absent)"
fi

say "container output:"
docker logs "$NAME" 2>&1 | tail -n 40
[ "$status" = 0 ] && say "passed" || say "FAILED"
exit "$status"
