#!/bin/sh
# A Python base image made from Debian packages, for hosts that cannot pull from the public image registry:
# debootstrap a minimal Debian with python3, python3-venv and the CA bundle, then `docker import` it.
#
#   docker/base-image.sh [TAG]          # default tag: lineage-python:bookworm
#   docker build --build-arg PYTHON_IMAGE=lineage-python:bookworm ...
#
# Needs root, debootstrap and a Docker engine. The host's CA bundle replaces the image's own, so that a
# TLS-intercepting proxy the host trusts is trusted inside the build too (CA_BUNDLE names another file).
# DEBIAN_MIRROR picks the archive (a local mirror works); SUITE the release (bookworm has Python 3.11).
set -eu
TAG=${1:-lineage-python:bookworm}
SUITE=${SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || { echo "base-image: $tool is not installed" >&2; exit 1; }
done
[ -r "$CA_BUNDLE" ] || { echo "base-image: no CA bundle at $CA_BUNDLE (set CA_BUNDLE)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT INT TERM
# python-is-python3 gives the `python` command the Dockerfile and the entrypoint call, as the official image does.
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$SUITE" "$root" "$DEBIAN_MIRROR"
cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*

# Debian's pip reads certificates from certifi, not the system: PIP_CERT points it at the bundle copied above.
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$TAG"
echo "base-image: $TAG"
