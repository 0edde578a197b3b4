/* The audit trail: JSON lines committed in groups, with no thread of its own.
 *
 * A caller formats its line, appends it to the pending batch and waits until
 * the batch holding it is written and fdatasync'd.  Whoever finds no commit
 * running becomes the leader: it takes the whole pending batch, commits it
 * outside the lock, wakes exactly the callers in it, and hands the lead to a
 * caller still pending, so records that arrive during a sync share the next
 * one (group commit).  The leader's own record needs no hand-off at all.
 * Before taking the batch, a leader waits a little for records announced
 * and not yet written: at a steady load certificates come out of the signer
 * one at a time, and without that wait nearly every record would pay for an
 * fdatasync of its own.
 *
 * A batch that cannot be written and synced is cut back to the file size it
 * started from, so the file only ever ends in a whole line; every caller in
 * it gets PS_E_AUDIT.  If even that cut fails, the trail is marked broken and
 * refuses records until a successful audit_reopen(): the daemon fails closed.
 *
 * Lines longer than AUDIT_RECORD_MAX and strings that are not valid UTF-8
 * are refused with PS_E_AUDIT rather than shortened: callers bound and
 * validate what they pass (codes, key and client names are checked long
 * before a record is written). */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "text.h"
#include "util.h"

/* "2026-11-26T17:45:52.123Z" (24 bytes) and its NUL, with room for any struct tm. */
#define AUDIT_TIME_LEN 80

/* A caller waiting until its line is committed; lives on its stack. */
struct waiter {
	struct waiter *next;
	pthread_cond_t wake; /* done, or the lead handed over */
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
	pthread_cond_t idle;  /* a commit finished: for reopen and close */
	pthread_cond_t company; /* the leader gathering: no record announced is missing */
	unsigned announced;   /* under lock: records announced and not yet written */
	long delay_ns;        /* the longest wait for them */
	bool gathering;       /* under lock: the leader waits on company */
	struct batch pending; /* under lock */
	struct batch spare;   /* the committing leader's, or an empty buffer */
	bool committing;      /* under lock: a leader is writing a batch */
	int fd;               /* switched only while no batch is committing */
	int reopen_fd;        /* under lock: -1, or the file the leader switches to */
	bool broken;          /* under lock: a failed batch could not be cut back */
};

static void format_time(const struct timespec *ts, char out[AUDIT_TIME_LEN])
{
	long ms = ts->tv_nsec >= 0 && ts->tv_nsec < 1000000000L ? ts->tv_nsec / 1000000L : 0;
	struct tm tm = { 0 };

	gmtime_r(&ts->tv_sec, &tm);
	snprintf(out, AUDIT_TIME_LEN, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

/* Writes "name":"value" at p: the end, or NULL if value is not UTF-8. */
static char *put_member(char *p, const char *name, const char *value)
{
	p = json_put_string(p, name);
	if (!p)
		return NULL;
	*p++ = ':';
	return json_put_string(p, value);
}

/* Formats rec as one JSON line with its newline, written directly (it is on
 * every certificate's path) in the documented member order, NULL members
 * left out, into buf (AUDIT_RECORD_MAX bytes, or *heap if the worst case
 * could need more: free it).  Returns 0 and the line, or PS_E_AUDIT for a
 * line that cannot be built or is too long. */
static int format_line(const struct audit_record *rec, char *buf, char **heap,
		       const char **ret_line, size_t *ret_len)
{
	char when[AUDIT_TIME_LEN], not_after[RFC3339_LEN];
	const char *const names[] = {"client", "peer", "key", "verification_code", "context",
				     "outcome", "error", "serial", "sha256_fingerprint",
				     "not_after"};
	const char *const values[] = {rec->client, rec->peer, rec->key, rec->code, rec->context,
				      rec->outcome, rec->error, rec->serial,
				      rec->sha256_fingerprint, rec->not_after != 0 ? not_after : NULL};
	size_t cap = 2 * AUDIT_TIME_LEN + 64; /* time, request_id, braces, newline */
	char *start = buf, *p;

	if (!rec->outcome)
		return PS_E_AUDIT;
	format_time(&rec->time, when);
	if (rec->not_after != 0)
		time_format_rfc3339(rec->not_after, not_after);
	for (size_t k = 0; k < ELEMENTSOF(names); k++)
		if (values[k])
			cap += JSON_STRING_ROOM(strlen(names[k])) + JSON_STRING_ROOM(strlen(values[k])) + 2;
	if (cap > AUDIT_RECORD_MAX) {
		*heap = start = malloc(cap);
		if (!start)
			return PS_E_AUDIT;
	}
	p = start;
	*p++ = '{';
	p = put_member(p, "time", when);
	p += sprintf(p, ",\"request_id\":%llu", (unsigned long long)rec->request_id);
	for (size_t k = 0; k < ELEMENTSOF(names) && p; k++) {
		if (values[k]) {
			*p++ = ',';
			p = put_member(p, names[k], values[k]);
		}
	}
	if (!p || (size_t)(p - start) + 2 > AUDIT_RECORD_MAX)
		return PS_E_AUDIT;
	*p++ = '}';
	*p++ = '\n';
	*ret_line = start;
	*ret_len = (size_t)(p - start);
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

/* Wakes every caller of b with result and empties b.  Called with the
 * lock held, so no caller can return (and take its waiter off its stack)
 * before the loop has moved past it. */
static void batch_finish(struct batch *b, int result)
{
	for (struct waiter *w = b->waiters; w; w = w->next) {
		w->result = result;
		w->done = true;
		pthread_cond_signal(&w->wake);
	}
	b->waiters = NULL;
	b->len = 0;
}

/* Moves the lines and callers of pending (under the lock) into the empty
 * work, which lends pending its buffer: callers keep appending while the
 * leader commits. */
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

static int sync_data(int fd)
{
	int r;

	do
		r = fdatasync(fd);
	while (r < 0 && errno == EINTR);
	return r;
}

/* Appends data and syncs it; on failure cuts the file back to where it was,
 * and sets *broken if that fails too. */
static int commit(int fd, const char *data, size_t len, bool *broken)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return PS_E_AUDIT;
	if (write_all(fd, data, len) == 0 && sync_data(fd) == 0)
		return 0;
	if (ftruncate(fd, st.st_size) < 0 || sync_data(fd) < 0)
		*broken = true;
	return PS_E_AUDIT;
}

/* Waits, at most the commit delay, until every record announced has been
 * appended to the pending batch. */
static void gather(struct audit *a)
{
	struct timespec until;

	if (a->announced == 0 || a->delay_ns == 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += a->delay_ns / 1000000000L;
	until.tv_nsec += a->delay_ns % 1000000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	a->gathering = true;
	while (a->announced > 0 && pthread_cond_timedwait(&a->company, &a->lock, &until) == 0)
		;
	a->gathering = false;
}

/* An announced record came: called with the lock held. */
static void arrived(struct audit *a)
{
	if (a->announced > 0)
		a->announced--;
	if (a->announced == 0 && a->gathering)
		pthread_cond_signal(&a->company);
}

/* Commits the pending batch as its leader, entered and left with the lock
 * held; then makes a switch audit_reopen() asked for, and hands the lead to
 * a caller that arrived meanwhile. */
static void lead(struct audit *a)
{
	bool broken;
	int r;

	a->committing = true;
	gather(a);
	broken = a->broken;
	batch_take(&a->spare, &a->pending);
	pthread_mutex_unlock(&a->lock);
	r = broken ? PS_E_AUDIT : commit(a->fd, a->spare.data, a->spare.len, &broken);
	pthread_mutex_lock(&a->lock);
	a->broken = a->broken || broken;
	batch_finish(&a->spare, r);
	a->committing = false;
	if (a->reopen_fd >= 0) {
		close(a->fd);
		a->fd = a->reopen_fd;
		a->reopen_fd = -1;
		a->broken = false;
	}
	if (a->pending.waiters)
		pthread_cond_signal(&a->pending.waiters->wake);
	pthread_cond_broadcast(&a->idle);
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
 * whatever the umask, an existing file keeping its mode.  Its tail is not
 * looked at: see open_tail(). */
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
	*ret_fd = fd;
	fd = -1; /* NOLINT(clang-analyzer-deadcode.DeadStores): read by closep() at return */
	return 0;
}

/* Cuts a torn tail off fd, the file at path.  Only for a file nobody is
 * appending to: during a write the file may briefly end in part of a line,
 * and cutting there would cut off records already committed. */
static int open_tail(const char *path, int fd)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return PS_E_IO;
	return cut_torn_tail(path, fd, &st);
}

static bool same_file(int fd1, int fd2)
{
	struct stat st1, st2;

	return fstat(fd1, &st1) == 0 && fstat(fd2, &st2) == 0 && st1.st_dev == st2.st_dev &&
	       st1.st_ino == st2.st_ino;
}

int audit_open(const char *path, struct audit **ret)
{
	struct audit *a = calloc(1, sizeof(*a));

	if (!a)
		return PS_E_IO;
	a->fd = -1;
	a->reopen_fd = -1;
	a->delay_ns = AUDIT_COMMIT_DELAY_US * 1000L;
	a->path = strdup(path);
	if (!a->path || file_open(path, &a->fd) < 0 || open_tail(path, a->fd) < 0) {
		if (a->fd >= 0)
			close(a->fd);
		free(a->path);
		free(a);
		return PS_E_IO;
	}
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->idle, NULL);
	cond_init_monotonic(&a->company);
	*ret = a;
	return 0;
}

int audit_write(struct audit *a, const struct audit_record *rec)
{
	_cleanup_free_ char *heap = NULL;
	char buf[AUDIT_RECORD_MAX];
	struct waiter w = { .result = PS_E_AUDIT };
	const char *line = NULL;
	size_t len = 0;
	int r = format_line(rec, buf, &heap, &line, &len);

	pthread_mutex_lock(&a->lock);
	if (rec->announced)
		arrived(a);
	if (r < 0 || a->broken || batch_append(&a->pending, line, len) < 0) {
		pthread_mutex_unlock(&a->lock);
		return r < 0 ? r : PS_E_AUDIT;
	}
	pthread_cond_init(&w.wake, NULL);
	w.next = a->pending.waiters;
	a->pending.waiters = &w;
	while (!w.done) {
		if (a->committing)
			pthread_cond_wait(&w.wake, &a->lock);
		else
			lead(a);
	}
	pthread_mutex_unlock(&a->lock);
	pthread_cond_destroy(&w.wake);
	return w.result;
}

void audit_announce(struct audit *a)
{
	pthread_mutex_lock(&a->lock);
	a->announced++;
	pthread_mutex_unlock(&a->lock);
}

void audit_set_commit_delay(struct audit *a, unsigned microseconds)
{
	pthread_mutex_lock(&a->lock);
	a->delay_ns = (long)microseconds * 1000L;
	pthread_mutex_unlock(&a->lock);
}

/* The file audit_reopen() opened is the one in use: keep it.  Only a trail
 * marked broken (a failed batch that could not be cut back) needs its tail
 * cut, once no commit runs; none starts while it is broken. */
static int keep_file(struct audit *a, const char *path)
{
	if (!a->broken)
		return 0;
	while (a->committing)
		pthread_cond_wait(&a->idle, &a->lock);
	if (open_tail(path, a->fd) < 0)
		return PS_E_IO;
	a->broken = false;
	return 0;
}

/* Makes fd, another file, the trail: between two batches, by the leader as
 * its commit ends, or here if none is running. */
static void switch_to(struct audit *a, int fd)
{
	if (a->committing) {
		a->reopen_fd = fd;
		while (a->reopen_fd >= 0)
			pthread_cond_wait(&a->idle, &a->lock);
	} else {
		close(a->fd);
		a->fd = fd;
		a->broken = false;
	}
}

int audit_reopen(struct audit *a, const char *path)
{
	char *copy = path ? strdup(path) : NULL;
	int fd, r = 0;

	if (path && !copy)
		return PS_E_NOMEM;
	if (file_open(copy ? copy : a->path, &fd) < 0) {
		free(copy);
		return PS_E_IO;
	}
	pthread_mutex_lock(&a->lock);
	while (a->reopen_fd >= 0) /* one switch at a time */
		pthread_cond_wait(&a->idle, &a->lock);
	if (same_file(fd, a->fd)) {
		close(fd);
		r = keep_file(a, copy ? copy : a->path);
	} else if (open_tail(copy ? copy : a->path, fd) < 0) {
		close(fd);
		r = PS_E_IO;
	} else {
		switch_to(a, fd);
	}
	if (r == 0 && copy) {
		free(a->path);
		a->path = TAKE_PTR(copy);
	}
	pthread_mutex_unlock(&a->lock);
	free(copy);
	return r;
}

void audit_close(struct audit *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	while (a->committing || a->pending.waiters)
		pthread_cond_wait(&a->idle, &a->lock);
	pthread_mutex_unlock(&a->lock);
	close(a->fd);
	free(a->pending.data);
	free(a->spare.data);
	pthread_cond_destroy(&a->company);
	pthread_cond_destroy(&a->idle);
	pthread_mutex_destroy(&a->lock);
	free(a->path);
	free(a);
}
