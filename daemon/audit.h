/* The audit trail: one JSON object per line, durable before a certificate
 * leaves the daemon.
 *
 * audit_write() returns only once its record is written and fsync'd; records
 * of concurrent callers are committed together (group commit), and a commit
 * waits up to AUDIT_COMMIT_DELAY_US for records announced as on their way.
 * A record is never torn: a write that cannot be completed is cut back to
 * the last whole line and reported as PS_E_AUDIT. */
#ifndef POPSIGN_AUDIT_H
#define POPSIGN_AUDIT_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define AUDIT_FILE_MODE 0640
#define AUDIT_RECORD_MAX 4096 /* bytes in one line, newline included */
/* How long a commit may wait for announced records to share its fdatasync. */
#define AUDIT_COMMIT_DELAY_US 200

struct audit;

struct audit_record {
	struct timespec time;       /* CLOCK_REALTIME; written as RFC 3339 UTC with ms */
	uint64_t request_id;
	const char *client;         /* NULL: not authenticated */
	const char *peer;           /* "127.0.0.1:50312" or "uid=1000" */
	const char *key;            /* NULL: none */
	const char *code;           /* verification code, NULL: none */
	const char *context;        /* NULL: none */
	const char *outcome;        /* "issued" or "denied" */
	const char *error;          /* API error code for "denied", else NULL */
	const char *serial;         /* issued only */
	const char *sha256_fingerprint;
	time_t not_after;           /* issued only */
	bool announced;             /* audit_announce() was called for it */
};

/* Opens (creating with AUDIT_FILE_MODE) path for appending.  Returns 0 and
 * *ret (close with audit_close()), or PS_E_IO.  Refuses anything but a
 * regular file (symbolic links, devices, FIFOs).  A partial last line left by
 * a crash is cut off; a file whose unterminated tail is longer than
 * AUDIT_RECORD_MAX is not an audit trail and is refused.  The same holds for
 * audit_reopen() of another file. */
int audit_open(const char *path, struct audit **ret);

/* Appends rec and waits until it is durable.  Strings are JSON-escaped (the
 * line is ASCII); NULL members and a zero not_after are left out.  Returns 0,
 * or PS_E_AUDIT if it could not be written and synced (nothing of it remains
 * in the file), if a string is not UTF-8, if outcome is NULL, or if the line
 * would be longer than AUDIT_RECORD_MAX: callers bound what they pass. */
int audit_write(struct audit *a, const struct audit_record *rec);

/* Says that a record is on its way (a certificate is being made): a commit
 * starting meanwhile waits for it, at most the commit delay, so that
 * records made at the same time share one fdatasync.  The record must then
 * be passed to audit_write() with announced set, whatever the outcome. */
void audit_announce(struct audit *a);

/* Sets how long a commit waits for announced records (default
 * AUDIT_COMMIT_DELAY_US); 0 turns the wait off.  For tests and benchmarks:
 * call it before the first audit_write(). */
void audit_set_commit_delay(struct audit *a, unsigned microseconds);

/* Reopens the audit trail at path, or at the same path if path is NULL (log
 * rotation, SIGHUP).  If that is still the file in use, it is kept as it is
 * (its tail is never cut while records are being appended), and a trail
 * marked broken is repaired.  On failure keeps the old file open and
 * returns PS_E_IO (or PS_E_NOMEM). */
int audit_reopen(struct audit *a, const char *path);

/* Waits for the commits under way, then closes.  Call it once no caller is
 * in audit_write() or can enter it.  Accepts NULL. */
void audit_close(struct audit *a);

#endif
