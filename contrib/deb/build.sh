#!/usr/bin/env bash
# Build the Debian package target/debian/tdfs_<version>-1_<arch>.deb:
# a release build, the man pages (`tdfs man`) and shell completions
# (`tdfs completions`) under target/release/deb-assets, then `cargo deb
# --no-build` with the assets listed in Cargo.toml [package.metadata.deb].
# Needs cargo-deb (`cargo install --locked cargo-deb`) and gzip.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "build.sh: cargo-deb is missing (install it: cargo install --locked cargo-deb)" >&2
  exit 1
fi

# cargo-deb maps target/release/ in asset paths to the real target directory.
release="${CARGO_TARGET_DIR:-target}/release"
assets="$release/deb-assets"

timeout 3600 cargo build --release --locked --bin tdfs
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$release/tdfs" man "$assets/man"
gzip -9n "$assets"/man/*.1
"$release/tdfs" completions bash >"$assets/completions/tdfs"
"$release/tdfs" completions zsh >"$assets/completions/_tdfs"
"$release/tdfs" completions fish >"$assets/completions/tdfs.fish"

# Stripped: the release profile keeps line tables for profiling, not for hosts.
timeout 600 cargo deb --no-build --locked --strip
ls -1 "${CARGO_TARGET_DIR:-target}"/debian/*.deb
