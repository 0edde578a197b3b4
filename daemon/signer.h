/* The front end's side of the signer process: start it, supervise it, and
 * make the one narrow call "issue a verification certificate for key K and
 * code C".
 *
 * The signer is a separate executable, popsignd-signer, run as a process
 * that alone loads PKCS#11 modules, reads PINs and holds token sessions.  The two talk
 * with the messages of signer_proto.h: a control socket for HELLO and the
 * pings, and one channel (socketpair) per signer worker for requests.  A
 * request takes a free channel (waiting while all are busy), sends ISSUE and
 * waits on that channel for its answer: no other thread on either side
 * touches it.  If the signer dies, requests in flight fail with PS_E_TOKEN at
 * once and it is restarted with back-off.
 *
 * A channel whose request timed out still owes that answer: it is not used
 * again until the late answer has been read (a worker hung in the token
 * keeps it), and if every channel not in use owes one, requests fail at once
 * instead of queueing behind hung calls.  The signer drops a request whose
 * deadline passed before it got to it, so it issues nothing nobody receives.
 *
 * Every PING_INTERVAL (1 s) the front end pings the signer; each PONG brings
 * the signer's status: each key's state, sessions in use, failed PKCS#11
 * calls by CKR_ name, and how long each worker has been in its current job.
 * Watchdog: if any worker (or the token monitor) has been in one job for
 * longer than max(2 x request_timeout, SIGNER_WATCHDOG_MIN_MS), or pings go
 * unanswered that long, the signer is killed and started again: a PKCS#11
 * call that hangs can only be ended with its process. */
#ifndef POPSIGN_SIGNER_H
#define POPSIGN_SIGNER_H

#include <stdbool.h>
#include <stddef.h>

#include "cacert.h"
#include "config.h"
#include "issue.h"

#define SIGNER_CONTEXT_MAX 512
#define SIGNER_START_TIMEOUT_MS 120000   /* a slow HSM login */
#define SIGNER_REQUEST_TIMEOUT_MS 5000   /* default request_timeout */
#define SIGNER_BACKOFF_MIN_MS 100
#define SIGNER_BACKOFF_MAX_MS 10000
#define SIGNER_WATCHDOG_MIN_MS 5000

struct signer;

/* Starts the signer process for the config at cfg->path and waits until it
 * has opened every key and said hello.  The signer logs what failed, naming
 * the key and the config line.  Returns 0 and *ret (free with
 * signer_free()), or PS_E_TOKEN (the signer could not open the keys),
 * PS_E_IO, PS_E_NOMEM. */
int signer_start(const struct config *cfg, struct signer **ret);

/* Number of keys, in config order. */
size_t signer_key_count(const struct signer *s);

/* Name and CA certificate of key i (< signer_key_count()); owned by s. */
const char *signer_key_name(const struct signer *s, size_t i);
const struct ca_cert *signer_key_ca(const struct signer *s, size_t i);

/* Index of the key called name: 0 and *ret, or PS_E_NOT_FOUND. */
int signer_find_key(const struct signer *s, const char *name, size_t *ret);

/* The longest signer_issue() waits: request_timeout (signer_start() takes
 * it from cfg->request_timeout; 0 means SIGNER_REQUEST_TIMEOUT_MS).  For a
 * reload; the signer learns it with the next ping. */
void signer_set_request_timeout(struct signer *s, unsigned ms);

/* Issues the verification certificate for code with key i, waiting at most
 * the request timeout (for a free channel and the answer together).  Safe
 * from many threads.  Returns 0 and *ret (free with issued_free()), or
 * PS_E_INVALID_CODE, PS_E_TOKEN (signer down, token failed, every worker
 * stuck, timed out), PS_E_NOMEM. */
int signer_issue(struct signer *s, size_t i, const char *code, struct issued **ret);

/* Whether the signer process is up and answered its last ping. */
bool signer_alive(struct signer *s);

/* Whether key i (< signer_key_count()) can sign, as the signer's last
 * status said (at most about a second old; the signer probes tokens in the
 * background at most every 2 s, never per call).  Returns 0 with *state
 * "ready", or PS_E_TOKEN with *state saying why: "token not present", "not
 * logged in", "session lost", "device error", "module error", "module not
 * initialised", "key not found", "PIN refused", "not responding" (a call
 * into the token hangs), "signer not running", "signer not responding".
 * *state stays valid until signer_free().  Never blocks on the signer. */
int signer_key_ready(struct signer *s, size_t i, const char **state);

/* Calls cb(ctx, "CKR_DEVICE_REMOVED", n) once per CKR_ code, with the number
 * of failed PKCS#11 calls that returned it since popsignd started (signer
 * restarts included: the counts never go back).  cb runs without any lock
 * of s held. */
void signer_token_errors(struct signer *s,
			 void (*cb)(void *ctx, const char *ckr_name, unsigned long long count),
			 void *ctx);

/* Token sessions in use by a signature, a probe or a recovery right now, as
 * the last status said; 0 while the signer is down. */
unsigned signer_sessions_in_use(struct signer *s);

/* Process id of the signer, or 0 while it is down (for tests and status). */
int signer_pid(struct signer *s);

/* Stops the signer process and frees s.  Accepts NULL. */
void signer_free(struct signer *s);

#endif
