/* audit: the JSON lines it writes, the files it refuses, concurrent writers,
 * group commit (announced records share an fdatasync), a write that fails
 * half way (cut back to whole lines), log rotation, and a torn tail left by
 * a crash. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "testdir.h"
#include "audit.h"
#include "error.h"
#include "check_run.h"

static char dir[] = "/tmp/popsign-audit-XXXXXX";
static atomic_uint syncs;

/* Counts commits: this definition takes the place of the C library's for
 * the audit code linked into this program. */
/* NOLINTNEXTLINE(readability-inconsistent-declaration-parameter-name): glibc's name is reserved */
int fdatasync(int fd)
{
	atomic_fetch_add(&syncs, 1);
	return (int)syscall(SYS_fdatasync, fd);
}
static char path[sizeof(dir) + 32];

static void setup(void)
{
	strcpy(dir, "/tmp/popsign-audit-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/audit.log", dir);
}

static void teardown(void)
{
	(void)testdir_remove(dir);
}

static struct audit_record denied(uint64_t id)
{
	return (struct audit_record){
		.time = { 1700000000, 999999999 },
		.request_id = id,
		.peer = "127.0.0.1:50312",
		.key = "root-ca",
		.code = "ABC123",
		.outcome = "denied",
		.error = "forbidden",
	};
}

static char *slurp(const char *p, size_t *ret_len)
{
	FILE *f = fopen(p, "re");
	char *buf = NULL;
	size_t cap = 0;
	ssize_t n;

	ck_assert_msg(f, "%s: %s", p, strerror(errno));
	/* getdelim with NUL as delimiter reads the whole text file. */
	n = getdelim(&buf, &cap, '\0', f);
	fclose(f);
	*ret_len = n < 0 ? 0 : (size_t)n;
	if (n < 0) {
		free(buf);
		buf = strdup("");
	}
	return buf;
}

/* The lines of p as JSON objects: asserts the file holds whole lines only,
 * each a JSON object in ASCII without control characters below 0x20 (JSON
 * leaves DEL unescaped; terminals ignore it).  Returns a JSON array. */
static json_t *read_lines(const char *p)
{
	size_t len;
	char *text = slurp(p, &len), *line = text;
	json_t *all = json_array();

	ck_assert_msg(len == 0 || text[len - 1] == '\n', "%s does not end in a whole line", p);
	for (size_t i = 0; i < len; i++)
		ck_assert_msg(text[i] == '\n' || (text[i] >= 0x20 && text[i] <= 0x7f),
			      "byte %zu of %s is 0x%02x", i, p, (unsigned char)text[i]);
	while (line < text + len) {
		char *nl = strchr(line, '\n');
		json_error_t err;
		json_t *obj;

		*nl = '\0';
		obj = json_loads(line, JSON_REJECT_DUPLICATES, &err);
		ck_assert_msg(obj && json_is_object(obj), "not a JSON object: %s (%s)", line, err.text);
		json_array_append_new(all, obj);
		line = nl + 1;
	}
	free(text);
	return all;
}

static void write_ok(struct audit *a, const struct audit_record *rec)
{
	int r = audit_write(a, rec);

	ck_assert_msg(r == 0, "audit_write: %d", r);
}

static struct audit *open_ok(void)
{
	struct audit *a = NULL;
	int r = audit_open(path, &a);

	ck_assert_msg(r == 0, "audit_open(%s): %d", path, r);
	ck_assert_ptr_nonnull(a);
	return a;
}

/* Asserts that obj has exactly the members in keys, in that order. */
static void assert_members(json_t *obj, const char *const *keys)
{
	const char *k;
	json_t *v;
	size_t i = 0;

	json_object_foreach (obj, k, v) {
		ck_assert_msg(keys[i], "unexpected member %s", k);
		ck_assert_str_eq(k, keys[i]);
		i++;
	}
	ck_assert_msg(!keys[i], "member %s missing", keys[i]);
}

START_TEST(issued_record_fields)
{
	static const char *const keys[] = { "time", "request_id", "client", "peer", "key",
		"verification_code", "context", "outcome", "serial", "sha256_fingerprint",
		"not_after", NULL };
	struct audit_record rec = {
		.time = { 1700000000, 999999999 },
		.request_id = 42,
		.client = "provisioning",
		.peer = "uid=1000",
		.key = "root-ca",
		.code = "0123ABCdef",
		.context = "dps-west",
		.outcome = "issued",
		.serial = "5f3a9c",
		.sha256_fingerprint = "ab12",
		.not_after = 1800000000,
	};
	struct audit *a = open_ok();
	json_t *lines, *o;

	write_ok(a, &rec);
	audit_close(a);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), 1);
	o = json_array_get(lines, 0);
	assert_members(o, keys);
	ck_assert_str_eq(json_string_value(json_object_get(o, "time")), "2023-11-14T22:13:20.999Z");
	ck_assert_int_eq(json_integer_value(json_object_get(o, "request_id")), 42);
	ck_assert_str_eq(json_string_value(json_object_get(o, "client")), "provisioning");
	ck_assert_str_eq(json_string_value(json_object_get(o, "peer")), "uid=1000");
	ck_assert_str_eq(json_string_value(json_object_get(o, "key")), "root-ca");
	ck_assert_str_eq(json_string_value(json_object_get(o, "verification_code")), "0123ABCdef");
	ck_assert_str_eq(json_string_value(json_object_get(o, "context")), "dps-west");
	ck_assert_str_eq(json_string_value(json_object_get(o, "outcome")), "issued");
	ck_assert_str_eq(json_string_value(json_object_get(o, "serial")), "5f3a9c");
	ck_assert_str_eq(json_string_value(json_object_get(o, "sha256_fingerprint")), "ab12");
	ck_assert_str_eq(json_string_value(json_object_get(o, "not_after")), "2027-01-15T08:00:00Z");
	json_decref(lines);
}
END_TEST

START_TEST(denied_record_omits_absent_members)
{
	static const char *const keys[] = { "time", "request_id", "peer", "key",
		"verification_code", "outcome", "error", NULL };
	struct audit_record rec = denied(7);
	struct audit *a = open_ok();
	json_t *lines, *o;

	rec.time = (struct timespec){ 0, 1000000 };
	write_ok(a, &rec);
	audit_close(a);
	lines = read_lines(path);
	o = json_array_get(lines, 0);
	assert_members(o, keys);
	ck_assert_str_eq(json_string_value(json_object_get(o, "time")), "1970-01-01T00:00:00.001Z");
	ck_assert_str_eq(json_string_value(json_object_get(o, "error")), "forbidden");
	json_decref(lines);
}
END_TEST

/* audit_write() returns after the line is in the file, not at close. */
START_TEST(line_in_file_when_write_returns)
{
	struct audit *a = open_ok();
	struct audit_record rec = denied(1);
	json_t *lines;

	write_ok(a, &rec);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), 1);
	json_decref(lines);
	rec.request_id = 2;
	write_ok(a, &rec);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 1), "request_id")), 2);
	json_decref(lines);
	audit_close(a);
}
END_TEST

START_TEST(escaping)
{
	/* NOLINTNEXTLINE(misc-misleading-bidirectional): the log must escape this RLO */
	const char *nasty = "q\"uote\\back\nnew\tt\x01\x1b[31mred\x7f caf\xc3\xa9 \xe2\x80\xae";
	struct audit_record rec = denied(3);
	struct audit *a = open_ok();
	json_t *lines, *o;

	rec.code = nasty;
	rec.context = nasty;
	rec.client = "}{\"injected\":true";
	write_ok(a, &rec);
	audit_close(a);
	lines = read_lines(path); /* asserts one line, no raw control characters */
	ck_assert_uint_eq(json_array_size(lines), 1);
	o = json_array_get(lines, 0);
	ck_assert_str_eq(json_string_value(json_object_get(o, "verification_code")), nasty);
	ck_assert_str_eq(json_string_value(json_object_get(o, "context")), nasty);
	ck_assert_str_eq(json_string_value(json_object_get(o, "client")), rec.client);
	ck_assert_ptr_null(json_object_get(o, "injected"));
	json_decref(lines);
}
END_TEST

static off_t file_size(const char *p)
{
	struct stat st;

	ck_assert_int_eq(stat(p, &st), 0);
	return st.st_size;
}

START_TEST(refuses_bad_strings_and_long_lines)
{
	char big[AUDIT_RECORD_MAX + 1];
	struct audit_record rec = denied(4);
	struct audit *a = open_ok();
	json_t *lines;

	rec.context = "\xff\xfe not UTF-8";
	ck_assert_int_eq(audit_write(a, &rec), PS_E_AUDIT);
	rec.context = NULL;
	rec.outcome = NULL; /* outcome is mandatory */
	ck_assert_int_eq(audit_write(a, &rec), PS_E_AUDIT);
	rec.outcome = "denied";
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	rec.context = big;
	ck_assert_int_eq(audit_write(a, &rec), PS_E_AUDIT);
	ck_assert_int_eq(file_size(path), 0);
	/* A line just under the limit is fine. */
	big[AUDIT_RECORD_MAX - 300] = '\0';
	write_ok(a, &rec);
	audit_close(a);
	ck_assert_int_le(file_size(path), AUDIT_RECORD_MAX);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), 1);
	json_decref(lines);
}
END_TEST

START_TEST(created_with_mode_0640_whatever_the_umask)
{
	struct audit *a;
	struct stat st;

	mode_t old = umask(077); /* as under systemd's UMask=0077 */

	a = open_ok();
	umask(old);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, AUDIT_FILE_MODE);
	audit_close(a);
}
END_TEST

/* An existing file keeps its mode and its lines; records are appended. */
START_TEST(existing_file_appended)
{
	const char *old = "{\"old\":1}\n";
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	struct audit_record rec = denied(5);
	struct audit *a;
	struct stat st;
	json_t *lines;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, old, strlen(old)), (ssize_t)strlen(old));
	close(fd);
	a = open_ok();
	write_ok(a, &rec);
	audit_close(a);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0600);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 0), "old")), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 1), "request_id")), 5);
	json_decref(lines);
}
END_TEST

static void open_refused(const char *p)
{
	struct audit *sentinel = (struct audit *)0x1, *a = sentinel;
	int r = audit_open(p, &a);

	ck_assert_msg(r == PS_E_IO, "audit_open(%s): %d, want PS_E_IO", p, r);
	ck_assert_ptr_eq(a, sentinel);
}

START_TEST(refuses_what_is_not_a_regular_file)
{
	char p[sizeof(path) + 16];
	int fd;

	open_refused("/dev/full");
	open_refused(dir);
	snprintf(p, sizeof(p), "%s/fifo", dir);
	ck_assert_int_eq(mkfifo(p, 0600), 0);
	open_refused(p); /* and does not block waiting for a reader */
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	ck_assert_int_ge(fd, 0);
	close(fd);
	snprintf(p, sizeof(p), "%s/link", dir);
	ck_assert_int_eq(symlink(path, p), 0);
	open_refused(p);
	snprintf(p, sizeof(p), "%s/dangling", dir);
	ck_assert_int_eq(symlink("/nonexistent/popsign-audit", p), 0);
	open_refused(p);
	snprintf(p, sizeof(p), "%s/no/such/dir/audit.log", dir);
	open_refused(p);
}
END_TEST

#define THREADS 8
#define PER_THREAD 200

struct writer_arg {
	struct audit *a;
	unsigned thread;
	int failures;
};

static void *writer(void *p)
{
	struct writer_arg *w = p;

	for (unsigned i = 0; i < PER_THREAD; i++) {
		struct audit_record rec = denied(w->thread * 1000 + i);

		if (audit_write(w->a, &rec) != 0)
			w->failures++;
	}
	return NULL;
}

/* Every request id in the union of the files' lines exactly once. */
static void assert_all_ids(json_t *lines, unsigned threads)
{
	static unsigned char seen[THREADS * 1000];
	size_t i;
	json_t *o;

	memset(seen, 0, sizeof(seen));
	ck_assert_uint_eq(json_array_size(lines), threads * PER_THREAD);
	json_array_foreach (lines, i, o) {
		json_int_t id = json_integer_value(json_object_get(o, "request_id"));

		ck_assert_int_lt(id, THREADS * 1000);
		ck_assert_msg(!seen[id], "request %lld twice", (long long)id);
		seen[id] = 1;
		ck_assert_str_eq(json_string_value(json_object_get(o, "outcome")), "denied");
	}
}

START_TEST(concurrent_writers)
{
	struct writer_arg args[THREADS];
	pthread_t threads[THREADS];
	struct audit *a = open_ok();
	json_t *lines;

	for (unsigned t = 0; t < THREADS; t++) {
		args[t] = (struct writer_arg){ .a = a, .thread = t };
		ck_assert_int_eq(pthread_create(&threads[t], NULL, writer, &args[t]), 0);
	}
	for (unsigned t = 0; t < THREADS; t++) {
		pthread_join(threads[t], NULL);
		ck_assert_int_eq(args[t].failures, 0);
	}
	/* All there before close: each write returned only once committed. */
	lines = read_lines(path);
	assert_all_ids(lines, THREADS);
	json_decref(lines);
	audit_close(a);
}
END_TEST

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define SPACED 4

struct spaced_arg {
	struct audit *a;
	unsigned k;
	int result;
};

/* Writes announced record k after k * 20 ms. */
static void *spaced_writer(void *p)
{
	struct spaced_arg *arg = p;
	struct audit_record rec = denied(arg->k);

	rec.announced = true;
	sleep_ms(20L * arg->k);
	arg->result = audit_write(arg->a, &rec);
	return NULL;
}

/* Writes SPACED announced records 20 ms apart: returns the commits made. */
static unsigned spaced_records(unsigned delay_us, bool announce)
{
	struct spaced_arg args[SPACED];
	pthread_t threads[SPACED];
	struct audit *a = open_ok();
	unsigned before;
	json_t *lines;

	audit_set_commit_delay(a, delay_us);
	for (unsigned k = 0; k < SPACED && announce; k++)
		audit_announce(a);
	before = atomic_load(&syncs);
	for (unsigned k = 0; k < SPACED; k++) {
		args[k] = (struct spaced_arg){ .a = a, .k = k, .result = -1 };
		ck_assert_int_eq(pthread_create(&threads[k], NULL, spaced_writer, &args[k]), 0);
	}
	for (unsigned k = 0; k < SPACED; k++) {
		pthread_join(threads[k], NULL);
		ck_assert_int_eq(args[k].result, 0);
	}
	before = atomic_load(&syncs) - before;
	audit_close(a);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), SPACED);
	json_decref(lines);
	ck_assert_int_eq(unlink(path), 0);
	return before;
}

START_TEST(announced_records_share_a_commit)
{
	/* With a delay longer than the spacing, the first commit waits for
	 * all four; without announcements, or with no delay, each record is
	 * committed alone. */
	ck_assert_uint_eq(spaced_records(5 * 1000000, true), 1);
	ck_assert_uint_eq(spaced_records(5 * 1000000, false), SPACED);
	ck_assert_uint_eq(spaced_records(0, true), SPACED);
}
END_TEST

START_TEST(wait_for_missing_record_is_bounded)
{
	struct audit_record rec = denied(1);
	struct audit *a = open_ok();
	double t0, took;

	/* Announced, never written: a commit waits for it only so long. */
	audit_set_commit_delay(a, 100 * 1000);
	audit_announce(a);
	t0 = now_s();
	write_ok(a, &rec);
	took = now_s() - t0;
	ck_assert_msg(took >= 0.1 && took < 5, "took %.3f s", took);
	/* An announced record that fails still counts as arrived. */
	rec.announced = true;
	rec.outcome = NULL;
	ck_assert_int_eq(audit_write(a, &rec), PS_E_AUDIT);
	rec.outcome = "denied";
	rec.announced = false;
	t0 = now_s();
	write_ok(a, &rec);
	took = now_s() - t0;
	ck_assert_msg(took < 0.1, "took %.3f s with nothing announced", took);
	audit_close(a);
}
END_TEST

START_TEST(reopen_after_rename)
{
	char rotated[sizeof(path) + 8];
	struct audit_record rec = denied(1);
	struct audit *a = open_ok();
	struct stat st;
	json_t *lines;

	snprintf(rotated, sizeof(rotated), "%s.1", path);
	write_ok(a, &rec);
	ck_assert_int_eq(rename(path, rotated), 0);
	ck_assert_int_eq(audit_reopen(a, NULL), 0);
	rec.request_id = 2;
	write_ok(a, &rec);
	lines = read_lines(rotated);
	ck_assert_uint_eq(json_array_size(lines), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 0), "request_id")), 1);
	json_decref(lines);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 0), "request_id")), 2);
	json_decref(lines);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, AUDIT_FILE_MODE);
	audit_close(a);
}
END_TEST

/* A reopen that fails keeps the old file in use. */
START_TEST(reopen_failure_keeps_old_file)
{
	char rotated[sizeof(path) + 8];
	struct audit_record rec = denied(1);
	struct audit *a = open_ok();
	json_t *lines;

	snprintf(rotated, sizeof(rotated), "%s.1", path);
	ck_assert_int_eq(rename(path, rotated), 0);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	ck_assert_int_eq(audit_reopen(a, NULL), PS_E_IO);
	write_ok(a, &rec);
	audit_close(a);
	lines = read_lines(rotated);
	ck_assert_uint_eq(json_array_size(lines), 1);
	json_decref(lines);
}
END_TEST

/* Rotation in the middle of concurrent writers: no record lost or torn. */
START_TEST(reopen_under_load)
{
	struct writer_arg args[4];
	pthread_t threads[4];
	struct audit *a = open_ok();
	json_t *all = json_array();
	char rotated[sizeof(path) + 8];

	for (unsigned t = 0; t < 4; t++) {
		args[t] = (struct writer_arg){ .a = a, .thread = t };
		ck_assert_int_eq(pthread_create(&threads[t], NULL, writer, &args[t]), 0);
	}
	for (unsigned i = 1; i <= 5; i++) {
		snprintf(rotated, sizeof(rotated), "%s.%u", path, i);
		usleep(2000);
		ck_assert_int_eq(rename(path, rotated), 0);
		ck_assert_int_eq(audit_reopen(a, NULL), 0);
	}
	for (unsigned t = 0; t < 4; t++) {
		pthread_join(threads[t], NULL);
		ck_assert_int_eq(args[t].failures, 0);
	}
	audit_close(a);
	for (unsigned i = 0; i <= 5; i++) {
		json_t *lines;

		if (i == 0)
			snprintf(rotated, sizeof(rotated), "%s", path);
		else
			snprintf(rotated, sizeof(rotated), "%s.%u", path, i);
		lines = read_lines(rotated);
		json_array_extend(all, lines);
		json_decref(lines);
	}
	assert_all_ids(all, 4);
	json_decref(all);
}
END_TEST

struct big_writer_arg {
	struct audit *a;
	atomic_bool *stop;
	unsigned written;
	unsigned failures;
};

/* Writes records of about 2.7 KB, so that a write often spans a page
 * boundary, until told to stop. */
static void *big_writer(void *p)
{
	struct big_writer_arg *w = p;
	char context[2600];

	memset(context, 'x', sizeof(context) - 1);
	context[sizeof(context) - 1] = '\0';
	while (!atomic_load(w->stop)) {
		struct audit_record rec = denied(w->written);

		rec.context = context;
		if (audit_write(w->a, &rec) == 0)
			w->written++;
		else
			w->failures++;
	}
	return NULL;
}

START_TEST(reopen_of_the_file_in_use_loses_nothing)
{
	struct big_writer_arg args[3];
	pthread_t threads[3];
	atomic_bool stop = false;
	struct audit *a = open_ok();
	unsigned written = 0, lines = 0;
	double until = now_s() + 0.5;
	size_t len;
	char *text;

	/* SIGHUP without rotation reopens the file being written.  Its tail
	 * must not be taken for a torn line: a write in progress can leave the
	 * file ending in part of a line for a moment. */
	audit_set_commit_delay(a, 0);
	for (unsigned t = 0; t < 3; t++) {
		args[t] = (struct big_writer_arg){ .a = a, .stop = &stop };
		ck_assert_int_eq(pthread_create(&threads[t], NULL, big_writer, &args[t]), 0);
	}
	while (now_s() < until) {
		ck_assert_int_eq(audit_reopen(a, NULL), 0);
		usleep(200);
	}
	atomic_store(&stop, true);
	for (unsigned t = 0; t < 3; t++) {
		pthread_join(threads[t], NULL);
		ck_assert_uint_eq(args[t].failures, 0);
		written += args[t].written;
	}
	audit_close(a);
	/* Tens of megabytes: counted rather than parsed line by line. */
	text = slurp(path, &len);
	ck_assert_uint_gt(written, 0);
	ck_assert_msg(len > 0 && text[len - 1] == '\n', "the file ends in part of a line");
	ck_assert_ptr_null(memchr(text, '\0', len));
	for (char *p = text; (p = memchr(p, '\n', len - (size_t)(p - text))); p++)
		lines++;
	ck_assert_uint_eq(lines, written);
	free(text);
}
END_TEST

/* The steps of the child in write_failure_cut_back; its exit status is the
 * number of the first step that went wrong, 0 if none. */
static int fsize_child(void)
{
	struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
	struct audit_record rec = denied(1);
	struct audit *a = NULL;
	struct stat st;
	off_t before;

	signal(SIGXFSZ, SIG_IGN);
	if (audit_open(path, &a) != 0 || audit_write(a, &rec) != 0)
		return 1;
	rec.request_id = 2;
	if (audit_write(a, &rec) != 0 || stat(path, &st) != 0)
		return 2;
	before = st.st_size;
	/* Room for part of a line: the kernel writes that part, then refuses. */
	rl.rlim_cur = (rlim_t)before + 40;
	if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
		return 3;
	rec.request_id = 3;
	if (audit_write(a, &rec) != PS_E_AUDIT)
		return 4;
	if (stat(path, &st) != 0 || st.st_size != before)
		return 5;
	rec.request_id = 4;
	if (audit_write(a, &rec) != PS_E_AUDIT)
		return 6;
	rl.rlim_cur = RLIM_INFINITY;
	if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
		return 7;
	rec.request_id = 5;
	if (audit_write(a, &rec) != 0)
		return 8;
	audit_close(a);
	return 0;
}

START_TEST(write_failure_cut_back)
{
	int status = 0;
	pid_t pid = fork();
	json_t *lines;

	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(fsize_child());
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status), "child died of signal %d", WTERMSIG(status));
	ck_assert_msg(WEXITSTATUS(status) == 0, "child failed at step %d", WEXITSTATUS(status));
	lines = read_lines(path); /* whole lines only: the partial write was cut */
	ck_assert_uint_eq(json_array_size(lines), 3);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 0), "request_id")), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 1), "request_id")), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 2), "request_id")), 5);
	json_decref(lines);
}
END_TEST

static void write_file(const char *p, const char *text, size_t len)
{
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
	close(fd);
}

/* A crash in the middle of a write leaves part of a line: open cuts it. */
START_TEST(torn_tail_cut_on_open)
{
	const char *torn = "{\"request_id\":1}\n{\"request_id\":2,\"pe";
	struct audit_record rec = denied(3);
	struct audit *a;
	json_t *lines;

	write_file(path, torn, strlen(torn));
	a = open_ok();
	write_ok(a, &rec);
	audit_close(a);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 0), "request_id")), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 1), "request_id")), 3);
	json_decref(lines);
	/* Nothing but a fragment. */
	write_file(path, "{\"request_id\":", 14);
	a = open_ok();
	ck_assert_int_eq(file_size(path), 0);
	audit_close(a);
}
END_TEST

/* An unterminated tail longer than any record is not ours: refused, kept. */
START_TEST(foreign_file_refused)
{
	static char junk[AUDIT_RECORD_MAX + 100];

	memset(junk, 'x', sizeof(junk));
	junk[10] = '\n';
	write_file(path, junk, sizeof(junk));
	open_refused(path);
	ck_assert_int_eq(file_size(path), sizeof(junk));
}
END_TEST

/* audit_reopen() at another path checks that file as audit_open() does:
 * a foreign file is refused and the trail stays where it was (a later
 * reopen without a path reopens the old one); a torn tail is cut. */
START_TEST(reopen_at_new_path_checks_the_file)
{
	static char junk[AUDIT_RECORD_MAX + 100];
	char other[sizeof(path) + 8], torn[sizeof(path) + 8];
	static const char torn_text[] = "{\"time\":\"x\"}\n{\"time\":";
	struct audit_record rec = denied(1);
	struct audit *a = open_ok();
	json_t *lines;

	snprintf(other, sizeof(other), "%s.other", path);
	snprintf(torn, sizeof(torn), "%s.torn", path);
	memset(junk, 'x', sizeof(junk));
	write_file(other, junk, sizeof(junk));
	ck_assert_int_eq(audit_reopen(a, other), PS_E_IO);
	ck_assert_int_eq(file_size(other), sizeof(junk));
	ck_assert_int_eq(audit_reopen(a, NULL), 0);
	write_ok(a, &rec);
	ck_assert_int_eq(file_size(other), sizeof(junk));
	write_file(torn, torn_text, strlen(torn_text));
	ck_assert_int_eq(audit_reopen(a, torn), 0);
	rec.request_id = 2;
	write_ok(a, &rec);
	audit_close(a);
	lines = read_lines(path);
	ck_assert_uint_eq(json_array_size(lines), 1);
	json_decref(lines);
	lines = read_lines(torn); /* the torn line is gone, record 2 follows */
	ck_assert_uint_eq(json_array_size(lines), 2);
	ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 1),
							    "request_id")), 2);
	json_decref(lines);
}
END_TEST

START_TEST(close_null)
{
	audit_close(NULL);
}
END_TEST

static Suite *audit_suite(void)
{
	Suite *s = suite_create("audit");
	TCase *rec = tcase_create("records"), *file = tcase_create("file");
	TCase *conc = tcase_create("concurrency"), *fail = tcase_create("failures");

	tcase_add_checked_fixture(rec, setup, teardown);
	tcase_add_checked_fixture(file, setup, teardown);
	tcase_add_checked_fixture(conc, setup, teardown);
	tcase_add_checked_fixture(fail, setup, teardown);
	tcase_add_test(rec, issued_record_fields);
	tcase_add_test(rec, denied_record_omits_absent_members);
	tcase_add_test(rec, line_in_file_when_write_returns);
	tcase_add_test(rec, escaping);
	tcase_add_test(rec, refuses_bad_strings_and_long_lines);
	tcase_add_test(file, created_with_mode_0640_whatever_the_umask);
	tcase_add_test(file, existing_file_appended);
	tcase_add_test(file, refuses_what_is_not_a_regular_file);
	tcase_add_test(file, reopen_after_rename);
	tcase_add_test(file, reopen_failure_keeps_old_file);
	tcase_add_test(file, torn_tail_cut_on_open);
	tcase_add_test(file, foreign_file_refused);
	tcase_add_test(file, reopen_at_new_path_checks_the_file);
	tcase_add_test(file, close_null);
	tcase_add_test(conc, concurrent_writers);
	tcase_add_test(conc, reopen_under_load);
	tcase_add_test(conc, reopen_of_the_file_in_use_loses_nothing);
	tcase_add_test(conc, announced_records_share_a_commit);
	tcase_add_test(conc, wait_for_missing_record_is_bounded);
	tcase_add_test(fail, write_failure_cut_back);
	suite_add_tcase(s, rec);
	suite_add_tcase(s, file);
	suite_add_tcase(s, conc);
	suite_add_tcase(s, fail);
	return s;
}

int main(void)
{
	return check_run(audit_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
