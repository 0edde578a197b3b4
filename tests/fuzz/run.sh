#!/bin/sh
# Runs every libFuzzer target of a -Dfuzz=true build for a bounded time.
#   tests/fuzz/run.sh BUILD_DIR [SECONDS]        (default 20 s a target)
# Each target starts from its seeds (tests/fuzz/corpus/TARGET, never
# written to) and grows a scratch corpus in a temporary directory.  Any
# crash, leak, sanitizer report or time-out fails the run; the input that
# caused it is kept in BUILD_DIR/fuzz-artifacts/ and printed in hex.
set -eu
build=${1:?usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]}
seconds=${2:-20}
here=$(cd "$(dirname "$0")" && pwd)
artifacts="$build/fuzz-artifacts"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT INT TERM
mkdir -p "$artifacts"

# Leaks are bugs here too; UBSan stops at its first report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

# Longest input per target: a signing body is at most 4 KiB; a config file
# of a few KiB reaches every section kind.
max_len() {
	case "$1" in
	fuzz_request) echo 4096 ;;
	fuzz_config) echo 8192 ;;
	*) echo 16384 ;;
	esac
}

failed=
ran=0
for seeds in "$here"/corpus/*/; do
	target=$(basename "$seeds")
	exe="$build/tests/fuzz/$target"
	if [ ! -x "$exe" ]; then
		echo "run.sh: $exe is missing: build with CC=clang -Dfuzz=true" >&2
		exit 1
	fi
	mkdir -p "$scratch/$target"
	echo "== $target: $seconds s"
	if "$exe" "$scratch/$target" "$seeds" \
		-max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$artifacts/$target-" >"$scratch/$target.log" 2>&1; then
		grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$scratch/$target.log" || true
	else
		failed="$failed $target"
		tail -n 60 "$scratch/$target.log"
		for a in "$artifacts/$target-"*; do
			[ -f "$a" ] || continue
			echo "-- $a:"
			od -A d -c "$a" | head -n 20
		done
	fi
	ran=$((ran + 1))
done
if [ "$ran" -eq 0 ]; then
	echo "run.sh: no seed corpus under $here/corpus" >&2
	exit 1
fi
if [ -n "$failed" ]; then
	echo "fuzz: FAILED:$failed"
	exit 1
fi
echo "fuzz: $ran targets, $seconds s each, no crash"
