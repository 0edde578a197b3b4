#include "signer_main.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cacert.h"
#include "code.h"
#include "config.h"
#include "error.h"
#include "issue.h"
#include "log.h"
#include "signer_proto.h"
#include "token.h"
#include "uri.h"
#include "util.h"

struct key {
	const char *name;
	struct token_key *token_key;
	struct ca_cert *ca;
	struct issuer *issuer;
};

struct signer_proc {
	int fd;                         /* the control socket */
	struct config *cfg;
	struct token_set *tokens;
	struct key *keys;
	size_t n_keys;
	pthread_mutex_t lock;
	pthread_cond_t monitor_wake;    /* stopping (monotonic clock) */
	bool stopping;
	unsigned timeout_ms;            /* the front end's request timeout */
	/* Since when (monotonic ms; 0: idle) each worker runs its job and the
	 * monitor its pass: the front end's watchdog reads them in each PONG. */
	long long *worker_since;
	size_t n_workers;
	long long monitor_since;
};

/* A worker and its channel: it alone reads and answers it, so a request
 * goes from the front end's thread to the worker that signs it with no
 * hand-off in between. */
struct worker {
	struct signer_proc *s;
	size_t index;
	int fd;                         /* the signer's end of the channel */
	int peer;                       /* the front end's end, until handed over */
	struct signer_msg *msg;         /* receive buffer */
	struct signer_writer out;       /* ISSUED payload, reused */
	pthread_t thread;
	bool started;
};

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The issue module's view of the token. */
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

static int open_key(struct signer_proc *s, const struct config_key *ck, struct key *k)
{
	struct key_uri *uri = NULL;
	const char *why = NULL;
	int r;

	k->name = ck->name;
	r = key_uri_parse(ck->uri, &uri, &why);
	if (r < 0) {
		log_error("%s:%u: key '%s': bad uri: %s", s->cfg->path, ck->line, ck->name,
			  why ? why : ps_strerror(r));
		return r;
	}
	r = token_set_add_key(s->tokens, uri, &k->token_key);
	key_uri_free(uri);
	if (r < 0) {
		log_error("%s:%u: key '%s': %s", s->cfg->path, ck->line, ck->name, ps_strerror(r));
		return r;
	}
	r = load_ca(ck, k->token_key, &k->ca);
	if (r == 0)
		r = issuer_new(k->ca, s->cfg->validity, &k->issuer);
	if (r < 0)
		return r;
	/* A test signature proves that the certificate belongs to this key. */
	r = issuer_check_key(k->issuer, sign_with_token, k->token_key);
	if (r == PS_E_KEY_MISMATCH)
		log_error("key '%s': the certificate's public key does not match the private key "
			  "on the token", ck->name);
	else if (r < 0)
		log_error("key '%s': test signature failed: %s", ck->name, ps_strerror(r));
	return r;
}

static int open_keys(struct signer_proc *s)
{
	int r;

	s->keys = calloc(s->cfg->n_keys ? s->cfg->n_keys : 1, sizeof(*s->keys));
	if (!s->keys)
		return PS_E_NOMEM;
	r = token_set_new(s->cfg->workers, &s->tokens);
	if (r == 0)
		token_set_timeout(s->tokens, s->timeout_ms);
	for (size_t i = 0; r == 0 && i < s->cfg->n_keys; i++) {
		r = open_key(s, &s->cfg->keys[i], &s->keys[i]);
		s->n_keys = i + 1;
	}
	return r;
}

static int send_hello(struct signer_proc *s)
{
	struct signer_writer w = {0};
	int r;

	signer_write_u16(&w, (uint16_t)s->n_keys);
	for (size_t i = 0; i < s->n_keys; i++) {
		signer_write_u16(&w, (uint16_t)strlen(s->keys[i].name));
		signer_write_bytes(&w, s->keys[i].name, strlen(s->keys[i].name));
		signer_write_u32(&w, (uint32_t)s->keys[i].ca->der_len);
		signer_write_bytes(&w, s->keys[i].ca->der, s->keys[i].ca->der_len);
	}
	r = w.err ? w.err : signer_msg_send(s->fd, SIGNER_MSG_HELLO, 0, 0, w.data, w.len);
	free(w.data);
	return r;
}

/* A key whose token is failed or hung is refused at once, without a token
 * call: its requests would only hold workers the other keys need. */
static int key_usable(struct signer_proc *s, uint16_t key)
{
	const char *state = NULL;

	if (key >= s->n_keys)
		return PS_E_NOT_FOUND;
	return token_key_state(s->keys[key].token_key, &state) == 0 ? 0 : PS_E_TOKEN;
}

/* Validates one ISSUE and issues the certificate.  The code is checked here,
 * whatever the front end checked: a compromised front end gets nothing else
 * signed. */
static int issue_one(struct signer_proc *s, const struct signer_msg *m, struct issued **ret)
{
	struct signer_issue is;
	int r = signer_decode_issue(m->payload, m->h.len, &is);

	/* A NUL inside shortens the string: code_validate() sees the full
	 * length and refuses it. */
	if (r == 0 && code_validate(is.code, is.code_len) < 0)
		r = PS_E_INVALID_CODE;
	if (r == 0)
		r = key_usable(s, is.key);
	if (r < 0)
		return r;
	/* Sent after the front end gave up (it waited behind a hung call):
	 * nobody would receive the certificate. */
	if ((uint64_t)now_ms() > is.deadline_ms)
		r = PS_E_TIMEOUT;
	if (r == 0)
		r = issue_certificate(s->keys[is.key].issuer, is.code, sign_with_token,
				      s->keys[is.key].token_key, ret);
	if (r < 0)
		log_warning("key '%s' code %s: not issued: %s", s->keys[is.key].name, is.code,
			    ps_strerror(r));
	return r;
}

/* Answers the ISSUE in w->msg on w's channel, with the request's id. */
static void answer_issue(struct worker *w)
{
	struct issued *cert = NULL;
	int r = issue_one(w->s, w->msg, &cert);

	w->out.len = 0;
	w->out.err = 0;
	if (r == 0)
		r = signer_encode_issued(&w->out, cert);
	(void)signer_msg_send(w->fd, SIGNER_MSG_ISSUED, w->msg->h.id, r,
			      r == 0 ? w->out.data : NULL, r == 0 ? w->out.len : 0);
	issued_free(cert);
}

static void worker_busy(struct signer_proc *s, size_t i, long long since)
{
	__atomic_store_n(&s->worker_since[i], since, __ATOMIC_RELAXED);
}

/* Ends the conversation with the front end: the control socket reads EOF
 * at both ends, serve() returns, and the front end starts a new signer. */
static void end_conversation(struct signer_proc *s)
{
	(void)shutdown(s->fd, SHUT_RDWR);
}

/* Answers the requests of one channel until it reads EOF: the front end
 * closed it or the signer is stopping. */
static void *worker_main(void *arg)
{
	struct worker *w = arg;

	for (;;) {
		int r = signer_msg_recv(w->fd, w->msg);

		if (r == PS_E_IO)
			return NULL;
		if (r < 0 || w->msg->h.type != SIGNER_MSG_ISSUE) {
			log_error("malformed message on channel %zu from the front end: stopping",
				  w->index);
			end_conversation(w->s);
			return NULL;
		}
		worker_busy(w->s, w->index, now_ms());
		answer_issue(w);
		worker_busy(w->s, w->index, 0);
	}
}

/* ---- the monitor: token probes and recovery ---- */

static void *monitor(void *arg)
{
	struct signer_proc *s = arg;
	struct timespec ts;

	pthread_mutex_lock(&s->lock);
	while (!s->stopping) {
		unsigned wait;

		pthread_mutex_unlock(&s->lock);
		__atomic_store_n(&s->monitor_since, now_ms(), __ATOMIC_RELAXED);
		wait = token_set_maintain(s->tokens);
		__atomic_store_n(&s->monitor_since, 0, __ATOMIC_RELAXED);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += (long)wait * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		pthread_mutex_lock(&s->lock);
		if (!s->stopping)
			(void)pthread_cond_timedwait(&s->monitor_wake, &s->lock, &ts);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* ---- status for the front end ---- */

static uint32_t busy_ms(long long since, long long now)
{
	if (since == 0 || now <= since)
		return 0;
	return now - since > UINT32_MAX ? UINT32_MAX : (uint32_t)(now - since);
}

struct error_list {
	struct signer_error_count *items;
	uint16_t n;
};

static void add_error(void *ctx, const char *name, unsigned long long count)
{
	struct error_list *l = ctx;

	if (l->n == SIGNER_ERRORS_MAX)
		return;
	snprintf(l->items[l->n].name, sizeof(l->items[l->n].name), "%s", name);
	l->items[l->n++].count = count;
}

/* Fills st from what the token layer knows; never calls a module, so a
 * hung token never delays a PONG. */
static int collect_status(struct signer_proc *s, struct signer_status *st)
{
	long long now = now_ms();
	struct error_list errors;

	st->worker_busy_ms = calloc(s->n_workers + 1, sizeof(*st->worker_busy_ms));
	st->keys = calloc(s->n_keys + 1, sizeof(*st->keys));
	st->errors = calloc(SIGNER_ERRORS_MAX, sizeof(*st->errors));
	if (!st->worker_busy_ms || !st->keys || !st->errors)
		return PS_E_NOMEM;
	st->monitor_busy_ms = busy_ms(__atomic_load_n(&s->monitor_since, __ATOMIC_RELAXED), now);
	st->sessions_in_use = token_set_sessions_in_use(s->tokens);
	st->n_workers = (uint16_t)s->n_workers;
	for (size_t i = 0; i < s->n_workers; i++)
		st->worker_busy_ms[i] = busy_ms(__atomic_load_n(&s->worker_since[i], __ATOMIC_RELAXED), now);
	st->n_keys = (uint16_t)s->n_keys;
	for (size_t i = 0; i < s->n_keys; i++) {
		const char *state = NULL;

		st->keys[i].ready = token_key_state(s->keys[i].token_key, &state) == 0;
		snprintf(st->keys[i].state, sizeof(st->keys[i].state), "%s", state);
	}
	errors.items = st->errors;
	errors.n = 0;
	token_errors_foreach(add_error, &errors);
	st->n_errors = errors.n;
	return 0;
}

/* Answers a PING: takes the front end's request timeout, sends the status. */
static void answer_ping(struct signer_proc *s, const struct signer_msg *m)
{
	struct signer_status st = {0};
	struct signer_writer w = {0};
	uint32_t timeout_ms = 0;
	int r = signer_decode_ping(m->payload, m->h.len, &timeout_ms);

	if (r == 0 && timeout_ms && timeout_ms != __atomic_load_n(&s->timeout_ms, __ATOMIC_RELAXED)) {
		__atomic_store_n(&s->timeout_ms, timeout_ms, __ATOMIC_RELAXED);
		token_set_timeout(s->tokens, timeout_ms);
	}
	if (r == 0)
		r = collect_status(s, &st);
	if (r == 0)
		r = signer_encode_status(&w, &st);
	(void)signer_msg_send(s->fd, SIGNER_MSG_PONG, m->h.id, r, r == 0 ? w.data : NULL,
			      r == 0 ? w.len : 0);
	free(w.data);
	free(st.worker_busy_ms);
	free(st.keys);
	free(st.errors);
}

/* Reads the control socket until the front end hangs up or speaks
 * nonsense: it carries nothing but PING now. */
static void serve(struct signer_proc *s)
{
	static struct signer_msg m;

	for (;;) {
		int r = signer_msg_recv(s->fd, &m);

		if (r < 0) {
			if (r != PS_E_IO)
				log_error("malformed message from the front end: stopping");
			return;
		}
		if (m.h.type != SIGNER_MSG_PING) {
			log_error("unexpected message type %u from the front end: stopping",
				  m.h.type);
			return;
		}
		answer_ping(s, &m);
	}
}

static void harden(void)
{
	const struct rlimit none = {0, 0};

	/* PINs and token sessions live here: no core dumps, no ptrace. */
	(void)setrlimit(RLIMIT_CORE, &none);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	/* Started by execveat() from a descriptor, older kernels would name it
	 * after the descriptor's number. */
	(void)prctl(PR_SET_NAME, "popsignd-signer", 0, 0, 0);
}

/* Stops the workers and the monitor.  A thread hung in a module never
 * returns: the process then stays until the front end kills it. */
static void stop_threads(struct signer_proc *s, struct worker *workers, const pthread_t *mon)
{
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_cond_broadcast(&s->monitor_wake);
	pthread_mutex_unlock(&s->lock);
	/* A worker waiting for a request reads EOF. */
	for (size_t i = 0; workers && i < s->n_workers; i++)
		if (workers[i].fd >= 0)
			(void)shutdown(workers[i].fd, SHUT_RDWR);
	for (size_t i = 0; workers && i < s->n_workers; i++)
		if (workers[i].started)
			pthread_join(workers[i].thread, NULL);
	if (mon)
		pthread_join(*mon, NULL);
}

static void close_peers(struct worker *workers, size_t n)
{
	for (size_t i = 0; workers && i < n; i++) {
		if (workers[i].peer >= 0)
			close(workers[i].peer);
		workers[i].peer = -1;
	}
}

static void free_workers(struct worker *workers, size_t n)
{
	close_peers(workers, n);
	for (size_t i = 0; workers && i < n; i++) {
		if (workers[i].fd >= 0)
			close(workers[i].fd);
		free(workers[i].msg);
		free(workers[i].out.data);
	}
	free(workers);
}

static void free_proc(struct signer_proc *s)
{
	for (size_t i = 0; i < s->n_keys; i++) {
		issuer_free(s->keys[i].issuer);
		ca_cert_free(s->keys[i].ca);
	}
	free(s->keys);
	free(s->worker_since);
	token_set_free(s->tokens);
	config_free(s->cfg);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->monitor_wake);
}

static void init_proc(struct signer_proc *s, int fd)
{

	s->fd = fd;
	pthread_mutex_init(&s->lock, NULL);
	cond_init_monotonic(&s->monitor_wake);
}

static struct worker *workers_new(struct signer_proc *s)
{
	struct worker *workers = calloc(s->n_workers, sizeof(*workers));

	for (size_t i = 0; workers && i < s->n_workers; i++)
		workers[i] = (struct worker){.s = s, .index = i, .fd = -1, .peer = -1};
	return workers;
}

/* Makes each worker's channel and starts the worker on it.  Returns 0, or
 * PS_E_IO / PS_E_NOMEM with what started left for stop_threads(). */
static int start_workers(struct signer_proc *s, struct worker *workers)
{
	for (size_t i = 0; i < s->n_workers; i++) {
		struct worker *w = &workers[i];
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
			return PS_E_IO;
		w->fd = sv[0];
		w->peer = sv[1];
		w->msg = malloc(sizeof(*w->msg));
		if (!w->msg)
			return PS_E_NOMEM;
		w->started = pthread_create(&w->thread, NULL, worker_main, w) == 0;
		if (!w->started)
			return PS_E_NOMEM;
	}
	return 0;
}

/* Hands the front end its end of each channel, in worker order. */
static int send_channels(struct signer_proc *s, const struct worker *workers)
{
	int r = 0;

	for (size_t i = 0; r == 0 && i < s->n_workers; i++) {
		struct signer_writer w = {0};

		r = signer_encode_channel(&w, (uint16_t)i, (uint16_t)s->n_workers);
		if (r == 0)
			r = signer_msg_send_fd(s->fd, SIGNER_MSG_CHANNEL, 0, 0, w.data, w.len,
					       workers[i].peer);
		free(w.data);
	}
	return r;
}

/* Everything after the config is read: keys, workers and their channels,
 * HELLO, the monitor, then PINGs until the front end goes away. */
static int run(struct signer_proc *s)
{
	struct worker *workers = workers_new(s);
	bool mon_started = false;
	pthread_t mon;
	int r = workers ? 0 : PS_E_NOMEM;

	s->worker_since = calloc(s->n_workers, sizeof(*s->worker_since));
	if (r == 0 && !s->worker_since)
		r = PS_E_NOMEM;
	if (r == 0)
		r = open_keys(s);
	if (r == 0)
		r = start_workers(s, workers);
	if (r == 0)
		r = send_hello(s);
	if (r == 0)
		r = send_channels(s, workers);
	close_peers(workers, s->n_workers);
	if (r == 0)
		r = pthread_create(&mon, NULL, monitor, s) == 0 ? 0 : PS_E_NOMEM;
	mon_started = r == 0;
	if (r == 0)
		serve(s);
	stop_threads(s, workers, mon_started ? &mon : NULL);
	free_workers(workers, s->n_workers);
	return r;
}

int signer_main(const char *config_path, int fd)
{
	static struct signer_proc s;
	char err[CONFIG_ERROR_MAX];
	int r;

	harden();
	init_proc(&s, fd);
	if (getppid() == 1 || config_load(config_path, &s.cfg, err) < 0) {
		log_error("%s", getppid() == 1 ? "the front end is gone" : err);
		free_proc(&s);
		return 1;
	}
	s.timeout_ms = s.cfg->request_timeout * 1000u;
	s.n_workers = s.cfg->workers;
	r = run(&s);
	free_proc(&s);
	return r == 0 ? 0 : 1;
}
