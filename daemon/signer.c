#include "signer.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
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
#include "code.h"
#include "signer_proto.h"
#include "util.h"

#include "build-config.h"

#define SIGNER_FD 3                 /* the socket's number in the signer */
#define SIGNER_EXE_NAME "popsignd-signer"
#define PING_INTERVAL_MS 1000
#define STATES_MAX 64               /* distinct key state texts kept */

/* A socketpair to one signer worker, used by one request at a time. */
struct channel {
	int fd;                         /* -1 once closed */
	bool busy;                      /* a request holds it */
	bool broken;                    /* hung up or spoke nonsense: never used again */
	uint32_t owed;                  /* a timed-out request whose answer has not been
					 * read yet (0: none): see take_channel_locked() */
	struct signer_msg *msg;         /* receive buffer, the holder's alone */
};

/* The channels of one signer process.  Freed once that signer is gone
 * (dead) and the last request holding one of them gave it back. */
struct channels {
	bool dead;
	size_t holders;
	size_t n;
	struct channel ch[];
};

struct key {
	char *name;
	struct ca_cert *ca;
	bool ready;                     /* as the last PONG said */
	const char *state;              /* interned: valid until signer_free() */
};

/* Failed PKCS#11 calls counted by signers that are gone, so that the
 * counters never go back when a signer is restarted. */
struct error_total {
	char name[SIGNER_CKR_NAME_MAX];
	unsigned long long count;
};

/* Why serve_answers() returned. */
enum served { SERVED_STOP, SERVED_GONE, SERVED_HUNG };

struct signer {
	char *config_path;
	int exe_fd;                     /* popsignd-signer, O_PATH: the file found at start */
	pthread_mutex_t lock;
	int fd;                         /* -1 while the signer is down */
	pid_t pid;
	bool up;
	bool pong;                      /* the last ping was answered */
	uint32_t next_id;
	struct channels *chans;         /* NULL while the signer is down */
	pthread_cond_t chan_back;       /* a channel was given back, or the signer went down */
	struct key *keys;
	size_t n_keys;
	pthread_t thread;
	bool thread_started;
	int wake[2];                    /* written to stop the supervisor */
	unsigned timeout_ms;            /* request_timeout */
	long long last_pong;            /* monotonic ms */
	struct signer_status *status;   /* from the last PONG; NULL: none since HELLO */
	struct error_total *gone_errors;
	size_t n_gone_errors;
	char *states[STATES_MAX];       /* interned key state texts */
	size_t n_states;
};

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the signer process ------------------------------------------------- */

/* Opens popsignd-signer, looked for in this order: beside this executable
 * (the build tree), where the install puts it relative to popsignd (sbindir
 * to libexecdir: a DESTDIR install runs as well), and its installed path.
 * It is opened once, O_PATH, and every signer started later runs that very
 * file: after a package upgrade replaced it, restarts still run the signer
 * that matches this front end.  Returns 0 and *ret_fd, or PS_E_IO if none is
 * an executable file. */
static int open_signer(int *ret_fd)
{
	const char *const beside[] = { SIGNER_EXE_NAME, POPSIGND_SIGNER_RELPATH };
	char exe[PATH_MAX], path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe));
	char *slash = NULL;
	int fd;

	if (n > 0 && (size_t)n < sizeof(exe)) {
		exe[n] = '\0';
		slash = strrchr(exe, '/');
	}
	for (size_t k = 0; slash && k < ELEMENTSOF(beside); k++) {
		int len = snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - exe), exe, beside[k]);

		if (beside[k][0] && len > 0 && (size_t)len < sizeof(path) && access(path, X_OK) == 0)
			break;
		path[0] = '\0';
	}
	if (!slash || !path[0])
		snprintf(path, sizeof(path), "%s", POPSIGND_SIGNER_PATH);
	fd = open(path, O_PATH | O_CLOEXEC);
	if (fd < 0 || access(path, X_OK) < 0) {
		if (fd >= 0)
			close(fd);
		return PS_E_IO;
	}
	*ret_fd = fd;
	return 0;
}

/* fork() and exec() "popsignd-signer --signer 3 -c PATH" from exe_fd.
 * Between the two only async-signal-safe calls: this process has threads. */
static int spawn(int exe_fd, const char *config_path, int *ret_fd, pid_t *ret_pid)
{
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
		char *argv[] = {SIGNER_EXE_NAME, "--signer", "3", "-c", (char *)config_path, NULL};

		if (sv[1] == SIGNER_FD)
			(void)fcntl(SIGNER_FD, F_SETFD, 0);
		else if (dup2(sv[1], SIGNER_FD) < 0)
			_exit(127);
		execveat(exe_fd, "", argv, environ, AT_EMPTY_PATH);
		_exit(127);
	}
	close(sv[1]);
	*ret_fd = sv[0];
	*ret_pid = pid;
	return 0;
}

/* Waits for one message, at most timeout_ms, and not at all once popsignd
 * stops (PS_E_IO then).  With ret_passed, the message must carry one
 * descriptor, which goes there. */
static int recv_with_timeout(int fd, int wake_fd, struct signer_msg *m, int timeout_ms,
			     int *ret_passed)
{
	struct pollfd p[2] = {{fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
	int n;

	do
		n = poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		return PS_E_TIMEOUT;
	if (n < 0 || p[1].revents)
		return PS_E_IO;
	return ret_passed ? signer_msg_recv_fd(fd, m, ret_passed) : signer_msg_recv(fd, m);
}

static void close_channel(struct channel *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static void channels_free(struct channels *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++) {
		close_channel(&p->ch[i]);
		free(p->ch[i].msg);
	}
	free(p);
}

static struct channels *channels_new(size_t n)
{
	struct channels *p = calloc(1, sizeof(*p) + n * sizeof(p->ch[0]));

	if (!p)
		return NULL;
	p->n = n;
	for (size_t i = 0; i < n; i++)
		p->ch[i].fd = -1;
	for (size_t i = 0; i < n; i++)
		if (!(p->ch[i].msg = malloc(sizeof(*p->ch[i].msg)))) {
			channels_free(p);
			return NULL;
		}
	return p;
}

static bool is_seqpacket(int fd)
{
	int type = 0;
	socklen_t len = sizeof(type);

	return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET;
}

/* Takes one CHANNEL message, which must be channel i: 0 and its count and
 * descriptor, or PS_E_INVALID_REQUEST (anything that came is closed). */
static int recv_channel(struct signer *s, int fd, struct signer_msg *m, int timeout_ms,
			uint16_t i, uint16_t *ret_count, int *ret_fd)
{
	uint16_t index = 0, count = 0;
	int cfd = -1;
	int r = recv_with_timeout(fd, s->wake[0], m, timeout_ms, &cfd);

	if (r == 0 && (m->h.type != SIGNER_MSG_CHANNEL ||
		       signer_decode_channel(m->payload, m->h.len, &index, &count) < 0 ||
		       index != i || !is_seqpacket(cfd)))
		r = PS_E_INVALID_REQUEST;
	if (r < 0) {
		if (cfd >= 0)
			close(cfd);
		return r;
	}
	*ret_count = count;
	*ret_fd = cfd;
	return 0;
}

/* After HELLO: one CHANNEL per signer worker, each with the front end's
 * end of that worker's socketpair. */
static int recv_channels(struct signer *s, int fd, struct signer_msg *m, int timeout_ms,
			 struct channels **ret)
{
	struct channels *pool = NULL;
	uint16_t count = 0;
	int first = -1;
	int r = recv_channel(s, fd, m, timeout_ms, 0, &count, &first);

	if (r == 0 && !(pool = channels_new(count))) {
		close(first);
		r = PS_E_NOMEM;
	}
	if (r == 0)
		pool->ch[0].fd = first;
	for (uint16_t i = 1; r == 0 && i < count; i++) {
		uint16_t n = 0;

		/* Stored before it is checked: channels_free() closes it. */
		r = recv_channel(s, fd, m, timeout_ms, i, &n, &pool->ch[i].fd);
		if (r == 0 && n != count)
			r = PS_E_INVALID_REQUEST;
	}
	if (r < 0) {
		channels_free(pool);
		return r;
	}
	*ret = pool;
	return 0;
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

#define SIGNER_STOP_GRACE_MS 2000

/* Waits for pid; after grace_ms (0: at once) it is killed. */
static void reap(pid_t pid, int grace_ms)
{
	int status = 0;

	if (pid <= 0)
		return;
	/* A signer that saw its socket close exits by itself, freeing what it
	 * holds (and letting leak checkers look); a stuck one is killed. */
	for (int waited = 0; waited < grace_ms; waited += 10) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid || (r < 0 && errno != EINTR))
			return;
		usleep(10 * 1000);
	}
	(void)kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
}

/* Starts a signer and waits for its HELLO and channels.  On the first start
 * the keys are taken from it; later they must match. */
static int start_process(struct signer *s, int timeout_ms, int *ret_fd, pid_t *ret_pid,
			 struct channels **ret_pool)
{
	static struct signer_msg m; /* only the supervisor or signer_start() runs this */
	struct channels *pool = NULL;
	struct key *keys = NULL;
	size_t n = 0;
	int fd = -1, r;
	pid_t pid = 0;

	r = spawn(s->exe_fd, s->config_path, &fd, &pid);
	if (r == 0)
		r = recv_with_timeout(fd, s->wake[0], &m, timeout_ms, NULL);
	if (r == 0 && m.h.type != SIGNER_MSG_HELLO)
		r = PS_E_INVALID_REQUEST;
	if (r == 0)
		r = parse_hello(&m, &keys, &n);
	if (r == 0 && s->keys && !same_keys(s, keys, n)) {
		log_error("the restarted signer has other keys than popsignd serves "
			  "(was %s changed?): send SIGHUP to reload", s->config_path);
		r = PS_E_CONFIG;
	}
	if (r == 0)
		r = recv_channels(s, fd, &m, timeout_ms, &pool);
	if (r == 0 && !s->keys) {
		s->keys = TAKE_PTR(keys);
		s->n_keys = n;
	}
	free_keys(keys, n);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		reap(pid, 0);
		return r == PS_E_NOMEM ? r : PS_E_TOKEN;
	}
	*ret_fd = fd;
	*ret_pid = pid;
	*ret_pool = pool;
	return 0;
}

/* ---- going down -------------------------------------------------------- */

/* Adds n failures of the code name to the totals of gone signers. */
static void gone_errors_add(struct signer *s, const char *name, unsigned long long n)
{
	struct error_total *e;

	for (size_t i = 0; i < s->n_gone_errors; i++)
		if (strcmp(s->gone_errors[i].name, name) == 0) {
			s->gone_errors[i].count += n;
			return;
		}
	if (s->n_gone_errors == SIGNER_ERRORS_MAX)
		return;
	e = realloc(s->gone_errors, (s->n_gone_errors + 1) * sizeof(*e));
	if (!e)
		return;
	s->gone_errors = e;
	e = &e[s->n_gone_errors++];
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->count = n;
}

/* Keeps what the last status said of a signer that is going. Caller holds
 * s->lock. */
static void forget_status_locked(struct signer *s)
{
	for (size_t i = 0; s->status && i < s->status->n_errors; i++)
		gone_errors_add(s, s->status->errors[i].name, s->status->errors[i].count);
	signer_status_free(s->status);
	s->status = NULL;
}

/* Retires the channels of a signer that is going: a request waiting on one
 * wakes up to EOF at once (shutdown() leaves the descriptor to its holder,
 * who closes it), and requests waiting for one are told.  Caller holds
 * s->lock. */
static void retire_channels_locked(struct signer *s)
{
	struct channels *p = s->chans;

	s->chans = NULL;
	pthread_cond_broadcast(&s->chan_back);
	if (!p)
		return;
	p->dead = true;
	for (size_t i = 0; i < p->n; i++) {
		if (p->ch[i].fd >= 0)
			(void)shutdown(p->ch[i].fd, SHUT_RDWR);
		if (!p->ch[i].busy)
			close_channel(&p->ch[i]);
	}
	if (p->holders == 0)
		channels_free(p);
}

/* Marks the signer down and fails every request waiting for it. */
static void go_down(struct signer *s, int grace_ms)
{
	pid_t pid;
	int fd;

	pthread_mutex_lock(&s->lock);
	s->up = false;
	forget_status_locked(s);
	fd = s->fd;
	pid = s->pid;
	s->fd = -1;
	s->pid = 0;
	retire_channels_locked(s);
	pthread_mutex_unlock(&s->lock);
	if (fd >= 0)
		close(fd);
	reap(pid, grace_ms);
}

/* ---- supervision -------------------------------------------------------- */

/* Sleeps ms unless asked to stop: true if asked to stop. */
static bool sleep_or_stop(struct signer *s, int ms)
{
	struct pollfd p = {s->wake[0], POLLIN, 0};

	return poll(&p, 1, ms) > 0;
}

/* The PING carries the request timeout: a reload that changes it reaches
 * the signer within a ping interval. */
static void send_ping(struct signer *s)
{
	struct signer_writer w = {0};

	pthread_mutex_lock(&s->lock);
	s->pong = false;
	if (s->fd >= 0 && signer_encode_ping(&w, s->timeout_ms) == 0)
		(void)signer_msg_send(s->fd, SIGNER_MSG_PING, 0, 0, w.data, w.len);
	pthread_mutex_unlock(&s->lock);
	free(w.data);
}

/* watchdog_ms(): how long every worker, or the monitor, may be stuck in a
 * call into a module before the signer is killed and started again; a hung
 * PKCS#11 call can only be ended with its process. */
static long long watchdog_ms(const struct signer *s)
{
	long long ms = 2LL * s->timeout_ms;

	return ms > SIGNER_WATCHDOG_MIN_MS ? ms : SIGNER_WATCHDOG_MIN_MS;
}

/* The same text is the same pointer, so callers may keep it until
 * signer_free().  Caller holds s->lock. */
static const char *intern_state_locked(struct signer *s, const char *text)
{
	for (size_t i = 0; i < s->n_states; i++)
		if (strcmp(s->states[i], text) == 0)
			return s->states[i];
	if (s->n_states == STATES_MAX || !(s->states[s->n_states] = strdup(text)))
		return "unknown";
	return s->states[s->n_states++];
}

/* Whether st shows the signer hung beyond the watchdog limit (logged). */
static bool status_hung(struct signer *s, const struct signer_status *st, pid_t pid)
{
	long long limit = watchdog_ms(s);
	size_t stuck = 0;

	/* One call stuck that long already makes its token "not responding"
	 * for good: only a new process can end it. */
	for (size_t i = 0; i < st->n_workers; i++)
		stuck += st->worker_busy_ms[i] > limit;
	if (stuck > 0) {
		log_error("%zu signer worker(s) have been in a PKCS#11 call for more than %lld ms: "
			  "killing the signer (pid %d) and starting a new one", stuck, limit,
			  (int)pid);
		return true;
	}
	if (st->monitor_busy_ms > limit) {
		log_error("the signer's token monitor has been in a PKCS#11 call for more than "
			  "%lld ms: killing the signer (pid %d) and starting a new one", limit,
			  (int)pid);
		return true;
	}
	return false;
}

/* Takes the status of a PONG.  Returns false if the signer is hung. */
static bool take_pong(struct signer *s, const struct signer_msg *m)
{
	struct signer_status *st = NULL;
	bool hung;

	if (m->h.status != 0 || signer_decode_status(m->payload, m->h.len, &st) < 0)
		return true; /* no status this time: the next PONG brings one */
	pthread_mutex_lock(&s->lock);
	s->pong = true;
	s->last_pong = now_ms();
	for (size_t i = 0; i < s->n_keys && i < st->n_keys; i++) {
		s->keys[i].ready = st->keys[i].ready;
		s->keys[i].state = intern_state_locked(s, st->keys[i].state);
	}
	signer_status_free(s->status);
	s->status = st;
	hung = status_hung(s, st, s->pid);
	pthread_mutex_unlock(&s->lock);
	return !hung;
}

/* Whether the signer has not answered pings for longer than the watchdog
 * limit (logged). */
static bool pongs_missing(struct signer *s)
{
	long long silent, limit;
	bool missing;

	pthread_mutex_lock(&s->lock);
	silent = now_ms() - s->last_pong;
	limit = watchdog_ms(s) + PING_INTERVAL_MS;
	missing = silent > limit;
	if (missing)
		log_error("the signer (pid %d) has not answered a ping for %lld ms: killing it "
			  "and starting a new one", (int)s->pid, silent);
	pthread_mutex_unlock(&s->lock);
	return missing;
}

/* Reads one message from the signer.  Returns false if the conversation
 * is over. */
static bool serve_message(struct signer *s, int fd, enum served *why)
{
	static struct signer_msg m;

	*why = SERVED_GONE;
	if (signer_msg_recv(fd, &m) < 0)
		return false;
	if (m.h.type == SIGNER_MSG_PONG) {
		*why = SERVED_HUNG;
		return take_pong(s, &m);
	}
	log_error("unexpected message type %u from the signer", m.h.type);
	return false;
}

/* Pings the signer and reads its PONGs until it goes away, hangs, or
 * popsignd stops. */
static enum served serve_answers(struct signer *s, int fd)
{
	long long next_ping = now_ms() + PING_INTERVAL_MS;
	enum served why = SERVED_GONE;

	for (;;) {
		struct pollfd p[2] = {{fd, POLLIN, 0}, {s->wake[0], POLLIN, 0}};
		long long wait = next_ping - now_ms();
		int n = poll(p, 2, wait > 0 ? (int)wait : 0);

		if (n < 0 && errno != EINTR)
			return SERVED_GONE;
		if (n > 0 && p[1].revents)
			return SERVED_STOP;
		if (now_ms() >= next_ping) {
			if (pongs_missing(s))
				return SERVED_HUNG;
			send_ping(s);
			next_ping = now_ms() + PING_INTERVAL_MS;
		}
		if (n > 0 && p[0].revents && !serve_message(s, fd, &why))
			return why;
	}
}

/* A signer that said HELLO opened every key and made a test signature
 * with each: every key is ready until its first PONG says otherwise. */
static void went_up(struct signer *s, int fd, pid_t pid, struct channels *pool)
{
	pthread_mutex_lock(&s->lock);
	s->fd = fd;
	s->pid = pid;
	s->chans = pool;
	s->up = true;
	s->pong = true;
	s->last_pong = now_ms();
	for (size_t i = 0; i < s->n_keys; i++) {
		s->keys[i].ready = true;
		s->keys[i].state = intern_state_locked(s, "ready");
	}
	pthread_mutex_unlock(&s->lock);
}

static void *supervise(void *arg)
{
	struct signer *s = arg;
	int backoff = SIGNER_BACKOFF_MIN_MS;

	for (;;) {
		struct channels *pool = NULL;
		int fd = -1;
		pid_t pid = 0;

		pthread_mutex_lock(&s->lock);
		fd = s->fd;
		pthread_mutex_unlock(&s->lock);
		if (fd >= 0) {
			enum served why = serve_answers(s, fd);

			if (why == SERVED_STOP)
				return NULL;
			if (why == SERVED_GONE)
				log_error("the signer process stopped: restarting it");
			go_down(s, 0);
			backoff = SIGNER_BACKOFF_MIN_MS;
		}
		if (sleep_or_stop(s, backoff))
			return NULL;
		if (start_process(s, SIGNER_START_TIMEOUT_MS, &fd, &pid, &pool) < 0) {
			if (sleep_or_stop(s, 0))
				return NULL;
			backoff = backoff * 2 > SIGNER_BACKOFF_MAX_MS ? SIGNER_BACKOFF_MAX_MS
								       : backoff * 2;
			log_warning("the signer did not start: next try in %d ms", backoff);
			continue;
		}
		went_up(s, fd, pid, pool);
		log_info("the signer process is back (pid %d)", (int)pid);
	}
}

/* ---- the interface ------------------------------------------------------ */

int signer_start(const struct config *cfg, struct signer **ret)
{
	struct signer *s = calloc(1, sizeof(*s));
	struct channels *pool = NULL;
	pid_t pid = 0;
	int fd = -1, r;

	if (!s)
		return PS_E_NOMEM;
	s->fd = -1;
	s->wake[0] = s->wake[1] = -1;
	s->exe_fd = -1;
	pthread_mutex_init(&s->lock, NULL);
	cond_init_monotonic(&s->chan_back);
	s->timeout_ms = cfg->request_timeout ? cfg->request_timeout * 1000u
					     : SIGNER_REQUEST_TIMEOUT_MS;
	s->config_path = strdup(cfg->path);
	r = s->config_path && pipe2(s->wake, O_CLOEXEC) == 0 ? 0 : PS_E_IO;
	if (r == 0) {
		r = open_signer(&s->exe_fd);
		if (r == PS_E_IO)
			log_error("cannot find %s beside popsignd or at %s", SIGNER_EXE_NAME,
				  POPSIGND_SIGNER_PATH);
	}
	if (r == 0)
		r = start_process(s, SIGNER_START_TIMEOUT_MS, &fd, &pid, &pool);
	if (r == 0) {
		went_up(s, fd, pid, pool);
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

/* ---- issuing on a channel ---------------------------------------------- */

/* What a request leaves its channel in. */
enum after { AFTER_CLEAN, AFTER_OWED, AFTER_BROKEN };

/* A channel fails only when its worker is gone or the signer spoke
 * nonsense on it: either way the conversation is over, and shutting the
 * control socket down makes the supervisor start a new signer.  Caller
 * holds s->lock. */
static void break_channel_locked(struct signer *s, struct channels *p, struct channel *c)
{
	c->broken = true;
	close_channel(c);
	if (!p->dead && p == s->chans && s->fd >= 0)
		(void)shutdown(s->fd, SHUT_RDWR);
}

/* Reads, without waiting, what came on a free channel that owes an answer:
 * the late answer clears the debt.  Caller holds s->lock. */
static void drain_locked(struct signer *s, struct channels *p, struct channel *c)
{
	struct pollfd pfd = {c->fd, POLLIN, 0};

	while (c->owed && !c->broken && poll(&pfd, 1, 0) > 0) {
		if (signer_msg_recv(c->fd, c->msg) < 0 || c->msg->h.type != SIGNER_MSG_ISSUED)
			break_channel_locked(s, p, c);
		else if (c->msg->h.id == c->owed)
			c->owed = 0;
	}
}

static void timespec_at_ms(long long ms, struct timespec *ts)
{
	ts->tv_sec = ms / 1000;
	ts->tv_nsec = (ms % 1000) * 1000000L;
}

/* Takes a free channel, waiting until deadline (monotonic ms) while all
 * are busy.  A channel that owes the answer to a request that timed out is
 * not taken until that answer has been read: its worker is still busy with
 * it (perhaps hung in the token), and the answer would come first.  If
 * every channel not in use owes one, every other worker is stuck and there
 * is nothing to wait for.  Returns 0 and *ret_pool, *ret (give it back with
 * give_back_locked()), PS_E_TOKEN (signer down, or every free worker
 * stuck), or PS_E_TIMEOUT.  Caller holds s->lock. */
static int take_channel_locked(struct signer *s, long long deadline, struct channels **ret_pool,
			       struct channel **ret)
{
	for (;;) {
		struct channels *p = s->up ? s->chans : NULL;
		bool some_busy = false;
		struct timespec ts;

		for (size_t i = 0; p && i < p->n; i++) {
			struct channel *c = &p->ch[i];

			if (c->owed && !c->busy && !c->broken)
				drain_locked(s, p, c);
			if (c->broken || c->owed) {
				some_busy = some_busy || c->busy;
				continue;
			}
			if (c->busy) {
				some_busy = true;
				continue;
			}
			c->busy = true;
			p->holders++;
			*ret_pool = p;
			*ret = c;
			return 0;
		}
		if (!some_busy)
			return PS_E_TOKEN;
		timespec_at_ms(deadline, &ts);
		if (pthread_cond_timedwait(&s->chan_back, &s->lock, &ts) == ETIMEDOUT)
			return PS_E_TIMEOUT;
	}
}

/* Gives back a channel taken by request id.  Caller holds s->lock. */
static void give_back_locked(struct signer *s, struct channels *p, struct channel *c,
			     enum after after, uint32_t id)
{
	c->busy = false;
	if (after == AFTER_OWED)
		c->owed = id;
	if (after == AFTER_BROKEN)
		break_channel_locked(s, p, c);
	else if (p->dead)
		close_channel(c);
	if (--p->holders == 0 && p->dead) {
		channels_free(p);
		return;
	}
	/* A clean channel serves any one waiter; any other change may leave
	 * every waiter with nothing to wait for. */
	if (after == AFTER_CLEAN)
		pthread_cond_signal(&s->chan_back);
	else
		pthread_cond_broadcast(&s->chan_back);
}

/* The result an ISSUED answer carries. */
static int answer_result(const struct signer_msg *m, struct issued **ret)
{
	if (m->h.status > 0)
		return PS_E_INTERNAL;
	if (m->h.status < 0)
		return m->h.status;
	return signer_decode_issued(m->payload, m->h.len, ret) < 0 ? PS_E_INTERNAL : 0;
}

/* Waits on c for the answer to request id until deadline (monotonic ms),
 * skipping answers to earlier requests.  Returns the answer's result (0
 * and *ret), PS_E_TIMEOUT (*after: the channel owes the answer) or PS_E_IO
 * (*after: the channel is broken). */
static int await_answer(struct channel *c, uint32_t id, long long deadline, struct issued **ret,
			enum after *after)
{
	for (;;) {
		struct pollfd pfd = {c->fd, POLLIN, 0};
		long long left = deadline - now_ms();
		int n;

		if (left <= 0) {
			*after = AFTER_OWED;
			return PS_E_TIMEOUT;
		}
		n = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (n < 0 && errno != EINTR)
			break;
		if (n <= 0)
			continue;
		if (signer_msg_recv(c->fd, c->msg) < 0 || c->msg->h.type != SIGNER_MSG_ISSUED)
			break;
		if (c->msg->h.id == id)
			return answer_result(c->msg, ret);
	}
	*after = AFTER_BROKEN;
	return PS_E_IO;
}

/* Sends the ISSUE for code with key i on c and waits for its answer. */
static int issue_on(struct channel *c, uint32_t id, size_t i, const char *code,
		    long long deadline, struct issued **ret, enum after *after)
{
	struct signer_issue is = {.key = (uint16_t)i, .deadline_ms = (uint64_t)deadline,
				  .code_len = strlen(code)};
	uint8_t payload[SIGNER_ISSUE_MAX];
	size_t len = 0;
	int r;

	if (is.code_len > CODE_MAX_LEN)
		return PS_E_INVALID_CODE;
	memcpy(is.code, code, is.code_len);
	r = signer_encode_issue(&is, payload, &len);
	if (r == 0 && signer_msg_send(c->fd, SIGNER_MSG_ISSUE, id, 0, payload, len) < 0) {
		*after = AFTER_BROKEN;
		r = PS_E_IO;
	}
	if (r == 0)
		r = await_answer(c, id, deadline, ret, after);
	return r;
}

/* The request goes straight to a signer worker on a channel of its own and
 * the answer comes straight back: no thread in between on either side. */
int signer_issue(struct signer *s, size_t i, const char *code, struct issued **ret)
{
	enum after after = AFTER_CLEAN;
	struct channels *p = NULL;
	struct channel *c = NULL;
	long long deadline;
	uint32_t id = 0;
	int r;

	if (i >= s->n_keys)
		return PS_E_NOT_FOUND;
	if (strlen(code) > CODE_MAX_LEN)
		return PS_E_INVALID_CODE;
	pthread_mutex_lock(&s->lock);
	deadline = now_ms() + s->timeout_ms;
	r = take_channel_locked(s, deadline, &p, &c);
	if (r == 0 && (id = ++s->next_id) == 0)
		id = ++s->next_id; /* 0 means "no answer owed" */
	pthread_mutex_unlock(&s->lock);
	if (r == 0) {
		r = issue_on(c, id, i, code, deadline, ret, &after);
		pthread_mutex_lock(&s->lock);
		give_back_locked(s, p, c, after, id);
		pthread_mutex_unlock(&s->lock);
	}
	return r == PS_E_TIMEOUT || r == PS_E_IO ? PS_E_TOKEN : r;
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

void signer_set_request_timeout(struct signer *s, unsigned ms)
{
	pthread_mutex_lock(&s->lock);
	s->timeout_ms = ms ? ms : SIGNER_REQUEST_TIMEOUT_MS;
	pthread_mutex_unlock(&s->lock);
}

int signer_key_ready(struct signer *s, size_t i, const char **state)
{
	int r = PS_E_TOKEN;

	pthread_mutex_lock(&s->lock);
	if (i >= s->n_keys) {
		*state = "no such key";
	} else if (!s->up) {
		*state = "signer not running";
	} else if (now_ms() - s->last_pong > watchdog_ms(s)) {
		*state = "signer not responding";
	} else {
		*state = s->keys[i].state;
		r = s->keys[i].ready ? 0 : PS_E_TOKEN;
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

unsigned signer_sessions_in_use(struct signer *s)
{
	unsigned n;

	pthread_mutex_lock(&s->lock);
	n = s->up && s->status ? s->status->sessions_in_use : 0;
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* Totals by name: gone signers' counts plus the running one's. */
static struct error_total *error_totals(struct signer *s, size_t *ret_n)
{
	struct error_total *all;
	size_t n;

	pthread_mutex_lock(&s->lock);
	n = s->n_gone_errors + (s->status ? s->status->n_errors : 0);
	all = calloc(n + 1, sizeof(*all));
	n = 0;
	for (size_t i = 0; all && i < s->n_gone_errors; i++)
		all[n++] = s->gone_errors[i];
	for (size_t i = 0; all && s->status && i < s->status->n_errors; i++) {
		size_t j = 0;

		while (j < n && strcmp(all[j].name, s->status->errors[i].name) != 0)
			j++;
		if (j == n)
			snprintf(all[n++].name, sizeof(all[j].name), "%s", s->status->errors[i].name);
		all[j].count += s->status->errors[i].count;
	}
	pthread_mutex_unlock(&s->lock);
	*ret_n = n;
	return all;
}

void signer_token_errors(struct signer *s,
			 void (*cb)(void *ctx, const char *ckr_name, unsigned long long count),
			 void *ctx)
{
	size_t n = 0;
	struct error_total *all = error_totals(s, &n);

	/* Outside the lock: cb may take its own locks. */
	for (size_t i = 0; all && i < n; i++)
		cb(ctx, all[i].name, all[i].count);
	free(all);
}

void signer_free(struct signer *s)
{
	if (!s)
		return;
	if (s->thread_started) {
		(void)!write(s->wake[1], "x", 1);
		pthread_join(s->thread, NULL);
	}
	go_down(s, SIGNER_STOP_GRACE_MS);
	if (s->wake[0] >= 0)
		close(s->wake[0]);
	if (s->wake[1] >= 0)
		close(s->wake[1]);
	free_keys(s->keys, s->n_keys);
	free(s->gone_errors);
	for (size_t i = 0; i < s->n_states; i++)
		free(s->states[i]);
	free(s->config_path);
	if (s->exe_fd >= 0)
		close(s->exe_fd);
	pthread_cond_destroy(&s->chan_back);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
