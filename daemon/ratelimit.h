/* Per-client token buckets and per-peer authentication-failure back-off. */
#ifndef POPSIGN_RATELIMIT_H
#define POPSIGN_RATELIMIT_H

#include <stddef.h>

#define LIMITS_DEFAULT_RATE 10.0  /* requests per second */
#define LIMITS_DEFAULT_BURST 20
#define LIMITS_AUTH_FAILURES 5    /* failures a peer may make ... */
#define LIMITS_AUTH_WINDOW 60     /* ... within this many seconds before it must wait */
#define LIMITS_PEERS_MAX 1024     /* peers tracked; the oldest is forgotten first */

struct limits;

/* n_buckets token buckets (one per client), all full.  Returns 0 and *ret
 * (free with limits_free()), or PS_E_NOMEM. */
int limits_new(size_t n_buckets, struct limits **ret);

/* Sets bucket i to refill at rate tokens per second up to burst tokens. */
void limits_set_bucket(struct limits *l, size_t i, double rate, unsigned burst);

/* Takes one token from bucket i: 0, or PS_E_RATE_LIMITED with the whole
 * seconds until a token is available (at least 1) in *retry_after. */
int limits_take(struct limits *l, size_t i, unsigned *retry_after);

/* Whether peer may try to authenticate now: 0, or PS_E_RATE_LIMITED with
 * *retry_after set, once it failed LIMITS_AUTH_FAILURES times within
 * LIMITS_AUTH_WINDOW seconds. */
int limits_auth_check(struct limits *l, const char *peer, unsigned *retry_after);

/* Sets how many failures a peer may make within LIMITS_AUTH_WINDOW seconds
 * (default LIMITS_AUTH_FAILURES). */
void limits_set_auth_failures(struct limits *l, unsigned failures);

/* Records a failed authentication by peer. */
void limits_auth_failed(struct limits *l, const char *peer);

/* Frees l.  Accepts NULL. */
void limits_free(struct limits *l);

#endif
