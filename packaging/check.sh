#!/usr/bin/env bash
# Checks the packages built by packaging/build.sh (target/packages/): lists their files, checks
# that every expected path, the config-file marking and the maintainer scripts are there, and
# runs `systemd-analyze verify` on the packaged unit (skipped, with the reason, where it is not
# available). Both packages must need nothing newer than glibc 2.17 (packaging/README.md): the
# packaged binary's GLIBC symbol versions, the deb's libc6 dependency and the rpm's
# requirements (`rpm -qpR`). The rpm checks need the `rpm` tool, installed with apt-get when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/packages
fail=0
err() { echo "check.sh: FAIL: $*" >&2; fail=1; }

COMMON=(
    /usr/bin/push-server
    /usr/lib/tmpfiles.d/push-server.conf
    /etc/sysconfig/push-server-multi
    /usr/share/doc/push-server/README.md
    /usr/share/doc/push-server/push-server-multi.example
    /usr/share/doc/push-server/nginx/README.md
    /usr/share/doc/push-server/nginx/push-server-http.conf
    /usr/share/doc/push-server/nginx/push-server-sub-locations.conf
    /usr/share/doc/push-server/nginx/push-server-pub-server.conf
    /usr/share/doc/push-server/nginx/push-server-bitrixvm-upstreams.conf
)

GLIBC_MAX=2.17

# version_le A B: A <= B for dotted versions.
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]; }

# newest_glibc FILE: the newest GLIBC_x.y symbol version FILE needs (objdump or readelf).
newest_glibc() {
    local dump
    if command -v objdump >/dev/null 2>&1; then
        dump="$(objdump -T "$1")"
    else
        dump="$(readelf --wide --version-info "$1")"
    fi
    grep -o 'GLIBC_[0-9][0-9.]*' <<<"$dump" | sed 's/^GLIBC_//' | sort -uV | tail -n1
}

# check_glibc WHAT VERSION...: each VERSION is at most GLIBC_MAX.
check_glibc() {
    local what="$1" v; shift
    for v in "$@"; do
        version_le "$v" "$GLIBC_MAX" || err "$what needs glibc $v (newer than $GLIBC_MAX)"
    done
}

ensure_rpm() {
    command -v rpm >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || return 1
    echo "check.sh: 'rpm' missing, installing package 'rpm'"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rpm
}

expect_paths() { # LISTING_FILE PATH...
    local listing="$1"; shift
    local p
    for p in "$@"; do
        grep -qx -- "$p" "$listing" || err "$p missing from $(basename "$listing" .list)"
    done
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# ---- .deb ------------------------------------------------------------------------------------
debs=("$OUT"/push-server_*.deb)
unit=""
if [ -e "${debs[0]}" ]; then
    deb="${debs[-1]}"
    echo "== $deb"
    dpkg-deb -c "$deb" | tee "$tmp/deb.raw"
    # "-rwxr-xr-x 0/0 936280 2026-01-01 00:00 ./usr/bin/push-server" -> "/usr/bin/push-server"
    awk '{print $6}' "$tmp/deb.raw" | sed 's|^\./|/|; s|/$||' > "$tmp/deb.list"
    expect_paths "$tmp/deb.list" "${COMMON[@]}" /lib/systemd/system/push-server.service
    dpkg-deb -e "$deb" "$tmp/deb-control"
    grep -qx /etc/sysconfig/push-server-multi "$tmp/deb-control/conffiles" \
        || err "deb: /etc/sysconfig/push-server-multi is not a conffile"
    for s in postinst prerm postrm; do
        [ -x "$tmp/deb-control/$s" ] || err "deb: maintainer script $s missing"
    done
    grep -q 'useradd --system' "$tmp/deb-control/postinst" || err "deb: postinst creates no user"
    dpkg-deb -x "$deb" "$tmp/deb-root"
    "$tmp/deb-root/usr/bin/push-server" --version || err "deb: the packaged binary does not run"
    newest="$(newest_glibc "$tmp/deb-root/usr/bin/push-server")"
    echo "  newest GLIBC symbol version of the binary: ${newest:-none}"
    [ -n "$newest" ] || err "deb: no GLIBC symbol versions found in the binary"
    check_glibc "deb: the binary" $newest
    depends="$(dpkg-deb -f "$deb" Depends)"
    echo "  Depends: $depends"
    # "libc6 (>= 2.17), passwd" -> 2.17
    check_glibc "deb: Depends" $(sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p' <<<"$depends")
    unit="$tmp/deb-root/lib/systemd/system/push-server.service"
    bin="$tmp/deb-root/usr/bin/push-server"
else
    echo "check.sh: no .deb in $OUT (packaging/build.sh deb)"
fi

# ---- .rpm ------------------------------------------------------------------------------------
rpms=("$OUT"/push-server-*.rpm)
if [ -e "${rpms[0]}" ]; then
    rpmf="${rpms[-1]}"
    echo "== $rpmf"
    if ensure_rpm; then
        rpm -qlvp "$rpmf"
        rpm -qlp "$rpmf" > "$tmp/rpm.list"
        expect_paths "$tmp/rpm.list" "${COMMON[@]}" /usr/lib/systemd/system/push-server.service
        rpm -qcp "$rpmf" | grep -qx /etc/sysconfig/push-server-multi \
            || err "rpm: /etc/sysconfig/push-server-multi is not a config file"
        rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpmf" \
            | grep -q '^c.*n.* /etc/sysconfig/push-server-multi$' \
            || err "rpm: /etc/sysconfig/push-server-multi is not %config(noreplace)"
        rpm -qp --scripts "$rpmf" > "$tmp/rpm.scripts"
        grep -q 'useradd --system' "$tmp/rpm.scripts" || err "rpm: %pre creates no user"
        rpm -qpR "$rpmf" > "$tmp/rpm.requires"
        sed 's/^/  requires: /' "$tmp/rpm.requires"
        # "libc.so.6(GLIBC_2.17)(64bit)" -> 2.17; "rtld(GNU_HASH)" and the like carry none.
        check_glibc "rpm: requirement" $(grep -o 'GLIBC_[0-9][0-9.]*' "$tmp/rpm.requires" | sed 's/^GLIBC_//')
        check_glibc "rpm: requirement" $(sed -n 's/^glibc >= \([0-9.]*\).*/\1/p' "$tmp/rpm.requires")
    else
        echo "check.sh: SKIP rpm checks: the rpm tool is missing and could not be installed"
    fi
else
    echo "check.sh: no .rpm in $OUT (packaging/build.sh rpm)"
fi

# ---- systemd-analyze verify ------------------------------------------------------------------
if [ -z "$unit" ]; then
    unit=systemd/push-server.service
    bin="$(pwd)/target/zigbuild/x86_64-unknown-linux-gnu/release/push-server"
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check.sh: SKIP systemd-analyze verify: systemd-analyze is not installed here"
elif [ ! -x "$bin" ]; then
    echo "check.sh: SKIP systemd-analyze verify: no binary to point ExecStart at ($bin)"
else
    # verify wants ExecStart to exist: point it at the packaged (or built) binary.
    mkdir -p "$tmp/unit"
    sed "s|/usr/bin/push-server|$bin|" "$unit" > "$tmp/unit/push-server.service"
    echo "== systemd-analyze verify push-server.service"
    if systemd-analyze verify "$tmp/unit/push-server.service"; then
        echo "systemd-analyze verify: ok"
    else
        err "systemd-analyze verify failed"
    fi
fi

if [ "$fail" -ne 0 ]; then
    echo "check.sh: FAILED" >&2
    exit 1
fi
echo "check.sh: ok"
