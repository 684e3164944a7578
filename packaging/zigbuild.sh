#!/usr/bin/env bash
# Builds the stripped release server binary against glibc 2.17 with cargo-zigbuild (zig as the
# linker, glibc 2.17 stubs), so that it runs on every distribution the packages target
# (packaging/README.md). Prints the binary's path on its last line.
#
#     packaging/zigbuild.sh
#
# Used by packaging/build.sh and by tests/packaging.rs (which checks the binary's newest GLIBC
# symbol version). The build lives in target/zigbuild/, so both share it and a second run only
# relinks what changed. Needs `pip install ziglang cargo-zigbuild` (packaging/build.sh and
# scripts/test.sh install them when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.17
case "$(uname -m)" in
    x86_64) TRIPLE=x86_64-unknown-linux-gnu ;;
    aarch64) TRIPLE=aarch64-unknown-linux-gnu ;;
    *) echo "zigbuild.sh: no glibc $GLIBC build for $(uname -m)" >&2; exit 2 ;;
esac

if ! cargo-zigbuild --version >/dev/null 2>&1; then
    echo "zigbuild.sh: cargo-zigbuild is missing: pip install ziglang cargo-zigbuild" >&2
    exit 3
fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$TRIPLE"; then
    rustup target add "$TRIPLE" >&2
fi

export CARGO_TARGET_DIR=target/zigbuild
# Strip here: cargo-generate-rpm does not strip, and the same settings keep the build cached.
CARGO_PROFILE_RELEASE_STRIP=symbols cargo zigbuild --release --locked --bin push-server \
    --target "$TRIPLE.$GLIBC" >&2
echo "$CARGO_TARGET_DIR/$TRIPLE/release/push-server"
