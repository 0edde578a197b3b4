#!/bin/sh
# Creates a throwaway SoftHSM2 token in DIR holding CA keys generated inside
# the token (private keys sensitive and non-extractable) and a self-signed CA
# certificate for each, made with openssl and libp11's pkcs11 engine.
#
#   tests/make-token.sh DIR [KEY...]     KEY is one of ec256 ec384 ec521 rsa2048 rsa3072 rsa4096
#                                         (default: ec256 rsa2048)
#
# Writes DIR/softhsm2.conf, DIR/tokens/, DIR/user.pin (mode 0600) and
# DIR/KEY.pem for each key.  The token label is "popsign-test", the key
# labels are the KEY names.  Callers must export SOFTHSM2_CONF=DIR/softhsm2.conf.
set -eu

dir=$1
shift
[ $# -gt 0 ] || set -- ec256 rsa2048
module=${POPSIGN_TEST_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
label=popsign-test
pin=${POPSIGN_TEST_PIN:-123456}

mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
cat > "$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$dir/softhsm2.conf"
umask 077
printf '%s\n' "$pin" > "$dir/user.pin"
softhsm2-util --init-token --free --label "$label" --so-pin 87654321 --pin "$pin" >/dev/null

id=0
for key in "$@"; do
	id=$((id + 1))
	case $key in
	ec256) type=EC:prime256v1 ;;
	ec384) type=EC:secp384r1 ;;
	ec521) type=EC:secp521r1 ;;
	rsa2048) type=rsa:2048 ;;
	rsa3072) type=rsa:3072 ;;
	rsa4096) type=rsa:4096 ;;
	*) echo "make-token.sh: unknown key type $key" >&2; exit 2 ;;
	esac
	pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin" \
		--keypairgen --key-type "$type" --label "$key" --id "$(printf '%02x' $id)" \
		--usage-sign --sensitive >/dev/null 2>&1
	OPENSSL_CONF=/dev/null openssl req -new -x509 -engine pkcs11 -keyform engine \
		-key "pkcs11:token=$label;object=$key;type=private;pin-value=$pin" \
		-subj "/O=popsign test/CN=popsign test CA $key" -days 365 -sha256 \
		-addext basicConstraints=critical,CA:TRUE,pathlen:1 \
		-addext keyUsage=critical,keyCertSign,cRLSign \
		-out "$dir/$key.pem" 2>/dev/null
done
