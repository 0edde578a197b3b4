/* PKCS#11: modules, tokens, logins, sessions and key handles.
 *
 * The only file that includes the PKCS#11 headers or calls C_* functions.
 * Each module is dlopen()ed once (canonical path, RTLD_NOW) and initialised
 * with CKF_OS_LOCKING_OK.  Each token is logged in once and keeps a pool of
 * sessions, one per worker; each session finds each key's handle once and
 * keeps it, finding it again only after the session was reopened or the
 * token logged in again.
 *
 * Faults (docs/pkcs11.md): a lost session is reopened and a lost login
 * redone within the failing signature.  A token that is gone, broken, or
 * refuses the PIN is marked failed: its keys fail at once, without calling
 * the module, and token_set_maintain() recovers it in the background. */
#ifndef POPSIGN_TOKEN_H
#define POPSIGN_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "uri.h"

/* Largest signature any supported key makes (RSA-4096: 512 bytes). */
#define TOKEN_SIG_MAX 512
#define TOKEN_MAINTAIN_TICK_MS 250   /* token_set_maintain() wants a call this often */

struct token_set;
struct token_key;

enum token_key_type {
	TOKEN_KEY_RSA = 1,        /* signs with CKM_RSA_PKCS: input is a DigestInfo */
	TOKEN_KEY_EC = 2,         /* signs with CKM_ECDSA: input is a digest, output r||s */
};

/* An empty set whose tokens will each keep `sessions` sessions.  Returns 0
 * and *ret (free with token_set_free()), or PS_E_NOMEM. */
int token_set_new(unsigned sessions, struct token_set **ret);

/* Finds the key uri names: loads its module (once per module path), finds the
 * token, reads the PIN file and logs in (once per token; never retried after
 * CKR_PIN_INCORRECT), opens the sessions and finds the private key.  Logs
 * what failed with the PKCS#11 call's name and CKR_ name.  Returns 0 and
 * *ret (owned by set), or PS_E_NOT_FOUND (module, token or key missing),
 * PS_E_PIN (PIN refused, PIN file unreadable or insecure), PS_E_UNSUPPORTED
 * (neither RSA nor EC), PS_E_TOKEN. */
int token_set_add_key(struct token_set *set, const struct key_uri *uri, struct token_key **ret);

/* The key's type. */
enum token_key_type token_key_type(const struct token_key *key);

/* Signs in (inlen bytes; a digest for EC, a DigestInfo for RSA) with one of
 * the token's sessions, waiting at most the timeout for a free one.  Writes
 * the raw signature (r||s for EC) to sig, which holds TOKEN_SIG_MAX bytes,
 * and its length to *siglen.  A lost session is reopened, a lost login
 * redone (never after the PIN was refused) or a stale handle found again,
 * and the signature tried once more.  Fails at once, without calling the
 * module, while the token is failed or a call into it hangs.  Safe to call
 * from several threads.  Returns 0, or PS_E_TOKEN. */
int token_key_sign(struct token_key *key, const uint8_t *in, size_t inlen,
		   uint8_t *sig, size_t *siglen);

/* The DER of the certificate object on the token with the key's CKA_ID (or,
 * without an id, its label).  Returns 0 and *ret_der (caller frees), or
 * PS_E_NOT_FOUND, PS_E_TOKEN, PS_E_NOMEM. */
int token_key_certificate(struct token_key *key, uint8_t **ret_der, size_t *ret_len);

/* Calls into a token of set that run longer than ms (default 5000) make it
 * "not responding": its keys fail at once until the call returns.  Also the
 * longest token_key_sign() waits for a free session. */
void token_set_timeout(struct token_set *set, unsigned ms);

/* Background care of set's tokens; call from one thread, again after the
 * returned number of milliseconds (at most TOKEN_MAINTAIN_TICK_MS).  Probes
 * each ready token at most every 2 s (C_GetSessionInfo on a free pooled
 * session and C_GetTokenInfo) and marks it failed if that fails.  Tries to
 * recover each failed token, with back-off from 250 ms doubling to 5 s: find
 * the token again by its URI attributes (its slot may have changed),
 * re-initialise the module after repeated failures, reopen every session,
 * log in once, find every key again and make a test signature with each. */
unsigned token_set_maintain(struct token_set *set);

/* Whether k can sign now, from what token.c already knows (never calls the
 * module).  Returns 0 with *ret_state "ready", or PS_E_TOKEN or PS_E_PIN
 * with *ret_state one of "token not present", "not logged in", "session
 * lost", "device error", "module error", "module not initialised", "key not
 * found", "PIN refused", "not responding".  The strings are static. */
int token_key_state(const struct token_key *k, const char **ret_state);

/* Sessions of set taken by a signature, a probe or a recovery right now. */
unsigned token_set_sessions_in_use(struct token_set *set);

/* Calls cb once per CKR_ code that a PKCS#11 call of this process has
 * failed with, with the number of such failures so far. */
void token_errors_foreach(void (*cb)(void *ctx, const char *ckr_name, unsigned long long n),
			  void *ctx);

/* Logs out, closes every session, finalises every module and unloads it.
 * Wipes the PINs.  Accepts NULL. */
void token_set_free(struct token_set *set);

#endif
