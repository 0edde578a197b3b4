/* The one narrow call between the front end and the keys:
 * "issue a verification certificate for key K and code C".
 *
 * Nothing that parses network input reaches the token except through
 * signer_issue(). */
#ifndef POPSIGN_SIGNER_H
#define POPSIGN_SIGNER_H

#include <stddef.h>

#include "cacert.h"
#include "config.h"
#include "issue.h"

#define SIGNER_CONTEXT_MAX 512

struct signer;

/* Opens every key of cfg: loads modules, logs in, finds keys, loads each CA
 * certificate (file or token) and proves with a test signature that it
 * matches the private key.  Logs what failed, naming the key and the config
 * line.  Returns 0 and *ret (free with signer_free()), or the first error. */
int signer_start(const struct config *cfg, struct signer **ret);

/* Number of keys, in config order. */
size_t signer_key_count(const struct signer *s);

/* Name and CA certificate of key i (< signer_key_count()). */
const char *signer_key_name(const struct signer *s, size_t i);
const struct ca_cert *signer_key_ca(const struct signer *s, size_t i);

/* Index of the key called name: 0 and *ret, or PS_E_NOT_FOUND. */
int signer_find_key(const struct signer *s, const char *name, size_t *ret);

/* Issues the verification certificate for code with key i.  Returns 0 and
 * *ret (free with issued_free()), or PS_E_INVALID_CODE, PS_E_TOKEN, ... */
int signer_issue(struct signer *s, size_t i, const char *code, struct issued **ret);

/* Frees s and everything it opened.  Accepts NULL. */
void signer_free(struct signer *s);

#endif
