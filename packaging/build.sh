#!/usr/bin/env bash
# Builds the .deb and .rpm packages into target/packages/ — the one documented packaging command:
#
#     packaging/build.sh            # both
#     packaging/build.sh deb        # only the .deb (or: rpm)
#
# Installs cargo-deb and cargo-generate-rpm from crates.io (`cargo install --locked`) when they
# are missing. The package contents are declared in Cargo.toml ([package.metadata.deb],
# [package.metadata.generate-rpm]); packaging/check.sh lists and checks the result.
# Builds on the machine it runs on: the packages target its architecture and glibc, so build on
# the oldest distribution you deploy to (e.g. a Rocky 8 container for RHEL 8/9, Debian 11 for
# Debian 11/12 and Ubuntu 22.04+).
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
case "$what" in all|deb|rpm) ;; *) echo "usage: $0 [all|deb|rpm]" >&2; exit 2 ;; esac

OUT=target/packages
mkdir -p "$OUT"

ensure_cargo_tool() {
    local sub="$1" crate="$2"
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        echo "build.sh: installing $crate (cargo install --locked $crate)"
        cargo install --locked "$crate"
    fi
}

# Stripped release binary, used by both packages (cargo-generate-rpm does not strip by itself).
echo "== cargo build --release"
CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --bin push-server

if [ "$what" = all ] || [ "$what" = deb ]; then
    ensure_cargo_tool deb cargo-deb
    echo "== cargo deb"
    cargo deb --no-build --no-strip --output "$OUT/"
fi

if [ "$what" = all ] || [ "$what" = rpm ]; then
    ensure_cargo_tool generate-rpm cargo-generate-rpm
    echo "== cargo generate-rpm"
    cargo generate-rpm --output "$OUT/"
fi

echo "== built"
ls -l "$OUT"
