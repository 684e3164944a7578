#!/usr/bin/env bash
# Checks the packages built by packaging/build.sh (target/packages/): lists their files, checks
# that every expected path, the config-file marking and the maintainer scripts are there, and
# runs `systemd-analyze verify` on the packaged unit (skipped, with the reason, where it is not
# available). rpm checks need the `rpm` tool (Debian: apt-get install rpm); skipped without it.
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
    if command -v rpm >/dev/null 2>&1; then
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
        rpm -qp --requires "$rpmf" | sed 's/^/  requires: /'
    else
        echo "check.sh: SKIP rpm file list: the rpm tool is not installed (Debian: apt-get install rpm)"
    fi
else
    echo "check.sh: no .rpm in $OUT (packaging/build.sh rpm)"
fi

# ---- systemd-analyze verify ------------------------------------------------------------------
if [ -z "$unit" ]; then
    unit=systemd/push-server.service
    bin="$(pwd)/target/release/push-server"
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
