#include "signer.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "token.h"
#include "uri.h"
#include "util.h"

struct signer_key {
	const char *name;            /* owned by the config */
	struct token_key *token_key; /* owned by the token set */
	struct ca_cert *ca;
	struct issuer *issuer;
};

struct signer {
	struct token_set *tokens;
	struct signer_key *keys;
	size_t n_keys;
};

/* The issue module's view of the token: sign raw mechanism input. */
static int sign_with_token(void *ctx, const uint8_t *in, size_t inlen, uint8_t *sig,
			   size_t sig_cap, size_t *siglen)
{
	uint8_t buf[TOKEN_SIG_MAX];
	size_t len = 0;
	int r = token_key_sign(ctx, in, inlen, buf, &len);

	if (r < 0)
		return r;
	if (len > sig_cap)
		return PS_E_CRYPTO;
	memcpy(sig, buf, len);
	*siglen = len;
	return 0;
}

static int load_ca(const struct config_key *ck, struct token_key *tk, struct ca_cert **ret)
{
	_cleanup_free_ uint8_t *der = NULL;
	size_t der_len = 0;
	int r;

	if (ck->certificate) {
		r = ca_cert_load_file(ck->certificate, ret);
		if (r < 0)
			log_error("key '%s': certificate %s: %s", ck->name, ck->certificate,
				  ps_strerror(r));
		return r;
	}
	r = token_key_certificate(tk, &der, &der_len);
	if (r == PS_E_NOT_FOUND) {
		log_error("key '%s': no certificate = in the config and none on the token "
			  "with the key's id or label", ck->name);
		return r;
	}
	if (r == 0)
		r = ca_cert_from_der(der, der_len, ret);
	if (r < 0)
		log_error("key '%s': certificate on the token: %s", ck->name, ps_strerror(r));
	return r;
}

static int open_key(struct signer *s, const struct config *cfg, const struct config_key *ck,
		    struct signer_key *sk)
{
	struct key_uri *uri = NULL;
	const char *why = NULL;
	int r;

	sk->name = ck->name;
	r = key_uri_parse(ck->uri, &uri, &why);
	if (r < 0) {
		log_error("%s:%u: key '%s': bad uri: %s", cfg->path, ck->line, ck->name,
			  why ? why : ps_strerror(r));
		return r;
	}
	r = token_set_add_key(s->tokens, uri, &sk->token_key);
	key_uri_free(uri);
	if (r < 0) {
		log_error("%s:%u: key '%s': %s", cfg->path, ck->line, ck->name, ps_strerror(r));
		return r;
	}
	r = load_ca(ck, sk->token_key, &sk->ca);
	if (r < 0)
		return r;
	r = issuer_new(sk->ca, cfg->validity, &sk->issuer);
	if (r < 0) {
		log_error("key '%s': %s", ck->name, ps_strerror(r));
		return r;
	}
	/* A test signature proves the certificate belongs to this private key. */
	r = issuer_check_key(sk->issuer, sign_with_token, sk->token_key);
	if (r == PS_E_KEY_MISMATCH)
		log_error("key '%s': the certificate's public key does not match the private key "
			  "on the token", ck->name);
	else if (r < 0)
		log_error("key '%s': test signature failed: %s", ck->name, ps_strerror(r));
	return r;
}

int signer_start(const struct config *cfg, struct signer **ret)
{
	struct signer *s = calloc(1, sizeof(*s));
	int r;

	if (!s)
		return PS_E_NOMEM;
	s->keys = calloc(cfg->n_keys ? cfg->n_keys : 1, sizeof(*s->keys));
	r = s->keys ? token_set_new(cfg->workers, &s->tokens) : PS_E_NOMEM;
	for (size_t i = 0; r == 0 && i < cfg->n_keys; i++) {
		r = open_key(s, cfg, &cfg->keys[i], &s->keys[i]);
		s->n_keys = i + 1;
	}
	if (r < 0) {
		signer_free(s);
		return r;
	}
	*ret = s;
	return 0;
}

size_t signer_key_count(const struct signer *s)
{
	return s->n_keys;
}

const char *signer_key_name(const struct signer *s, size_t i)
{
	return s->keys[i].name;
}

const struct ca_cert *signer_key_ca(const struct signer *s, size_t i)
{
	return s->keys[i].ca;
}

int signer_find_key(const struct signer *s, const char *name, size_t *ret)
{
	for (size_t i = 0; i < s->n_keys; i++)
		if (strcmp(s->keys[i].name, name) == 0) {
			*ret = i;
			return 0;
		}
	return PS_E_NOT_FOUND;
}

int signer_issue(struct signer *s, size_t i, const char *code, struct issued **ret)
{
	if (i >= s->n_keys)
		return PS_E_NOT_FOUND;
	return issue_certificate(s->keys[i].issuer, code, sign_with_token, s->keys[i].token_key,
				 ret);
}

void signer_free(struct signer *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n_keys; i++) {
		issuer_free(s->keys[i].issuer);
		ca_cert_free(s->keys[i].ca);
	}
	free(s->keys);
	token_set_free(s->tokens);
	free(s);
}
