#!/bin/sh
# Side by side: two or more popsignd builds on one throwaway SoftHSM2 token,
# each with the audit log on and the daemon's default workers, measured in
# turn, round after round, so that the machine's background load falls on
# all of them alike.  Per round and build: 1 s of warm-up, then wrk for
# COMPARE_SECONDS; prints certificates/s, p50/p99 and the CPU each process
# spent per certificate (front end, signer; from /proc/PID/stat), and the
# resident memory of both processes at the end.
#
#   tests/bench/compare.sh KEY CONNECTIONS POPSIGND-A POPSIGND-B ...
#   e.g. tests/bench/compare.sh ec256 4 /tmp/popsignd-before build/daemon/popsignd
#
# Each POPSIGND runs the popsignd-signer beside it (as in a build directory's
# daemon/), or the installed one: keep the two together when copying a build.
# KEY is ec256 or rsa2048.  Environment: COMPARE_ROUNDS (default 3),
# COMPARE_SECONDS (default 4), WORKERS (popsignd's workers).  Needs wrk
# (tests/bench/run.sh installs it).  Targets 127.0.0.1 only.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 KEY CONNECTIONS POPSIGND..." >&2; exit 2; }
key=$1 conns=$2
shift 2
cd "$(dirname "$0")/../.."
top=$(pwd)
rounds=${COMPARE_ROUNDS:-3}
seconds=${COMPARE_SECONDS:-4}
module=/usr/lib/softhsm/libsofthsm2.so
work=$(mktemp -d)
pids=
trap 'for p in $pids; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"' EXIT

"$top/tests/make-token.sh" "$work" ec256 rsa2048 > /dev/null 2>&1
export SOFTHSM2_CONF="$work/softhsm2.conf"
token=$(openssl rand -hex 32)
printf '%s\n' "$token" > "$work/caller.token"
token_sha256=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)

write_config() { # N
	printf '[daemon]\nlisten = 127.0.0.1:0\nvalidity = 1d\naudit_log = %s\n' "$work/audit$1.log"
	[ -z "${WORKERS:-}" ] || printf 'workers = %s\n' "$WORKERS"
	for k in ec256 rsa2048; do
		printf '\n[key %s]\nuri = pkcs11:token=popsign-test;object=%s;type=private' "$k" "$k"
		printf '?module-path=%s&pin-source=file:%s\n' "$module" "$work/user.pin"
		printf 'certificate = %s\n' "$work/$k.pem"
	done
	printf '\n[client bench]\ntoken_sha256 = %s\nkeys = *\n' "$token_sha256"
	printf 'rate = 1000000/s\nburst = 100000\n'
}

start() { # N POPSIGND: sets pid_N and url_N
	write_config "$1" > "$work/p$1.conf"
	"$2" -c "$work/p$1.conf" 2> "$work/p$1.log" &
	pids="$pids $!"
	eval "pid_$1=$!"
	port=
	for _ in $(seq 100); do
		port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/p$1.log" | head -n 1)
		[ -n "$port" ] && break
		sleep 0.1
	done
	[ -n "$port" ] || { cat "$work/p$1.log" >&2; echo "$2 did not start" >&2; exit 2; }
	eval "url_$1=http://127.0.0.1:$port"
}

signer_of() { cat /proc/"$1"/task/*/children | tr ' ' '\n' | grep . | head -n 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" "$work/wrk.out"; }
hz=$(getconf CLK_TCK)

n=0
for d in "$@"; do
	n=$((n + 1))
	start "$n" "$d"
done
sleep 1
for round in $(seq "$rounds"); do
	for i in $(seq "$n"); do
		eval "pid=\$pid_$i url=\$url_$i"
		signer=$(signer_of "$pid")
		wrk -t 2 -c "$conns" -d 1s -s tests/bench/post.lua "$url" -- \
			popsign "$key" "$work/caller.token" > /dev/null 2>&1
		f0=$(ticks "$pid") s0=$(ticks "$signer")
		wrk -t 2 -c "$conns" -d "${seconds}s" --timeout 5s -s tests/bench/post.lua "$url" -- \
			popsign "$key" "$work/caller.token" > "$work/wrk.out" 2>&1
		f1=$(ticks "$pid") s1=$(ticks "$signer")
		ok=$(field ok)
		[ "${ok:-0}" -gt 0 ] || { cat "$work/wrk.out" >&2; exit 2; }
		printf 'round=%s build=%s key=%s conns=%s per_s=%s p50_us=%s p99_us=%s bad=%s front_us=%s signer_us=%s\n' \
			"$round" "$i" "$key" "$conns" "$(field per_second)" "$(field p50_us)" \
			"$(field p99_us)" "$(field bad)" \
			$(((f1 - f0) * 1000000 / hz / ok)) $(((s1 - s0) * 1000000 / hz / ok))
	done
done
for i in $(seq "$n"); do
	eval "pid=\$pid_$i"
	signer=$(signer_of "$pid")
	printf 'build=%s %s rss_kib front=%s signer=%s\n' "$i" "$(eval echo "\${$i}")" \
		"$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")" \
		"$(awk '/^VmRSS/ { print $2 }' "/proc/$signer/status")"
done
