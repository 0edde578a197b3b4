#!/bin/sh
# Builds popsign and runs every test (unit and integration).
#   tests/run-all.sh [BUILDDIR]      (default: build)
# Ends with one line "N passed, N failed, N skipped"; a skipped test fails
# the run, because a test that did not run proves nothing.
set -eu
cd "$(dirname "$0")/.."
build=${1:-build}
.ci/install-deps
[ -f "$build/build.ninja" ] || meson setup "$build"
ninja -C "$build"
rc=0
meson test -C "$build" --print-errorlogs --num-processes 2 || rc=$?
log="$build/meson-logs/testlog.json"
passed=$(grep -c '"result": "OK"' "$log" || true)
failed=$(grep -c -E '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log" || true)
skipped=$(grep -c -E '"result": "(SKIP|EXPECTEDFAIL)"' "$log" || true)
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$skipped" -eq 0 ] && [ "$passed" -gt 0 ]
