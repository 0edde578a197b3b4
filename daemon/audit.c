/* The audit trail: JSON lines committed in groups by one writer thread.
 *
 * Callers format their line, append it to the pending batch and sleep until
 * the writer has written and fdatasync'd the batch holding it.  The writer
 * takes the whole pending batch at once, so records that arrive while a sync
 * is running share the next one (group commit).  A batch that cannot be
 * written and synced is cut back to the file size it started from, so the
 * file only ever ends in a whole line; every caller in it gets PS_E_AUDIT.
 * If even that cut fails, the trail is marked broken and refuses records
 * until a successful audit_reopen(): the daemon fails closed.
 *
 * Lines longer than AUDIT_RECORD_MAX and strings that are not valid UTF-8
 * are refused with PS_E_AUDIT rather than shortened: callers bound and
 * validate what they pass (codes, key and client names are checked long
 * before a record is written). */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "error.h"
#include "text.h"
#include "util.h"

/* "2026-11-26T17:45:52.123Z" (24 bytes) and its NUL, with room for any struct tm. */
#define AUDIT_TIME_LEN 80

/* A caller sleeping until its line is committed; lives on its stack. */
struct waiter {
	struct waiter *next;
	int result;
	bool done;
};

struct batch {
	char *data;
	size_t len;
	size_t cap;
	struct waiter *waiters; /* whose lines are in data */
};

struct audit {
	char *path;
	pthread_mutex_t lock;
	pthread_cond_t wake;  /* writer: records pending, a reopen or stop */
	pthread_cond_t done;  /* callers: a batch or a reopen finished */
	struct batch pending; /* under lock */
	int fd;               /* switched by the writer only */
	int reopen_fd;        /* under lock: -1, or the file to switch to */
	bool broken;          /* under lock: a failed batch could not be cut back */
	bool stop;            /* under lock */
	pthread_t thread;
};

static void format_time(const struct timespec *ts, char out[AUDIT_TIME_LEN])
{
	long ms = ts->tv_nsec >= 0 && ts->tv_nsec < 1000000000L ? ts->tv_nsec / 1000000L : 0;
	struct tm tm = { 0 };

	gmtime_r(&ts->tv_sec, &tm);
	snprintf(out, AUDIT_TIME_LEN, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

/* Formats rec as one JSON line with its newline: 0 and *ret_line (free it),
 * or PS_E_AUDIT for a line that cannot be built or is too long. */
static int format_line(const struct audit_record *rec, char **ret_line, size_t *ret_len)
{
	_cleanup_(json_decrefp) json_t *obj = NULL; /* jansson's own, 2.11 and later */
	char when[AUDIT_TIME_LEN], not_after[RFC3339_LEN];
	char *text;
	size_t len;

	format_time(&rec->time, when);
	if (rec->not_after != 0)
		time_format_rfc3339(rec->not_after, not_after);
	/* The member order is the documented one: jansson keeps insertion order. */
	obj = json_pack("{s:s, s:I, s:s*, s:s*, s:s*, s:s*, s:s*, s:s, s:s*, s:s*, s:s*, s:s*}",
			"time", when, "request_id", (json_int_t)rec->request_id,
			"client", rec->client, "peer", rec->peer, "key", rec->key,
			"verification_code", rec->code, "context", rec->context,
			"outcome", rec->outcome, "error", rec->error, "serial", rec->serial,
			"sha256_fingerprint", rec->sha256_fingerprint,
			"not_after", rec->not_after != 0 ? not_after : NULL);
	if (!obj)
		return PS_E_AUDIT;
	/* ASCII only: a reader's terminal sees no control or bidi characters. */
	text = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (!text)
		return PS_E_AUDIT;
	len = strlen(text);
	if (len + 1 > AUDIT_RECORD_MAX) {
		free(text);
		return PS_E_AUDIT;
	}
	text[len] = '\n'; /* json_dumps left room for its NUL: reuse it */
	*ret_line = text;
	*ret_len = len + 1;
	return 0;
}

static int batch_append(struct batch *b, const char *line, size_t len)
{
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 4 * AUDIT_RECORD_MAX;
		char *data;

		while (cap < b->len + len)
			cap *= 2;
		data = realloc(b->data, cap);
		if (!data)
			return PS_E_AUDIT;
		b->data = data;
		b->cap = cap;
	}
	memcpy(b->data + b->len, line, len);
	b->len += len;
	return 0;
}

/* Wakes every caller of b with result and empties b. */
static void batch_finish(struct batch *b, int result)
{
	for (struct waiter *w = b->waiters; w; w = w->next) {
		w->result = result;
		w->done = true;
	}
	b->waiters = NULL;
	b->len = 0;
}

/* Moves the lines and callers of pending (under the lock) into the empty
 * work, which lends pending its buffer: callers keep appending while the
 * writer commits. */
static void batch_take(struct batch *work, struct batch *pending)
{
	struct batch spare = *work;

	*work = *pending;
	*pending = (struct batch){ .data = spare.data, .cap = spare.cap };
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return PS_E_AUDIT;
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Appends data and syncs it; on failure cuts the file back to where it was,
 * and sets *broken if that fails too. */
static int commit(int fd, const char *data, size_t len, bool *broken)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return PS_E_AUDIT;
	if (write_all(fd, data, len) == 0 && fdatasync(fd) == 0)
		return 0;
	if (ftruncate(fd, st.st_size) < 0 || fdatasync(fd) < 0)
		*broken = true;
	return PS_E_AUDIT;
}

/* Called by the writer with the lock held. */
static void switch_file(struct audit *a)
{
	close(a->fd);
	a->fd = a->reopen_fd;
	a->reopen_fd = -1;
	a->broken = false;
}

static void *writer_main(void *arg)
{
	struct audit *a = arg;
	struct batch work = { 0 };

	pthread_mutex_lock(&a->lock);
	for (;;) {
		bool broken;
		int r;

		while (a->pending.len == 0 && a->reopen_fd < 0 && !a->stop)
			pthread_cond_wait(&a->wake, &a->lock);
		if (a->reopen_fd >= 0) {
			switch_file(a);
			pthread_cond_broadcast(&a->done);
			continue;
		}
		if (a->pending.len == 0)
			break; /* stopping, and everything is committed */
		batch_take(&work, &a->pending);
		broken = a->broken;
		pthread_mutex_unlock(&a->lock);
		r = broken ? PS_E_AUDIT : commit(a->fd, work.data, work.len, &broken);
		pthread_mutex_lock(&a->lock);
		a->broken = a->broken || broken;
		batch_finish(&work, r);
		pthread_cond_broadcast(&a->done);
	}
	pthread_mutex_unlock(&a->lock);
	free(work.data);
	return NULL;
}

/* A crash in the middle of a write may have left part of a line at the end
 * of the file: that record was never acknowledged, so it is cut off.  It is
 * shorter than AUDIT_RECORD_MAX; a longer unterminated tail means the file is
 * not an audit trail, and it is refused rather than cut. */
static int cut_torn_tail(const char *path, int fd, const struct stat *st)
{
	_cleanup_close_ int rfd = -1;
	char buf[AUDIT_RECORD_MAX];
	size_t n = st->st_size < AUDIT_RECORD_MAX ? (size_t)st->st_size : AUDIT_RECORD_MAX;
	off_t start = st->st_size - (off_t)n;
	struct stat rst;
	char *nl;

	if (n == 0)
		return 0;
	rfd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
	if (rfd < 0 || fstat(rfd, &rst) < 0 || rst.st_dev != st->st_dev || rst.st_ino != st->st_ino)
		return PS_E_IO;
	if (pread(rfd, buf, n, start) != (ssize_t)n)
		return PS_E_IO;
	if (buf[n - 1] == '\n')
		return 0;
	nl = memrchr(buf, '\n', n);
	if (!nl && start > 0)
		return PS_E_IO;
	if (ftruncate(fd, nl ? start + (nl - buf) + 1 : 0) < 0 || fdatasync(fd) < 0)
		return PS_E_IO;
	return 0;
}

/* Opens path for appending: a regular file only (never through a symbolic
 * link, never blocking on a FIFO), created with exactly AUDIT_FILE_MODE
 * whatever the umask, an existing file keeping its mode. */
static int file_open(const char *path, int *ret_fd)
{
	const int flags = O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK;
	_cleanup_close_ int fd = open(path, flags | O_CREAT | O_EXCL, AUDIT_FILE_MODE);
	bool created = fd >= 0;
	struct stat st;

	if (fd < 0 && errno == EEXIST)
		fd = open(path, flags);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return PS_E_IO;
	if (created && fchmod(fd, AUDIT_FILE_MODE) < 0)
		return PS_E_IO;
	if (fcntl(fd, F_SETFL, O_APPEND) < 0) /* drops O_NONBLOCK */
		return PS_E_IO;
	if (cut_torn_tail(path, fd, &st) < 0)
		return PS_E_IO;
	*ret_fd = fd;
	fd = -1; /* NOLINT(clang-analyzer-deadcode.DeadStores): read by closep() at return */
	return 0;
}

/* Starts the writer with every signal blocked: signals belong to the
 * daemon's main thread, and none should interrupt a commit. */
static int writer_start(struct audit *a)
{
	sigset_t all, old;
	int r;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&a->thread, NULL, writer_main, a);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r == 0 ? 0 : PS_E_IO;
}

int audit_open(const char *path, struct audit **ret)
{
	struct audit *a = calloc(1, sizeof(*a));
	int r = PS_E_IO;

	if (!a)
		return PS_E_IO;
	a->fd = -1;
	a->reopen_fd = -1;
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->wake, NULL);
	pthread_cond_init(&a->done, NULL);
	a->path = strdup(path);
	if (!a->path || file_open(path, &a->fd) < 0 || writer_start(a) < 0)
		goto out;
	*ret = TAKE_PTR(a);
	r = 0;
out:
	if (a) {
		if (a->fd >= 0)
			close(a->fd);
		pthread_cond_destroy(&a->done);
		pthread_cond_destroy(&a->wake);
		pthread_mutex_destroy(&a->lock);
		free(a->path);
		free(a);
	}
	return r;
}

int audit_write(struct audit *a, const struct audit_record *rec)
{
	_cleanup_free_ char *line = NULL;
	struct waiter w = { .result = PS_E_AUDIT };
	size_t len;
	int r = format_line(rec, &line, &len);

	if (r < 0)
		return r;
	pthread_mutex_lock(&a->lock);
	if (a->broken || batch_append(&a->pending, line, len) < 0) {
		pthread_mutex_unlock(&a->lock);
		return PS_E_AUDIT;
	}
	w.next = a->pending.waiters;
	a->pending.waiters = &w;
	pthread_cond_signal(&a->wake);
	while (!w.done)
		pthread_cond_wait(&a->done, &a->lock);
	pthread_mutex_unlock(&a->lock);
	return w.result;
}

int audit_reopen(struct audit *a, const char *path)
{
	char *copy = path ? strdup(path) : NULL;
	int fd;

	if (path && !copy)
		return PS_E_NOMEM;
	if (file_open(copy ? copy : a->path, &fd) < 0) {
		free(copy);
		return PS_E_IO;
	}
	pthread_mutex_lock(&a->lock);
	if (copy) {
		free(a->path);
		a->path = copy;
	}
	/* One switch at a time; the writer makes it between two batches. */
	while (a->reopen_fd >= 0)
		pthread_cond_wait(&a->done, &a->lock);
	a->reopen_fd = fd;
	pthread_cond_signal(&a->wake);
	while (a->reopen_fd >= 0)
		pthread_cond_wait(&a->done, &a->lock);
	pthread_mutex_unlock(&a->lock);
	return 0;
}

void audit_close(struct audit *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	a->stop = true;
	pthread_cond_signal(&a->wake);
	pthread_mutex_unlock(&a->lock);
	pthread_join(a->thread, NULL);
	close(a->fd);
	free(a->pending.data);
	pthread_cond_destroy(&a->done);
	pthread_cond_destroy(&a->wake);
	pthread_mutex_destroy(&a->lock);
	free(a->path);
	free(a);
}
