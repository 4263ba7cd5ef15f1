#!/usr/bin/env bash
# Installs the Garage S3 server the s3_* tests run against, from crates.io,
# unless `garage` is already on PATH. Building it takes several minutes.
set -euo pipefail
if command -v garage >/dev/null 2>&1; then
  garage --version
  exit 0
fi
timeout "${GARAGE_INSTALL_TIMEOUT:-2400}" cargo install --locked --quiet garage
garage --version
