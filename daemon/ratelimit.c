/* Token buckets and authentication-failure windows, on CLOCK_MONOTONIC so
 * that setting the wall clock neither grants nor withholds requests.
 *
 * One mutex guards everything: each call does a few arithmetic operations or
 * one hash-chain walk, far shorter than the request around it.
 *
 * Failed authentications are kept per peer string in a fixed table of
 * LIMITS_PEERS_MAX entries, so a caller cycling through addresses cannot
 * make it grow; when it is full, the entry with the oldest last failure is
 * forgotten.  Callers should pass the address without the port (each
 * connection has its own port) or "uid=N".  Peer strings longer than
 * LIMITS_PEER_LEN - 1 bytes are compared on that prefix only, which can only
 * make two peers share a count, never let one escape it. */
#include "ratelimit.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"

#define LIMITS_PEER_LEN 64       /* "uid=4294967295", any IPv6 address */
#define LIMITS_RETRY_MAX 86400U  /* a bucket that (almost) never refills */
#define LIMITS_HASH_SLOTS 2048   /* power of two, twice LIMITS_PEERS_MAX */
#define NONE UINT32_MAX

struct bucket {
	double rate;   /* tokens per second */
	double burst;  /* capacity */
	double tokens;
	double last;   /* when tokens was last brought up to date */
};

struct peer {
	char name[LIMITS_PEER_LEN];
	double window_start; /* first failure of the current window */
	double last_failure;
	unsigned failures;
	uint32_t next;       /* next entry in the same hash chain, or NONE */
};

struct limits {
	pthread_mutex_t lock;
	size_t n_buckets;
	struct bucket *buckets;
	unsigned auth_failures;             /* allowed within LIMITS_AUTH_WINDOW */
	uint32_t n_peers;                   /* entries in use: 0 .. LIMITS_PEERS_MAX */
	uint32_t slots[LIMITS_HASH_SLOTS];  /* hash -> first entry, or NONE */
	struct peer peers[LIMITS_PEERS_MAX];
};

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whole seconds to wait for a wait of t seconds: at least 1, at most
 * LIMITS_RETRY_MAX. */
static unsigned retry_seconds(double t)
{
	unsigned s;

	if (!(t > 1.0))
		return 1;
	if (t >= LIMITS_RETRY_MAX)
		return LIMITS_RETRY_MAX;
	s = (unsigned)t;
	return s < t ? s + 1 : s; /* ceil() without libm */
}

static void bucket_init(struct bucket *b, double rate, unsigned burst, double now)
{
	b->rate = rate > 0.0 ? rate : 0.0;
	b->burst = burst;
	b->tokens = b->burst;
	b->last = now;
}

int limits_new(size_t n_buckets, struct limits **ret)
{
	struct limits *l = calloc(1, sizeof(*l));
	double now = now_seconds();

	if (!l)
		return PS_E_NOMEM;
	l->buckets = calloc(n_buckets ? n_buckets : 1, sizeof(*l->buckets));
	if (!l->buckets) {
		free(l);
		return PS_E_NOMEM;
	}
	l->n_buckets = n_buckets;
	l->auth_failures = LIMITS_AUTH_FAILURES;
	for (size_t i = 0; i < n_buckets; i++)
		bucket_init(&l->buckets[i], LIMITS_DEFAULT_RATE, LIMITS_DEFAULT_BURST, now);
	for (size_t i = 0; i < LIMITS_HASH_SLOTS; i++)
		l->slots[i] = NONE;
	pthread_mutex_init(&l->lock, NULL);
	*ret = l;
	return 0;
}

void limits_set_bucket(struct limits *l, size_t i, double rate, unsigned burst)
{
	if (i >= l->n_buckets)
		return;
	pthread_mutex_lock(&l->lock);
	bucket_init(&l->buckets[i], rate, burst, now_seconds());
	pthread_mutex_unlock(&l->lock);
}

int limits_take(struct limits *l, size_t i, unsigned *retry_after)
{
	struct bucket *b;
	double now;
	int r = 0;

	if (i >= l->n_buckets)
		return PS_E_INTERNAL;
	pthread_mutex_lock(&l->lock);
	b = &l->buckets[i];
	now = now_seconds();
	b->tokens += (now - b->last) * b->rate;
	if (b->tokens > b->burst)
		b->tokens = b->burst;
	b->last = now;
	if (b->tokens >= 1.0) {
		b->tokens -= 1.0;
	} else {
		*retry_after = b->rate > 0.0 && b->burst >= 1.0
				       ? retry_seconds((1.0 - b->tokens) / b->rate)
				       : LIMITS_RETRY_MAX;
		r = PS_E_RATE_LIMITED;
	}
	pthread_mutex_unlock(&l->lock);
	return r;
}

/* FNV-1a over the bytes that are kept of name. */
static uint32_t peer_slot(const char *name)
{
	uint32_t h = 2166136261U;

	/* cppcheck-suppress arrayIndexOutOfBoundsCond ; stops at the NUL of a shorter name */
	for (size_t i = 0; i < LIMITS_PEER_LEN - 1 && name[i]; i++)
		h = (h ^ (uint8_t)name[i]) * 16777619U;
	return h & (LIMITS_HASH_SLOTS - 1);
}

static struct peer *peer_find(struct limits *l, const char *name)
{
	for (uint32_t e = l->slots[peer_slot(name)]; e != NONE; e = l->peers[e].next)
		if (strncmp(l->peers[e].name, name, LIMITS_PEER_LEN - 1) == 0)
			return &l->peers[e];
	return NULL;
}

/* Takes entry e out of its hash chain. */
static void peer_unlink(struct limits *l, uint32_t e)
{
	uint32_t *link = &l->slots[peer_slot(l->peers[e].name)];

	while (*link != e)
		link = &l->peers[*link].next;
	*link = l->peers[e].next;
}

/* A free entry, or the one whose last failure is oldest, unlinked. */
static uint32_t peer_reclaim(struct limits *l)
{
	uint32_t oldest = 0;

	if (l->n_peers < LIMITS_PEERS_MAX)
		return l->n_peers++;
	for (uint32_t e = 1; e < LIMITS_PEERS_MAX; e++)
		if (l->peers[e].last_failure < l->peers[oldest].last_failure)
			oldest = e;
	peer_unlink(l, oldest);
	return oldest;
}

static struct peer *peer_add(struct limits *l, const char *name, double now)
{
	uint32_t e = peer_reclaim(l);
	uint32_t *slot = &l->slots[peer_slot(name)];
	struct peer *p = &l->peers[e];

	memset(p, 0, sizeof(*p));
	strncpy(p->name, name, LIMITS_PEER_LEN - 1);
	p->window_start = now;
	p->next = *slot;
	*slot = e;
	return p;
}

void limits_set_auth_failures(struct limits *l, unsigned failures)
{
	pthread_mutex_lock(&l->lock);
	l->auth_failures = failures;
	pthread_mutex_unlock(&l->lock);
}

int limits_auth_check(struct limits *l, const char *peer, unsigned *retry_after)
{
	struct peer *p;
	int r = 0;

	pthread_mutex_lock(&l->lock);
	p = peer_find(l, peer ? peer : "");
	if (p && p->failures >= l->auth_failures) {
		double left = p->window_start + LIMITS_AUTH_WINDOW - now_seconds();
		if (left > 0.0) {
			*retry_after = retry_seconds(left);
			r = PS_E_RATE_LIMITED;
		}
	}
	pthread_mutex_unlock(&l->lock);
	return r;
}

void limits_auth_failed(struct limits *l, const char *peer)
{
	double now = now_seconds();
	struct peer *p;

	pthread_mutex_lock(&l->lock);
	p = peer_find(l, peer ? peer : "");
	if (!p)
		p = peer_add(l, peer ? peer : "", now);
	if (now - p->window_start >= LIMITS_AUTH_WINDOW) {
		p->window_start = now;
		p->failures = 0;
	}
	p->failures++;
	p->last_failure = now;
	pthread_mutex_unlock(&l->lock);
}

void limits_free(struct limits *l)
{
	if (!l)
		return;
	pthread_mutex_destroy(&l->lock);
	free(l->buckets);
	free(l);
}
