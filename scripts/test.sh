#!/usr/bin/env bash
# The project's test command (README): installs what the tests need when it is missing, then runs
# formatting, lints and every test. Safe to run repeatedly; installs nothing that is present.
set -euo pipefail

cd "$(dirname "$0")/.."

APT_UPDATED=0

# ensure_pkg COMMAND [PACKAGE]: install PACKAGE (default: COMMAND) with apt-get when COMMAND is
# missing. Later issues add redis-server, nginx and node here.
ensure_pkg() {
    local cmd="$1" pkg="${2:-$1}"
    if type -P "$cmd" >/dev/null 2>&1; then
        return 0
    fi
    echo "test.sh: '$cmd' missing, installing package '$pkg'"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        $sudo apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg"
}

# --- what the tests need -------------------------------------------------------------------
ensure_pkg curl               # zero-config test runs the printed curl commands
ensure_pkg kill procps        # tests send signals with kill(1)
ensure_pkg redis-server        # tests/redis_store.rs, tests/redis_cluster.rs: a private redis-server per test
ensure_pkg nginx               # tests/nginx.rs: the shipped snippets in front of the server
ensure_pkg node nodejs         # tests/interop.rs: the official JS pull client (node >= 20)
ensure_pkg npm                 # ... and its npm packages (tests/interop/package-lock.json)
# The interop tests need Node.js >= 20 (the official client's build); older distributions ship
# older ones (Debian 11: 12, Debian 12: 18), which apt-get above would install without a word.
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
    echo "test.sh: Node.js $(node --version 2>/dev/null || echo missing) is too old: tests/interop.rs needs >= 20." >&2
    echo "test.sh: install a current one, e.g. from https://nodejs.org or NodeSource" >&2
    echo "test.sh: (curl -fsSL https://deb.nodesource.com/setup_22.x | bash - && apt-get install -y nodejs)," >&2
    echo "test.sh: or with nvm, then run scripts/test.sh again." >&2
    exit 1
fi
ensure_pkg systemd-socket-activate systemd  # tests/restart.rs: restarts under socket activation
ensure_pkg chromium            # tests/browser.rs: the official client in a real browser
ensure_pkg objdump binutils    # tests/packaging.rs: the GLIBC versions the packaged binary needs
# tests/packaging.rs: the glibc 2.17 build of the packaged binary (packaging/zigbuild.sh) needs
# zig and cargo-zigbuild, from PyPI. Debian's python refuses system-wide pip installs (PEP 668)
# unless told otherwise.
if ! cargo-zigbuild --version >/dev/null 2>&1; then
    echo "test.sh: cargo-zigbuild missing, installing ziglang and cargo-zigbuild with pip"
    ensure_pkg python3
    python3 -m pip --version >/dev/null 2>&1 || ensure_pkg pip3 python3-pip
    python3 -m pip install --quiet ziglang cargo-zigbuild 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages ziglang cargo-zigbuild
fi

# tests/interop, tests/browser: install the pinned npm packages when missing or older than the
# lockfile. playwright-core downloads no browser (tests/browser.rs starts /usr/bin/chromium).
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
for npmdir in tests/interop tests/browser; do
    if [ ! -f "$npmdir/node_modules/.package-lock.json" ] ||
        [ "$npmdir/package-lock.json" -nt "$npmdir/node_modules/.package-lock.json" ]; then
        echo "test.sh: installing npm packages in $npmdir (npm ci)"
        (cd "$npmdir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
done

# --- checks ----------------------------------------------------------------------------------
echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The protocol suites once more with every server on its own private redis-server (the harness
# reads PUSH_TEST_STORE), so both stores pass the same tests (issue 4).
echo "== cargo test, Redis store (PUSH_TEST_STORE=redis)"
PUSH_TEST_STORE=redis cargo test --no-fail-fast \
    --test longpoll --test websocket --test publish --test frames --test limits \
    --test lifecycle --test restart --test stats --test store_async --test v4 --test v5 --test interop --test ops --test hostile 2>&1 | tee -a "$log"
redis_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$redis_status
# The fuzz targets over their seed corpora, fixed seed and bounded runs (docs/fuzzing.md).
echo "== fuzz (deterministic)"
scripts/fuzz.sh
fuzz_status=$?
[ "$status" -ne 0 ] || status=$fuzz_status
set -e
echo "== summary"
grep -E '^(test result:|     Running )' "$log" || true
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
