#!/bin/sh
# The benchmark of issue 6, in one run, on one throwaway SoftHSM2 token with
# an EC P-256 and an RSA-2048 CA key:
#   1. the token's limit: p11speed, C_Sign with 1, 2 and 4 threads;
#   2. popsignd through its HTTP API under wrk, 1, 4 and 16 connections;
#   3. the script way: one `openssl x509 -req` with libp11's pkcs11 engine
#      per certificate, sequential;
#   4. `cfssl serve` with the CA key in a file, under wrk, same connections;
# and, for the profile, popsignd's issuing code with the token stubbed out.
# Everything is measured BENCH_ROUNDS times, interleaved, and each figure
# keeps its best round (see docs/performance.md).  Prints one table per key
# type with the ratios and the targets, and writes it to
# BUILD/bench-results.md (raw figures in BUILD/bench-raw.txt).
#
#   tests/bench/run.sh            (from anywhere; as root, or with sudo for
#                                  missing packages)
#
# Environment (all optional):
#   BUILD              build directory (default build-bench)
#   BENCH_ROUNDS       rounds (default 2)
#   BENCH_SECONDS      seconds per wrk run (default 5)
#   BENCH_SIGN_SECONDS seconds per p11speed thread count (default 1.5)
#   BENCH_SCRIPT_N     openssl commands per key and round (default 30)
#   BENCH_AUDIT        auto (default: on when the daemon accepts audit_log),
#                      on (refuse to run without it) or off
#   BENCH_WORKERS      popsignd's `workers` (default: the daemon's default)
#   BENCH_PROFILE      1: then profile popsignd with perf for BENCH_SECONDS
#                      at 4 connections per key (BUILD/profile-KEY.md, a
#                      breakdown by concern; BUILD/perf-KEY.txt, symbols)
#   P11SPEED, ISSUE_SPEED, POPSIGND  prebuilt binaries (set by
#                      `meson test --benchmark`)
#
# Every load generator targets 127.0.0.1 only and stops by itself.
# Exit status: 0 every target met, 1 a target missed, 2 the run failed.
set -eu
cd "$(dirname "$0")/../.."
top=$(pwd)
bench="$top/tests/bench"
build=${BENCH_BUILD_DIR:-${BUILD:-build-bench}}
case $build in /*) ;; *) build=$top/$build ;; esac
rounds=${BENCH_ROUNDS:-2}
seconds=${BENCH_SECONDS:-5}
sign_seconds=${BENCH_SIGN_SECONDS:-1.5}
script_n=${BENCH_SCRIPT_N:-30}
audit=${BENCH_AUDIT:-auto}
module=/usr/lib/softhsm/libsofthsm2.so
keys="ec256 rsa2048"
conns="1 4 16"

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 2; }

# --- packages: the project's own, plus the load generator and cfssl ---------
install_deps() {
	"$top/.ci/install-deps" || die "could not install the build packages"
	missing=
	command -v wrk >/dev/null || missing="$missing wrk"
	command -v cfssl >/dev/null || missing="$missing golang-cfssl"
	command -v bc >/dev/null || missing="$missing bc"
	if [ "${BENCH_PROFILE:-0}" = 1 ]; then
		command -v perf >/dev/null || missing="$missing linux-perf"
	fi
	[ -n "$missing" ] || return 0
	run=
	[ "$(id -u)" -eq 0 ] || run=sudo
	say "installing:$missing"
	$run apt-get update >&2
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $run apt-get install -y --no-install-recommends \
		$missing >&2 || die "could not install$missing"
}

# --- build: p11speed always; popsignd if it builds ---------------------------
build_all() {
	if [ -n "${P11SPEED:-}" ]; then
		popsignd=${POPSIGND:-}
		return 0
	fi
	[ -f "$build/build.ninja" ] || meson setup "$build" >&2 || die "meson setup failed"
	ninja -C "$build" tests/bench/p11speed >&2 || die "p11speed does not build"
	P11SPEED=$build/tests/bench/p11speed
	popsignd=
	if ninja -C "$build" daemon/popsignd daemon/popsignd-signer tests/bench/issue_speed >&2; then
		popsignd=$build/daemon/popsignd
		ISSUE_SPEED=$build/tests/bench/issue_speed
	else
		say "popsignd does not build: its rows will read 'not run'"
	fi
}

install_deps
build_all
raw=$build/bench-raw.txt
table=$build/bench-results.md
mkdir -p "$build"
: > "$raw"

work=$(mktemp -d)
daemon_pid=
cfssl_pid=
cleanup() {
	for p in $daemon_pid $cfssl_pid; do
		kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # PORT
	for _ in $(seq 100); do
		python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])))' \
			"$1" 2>/dev/null && return 0
		sleep 0.1
	done
	die "nothing listens on 127.0.0.1:$1"
}

# Keeps a result line, tagged with the round.
keep() { sed "s/^\([A-Z0-9]*\) /\1 round=$round /" | tee -a "$raw" >&2; }

# wrk with n connections for $seconds against url.
wrk_run() { # TARGET KEY CONNS URL SCRIPT-ARGS...
	w_target=$1 w_key=$2 w_conns=$3 w_url=$4
	shift 4
	w_threads=2
	[ "$w_conns" -ge 2 ] || w_threads=1
	wrk -t "$w_threads" -c "$w_conns" -d "${seconds}s" --timeout 5s -s "$bench/post.lua" \
		"$w_url" -- "$@" > "$work/wrk.out" 2>&1 || true
	w_line=$(grep '^WRK ' "$work/wrk.out") || {
		cat "$work/wrk.out" >&2
		[ "$w_target" = cfssl ] || tail -n 20 "$work/popsignd.log" >&2
		die "wrk against $w_target failed"
	}
	echo "$w_line" | sed "s/^WRK /WRK target=$w_target key=$w_key conns=$w_conns /" | keep
}

now() { date +%s.%N; }

# --- set-up: token, CSR, cfssl's keys in files ---------------------------------
say "token with ec256 and rsa2048 in $work"
# shellcheck disable=SC2086
"$top/tests/make-token.sh" "$work" $keys || die "make-token.sh failed"
export SOFTHSM2_CONF="$work/softhsm2.conf"
pin=$(cat "$work/user.pin")
round=0
echo "INFO load_start=$(cut -d' ' -f1 /proc/loadavg) rounds=$rounds" >> "$raw"
echo "INFO cpus=$(nproc) date=$(date -u +%Y-%m-%dT%H:%M:%SZ) commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo none) seconds=$seconds" >> "$raw"

# A CSR like the one a verification certificate carries: CN=<48 hex>, P-256.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
	-subj "/CN=$(openssl rand -hex 24 | tr a-f A-F)" -out "$work/csr.pem" 2>/dev/null ||
	die "could not make the CSR"
python3 -c 'import json, sys; print(json.dumps({"certificate_request": open(sys.argv[1]).read()}))' \
	"$work/csr.pem" > "$work/cfssl-body.json"
for key in $keys; do
	case $key in
	ec256) alg="-algorithm EC -pkeyopt ec_paramgen_curve:P-256" ;;
	rsa2048) alg="-algorithm RSA -pkeyopt rsa_keygen_bits:2048" ;;
	esac
	# shellcheck disable=SC2086
	openssl genpkey $alg -out "$work/cfssl-$key-key.pem" 2>/dev/null
	openssl req -new -x509 -key "$work/cfssl-$key-key.pem" -subj "/CN=cfssl bench CA $key" \
		-days 30 -sha256 -addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign -out "$work/cfssl-$key.pem"
done

# --- 1. the token's limit -----------------------------------------------------
measure_token() { # KEY
	say "token limit, $1"
	"$P11SPEED" "$module" popsign-test "$work/user.pin" "$1" "$sign_seconds" 1 2 4 | keep
}

# --- popsignd's issuing code alone, with a stand-in for the token -------------
measure_issue() { # KEY
	[ -n "${ISSUE_SPEED:-}" ] || return 0
	say "issue_certificate() without the token, $1"
	"$ISSUE_SPEED" "$work/$1.pem" "$sign_seconds" | sed "s/^ISSUE /ISSUE key=$1 /" | keep
}

# --- 3. the script way ----------------------------------------------------------
measure_script() { # KEY
	say "openssl x509 -req with the pkcs11 engine, $script_n certificates, $1"
	for _ in $(seq "$script_n"); do openssl rand -hex 16; done > "$work/serials"
	start=$(now)
	while read -r serial; do
		OPENSSL_CONF=/dev/null openssl x509 -req -in "$work/csr.pem" -CA "$work/$1.pem" \
			-engine pkcs11 -CAkeyform engine \
			-CAkey "pkcs11:token=popsign-test;object=$1;type=private;pin-value=$pin" \
			-sha256 -days 1 -set_serial "0x$serial" -out "$work/script.pem" 2>"$work/script.err" ||
			{ cat "$work/script.err" >&2; die "openssl x509 -req failed"; }
	done < "$work/serials"
	end=$(now)
	openssl verify -CAfile "$work/$1.pem" "$work/script.pem" >/dev/null ||
		die "the script way made a certificate that does not verify"
	echo "SCRIPT key=$1 certificates=$script_n seconds=$(echo "$end - $start" | bc -l)" | keep
}

# --- 4. cfssl serve with the CA key in a file -----------------------------------
measure_cfssl() { # KEY
	cfssl_port=$(free_port)
	cfssl serve -address 127.0.0.1 -port "$cfssl_port" -ca "$work/cfssl-$1.pem" \
		-ca-key "$work/cfssl-$1-key.pem" > "$work/cfssl.log" 2>&1 &
	cfssl_pid=$!
	wait_port "$cfssl_port"
	say "cfssl serve, $1, port $cfssl_port"
	for c in $conns; do
		wrk_run cfssl "$1" "$c" "http://127.0.0.1:$cfssl_port" cfssl "$work/cfssl-body.json"
	done
	kill "$cfssl_pid"
	wait "$cfssl_pid" 2>/dev/null || true
	cfssl_pid=
}

# --- 2. popsignd -------------------------------------------------------------------
measure_popsignd() { # KEY
	[ -n "$popsignd" ] || return 0
	say "popsignd, $1"
	# Warm-up: sessions, caches and page faults are not measured.
	saved=$seconds seconds=1
	wrk_run warmup "$1" 4 "$url" popsign "$1" "$work/caller.token"
	seconds=$saved
	for c in $conns; do
		wrk_run popsignd "$1" "$c" "$url" popsign "$1" "$work/caller.token"
	done
}

# The bench caller's rate limit is set far above what the run can ask for:
# the limiter's cost is measured, never its refusals.
write_config() { # WITH_AUDIT WITH_RATE
	{
		printf '[daemon]\nlisten = 127.0.0.1:0\nvalidity = 1d\n'
		[ -z "${BENCH_WORKERS:-}" ] || printf 'workers = %s\n' "$BENCH_WORKERS"
		[ "$1" = 0 ] || printf 'audit_log = %s\n' "$work/audit.log"
		for key in $keys; do
			printf '\n[key %s]\nuri = pkcs11:token=popsign-test;object=%s;type=private' "$key" "$key"
			printf '?module-path=%s&pin-source=file:%s\n' "$module" "$work/user.pin"
			printf 'certificate = %s\n' "$work/$key.pem"
		done
		printf '\n[client bench]\ntoken_sha256 = %s\nkeys = *\n' "$token_sha256"
		[ "$2" = 0 ] || printf 'rate = 1000000/s\nburst = 100000\n'
	} > "$work/popsignd.conf"
}

# Writes a config popsignd -t accepts: with the audit log and the rate
# limit lines if the daemon knows them (BENCH_AUDIT=auto), else without.
settle_config() {
	with_audit=1 with_rate=1
	[ "$audit" = off ] && with_audit=0
	for _ in 1 2 3; do
		write_config "$with_audit" "$with_rate"
		"$popsignd" -t -c "$work/popsignd.conf" > "$work/check.log" 2>&1 && return 0
		if [ "$with_rate" = 1 ] && grep -q -w -E 'rate|burst' "$work/check.log"; then
			say "popsignd does not take rate/burst yet: no rate limit lines"
			with_rate=0
		elif [ "$audit" = auto ] && [ "$with_audit" = 1 ] && grep -q audit_log "$work/check.log"; then
			say "popsignd does not take audit_log yet: measuring without the audit log"
			with_audit=0
		else
			break
		fi
	done
	cat "$work/check.log" >&2
	die "popsignd -t refused the bench config"
}

start_daemon() {
	"$popsignd" -c "$work/popsignd.conf" 2> "$work/popsignd.log" &
	daemon_pid=$!
	port=
	for _ in $(seq 100); do
		port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/popsignd.log" | head -n 1)
		[ -n "$port" ] && break
		kill -0 "$daemon_pid" 2>/dev/null || break
		sleep 0.1
	done
	[ -n "$port" ] || { cat "$work/popsignd.log" >&2; die "popsignd did not start"; }
	url="http://127.0.0.1:$port"
	say "popsignd on port $port (audit log: $with_audit)"
}

# Sums VmRSS over the daemon and every process below it.
rss_tree() { # PID
	kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0)
	echo "RSS pid=$1 comm=$(cat "/proc/$1/comm" 2>/dev/null) kib=${kib:-0}" >> "$raw"
	for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		rss_tree "$child"
	done
}

# Every popsignd process, comma-separated, for perf -p.
pid_tree() { # PID
	printf '%s' "$1"
	for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		printf ','
		pid_tree "$child"
	done
}

# perf with DWARF call graphs on every popsignd process during a wrk run at 4
# connections; the breakdown goes to BUILD/profile-KEY.md, the symbols to
# BUILD/perf-KEY.txt.  The profiled run is not part of the table.
profile() { # KEY
	say "perf record on popsignd, $1, 4 connections"
	perf record -o "$work/perf.data" --call-graph dwarf,16384 -F 499 \
		-p "$(pid_tree "$daemon_pid")" -- sleep "$seconds" > /dev/null 2>&1 &
	perf_pid=$!
	sleep 0.2
	wrk_run profile "$1" 4 "$url" popsign "$1" "$work/caller.token"
	wait "$perf_pid" || true
	perf script -i "$work/perf.data" -F tid,ip,sym --inline 2>"$work/perf-script.err" |
		python3 "$bench/profile.py" "$1" > "$build/profile-$1.md" || cat "$work/perf-script.err" >&2
	perf report -i "$work/perf.data" --no-children --sort dso,symbol --percent-limit 0.5 \
		--stdio -g none > "$build/perf-$1.txt" 2>/dev/null || true
	cat "$build/profile-$1.md" >&2
}

stop_daemon() {
	kill -0 "$daemon_pid" 2>/dev/null || die "popsignd died under load"
	rss_tree "$daemon_pid"
	kill "$daemon_pid"
	wait "$daemon_pid" 2>/dev/null || true
	daemon_pid=
	[ "$with_audit" = 1 ] || return 0
	lines=0 issued=0
	if [ -f "$work/audit.log" ]; then
		lines=$(wc -l < "$work/audit.log")
		issued=$(grep -c 'issued' "$work/audit.log" || true)
	fi
	echo "INFO audit_lines=$lines audit_issued=$issued" >> "$raw"
}

if [ -n "$popsignd" ]; then
	token=$(openssl rand -hex 32)
	printf '%s\n' "$token" > "$work/caller.token"
	token_sha256=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
	settle_config
	echo "INFO audit_log=$with_audit" >> "$raw"
	start_daemon
fi

# --- the rounds: every figure in each, so background load hits all alike ----
round=1
while [ "$round" -le "$rounds" ]; do
	say "round $round of $rounds"
	for key in $keys; do
		measure_token "$key"
		measure_popsignd "$key"
		measure_cfssl "$key"
		measure_script "$key"
		measure_issue "$key"
	done
	round=$((round + 1))
done

if [ -n "$popsignd" ]; then
	if [ "${BENCH_PROFILE:-0}" = 1 ]; then
		for key in $keys; do
			profile "$key"
		done
	fi
	stop_daemon
fi

echo "INFO load_end=$(cut -d' ' -f1 /proc/loadavg)" >> "$raw"
python3 "$bench/table.py" "$raw" > "$table" || die "table.py failed"
cat "$table"
echo
echo "written to $table"
grep -q '| FAIL |' "$table" && exit 1
exit 0
