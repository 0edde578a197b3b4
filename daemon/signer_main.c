#include "signer_main.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
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

#define QUEUE_MAX 1024

struct key {
	const char *name;
	struct token_key *token_key;
	struct ca_cert *ca;
	struct issuer *issuer;
};

struct job {
	uint32_t id;
	uint16_t key;
	char code[CODE_MAX_LEN + 1];
};

struct signer_proc {
	int fd;
	struct config *cfg;
	struct token_set *tokens;
	struct key *keys;
	size_t n_keys;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job queue[QUEUE_MAX];
	size_t head, count;
	bool stopping;
};

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

/* Validates and answers one ISSUE.  The code is checked here, whatever the
 * front end checked: a compromised front end gets nothing else signed. */
static void do_job(struct signer_proc *s, const struct job *j)
{
	struct issued *cert = NULL;
	struct signer_writer w = {0};
	int r = j->key < s->n_keys ? 0 : PS_E_NOT_FOUND;

	if (r == 0)
		r = issue_certificate(s->keys[j->key].issuer, j->code, sign_with_token,
				      s->keys[j->key].token_key, &cert);
	if (r < 0)
		log_warning("key '%s' code %s: not issued: %s",
			    j->key < s->n_keys ? s->keys[j->key].name : "?", j->code,
			    ps_strerror(r));
	if (r == 0)
		r = signer_encode_issued(&w, cert);
	(void)signer_msg_send(s->fd, SIGNER_MSG_ISSUED, j->id, r, r == 0 ? w.data : NULL,
			      r == 0 ? w.len : 0);
	free(w.data);
	issued_free(cert);
}

static void *worker(void *arg)
{
	struct signer_proc *s = arg;

	for (;;) {
		struct job j;

		pthread_mutex_lock(&s->lock);
		while (s->count == 0 && !s->stopping)
			pthread_cond_wait(&s->cond, &s->lock);
		if (s->count == 0) {
			pthread_mutex_unlock(&s->lock);
			return NULL;
		}
		j = s->queue[s->head];
		s->head = (s->head + 1) % QUEUE_MAX;
		s->count--;
		pthread_mutex_unlock(&s->lock);
		do_job(s, &j);
	}
}

/* Parses an ISSUE payload into a job: exact length, code length bounded. */
static int parse_issue(const struct signer_msg *m, struct job *j)
{
	struct signer_reader rd = {m->payload, m->h.len};
	const uint8_t *code = NULL;
	uint16_t len = 0;

	if (signer_read_u16(&rd, &j->key) < 0 || signer_read_u16(&rd, &len) < 0 ||
	    len > CODE_MAX_LEN || signer_read_bytes(&rd, len, &code) < 0 || rd.left != 0)
		return PS_E_INVALID_REQUEST;
	memcpy(j->code, code, len);
	j->code[len] = '\0';
	j->id = m->h.id;
	/* A NUL inside shortens the string: issue_certificate then refuses it,
	 * because code_validate sees the full length here. */
	return code_validate(j->code, len) < 0 ? PS_E_INVALID_CODE : 0;
}

static int enqueue(struct signer_proc *s, const struct job *j)
{
	int r = 0;

	pthread_mutex_lock(&s->lock);
	if (s->count == QUEUE_MAX) {
		r = PS_E_TOKEN;
	} else {
		s->queue[(s->head + s->count) % QUEUE_MAX] = *j;
		s->count++;
		pthread_cond_signal(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

/* Reads messages until the front end hangs up or speaks nonsense. */
static void serve(struct signer_proc *s)
{
	static struct signer_msg m;

	for (;;) {
		struct job j = {0};
		int r = signer_msg_recv(s->fd, &m);

		if (r < 0) {
			if (r != PS_E_IO)
				log_error("malformed message from the front end: stopping");
			return;
		}
		if (m.h.type == SIGNER_MSG_PING) {
			(void)signer_msg_send(s->fd, SIGNER_MSG_PONG, m.h.id, 0, NULL, 0);
			continue;
		}
		if (m.h.type != SIGNER_MSG_ISSUE) {
			log_error("unexpected message type %u from the front end: stopping",
				  m.h.type);
			return;
		}
		r = parse_issue(&m, &j);
		if (r == 0)
			r = enqueue(s, &j);
		if (r < 0)
			(void)signer_msg_send(s->fd, SIGNER_MSG_ISSUED, m.h.id, r, NULL, 0);
	}
}

static void harden(void)
{
	const struct rlimit none = {0, 0};

	/* PINs and token sessions live here: no core dumps, no ptrace. */
	(void)setrlimit(RLIMIT_CORE, &none);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
}

static void stop_workers(struct signer_proc *s, pthread_t *threads, size_t n)
{
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	for (size_t i = 0; i < n; i++)
		pthread_join(threads[i], NULL);
}

static void free_proc(struct signer_proc *s)
{
	for (size_t i = 0; i < s->n_keys; i++) {
		issuer_free(s->keys[i].issuer);
		ca_cert_free(s->keys[i].ca);
	}
	free(s->keys);
	token_set_free(s->tokens);
	config_free(s->cfg);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
}

int signer_main(const char *config_path, int fd)
{
	static struct signer_proc s;
	char err[CONFIG_ERROR_MAX];
	pthread_t *threads = NULL;
	size_t n_threads = 0;
	int r;

	harden();
	s.fd = fd;
	pthread_mutex_init(&s.lock, NULL);
	pthread_cond_init(&s.cond, NULL);
	if (getppid() == 1 || config_load(config_path, &s.cfg, err) < 0) {
		log_error("%s", getppid() == 1 ? "the front end is gone" : err);
		free_proc(&s);
		return 1;
	}
	r = open_keys(&s);
	if (r == 0)
		r = send_hello(&s);
	threads = r == 0 ? calloc(s.cfg->workers, sizeof(*threads)) : NULL;
	for (; threads && n_threads < s.cfg->workers; n_threads++)
		if (pthread_create(&threads[n_threads], NULL, worker, &s) != 0)
			break;
	if (threads && n_threads > 0)
		serve(&s);
	stop_workers(&s, threads, n_threads);
	free(threads);
	free_proc(&s);
	return r == 0 && n_threads > 0 ? 0 : 1;
}
