/* issue_speed: what building one verification certificate costs without
 * the token: issue_certificate() with a sign callback that hands back a
 * fixed signature of the right size.  Everything else (ephemeral key, TBS,
 * hashing, DER assembly, PEM, fingerprint) is the daemon's own code.
 *
 *   issue_speed CA_PEM SECONDS
 *
 * Prints one line:
 *   ISSUE ca=ec256.pem certificates=N seconds=S per_second=R us_each=U
 * Exit status 0, or 1 with a message on stderr. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cacert.h"
#include "error.h"
#include "issue.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A stand-in for the token: sig_len bytes of 0x11 (r and s nonzero for EC). */
static int fake_sign(void *ctx, const uint8_t *in, size_t inlen, uint8_t *sig, size_t sig_cap,
		     size_t *siglen)
{
	size_t len = *(const size_t *)ctx;

	if (len > sig_cap)
		return PS_E_INTERNAL;
	memset(sig, 0x11, len);
	*siglen = len;
	return 0;
}

/* The raw signature size the issuer expects: the RSA modulus, or r||s. */
static size_t raw_sig_len(const struct ca_cert *ca)
{
	if (strncmp(ca->algorithm, "RSA-", 4) == 0)
		return (size_t)EVP_PKEY_get_size(ca->pubkey);
	if (strcmp(ca->algorithm, "EC-P256") == 0)
		return 64;
	if (strcmp(ca->algorithm, "EC-P384") == 0)
		return 96;
	return 132;
}

int main(int argc, char **argv)
{
	struct ca_cert *ca = NULL;
	struct issuer *issuer = NULL;
	struct issued *c = NULL;
	double seconds, start, end;
	unsigned long n = 0;
	size_t sig_len;
	char code[49];
	int r;

	if (argc != 3 || (seconds = strtod(argv[2], NULL)) <= 0) {
		fprintf(stderr, "usage: issue_speed CA_PEM SECONDS\n");
		return 1;
	}
	r = ca_cert_load_file(argv[1], &ca);
	if (r >= 0)
		r = issuer_new(ca, 86400, &issuer);
	if (r < 0) {
		fprintf(stderr, "issue_speed: %s: %s\n", argv[1], ps_strerror(r));
		return 1;
	}
	sig_len = raw_sig_len(ca);
	start = now();
	end = start + seconds;
	do {
		snprintf(code, sizeof(code), "%040lX%08lX", 0xC0DEUL, n);
		r = issue_certificate(issuer, code, fake_sign, &sig_len, &c);
		if (r < 0) {
			fprintf(stderr, "issue_speed: issue_certificate: %s\n", ps_strerror(r));
			return 1;
		}
		issued_free(c);
		n++;
	} while (now() < end);
	end = now();
	printf("ISSUE ca=%s certificates=%lu seconds=%.3f per_second=%.1f us_each=%.1f\n",
	       strrchr(argv[1], '/') ? strrchr(argv[1], '/') + 1 : argv[1], n, end - start,
	       (double)n / (end - start), (end - start) * 1e6 / (double)n);
	issuer_free(issuer);
	ca_cert_free(ca);
	return 0;
}
