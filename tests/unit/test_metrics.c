/* metrics: the exact text rendered for a small registry, escaping, number
 * spelling, bucket bounds, every refusal counted in
 * popsign_metrics_dropped_total, the series cap, and exact totals under
 * concurrent updates.  Every rendering is also read back by a strict parser
 * of the text format. */
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "metrics.h"
#include "check_run.h"

/* ---- a strict reader of the text format ---- */

struct reader {
	char family[256];     /* family of the last HELP or TYPE line */
	char type[16];        /* its type; "" until its TYPE line */
	bool help;            /* whether it had a HELP line */
	int samples;
	uint64_t last_bucket; /* histograms: cumulative, and _count must match +Inf */
	bool have_inf;
	char why[256];
};

static bool reject(struct reader *r, const char *line, const char *why)
{
	snprintf(r->why, sizeof(r->why), "%s: \"%.120s\"", why, line);
	return false;
}

static size_t name_span(const char *s, bool colon)
{
	size_t n = 0;

	if (s[0] >= '0' && s[0] <= '9')
		return 0;
	while ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
	       (s[n] >= '0' && s[n] <= '9') || s[n] == '_' || (colon && s[n] == ':'))
		n++;
	return n;
}

/* "# HELP name text" or "# TYPE name type"; families come once each, in
 * increasing order, HELP (optional) before TYPE. */
static bool read_comment(struct reader *r, const char *line)
{
	bool is_help = strncmp(line, "# HELP ", 7) == 0;
	const char *name = line + 7, *rest;
	size_t n;

	if (!is_help && strncmp(line, "# TYPE ", 7) != 0)
		return reject(r, line, "comment is neither HELP nor TYPE");
	n = name_span(name, true);
	if (n == 0 || n >= sizeof(r->family) || name[n] != ' ')
		return reject(r, line, "bad family name");
	rest = name + n + 1;
	if (strncmp(r->family, name, n) != 0 || r->family[n] != '\0') {
		if (*r->family && strncmp(r->family, name, n) >= 0 &&
		    !(strncmp(r->family, name, n) == 0 && r->family[n] != '\0'))
			return reject(r, line, "family out of order or repeated");
		if (*r->family && !*r->type)
			return reject(r, line, "previous family has no TYPE");
		memcpy(r->family, name, n);
		r->family[n] = '\0';
		r->type[0] = '\0';
		r->help = false;
	} else if (*r->type || (is_help && r->help)) {
		return reject(r, line, "HELP or TYPE repeated, or HELP after TYPE");
	}
	if (is_help) {
		for (const char *p = rest; *p; p++)
			if (*p == '\\' && (p[1] == '\\' || p[1] == 'n'))
				p++;
			else if (*p == '\\')
				return reject(r, line, "bad escape in HELP");
		r->help = true;
		return true;
	}
	if (strcmp(rest, "counter") != 0 && strcmp(rest, "gauge") != 0 &&
	    strcmp(rest, "histogram") != 0)
		return reject(r, line, "unknown TYPE");
	snprintf(r->type, sizeof(r->type), "%s", rest);
	return true;
}

/* {name="value",...}: returns the character after '}', or NULL.  Sets
 * *has_le, and copies the le label's value to le. */
static const char *read_labels(const char *p, char *le, size_t le_len, bool *has_le)
{
	char seen[32][64];
	size_t n_seen = 0;

	*has_le = false;
	if (*p++ != '{')
		return NULL;
	for (;;) {
		size_t n = name_span(p, false);

		if (n == 0 || n >= sizeof(seen[0]) || n_seen == 32 || strncmp(p, "__", 2) == 0)
			return NULL;
		for (size_t i = 0; i < n_seen; i++)
			if (strncmp(seen[i], p, n) == 0 && seen[i][n] == '\0')
				return NULL;
		memcpy(seen[n_seen], p, n);
		seen[n_seen++][n] = '\0';
		p += n;
		if (p[0] != '=' || p[1] != '"')
			return NULL;
		p += 2;
		const char *value = p;
		while (*p != '"') {
			if (*p == '\0' || (*p == '\\' && p[1] != '\\' && p[1] != '"' && p[1] != 'n'))
				return NULL;
			p += *p == '\\' ? 2 : 1;
		}
		if (strcmp(seen[n_seen - 1], "le") == 0) {
			*has_le = true;
			snprintf(le, le_len, "%.*s", (int)(p - value), value);
		}
		p++;
		if (*p == '}')
			return p + 1;
		if (*p++ != ',')
			return NULL;
	}
}

/* A value: digits for counters and buckets; +Inf, -Inf, NaN, or a plain
 * decimal number that strtod() reads whole for the rest (no "inf", no hex,
 * no leading space or '+'). */
static bool read_value(const char *s, bool integer, uint64_t *ret_u)
{
	char *end;

	if (integer) {
		if (*s == '\0' || strspn(s, "0123456789") != strlen(s))
			return false;
		*ret_u = strtoull(s, &end, 10);
		return *end == '\0';
	}
	if (strcmp(s, "+Inf") == 0 || strcmp(s, "-Inf") == 0 || strcmp(s, "NaN") == 0)
		return true;
	if (!((*s >= '0' && *s <= '9') || *s == '-') || strspn(s, "0123456789.eE+-") != strlen(s))
		return false;
	strtod(s, &end);
	return *end == '\0';
}

/* The sample's name must be the family's, or name_bucket/_sum/_count of a
 * histogram; buckets carry le, in increasing cumulative counts, and _count
 * equals the +Inf bucket. */
static bool read_sample(struct reader *r, const char *line)
{
	size_t n = name_span(line, true), fn = strlen(r->family);
	const char *p = line + n, *suffix = line + fn;
	bool has_le = false, bucket, count;
	char le[32] = "";
	uint64_t u = 0;

	if (n == 0 || !*r->type || strncmp(line, r->family, fn) != 0)
		return reject(r, line, "sample outside its family");
	if (strcmp(r->type, "histogram") == 0 ? !(n - fn == 7 && strncmp(suffix, "_bucket", 7) == 0) &&
							!(n - fn == 4 && strncmp(suffix, "_sum", 4) == 0) &&
							!(n - fn == 6 && strncmp(suffix, "_count", 6) == 0)
					      : n != fn)
		return reject(r, line, "sample name does not match its family");
	if (*p == '{' && !(p = read_labels(p, le, sizeof(le), &has_le)))
		return reject(r, line, "bad labels");
	bucket = n - fn == 7 && strcmp(r->type, "histogram") == 0;
	count = n - fn == 6 && strcmp(r->type, "histogram") == 0;
	if (strcmp(r->type, "histogram") == 0 && bucket != has_le)
		return reject(r, line, "le where it does not belong, or missing");
	if (*p++ != ' ' || !read_value(p, strcmp(r->type, "counter") == 0 || bucket || count, &u))
		return reject(r, line, "bad value");
	if (bucket) {
		if (strcmp(le, "0.0005") == 0)
			r->last_bucket = 0;
		if (u < r->last_bucket)
			return reject(r, line, "buckets not cumulative");
		r->last_bucket = u;
		r->have_inf = strcmp(le, "+Inf") == 0;
	} else if (count && (!r->have_inf || u != r->last_bucket)) {
		return reject(r, line, "_count differs from the +Inf bucket");
	}
	r->samples++;
	return true;
}

/* Why read_text() last refused a text. */
static char read_why[256];

static int why(const char *a, const char *b)
{
	snprintf(read_why, sizeof(read_why), "%s", a ? a : b);
	return -1;
}

/* Returns the number of samples in text, or -1 with the reason in read_why. */
static int read_text(const char *text)
{
	struct reader r = { 0 };
	char line[8192];
	const char *p = text, *nl;

	if (*text == '\0' || text[strlen(text) - 1] != '\n')
		return why(NULL, "text does not end with a newline");
	for (; *p; p = nl + 1) {
		nl = strchr(p, '\n');
		if ((size_t)(nl - p) >= sizeof(line))
			return why(NULL, "line too long");
		memcpy(line, p, (size_t)(nl - p));
		line[nl - p] = '\0';
		if (!(line[0] == '#' ? read_comment(&r, line) : read_sample(&r, line)))
			return why(r.why, NULL);
	}
	if (*r.family && !*r.type)
		return why(NULL, "last family has no TYPE");
	return r.samples;
}

/* ---- helpers ---- */

static struct metrics *new_ok(void)
{
	struct metrics *m = NULL;

	ck_assert_int_eq(metrics_new(&m), 0);
	ck_assert_ptr_nonnull(m);
	return m;
}

/* The rendering, checked by the reader; caller frees. */
static char *render_ok(struct metrics *m)
{
	char *text = NULL;
	size_t len = 0;

	ck_assert_int_eq(metrics_render(m, &text, &len), 0);
	ck_assert_ptr_nonnull(text);
	ck_assert_uint_eq(len, strlen(text));
	ck_assert_msg(read_text(text) >= 1, "unreadable: %s", read_why);
	return text;
}

/* The value on the line that starts with "series ", or NULL. */
static const char *value_of(const char *text, const char *series)
{
	size_t n = strlen(series);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, series, n) == 0 && p[n] == ' ')
			return p + n + 1;
	return NULL;
}

static uint64_t count_of(const char *text, const char *series)
{
	const char *v = value_of(text, series);

	ck_assert_msg(v != NULL, "no series %s", series);
	return strtoull(v, NULL, 10);
}

static uint64_t dropped(struct metrics *m)
{
	char *text = render_ok(m);
	uint64_t n = count_of(text, METRICS_DROPPED_NAME);

	free(text);
	return n;
}

/* The next double above a positive d. */
static double next_up(double d)
{
	uint64_t u;

	memcpy(&u, &d, sizeof(u));
	u++;
	memcpy(&d, &u, sizeof(d));
	return d;
}

/* ---- the reader itself ---- */

START_TEST(reader_refuses_malformed_text)
{
	static const char *const bad[] = {
		"",
		"# TYPE a counter\na 1",                      /* no final newline */
		"a 1\n",                                      /* no TYPE */
		"# TYPE a counter\n\n",                       /* empty line */
		"# TYPE a counter\na 1.5\n",                  /* counter not an integer */
		"# TYPE a gauge\na  1\n",                     /* two spaces */
		"# TYPE a gauge\na 1 123\n",                  /* timestamp */
		"# TYPE a gauge\na{b=\"c} 1\n",               /* open quote */
		"# TYPE a gauge\na{b=\"c\\t\"} 1\n",          /* bad escape */
		"# TYPE a gauge\na{b=\"c\",b=\"d\"} 1\n",     /* label twice */
		"# TYPE a gauge\na{} 1\n",                    /* empty label set */
		"# TYPE a gauge\na{9=\"x\"} 1\n",             /* bad label name */
		"# TYPE a gauge\nb 1\n",                      /* another family */
		"# TYPE a gauge\na inf\n",                    /* not Prometheus' spelling */
		"# TYPE b gauge\nb 1\n# TYPE a gauge\na 1\n", /* unsorted */
		"# TYPE a gauge\n# TYPE a gauge\na 1\n",      /* TYPE twice */
		"# TYPE a gauge\n# HELP a x\na 1\n",          /* HELP after TYPE */
		"# TYPE a summary\na 1\n",
		"# comment\n",
		"# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
		"# TYPE h histogram\nh_bucket{le=\"0.0005\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
		"# TYPE h histogram\nh_sum{le=\"1\"} 1\n",
		"# TYPE h histogram\nh 1\n",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(read_text(bad[i]) == -1, "accepted case %zu", i);
	ck_assert_int_eq(read_text("# HELP a x \\\\ \\n y\n# TYPE a gauge\na{b=\"\\\"\\\\\\n\"} -1.5e-07\n"), 1);
}
END_TEST

/* ---- rendering ---- */

static const char small_expected[] =
	"# HELP popsign_metrics_dropped_total Metric series not created: registry full, out of "
	"memory, or an invalid name, labels or type.\n"
	"# TYPE popsign_metrics_dropped_total counter\n"
	"popsign_metrics_dropped_total 0\n"
	"# HELP test_empty_seconds A histogram without observations.\n"
	"# TYPE test_empty_seconds histogram\n"
	"test_empty_seconds_bucket{le=\"0.0005\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.001\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.0025\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.005\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.01\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.025\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.05\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.1\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.25\"} 0\n"
	"test_empty_seconds_bucket{le=\"0.5\"} 0\n"
	"test_empty_seconds_bucket{le=\"1\"} 0\n"
	"test_empty_seconds_bucket{le=\"2.5\"} 0\n"
	"test_empty_seconds_bucket{le=\"5\"} 0\n"
	"test_empty_seconds_bucket{le=\"10\"} 0\n"
	"test_empty_seconds_bucket{le=\"+Inf\"} 0\n"
	"test_empty_seconds_sum 0\n"
	"test_empty_seconds_count 0\n"
	"# HELP test_http_requests_total Requests by route and status.\n"
	"# TYPE test_http_requests_total counter\n"
	"test_http_requests_total{route=\"healthz\",status=\"200\"} 5\n"
	"test_http_requests_total{route=\"sign\",status=\"201\"} 2\n"
	"test_http_requests_total{route=\"sign\",status=\"400\"} 1\n"
	"# HELP test_plain_total A counter without labels.\n"
	"# TYPE test_plain_total counter\n"
	"test_plain_total 7\n"
	"# HELP test_ready Readiness by key.\n"
	"# TYPE test_ready gauge\n"
	"test_ready{key=\"bad\"} 0\n"
	"test_ready{key=\"ec256\"} 1\n"
	"# HELP test_sessions Sessions in use.\n"
	"# TYPE test_sessions gauge\n"
	"test_sessions 2.5\n"
	"# HELP test_sign_seconds Signing latency.\n"
	"# TYPE test_sign_seconds histogram\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.0005\"} 1\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.001\"} 2\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.0025\"} 2\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.005\"} 2\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.01\"} 2\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.025\"} 2\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.05\"} 2\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.1\"} 2\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.25\"} 3\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"0.5\"} 4\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"1\"} 4\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"2.5\"} 4\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"5\"} 4\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"10\"} 5\n"
	"test_sign_seconds_bucket{key=\"ec256\",le=\"+Inf\"} 6\n"
	"test_sign_seconds_sum{key=\"ec256\"} 21.5015\n"
	"test_sign_seconds_count{key=\"ec256\"} 6\n";

/* Created out of order, so that sorting shows. */
static void fill_small(struct metrics *m)
{
	struct metric *plain, *h;

	metric_set(metrics_gauge(m, "test_sessions", "Sessions in use.", NULL), 4);
	metric_adjust(metrics_gauge(m, "test_sessions", "Sessions in use.", NULL), -1.5);
	h = metrics_histogram(m, "test_sign_seconds", "Signing latency.", "key", "ec256", NULL);
	metrics_histogram(m, "test_empty_seconds", "A histogram without observations.", NULL);
	metric_add(metrics_counter(m, "test_http_requests_total", "Requests by route and status.",
				   "route", "sign", "status", "201", NULL), 2);
	metric_add(metrics_counter(m, "test_http_requests_total", "other help is ignored",
				   "route", "sign", "status", "400", NULL), 1);
	metric_add(metrics_counter(m, "test_http_requests_total", NULL,
				   "route", "healthz", "status", "200", NULL), 5);
	metric_set(metrics_gauge(m, "test_ready", "Readiness by key.", "key", "ec256", NULL), 1);
	metric_set(metrics_gauge(m, "test_ready", NULL, "key", "bad", NULL), 0);
	plain = metrics_counter(m, "test_plain_total", "A counter without labels.", NULL);
	metric_add(plain, 3);
	metric_add(plain, 4);
	/* On the bounds of the first two buckets, of 0.25 and of 10; just above
	 * 0.25; above every bound. */
	metric_observe(h, 0.0005);
	metric_observe(h, 0.001);
	metric_observe(h, 0.25);
	metric_observe(h, next_up(0.25));
	metric_observe(h, 10);
	metric_observe(h, 11);
	metric_observe(h, NAN);
}

START_TEST(render_small_registry_exactly)
{
	struct metrics *m = new_ok();
	char *text, *again = NULL;

	fill_small(m);
	text = render_ok(m);
	ck_assert_str_eq(text, small_expected);
	ck_assert_int_eq(read_text(text), 1 + 17 + 3 + 1 + 2 + 1 + 17);
	ck_assert_int_eq(metrics_render(m, &again, NULL), 0); /* ret_len is optional */
	ck_assert_str_eq(again, text);
	free(again);
	free(text);
	metrics_free(m);
}
END_TEST

/* A counter kept elsewhere as a running total never goes back. */
START_TEST(raise_never_lowers)
{
	struct metrics *m = new_ok();
	struct metric *c = metrics_counter(m, "test_total", "h", NULL);
	char *text;

	metric_raise(c, 5);
	metric_raise(c, 3);
	text = render_ok(m);
	ck_assert_int_eq(strncmp(value_of(text, "test_total"), "5\n", 2), 0);
	free(text);
	metric_raise(c, 7);
	metric_add(c, 1);
	text = render_ok(m);
	ck_assert_int_eq(strncmp(value_of(text, "test_total"), "8\n", 2), 0);
	free(text);
	metric_raise(metrics_gauge(m, "test_gauge", "h", NULL), 9); /* not a counter: ignored */
	text = render_ok(m);
	ck_assert_int_eq(strncmp(value_of(text, "test_gauge"), "0\n", 2), 0);
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(handles_are_found_again)
{
	struct metrics *m = new_ok();
	struct metric *a = metrics_counter(m, "test_total", "h", "k", "v", NULL);

	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_eq(metrics_counter(m, "test_total", "h", "k", "v", NULL), a);
	ck_assert_ptr_ne(metrics_counter(m, "test_total", "h", "k", "w", NULL), a);
	ck_assert_ptr_ne(metrics_counter(m, "test_total", "h", NULL), a);
	ck_assert_uint_eq(dropped(m), 0);
	metrics_free(m);
	metrics_free(NULL);
}
END_TEST

START_TEST(every_bucket_bound_is_inclusive)
{
	static const double bounds[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
					 0.1, 0.25, 0.5, 1, 2.5, 5, 10 };
	static const char *const les[] = { "0.0005", "0.001", "0.0025", "0.005", "0.01",
					   "0.025", "0.05", "0.1", "0.25", "0.5", "1",
					   "2.5", "5", "10", "+Inf" };
	struct metrics *m = new_ok();
	struct metric *on = metrics_histogram(m, "test_on_seconds", "h", NULL);
	struct metric *above = metrics_histogram(m, "test_above_seconds", "h", NULL);
	char series[64], *text;

	for (size_t i = 0; i < 14; i++) {
		metric_observe(on, bounds[i]);
		metric_observe(above, next_up(bounds[i]));
	}
	metric_observe(on, 0);
	metric_observe(on, -1); /* a clock step backwards: counted in the first bucket */
	text = render_ok(m);
	for (size_t i = 0; i < 15; i++) {
		snprintf(series, sizeof(series), "test_on_seconds_bucket{le=\"%s\"}", les[i]);
		ck_assert_uint_eq(count_of(text, series), i < 14 ? i + 3 : 16);
		snprintf(series, sizeof(series), "test_above_seconds_bucket{le=\"%s\"}", les[i]);
		ck_assert_uint_eq(count_of(text, series), i);
	}
	ck_assert_uint_eq(count_of(text, "test_on_seconds_count"), 16);
	ck_assert_uint_eq(count_of(text, "test_above_seconds_count"), 14);
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(numbers_are_spelled_as_prometheus_reads_them)
{
	static const struct {
		double v;
		const char *text;
	} cases[] = {
		{ 0.1, "0.1" },
		{ 1.0 / 3.0, "0.3333333333333333" },
		{ 0.1 + 0.2, "0.30000000000000004" },
		{ -0.25, "-0.25" },
		{ 1e300, "1e+300" },
		{ 5e-324, "5e-324" },
		{ 123456789012.0, "123456789012" },
		{ 80000, "80000" },
		{ 1e16, "10000000000000000" },
		{ 1e17, "1e+17" },
		{ 18014398509481984.0, "18014398509481984" },
		{ 1.5e-5, "1.5e-05" },
		{ 0.0001, "0.0001" },
		{ -0.0, "-0" },
		{ 0, "0" },
		{ INFINITY, "+Inf" },
		{ -INFINITY, "-Inf" },
		{ NAN, "NaN" },
	};
	struct metrics *m = new_ok();
	char label[8], series[64], *text;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(label, sizeof(label), "%zu", i);
		metric_set(metrics_gauge(m, "test_gauge", "h", "case", label, NULL), cases[i].v);
	}
	metric_add(metrics_counter(m, "test_big_total", "h", NULL), UINT64_MAX);
	text = render_ok(m);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(series, sizeof(series), "test_gauge{case=\"%zu\"}", i);
		ck_assert_ptr_nonnull(value_of(text, series));
		ck_assert_msg(strncmp(value_of(text, series), cases[i].text, strlen(cases[i].text)) == 0 &&
				      value_of(text, series)[strlen(cases[i].text)] == '\n',
			      "case %zu: want %s", i, cases[i].text);
	}
	ck_assert_ptr_nonnull(strstr(text, "\ntest_big_total 18446744073709551615\n"));
	free(text);
	metrics_free(m);
}
END_TEST

START_TEST(label_values_and_help_are_escaped)
{
	struct metrics *m = new_ok();
	char *text;

	metric_add(metrics_counter(m, "test_errors_total", "Back\\slash, \"quotes\" and\nnewline.",
				   "why", "a\\b\"c\nd", "utf8", "\xc3\xa9", NULL), 1);
	metric_add(metrics_counter(m, "test_errors_total", NULL, "why", "", "utf8", "", NULL), 2);
	metrics_gauge(m, "test_no_help", NULL, NULL);
	metrics_gauge(m, "test_empty_help", "", NULL);
	text = render_ok(m);
	ck_assert_ptr_null(strstr(text, "# HELP test_empty_help"));
	ck_assert_ptr_null(strstr(text, "# HELP test_no_help"));
	ck_assert_str_eq(strstr(text, "# HELP test_errors_total"),
			 "# HELP test_errors_total Back\\\\slash, \"quotes\" and\\nnewline.\n"
			 "# TYPE test_errors_total counter\n"
			 "test_errors_total{why=\"\",utf8=\"\"} 2\n"
			 "test_errors_total{why=\"a\\\\b\\\"c\\nd\",utf8=\"\xc3\xa9\"} 1\n"
			 "# TYPE test_no_help gauge\n"
			 "test_no_help 0\n");
	ck_assert_ptr_nonnull(strstr(text, "\n# TYPE test_empty_help gauge\ntest_empty_help 0\n# HELP"));
	free(text);
	metrics_free(m);
}
END_TEST

/* Each refusal returns NULL and adds exactly one to the dropped counter. */
#define ASSERT_REFUSED(call)                                           \
	do {                                                           \
		uint64_t before_ = dropped(m);                         \
		ck_assert_ptr_null(call);                              \
		ck_assert_uint_eq(dropped(m), before_ + 1);            \
	} while (0)

START_TEST(invalid_series_are_refused_and_counted)
{
	struct metrics *m = new_ok();

	ASSERT_REFUSED(metrics_counter(m, "", "h", NULL));
	ASSERT_REFUSED(metrics_counter(m, NULL, "h", NULL));
	ASSERT_REFUSED(metrics_counter(m, "9lives_total", "h", NULL));
	ASSERT_REFUSED(metrics_counter(m, "has-dash_total", "h", NULL));
	ASSERT_REFUSED(metrics_counter(m, "has space", "h", NULL));
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "", "v", NULL));
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "9", "v", NULL));
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "a:b", "v", NULL));
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "__reserved", "v", NULL));
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "k", "v", "k", "w", NULL));
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "name_without_value", NULL));
	ASSERT_REFUSED(metrics_histogram(m, "test_seconds", "h", "le", "1", NULL));
	ck_assert_ptr_nonnull(metrics_counter(m, "test:colon_total", "h", "le", "1", NULL));
	ck_assert_ptr_nonnull(metrics_counter(m, "test_total", "h", "_k", "v", NULL));
	/* One name, one type. */
	ck_assert_ptr_nonnull(metrics_gauge(m, "test_gauge", "h", NULL));
	ASSERT_REFUSED(metrics_counter(m, "test_gauge", "h", NULL));
	ASSERT_REFUSED(metrics_histogram(m, "test_gauge", "h", "k", "other", NULL));
	ASSERT_REFUSED(metrics_gauge(m, METRICS_DROPPED_NAME, "h", NULL));
	ck_assert_uint_eq(dropped(m), 15);
	metrics_free(m);
}
END_TEST

START_TEST(label_sets_are_bounded)
{
	struct metrics *m = new_ok();
	char value[METRICS_LABELS_MAX];

	/* k="..." takes 4 bytes more than the value, and a NUL. */
	memset(value, 'x', sizeof(value));
	value[METRICS_LABELS_MAX - 5] = '\0';
	ck_assert_ptr_nonnull(metrics_counter(m, "test_total", "h", "k", value, NULL));
	value[0] = '"'; /* escaping makes it one byte too long */
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "k", value, NULL));
	value[0] = 'x';
	value[METRICS_LABELS_MAX - 5] = 'x';
	value[METRICS_LABELS_MAX - 4] = '\0';
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "k", value, NULL));
	ck_assert_uint_eq(dropped(m), 2);
	metrics_free(m);
}
END_TEST

START_TEST(updates_ignore_null_and_other_types)
{
	struct metrics *m = new_ok();
	struct metric *c = metrics_counter(m, "test_total", "h", NULL);
	struct metric *g = metrics_gauge(m, "test_gauge", "h", NULL);
	struct metric *h = metrics_histogram(m, "test_seconds", "h", NULL);
	char *before = render_ok(m), *after;

	metric_add(NULL, 1);
	metric_set(NULL, 1);
	metric_adjust(NULL, 1);
	metric_observe(NULL, 1);
	metric_add(g, 1);
	metric_add(h, 1);
	metric_set(c, 1);
	metric_set(h, 1);
	metric_adjust(c, 1);
	metric_adjust(h, 1);
	metric_observe(c, 1);
	metric_observe(g, 1);
	after = render_ok(m);
	ck_assert_str_eq(after, before);
	free(before);
	free(after);
	metrics_free(m);
}
END_TEST

START_TEST(series_are_capped)
{
	struct metrics *m = new_ok();
	struct metric *first = NULL, *s;
	char label[16], *text;

	/* The dropped counter is the first series. */
	for (int i = 0; i < METRICS_SERIES_MAX - 1; i++) {
		snprintf(label, sizeof(label), "%d", i);
		s = metrics_counter(m, "test_total", "h", "n", label, NULL);
		ck_assert_ptr_nonnull(s);
		metric_add(s, 1);
		if (i == 0)
			first = s;
	}
	ck_assert_uint_eq(dropped(m), 0);
	ASSERT_REFUSED(metrics_counter(m, "test_total", "h", "n", "overflow", NULL));
	ASSERT_REFUSED(metrics_gauge(m, "test_new_family", "h", NULL));
	ck_assert_ptr_eq(metrics_counter(m, "test_total", "h", "n", "0", NULL), first);
	metric_add(metrics_counter(m, "test_total", "h", "n", "0", NULL), 1);
	text = render_ok(m);
	ck_assert_int_eq(read_text(text), METRICS_SERIES_MAX);
	ck_assert_ptr_null(strstr(text, "overflow"));
	ck_assert_ptr_null(strstr(text, "test_new_family"));
	ck_assert_uint_eq(count_of(text, "test_total{n=\"0\"}"), 2);
	ck_assert_uint_eq(count_of(text, METRICS_DROPPED_NAME), 2);
	free(text);
	metrics_free(m);
}
END_TEST

/* ---- threads ---- */

#define THREADS 8
#define ROUNDS 10000

struct worker {
	struct metrics *m;
	struct metric *shared, *gauge, *histogram;
	int id;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	char id[8];

	snprintf(id, sizeof(id), "%d", w->id);
	for (int i = 0; i < ROUNDS; i++) {
		metric_add(w->shared, 1);
		metric_add(metrics_counter(w->m, "test_lookup_total", "h", NULL), 1);
		metric_add(metrics_counter(w->m, "test_per_thread_total", "h", "thread", id, NULL), 1);
		metric_add(metrics_counter(w->m, "test_per_thread_total", "h", "thread", "shared", NULL), 2);
		metric_adjust(w->gauge, 1);
		metric_observe(w->histogram, i % 2 ? 0.001 : 20);
	}
	return NULL;
}

struct scraper {
	struct metrics *m;
	atomic_bool stop;
	int renders, failures;
};

/* Renders while the workers run; every rendering must read back. */
static void *scrape(void *arg)
{
	struct scraper *s = arg;
	char *text = NULL;

	while (!atomic_load(&s->stop)) {
		if (metrics_render(s->m, &text, NULL) != 0 || read_text(text) < 1)
			s->failures++;
		free(text);
		text = NULL;
		s->renders++;
	}
	return NULL;
}

START_TEST(concurrent_updates_are_exact)
{
	struct metrics *m = new_ok();
	struct worker w[THREADS];
	struct scraper sc = { .m = m };
	pthread_t t[THREADS], st;
	char series[64], *text;

	for (int i = 0; i < THREADS; i++)
		w[i] = (struct worker){ m, metrics_counter(m, "test_shared_total", "h", NULL),
					metrics_gauge(m, "test_gauge", "h", NULL),
					metrics_histogram(m, "test_seconds", "h", NULL), i };
	ck_assert_int_eq(pthread_create(&st, NULL, scrape, &sc), 0);
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, work, &w[i]), 0);
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	atomic_store(&sc.stop, true);
	ck_assert_int_eq(pthread_join(st, NULL), 0);
	ck_assert_int_eq(sc.failures, 0);
	ck_assert_int_ge(sc.renders, 1);

	text = render_ok(m);
	ck_assert_uint_eq(count_of(text, "test_shared_total"), THREADS * ROUNDS);
	ck_assert_uint_eq(count_of(text, "test_lookup_total"), THREADS * ROUNDS);
	ck_assert_uint_eq(count_of(text, "test_per_thread_total{thread=\"shared\"}"), 2 * THREADS * ROUNDS);
	for (int i = 0; i < THREADS; i++) {
		snprintf(series, sizeof(series), "test_per_thread_total{thread=\"%d\"}", i);
		ck_assert_uint_eq(count_of(text, series), ROUNDS);
	}
	ck_assert_ptr_nonnull(strstr(text, "\ntest_gauge 80000\n"));
	ck_assert_uint_eq(count_of(text, "test_seconds_bucket{le=\"0.001\"}"), THREADS * ROUNDS / 2);
	ck_assert_uint_eq(count_of(text, "test_seconds_bucket{le=\"10\"}"), THREADS * ROUNDS / 2);
	ck_assert_uint_eq(count_of(text, "test_seconds_count"), THREADS * ROUNDS);
	ck_assert_uint_eq(count_of(text, METRICS_DROPPED_NAME), 0);
	free(text);
	metrics_free(m);
}
END_TEST

static Suite *metrics_suite(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, reader_refuses_malformed_text);
	tcase_add_test(tc, render_small_registry_exactly);
	tcase_add_test(tc, handles_are_found_again);
	tcase_add_test(tc, raise_never_lowers);
	tcase_add_test(tc, every_bucket_bound_is_inclusive);
	tcase_add_test(tc, numbers_are_spelled_as_prometheus_reads_them);
	tcase_add_test(tc, label_values_and_help_are_escaped);
	tcase_add_test(tc, invalid_series_are_refused_and_counted);
	tcase_add_test(tc, label_sets_are_bounded);
	tcase_add_test(tc, updates_ignore_null_and_other_types);
	tcase_add_test(tc, series_are_capped);
	tcase_add_test(tc, concurrent_updates_are_exact);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return check_run(metrics_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
