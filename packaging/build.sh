#!/usr/bin/env bash
# Builds the .deb and .rpm packages into target/packages/ — the one documented packaging command:
#
#     packaging/build.sh            # both
#     packaging/build.sh deb        # only the .deb (or: rpm)
#
# Installs cargo-deb and cargo-generate-rpm from crates.io (`cargo install --locked`), and zig
# with cargo-zigbuild from PyPI (`pip install ziglang cargo-zigbuild`), when they are missing.
# The package contents are declared in Cargo.toml ([package.metadata.deb],
# [package.metadata.generate-rpm]); packaging/check.sh lists and checks the result.
# The binary is built against glibc 2.17 (packaging/zigbuild.sh), whatever the build machine
# runs, so the packages install on Rocky/Alma 8+ and Debian 11+ (packaging/README.md).
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

# zig and cargo-zigbuild from PyPI. Debian's own python refuses system-wide pip installs
# (PEP 668) unless told otherwise.
ensure_zigbuild() {
    if cargo-zigbuild --version >/dev/null 2>&1; then
        return 0
    fi
    echo "build.sh: installing zig and cargo-zigbuild (pip install ziglang cargo-zigbuild)"
    python3 -m pip install --quiet ziglang cargo-zigbuild 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages ziglang cargo-zigbuild
}

# Stripped release binary for glibc 2.17, used by both packages (Cargo.toml names its path,
# target/zigbuild/x86_64-unknown-linux-gnu/release/push-server).
ensure_zigbuild
echo "== packaging/zigbuild.sh (cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.17)"
packaging/zigbuild.sh

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
