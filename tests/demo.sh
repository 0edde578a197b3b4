#!/bin/sh
# The main job, end to end, on a throwaway SoftHSM2 token:
#   installs what is missing, builds, makes a token with an EC P-256 and an
#   RSA-2048 CA key generated inside it, self-signs a CA certificate for each
#   (openssl + libp11's pkcs11 engine), starts popsignd, has popsign sign a
#   verification code with each key, checks the certificates with
#   `openssl verify`, and stops the daemon.
# Output: demo/ (the CA and verification certificates).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
build=${BUILD:-build}

.ci/install-deps
[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" >/dev/null
popsignd="$top/$build/daemon/popsignd"
popsign="$top/$build/client/popsign"

work=$(mktemp -d)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

step "a throwaway SoftHSM2 token in $work with CA keys ec256 and rsa2048"
tests/make-token.sh "$work" ec256 rsa2048
export SOFTHSM2_CONF="$work/softhsm2.conf"
pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label popsign-test \
	--login --pin "$(cat "$work/user.pin")" --list-objects --type privkey 2>/dev/null \
	| grep -E 'label|Access' | sed 's/^/   /' || true

step "a caller token for the daemon config"
line=$("$popsign" token-new -o "$work/caller.token")
echo "   $line"

module=/usr/lib/softhsm/libsofthsm2.so
cat > "$work/popsignd.conf" <<CONF
[daemon]
listen = 127.0.0.1:0
validity = 1d
audit_log = $work/audit.log

[key ec256]
uri = pkcs11:token=popsign-test;object=ec256;type=private?module-path=$module&pin-source=file:$work/user.pin
certificate = $work/ec256.pem

[key rsa2048]
uri = pkcs11:token=popsign-test;object=rsa2048;type=private?module-path=$module&pin-source=file:$work/user.pin
certificate = $work/rsa2048.pem

[client demo]
$line
keys = *
CONF

step "popsignd -t (configuration and tokens)"
"$popsignd" -t -c "$work/popsignd.conf"

step "popsignd"
"$popsignd" -c "$work/popsignd.conf" 2>"$work/popsignd.log" &
pid=$!
port=
for _ in $(seq 100); do
	port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/popsignd.log" | head -n 1)
	[ -n "$port" ] && break
	kill -0 "$pid" 2>/dev/null || { cat "$work/popsignd.log" >&2; exit 1; }
	sleep 0.1
done
[ -n "$port" ] || { cat "$work/popsignd.log" >&2; echo "popsignd did not start" >&2; exit 1; }
sed 's/^/   /' "$work/popsignd.log"
export POPSIGN_URL="http://127.0.0.1:$port" POPSIGN_TOKEN_FILE="$work/caller.token"

step "popsign keys"
"$popsign" keys

mkdir -p demo
code=$(openssl rand -hex 24 | tr 'a-f' 'A-F')
for key in ec256 rsa2048; do
	step "popsign sign $key $code"
	cp "$work/$key.pem" "demo/ca-$key.pem"
	"$popsign" sign "$key" "$code" -o "demo/verification-$key.pem"
	openssl verify -CAfile "demo/ca-$key.pem" "demo/verification-$key.pem"
	subject=$(openssl x509 -in "demo/verification-$key.pem" -noout -subject -nameopt RFC2253)
	echo "   $subject"
	[ "$subject" = "subject=CN=$code" ] || { echo "unexpected subject" >&2; exit 1; }
done

step "the audit trail (one durable line per signing request)"
sed 's/^/   /' "$work/audit.log"

step "stopping popsignd"
kill "$pid"
wait "$pid"
pid=
echo "   stopped; certificates are in demo/"
