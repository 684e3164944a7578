#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (docs/fuzzing.md) one after another, each over a
# temporary copy of its committed seed corpus (fuzz/corpus/<target>/), so a run never grows the
# repository. Installs the nightly toolchain and cargo-fuzz when missing.
#
#   scripts/fuzz.sh            deterministic smoke run: -seed=1, a fixed number of runs per
#                              target, capped at 30 s each (what scripts/test.sh runs)
#   scripts/fuzz.sh --long     at least 10,000,000 executions per target (no time cap)
#   scripts/fuzz.sh [--long] TARGET...   only these targets
#
# Exit status: non-zero if any target crashed (or failed to build); the crashing input is kept
# under fuzz/artifacts/<target>/ (ignored by git), to be turned into a unit test.
set -euo pipefail

cd "$(dirname "$0")/.."

TARGETS=(http_head ws_reader v4_batch config v5)
# Runs per target in the default mode: about half of what one loaded core does in 30 s, so the
# run count (not the clock) normally ends the run and the same inputs are tried every time.
declare -A RUNS=([http_head]=3000000 [ws_reader]=1500000 [v4_batch]=4000000 [config]=400000 [v5]=1000000)
LONG_RUNS=10000000

long=0
selected=()
for arg in "$@"; do
    case "$arg" in
        --long) long=1 ;;
        -h | --help)
            sed -n '2,14p' "$0"
            exit 0
            ;;
        -*)
            echo "fuzz.sh: unknown option $arg" >&2
            exit 2
            ;;
        *) selected+=("$arg") ;;
    esac
done
[ "${#selected[@]}" -gt 0 ] || selected=("${TARGETS[@]}")

# --- tools -----------------------------------------------------------------------------------
# cargo-fuzz wants nightly for its sanitizers; we build with `--sanitizer none` (the library
# forbids unsafe code, so AddressSanitizer finds nothing the overflow checks and assertions do
# not), which also works on stable. Where nightly cannot be had, the default toolchain is used.
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
elif command -v rustup >/dev/null 2>&1 &&
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    echo "fuzz.sh: no nightly toolchain available; using the default one ($(rustc --version))"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# Release build with debug assertions and overflow checks (cargo-fuzz's default), no ASan.
fuzz=(cargo "${toolchain[@]}" fuzz)
build_flags=(--sanitizer none)

echo "fuzz.sh: building targets ($("${fuzz[@]}" --version), $(rustc "${toolchain[@]}" --version))"
"${fuzz[@]}" build "${build_flags[@]}"

# --- runs ------------------------------------------------------------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
summary=()
for t in "${selected[@]}"; do
    if [ ! -d "fuzz/corpus/$t" ]; then
        echo "fuzz.sh: no target $t (known: ${TARGETS[*]})" >&2
        status=1
        continue
    fi
    corpus="$work/corpus-$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    cp fuzz/corpus/"$t"/seed-* "$corpus"/
    if [ "$long" -eq 1 ]; then
        args=(-seed=1 "-runs=$LONG_RUNS")
    else
        args=(-seed=1 "-runs=${RUNS[$t]:-1000000}" -max_total_time=30)
    fi
    # -timeout: one input taking 10 s is a hang, reported like a crash.
    args+=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    echo "== fuzz $t: ${fuzz[*]} run ${build_flags[*]} $t <copy of fuzz/corpus/$t> -- ${args[*]}"
    log="$work/$t.log"
    start=$(date +%s.%N)
    set +e
    "${fuzz[@]}" run "${build_flags[@]}" "$t" "$corpus" -- "${args[@]}" >"$log" 2>&1
    rc=$?
    set -e
    end=$(date +%s.%N)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -ne 0 ]; then
        status=1
        tail -n 40 "$log"
        summary+=("$(printf '%-10s FAILED (exit %s) after %s executions, %s s; see fuzz/artifacts/%s/' \
            "$t" "$rc" "${execs:-?}" "$secs" "$t")")
    else
        tail -n 3 "$log"
        summary+=("$(printf '%-10s ok  %12s executions  %8s s  %8s exec/s' \
            "$t" "${execs:-?}" "$secs" "${rate:-?}")")
    fi
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit "$status"
