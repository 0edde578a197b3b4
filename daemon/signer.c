#include "signer.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "signer_proto.h"
#include "util.h"

#define SIGNER_FD 3                 /* the socket's number in the signer */
#define PING_INTERVAL_MS 2000

struct waiter {
	uint32_t id;
	bool done;
	int status;
	struct issued *cert;
	pthread_cond_t cond;
	struct waiter *next;
};

struct key {
	char *name;
	struct ca_cert *ca;
};

struct signer {
	char *config_path;
	pthread_mutex_t lock;
	int fd;                         /* -1 while the signer is down */
	pid_t pid;
	bool up;
	bool pong;                      /* the last ping was answered */
	uint32_t next_id;
	struct waiter *waiters;
	struct key *keys;
	size_t n_keys;
	pthread_t thread;
	bool thread_started;
	int wake[2];                    /* written to stop the supervisor */
};

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the signer process ------------------------------------------------- */

/* fork() and exec() ourselves as "popsignd --signer 3 -c PATH".  Between the
 * two only async-signal-safe calls: this process has threads. */
static int spawn(const char *config_path, int *ret_fd, pid_t *ret_pid)
{
	char *argv[] = {"popsignd", "--signer", "3", "-c", (char *)config_path, NULL};
	int sv[2];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return PS_E_IO;
	pid = fork();
	if (pid < 0) {
		close(sv[0]);
		close(sv[1]);
		return PS_E_IO;
	}
	if (pid == 0) {
		if (sv[1] == SIGNER_FD)
			(void)fcntl(SIGNER_FD, F_SETFD, 0);
		else if (dup2(sv[1], SIGNER_FD) < 0)
			_exit(127);
		execv("/proc/self/exe", argv);
		_exit(127);
	}
	close(sv[1]);
	*ret_fd = sv[0];
	*ret_pid = pid;
	return 0;
}

static int recv_with_timeout(int fd, struct signer_msg *m, int timeout_ms)
{
	struct pollfd p = {fd, POLLIN, 0};
	int n;

	do
		n = poll(&p, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		return PS_E_TIMEOUT;
	if (n < 0)
		return PS_E_IO;
	return signer_msg_recv(fd, m);
}

static void free_keys(struct key *keys, size_t n)
{
	if (!keys)
		return;
	for (size_t i = 0; i < n; i++) {
		free(keys[i].name);
		ca_cert_free(keys[i].ca);
	}
	free(keys);
}

/* Parses HELLO: the key names and CA certificates, in config order. */
static int parse_hello(const struct signer_msg *m, struct key **ret, size_t *ret_n)
{
	struct signer_reader rd = {m->payload, m->h.len};
	struct key *keys = NULL;
	uint16_t n = 0;
	size_t got = 0;
	int r = signer_read_u16(&rd, &n);

	if (r == 0)
		keys = calloc(n ? n : 1, sizeof(*keys));
	r = r < 0 ? r : keys ? 0 : PS_E_NOMEM;
	for (; r == 0 && got < n; got++) {
		const uint8_t *name = NULL, *der = NULL;
		uint16_t name_len = 0;
		uint32_t der_len = 0;

		if (signer_read_u16(&rd, &name_len) < 0 || name_len == 0 ||
		    name_len > CONFIG_NAME_MAX || signer_read_bytes(&rd, name_len, &name) < 0 ||
		    signer_read_u32(&rd, &der_len) < 0 || signer_read_bytes(&rd, der_len, &der) < 0) {
			r = PS_E_INVALID_REQUEST;
			break;
		}
		keys[got].name = strndup((const char *)name, name_len);
		r = keys[got].name ? ca_cert_from_der(der, der_len, &keys[got].ca) : PS_E_NOMEM;
	}
	if (r == 0 && rd.left != 0)
		r = PS_E_INVALID_REQUEST;
	if (r < 0) {
		free_keys(keys, got + 1 <= n ? got + 1 : n);
		return r;
	}
	*ret = keys;
	*ret_n = n;
	return 0;
}

/* The keys of a restarted signer must be the keys the front end serves. */
static bool same_keys(const struct signer *s, const struct key *keys, size_t n)
{
	if (n != s->n_keys)
		return false;
	for (size_t i = 0; i < n; i++)
		if (strcmp(keys[i].name, s->keys[i].name) != 0 ||
		    keys[i].ca->der_len != s->keys[i].ca->der_len ||
		    memcmp(keys[i].ca->der, s->keys[i].ca->der, keys[i].ca->der_len) != 0)
			return false;
	return true;
}

static void reap(pid_t pid, bool kill_it)
{
	int status = 0;

	if (pid <= 0)
		return;
	if (kill_it)
		(void)kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
}

/* Starts a signer and waits for its HELLO.  On the first start the keys are
 * taken from it; later they must match. */
static int start_process(struct signer *s, int timeout_ms, int *ret_fd, pid_t *ret_pid)
{
	static struct signer_msg m; /* only the supervisor or signer_start() runs this */
	struct key *keys = NULL;
	size_t n = 0;
	int fd = -1, r;
	pid_t pid = 0;

	r = spawn(s->config_path, &fd, &pid);
	if (r == 0)
		r = recv_with_timeout(fd, &m, timeout_ms);
	if (r == 0 && m.h.type != SIGNER_MSG_HELLO)
		r = PS_E_INVALID_REQUEST;
	if (r == 0)
		r = parse_hello(&m, &keys, &n);
	if (r == 0 && s->keys && !same_keys(s, keys, n)) {
		log_error("the restarted signer has other keys than popsignd serves "
			  "(was %s changed?): send SIGHUP to reload", s->config_path);
		r = PS_E_CONFIG;
	}
	if (r == 0 && !s->keys) {
		s->keys = TAKE_PTR(keys);
		s->n_keys = n;
	}
	free_keys(keys, n);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		reap(pid, true);
		return r == PS_E_NOMEM ? r : PS_E_TOKEN;
	}
	*ret_fd = fd;
	*ret_pid = pid;
	return 0;
}

/* ---- waiting for answers ------------------------------------------------ */

static void unlink_waiter(struct signer *s, struct waiter *w)
{
	for (struct waiter **pp = &s->waiters; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			return;
		}
}

static void deliver(struct signer *s, const struct signer_msg *m)
{
	pthread_mutex_lock(&s->lock);
	for (struct waiter *w = s->waiters; w; w = w->next) {
		if (w->id != m->h.id)
			continue;
		w->status = m->h.status > 0 ? PS_E_INTERNAL : m->h.status;
		if (w->status == 0 && signer_decode_issued(m->payload, m->h.len, &w->cert) < 0)
			w->status = PS_E_INTERNAL;
		w->done = true;
		unlink_waiter(s, w);
		pthread_cond_signal(&w->cond);
		break;
	}
	pthread_mutex_unlock(&s->lock);
}

/* Marks the signer down and fails every request waiting for it. */
static void go_down(struct signer *s)
{
	pid_t pid;
	int fd;

	pthread_mutex_lock(&s->lock);
	s->up = false;
	fd = s->fd;
	pid = s->pid;
	s->fd = -1;
	s->pid = 0;
	for (struct waiter *w = s->waiters; w; w = w->next) {
		w->status = PS_E_TOKEN;
		w->done = true;
		pthread_cond_signal(&w->cond);
	}
	s->waiters = NULL;
	pthread_mutex_unlock(&s->lock);
	if (fd >= 0)
		close(fd);
	reap(pid, true);
}

/* ---- supervision -------------------------------------------------------- */

/* Sleeps ms unless asked to stop: true if asked to stop. */
static bool sleep_or_stop(struct signer *s, int ms)
{
	struct pollfd p = {s->wake[0], POLLIN, 0};

	return poll(&p, 1, ms) > 0;
}

static void send_ping(struct signer *s)
{
	pthread_mutex_lock(&s->lock);
	s->pong = false;
	if (s->fd >= 0)
		(void)signer_msg_send(s->fd, SIGNER_MSG_PING, 0, 0, NULL, 0);
	pthread_mutex_unlock(&s->lock);
}

/* Reads answers until the signer goes away or popsignd stops: true if asked
 * to stop. */
static bool serve_answers(struct signer *s, int fd)
{
	static struct signer_msg m;
	long long next_ping = now_ms() + PING_INTERVAL_MS;

	for (;;) {
		struct pollfd p[2] = {{fd, POLLIN, 0}, {s->wake[0], POLLIN, 0}};
		long long wait = next_ping - now_ms();
		int n = poll(p, 2, wait > 0 ? (int)wait : 0);

		if (n < 0 && errno != EINTR)
			return false;
		if (p[1].revents)
			return true;
		if (n == 0 || now_ms() >= next_ping) {
			send_ping(s);
			next_ping = now_ms() + PING_INTERVAL_MS;
		}
		if (n <= 0 || !p[0].revents)
			continue;
		if (signer_msg_recv(fd, &m) < 0)
			return false;
		if (m.h.type == SIGNER_MSG_ISSUED) {
			deliver(s, &m);
		} else if (m.h.type == SIGNER_MSG_PONG) {
			pthread_mutex_lock(&s->lock);
			s->pong = true;
			pthread_mutex_unlock(&s->lock);
		} else {
			log_error("unexpected message type %u from the signer", m.h.type);
			return false;
		}
	}
}

static void *supervise(void *arg)
{
	struct signer *s = arg;
	int backoff = SIGNER_BACKOFF_MIN_MS;

	for (;;) {
		int fd = -1;
		pid_t pid = 0;

		pthread_mutex_lock(&s->lock);
		fd = s->fd;
		pthread_mutex_unlock(&s->lock);
		if (fd >= 0) {
			if (serve_answers(s, fd))
				return NULL;
			log_error("the signer process stopped: restarting it");
			go_down(s);
			backoff = SIGNER_BACKOFF_MIN_MS;
		}
		if (sleep_or_stop(s, backoff))
			return NULL;
		if (start_process(s, SIGNER_START_TIMEOUT_MS, &fd, &pid) < 0) {
			backoff = backoff * 2 > SIGNER_BACKOFF_MAX_MS ? SIGNER_BACKOFF_MAX_MS
								       : backoff * 2;
			log_warning("the signer did not start: next try in %d ms", backoff);
			continue;
		}
		pthread_mutex_lock(&s->lock);
		s->fd = fd;
		s->pid = pid;
		s->up = true;
		s->pong = true;
		pthread_mutex_unlock(&s->lock);
		log_info("the signer process is back (pid %d)", (int)pid);
	}
}

/* ---- the interface ------------------------------------------------------ */

int signer_start(const struct config *cfg, struct signer **ret)
{
	struct signer *s = calloc(1, sizeof(*s));
	int r;

	if (!s)
		return PS_E_NOMEM;
	s->fd = -1;
	s->wake[0] = s->wake[1] = -1;
	pthread_mutex_init(&s->lock, NULL);
	s->config_path = strdup(cfg->path);
	r = s->config_path && pipe2(s->wake, O_CLOEXEC) == 0 ? 0 : PS_E_IO;
	if (r == 0)
		r = start_process(s, SIGNER_START_TIMEOUT_MS, &s->fd, &s->pid);
	if (r == 0) {
		s->up = s->pong = true;
		r = pthread_create(&s->thread, NULL, supervise, s) == 0 ? 0 : PS_E_NOMEM;
		s->thread_started = r == 0;
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

static int send_issue(struct signer *s, struct waiter *w, size_t i, const char *code)
{
	struct signer_writer wr = {0};
	size_t len = strlen(code);
	int r;

	signer_write_u16(&wr, (uint16_t)i);
	signer_write_u16(&wr, (uint16_t)len);
	signer_write_bytes(&wr, code, len);
	/* Sent under the lock: the descriptor cannot be closed and reused meanwhile. */
	r = wr.err ? wr.err : signer_msg_send(s->fd, SIGNER_MSG_ISSUE, w->id, 0, wr.data, wr.len);
	free(wr.data);
	return r;
}

static void deadline_in(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int signer_issue(struct signer *s, size_t i, const char *code, struct issued **ret)
{
	struct waiter w = {0};
	pthread_condattr_t attr;
	struct timespec deadline;
	int r = PS_E_TOKEN;

	if (i >= s->n_keys || strlen(code) > UINT16_MAX)
		return i >= s->n_keys ? PS_E_NOT_FOUND : PS_E_INVALID_CODE;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&w.cond, &attr);
	pthread_condattr_destroy(&attr);
	deadline_in(&deadline, SIGNER_REQUEST_TIMEOUT_MS);

	pthread_mutex_lock(&s->lock);
	if (s->up) {
		w.id = ++s->next_id;
		w.next = s->waiters;
		s->waiters = &w;
		r = send_issue(s, &w, i, code);
	}
	while (r == 0 && !w.done)
		if (pthread_cond_timedwait(&w.cond, &s->lock, &deadline) == ETIMEDOUT)
			r = PS_E_TIMEOUT;
	if (!w.done)
		unlink_waiter(s, &w);
	pthread_mutex_unlock(&s->lock);
	pthread_cond_destroy(&w.cond);

	if (r == 0)
		r = w.status;
	if (r < 0) {
		issued_free(w.cert);
		return r == PS_E_TIMEOUT || r == PS_E_IO ? PS_E_TOKEN : r;
	}
	*ret = w.cert;
	return 0;
}

bool signer_alive(struct signer *s)
{
	bool alive;

	pthread_mutex_lock(&s->lock);
	alive = s->up && s->pong;
	pthread_mutex_unlock(&s->lock);
	return alive;
}

int signer_pid(struct signer *s)
{
	int pid;

	pthread_mutex_lock(&s->lock);
	pid = s->up ? (int)s->pid : 0;
	pthread_mutex_unlock(&s->lock);
	return pid;
}

void signer_free(struct signer *s)
{
	if (!s)
		return;
	if (s->thread_started) {
		(void)!write(s->wake[1], "x", 1);
		pthread_join(s->thread, NULL);
	}
	go_down(s);
	if (s->wake[0] >= 0)
		close(s->wake[0]);
	if (s->wake[1] >= 0)
		close(s->wake[1]);
	free_keys(s->keys, s->n_keys);
	free(s->config_path);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
