#!/bin/sh
# Static analysis of popsign's own C sources; fails on any finding.
#   tests/lint.sh BUILD_DIR
# BUILD_DIR is a meson build directory (set up here if it is not one yet);
# its compile_commands.json names the sources under common/, daemon/,
# client/ and tests/ and the flags each is built with.  tests/fuzz is built
# only by clang with -Dfuzz=true, so it is checked here with the flags of a
# plain build instead.
#
# cppcheck: warning, style, performance and portability findings.
# clang-tidy: the checks of .clang-tidy (tests/.clang-tidy for test code),
# every warning an error.
#
# A finding that is not a bug is suppressed at its line with the reason:
#	/* NOLINT(check-name): why */            (clang-tidy; or NOLINTNEXTLINE)
#	/* cppcheck-suppress id ; why */         (cppcheck; on the line above)
# One cppcheck check is off for the whole tree, explained below.
# LINT_JOBS (default 2) clang-tidy processes run at once.
set -eu
cd "$(dirname "$0")/.."
build=${1:?usage: tests/lint.sh BUILD_DIR}
jobs=${LINT_JOBS:-2}
start=$(date +%s)

[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
db="$build/compile_commands.json"
[ -f "$db" ] || { echo "lint: $db missing" >&2; exit 1; }

# The project's sources in the database, as paths from the top directory.
list=$(mktemp)
marks=$(mktemp) # a line for each clang-tidy run that failed
trap 'rm -f "$list" "$marks"' EXIT
python3 - "$db" >"$list" <<'EOF'
import json, os, sys
top = os.getcwd()
seen = set()
for e in json.load(open(sys.argv[1])):
    path = os.path.relpath(os.path.normpath(os.path.join(e["directory"], e["file"])), top)
    if path.split(os.sep)[0] in ("common", "daemon", "client", "tests") and path not in seen:
        seen.add(path)
        print(path)
EOF
[ -s "$list" ] || { echo "lint: no project sources in $db" >&2; exit 1; }
fuzz_flags="-std=gnu11 -D_GNU_SOURCE -Icommon -Idaemon -Iclient
	-Itests/fuzz -I$build -I. $(pkg-config --cflags p11-kit-1 jansson libcrypto libcurl libmicrohttpd)"
failed=

# varFuncNullUB: "NULL after the last typed argument of a variadic function"
# is about platforms whose NULL is a plain 0.  glibc with gcc or clang
# defines it as ((void *)0), and the variadic APIs that end in NULL
# (metrics_counter() and friends) carry __attribute__((sentinel)).
run_cppcheck() {
	cppcheck --quiet --error-exitcode=1 --inline-suppr \
		--enable=warning,style,performance,portability \
		--suppress=missingIncludeSystem --suppress=varFuncNullUB \
		--template='{file}:{line}:{column}: {severity}: {message} [{id}]' "$@"
}
mkdir -p "$build/cppcheck"
echo "lint: cppcheck"
run_cppcheck -j "$jobs" --cppcheck-build-dir="$build/cppcheck" --project="$db" ||
	failed="$failed cppcheck"
run_cppcheck --std=c11 -D_GNU_SOURCE -Icommon -Idaemon -Iclient -Itests/fuzz -I"$build" -I. \
	tests/fuzz/*.c || failed="$failed cppcheck-fuzz"

echo "lint: clang-tidy, $(wc -l <"$list") files"
# clang-tidy's own "N warnings generated." counts what it filtered out
# (system headers, NOLINT) and is dropped; findings go to stdout.
quiet_counts() {
	grep -v -E '^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$' || true
}
{
	{ xargs -P "$jobs" -n 1 clang-tidy --quiet --warnings-as-errors='*' -p "$build" \
		<"$list" || echo clang-tidy >>"$marks"; } 2>&1 >&3 3>&- | quiet_counts >&2
	for f in tests/fuzz/*.c; do
		# shellcheck disable=SC2086
		clang-tidy --quiet --warnings-as-errors='*' "$f" -- $fuzz_flags ||
			echo clang-tidy-fuzz >>"$marks"
	done 2>&1 >&3 3>&- | quiet_counts >&2
} 3>&1
if [ -s "$marks" ]; then
	failed="$failed $(sort -u "$marks" | tr '\n' ' ')"
fi

elapsed=$(($(date +%s) - start))
if [ -n "$failed" ]; then
	echo "lint: FAILED:$failed (${elapsed} s)"
	exit 1
fi
echo "lint: no findings (${elapsed} s)"
