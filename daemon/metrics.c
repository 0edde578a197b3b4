/* The metrics registry: series found by a hash of name and labels under one
 * mutex, values updated with relaxed atomics outside it.
 *
 * Relaxed ordering is enough: each value is a sum or a last write on its
 * own, and nothing else is published through it.  Doubles (gauges,
 * histogram sums) are kept as their bit patterns in 64-bit atomics and
 * added with a compare-and-swap loop.
 *
 * A series and its family are never freed before the registry, so handles
 * need no reference counting and rendering can read them without the lock
 * once it has copied the list of series.  Families are created with their
 * first series; since their names come from code, not from callers, they are
 * few and found by a linear walk.
 *
 * Numbers are printed with %g and read back with strtod(), which follow
 * LC_NUMERIC: popsignd never leaves the "C" locale. */
#include "metrics.h"

#include <math.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "util.h"

#define METRICS_HASH_SLOTS 8192 /* power of two, twice METRICS_SERIES_MAX */
#define BUCKETS 15              /* 14 bounds, then +Inf */
#define LABEL_PAIRS_MAX (METRICS_LABELS_MAX / 5 + 1) /* a="" and a comma each */
#define NUMBER_LEN 32           /* "-1.2345678901234567e-308" and then some */

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

static const char *const type_names[] = { "counter", "gauge", "histogram" };

static const double bucket_bounds[BUCKETS - 1] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

/* The bounds as "le" shows them: the shortest spelling that reads back. */
static const char *const bucket_les[BUCKETS] = {
	"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
	"0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
};

struct family {
	struct family *next;
	enum metric_type type;
	char *help; /* "" when none was given */
	char name[];
};

struct metric {
	enum metric_type type;
	struct family *family;
	struct metric *next;        /* in the same hash chain */
	char *labels;               /* rendered and escaped; "" when none */
	_Atomic uint64_t value;     /* count, or the bits of the gauge or of the sum */
	_Atomic uint64_t buckets[]; /* histograms: observations per bucket, not cumulative */
};

struct metrics {
	pthread_mutex_t lock;
	struct family *families;
	struct metric *dropped;
	size_t n_series;
	struct metric *series[METRICS_SERIES_MAX];
	struct metric *slots[METRICS_HASH_SLOTS];
};

static uint64_t double_bits(double d)
{
	uint64_t u;

	memcpy(&u, &d, sizeof(u));
	return u;
}

static double bits_double(uint64_t u)
{
	double d;

	memcpy(&d, &u, sizeof(d));
	return d;
}

static void atomic_add_double(_Atomic uint64_t *p, double delta)
{
	uint64_t old = atomic_load_explicit(p, memory_order_relaxed);

	while (!atomic_compare_exchange_weak_explicit(p, &old, double_bits(bits_double(old) + delta),
						      memory_order_relaxed, memory_order_relaxed))
		;
}

void metric_add(struct metric *counter, unsigned long long n)
{
	if (counter && counter->type == METRIC_COUNTER)
		atomic_fetch_add_explicit(&counter->value, n, memory_order_relaxed);
}

void metric_raise(struct metric *counter, unsigned long long total)
{
	uint64_t old;

	if (!counter || counter->type != METRIC_COUNTER)
		return;
	old = atomic_load_explicit(&counter->value, memory_order_relaxed);
	while (old < total && !atomic_compare_exchange_weak_explicit(
				      &counter->value, &old, total, memory_order_relaxed,
				      memory_order_relaxed))
		;
}

void metric_set(struct metric *gauge, double v)
{
	if (gauge && gauge->type == METRIC_GAUGE)
		atomic_store_explicit(&gauge->value, double_bits(v), memory_order_relaxed);
}

void metric_adjust(struct metric *gauge, double delta)
{
	if (gauge && gauge->type == METRIC_GAUGE)
		atomic_add_double(&gauge->value, delta);
}

void metric_observe(struct metric *histogram, double seconds)
{
	size_t i = 0;

	if (!histogram || histogram->type != METRIC_HISTOGRAM || isnan(seconds))
		return;
	while (i < BUCKETS - 1 && !(seconds <= bucket_bounds[i]))
		i++;
	atomic_fetch_add_explicit(&histogram->buckets[i], 1, memory_order_relaxed);
	atomic_add_double(&histogram->value, seconds);
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* for metric names; without ':' for label names. */
static bool name_valid(const char *s, bool colon)
{
	if (!s || !*s || (*s >= '0' && *s <= '9'))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || (colon && *s == ':')))
			return false;
	return true;
}

/* Appends n bytes of s to out (len bytes used), keeping room for the NUL. */
static bool append(char out[METRICS_LABELS_MAX], size_t *len, const char *s, size_t n)
{
	if (n >= METRICS_LABELS_MAX - *len)
		return false;
	memcpy(out + *len, s, n);
	*len += n;
	out[*len] = '\0';
	return true;
}

/* Appends name="value" with value escaped as the text format wants. */
static bool label_append(char out[METRICS_LABELS_MAX], size_t *len, const char *name,
			 const char *value)
{
	bool ok = (*len == 0 || append(out, len, ",", 1)) &&
		  append(out, len, name, strlen(name)) && append(out, len, "=\"", 2);

	for (; ok && *value; value++) {
		if (*value == '\\')
			ok = append(out, len, "\\\\", 2);
		else if (*value == '"')
			ok = append(out, len, "\\\"", 2);
		else if (*value == '\n')
			ok = append(out, len, "\\n", 2);
		else
			ok = append(out, len, value, 1);
	}
	return ok && append(out, len, "\"", 1);
}

/* Whether a series may carry the label name: a valid name, not reserved
 * ("__" prefix; "le" in histograms), not given twice. */
static bool label_name_ok(const char *name, bool histogram, const char **seen, size_t n)
{
	if (!name_valid(name, false) || strncmp(name, "__", 2) == 0 ||
	    (histogram && strcmp(name, "le") == 0))
		return false;
	for (size_t i = 0; i < n; i++)
		if (strcmp(seen[i], name) == 0)
			return false;
	return true;
}

/* Renders the name, value, ..., NULL list in ap into out. */
static bool labels_render(va_list ap, bool histogram, char out[METRICS_LABELS_MAX])
{
	const char *seen[LABEL_PAIRS_MAX];
	const char *name;
	size_t n = 0, len = 0;

	out[0] = '\0';
	while ((name = va_arg(ap, const char *))) {
		const char *value = va_arg(ap, const char *);

		if (!value || n == LABEL_PAIRS_MAX || !label_name_ok(name, histogram, seen, n))
			return false;
		seen[n++] = name;
		if (!label_append(out, &len, name, value))
			return false;
	}
	return true;
}

/* FNV-1a over name, a NUL, and labels. */
static size_t series_slot(const char *name, const char *labels)
{
	uint32_t h = 2166136261U;

	for (const char *p = name;; p++) {
		h = (h ^ (uint8_t)*p) * 16777619U;
		if (!*p)
			break;
	}
	for (const char *p = labels; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619U;
	return h & (METRICS_HASH_SLOTS - 1);
}

/* The family called name, created if new; NULL if it has another type or
 * memory ran out. */
static struct family *family_get(struct metrics *m, enum metric_type type, const char *name,
				 const char *help)
{
	struct family *f;
	size_t len = strlen(name);

	for (f = m->families; f; f = f->next)
		if (strcmp(f->name, name) == 0)
			return f->type == type ? f : NULL;
	f = calloc(1, sizeof(*f) + len + 1);
	if (!f)
		return NULL;
	f->help = strdup(help ? help : "");
	if (!f->help) {
		free(f);
		return NULL;
	}
	f->type = type;
	memcpy(f->name, name, len + 1);
	f->next = m->families;
	m->families = f;
	return f;
}

static struct metric *series_new(struct family *f, const char *labels)
{
	size_t n = f->type == METRIC_HISTOGRAM ? BUCKETS : 0;
	struct metric *s = calloc(1, sizeof(*s) + n * sizeof(s->buckets[0]));

	if (!s)
		return NULL;
	s->labels = strdup(labels);
	if (!s->labels) {
		free(s);
		return NULL;
	}
	s->type = f->type;
	s->family = f;
	return s;
}

/* The series name{labels} of that type, created if new and there is room;
 * NULL otherwise.  Called with m->lock held. */
static struct metric *series_get_locked(struct metrics *m, enum metric_type type,
					const char *name, const char *help, const char *labels)
{
	size_t slot = series_slot(name, labels);
	struct family *f;
	struct metric *s;

	for (s = m->slots[slot]; s; s = s->next)
		if (strcmp(s->family->name, name) == 0 && strcmp(s->labels, labels) == 0)
			return s->type == type ? s : NULL;
	if (m->n_series >= METRICS_SERIES_MAX)
		return NULL;
	f = family_get(m, type, name, help);
	if (!f)
		return NULL;
	s = series_new(f, labels);
	if (!s)
		return NULL;
	s->next = m->slots[slot];
	m->slots[slot] = s;
	m->series[m->n_series++] = s;
	return s;
}

static struct metric *series_get(struct metrics *m, enum metric_type type, const char *name,
				 const char *help, va_list ap)
{
	char labels[METRICS_LABELS_MAX];
	struct metric *s = NULL;

	if (name_valid(name, true) && labels_render(ap, type == METRIC_HISTOGRAM, labels)) {
		pthread_mutex_lock(&m->lock);
		s = series_get_locked(m, type, name, help, labels);
		pthread_mutex_unlock(&m->lock);
	}
	if (!s)
		metric_add(m->dropped, 1);
	return s;
}

#define SERIES_GETTER(function, type)                                                        \
	struct metric *function(struct metrics *m, const char *name, const char *help, ...)  \
	{                                                                                    \
		struct metric *s;                                                            \
		va_list ap;                                                                  \
                                                                                             \
		va_start(ap, help);                                                          \
		s = series_get(m, type, name, help, ap);                                     \
		va_end(ap);                                                                  \
		return s;                                                                    \
	}

SERIES_GETTER(metrics_counter, METRIC_COUNTER)
SERIES_GETTER(metrics_gauge, METRIC_GAUGE)
SERIES_GETTER(metrics_histogram, METRIC_HISTOGRAM)

int metrics_new(struct metrics **ret)
{
	struct metrics *m = calloc(1, sizeof(*m));

	if (!m)
		return PS_E_NOMEM;
	pthread_mutex_init(&m->lock, NULL);
	m->dropped = series_get_locked(m, METRIC_COUNTER, METRICS_DROPPED_NAME,
				       "Metric series not created: registry full, out of memory, "
				       "or an invalid name, labels or type.",
				       "");
	if (!m->dropped) {
		metrics_free(m);
		return PS_E_NOMEM;
	}
	*ret = m;
	return 0;
}

void metrics_free(struct metrics *m)
{
	struct family *f;

	if (!m)
		return;
	for (size_t i = 0; i < m->n_series; i++) {
		free(m->series[i]->labels);
		free(m->series[i]);
	}
	while ((f = m->families)) {
		m->families = f->next;
		free(f->help);
		free(f);
	}
	pthread_mutex_destroy(&m->lock);
	free(m);
}

/* d with the fewest significant digits that read back as d (17 always
 * do), so that 0.1 prints as 0.1, not 0.10000000000000001; whole numbers
 * below 1e17 in full (80000, not 8e+04); infinities and NaN as Prometheus
 * spells them.  Few values need many tries, and rendering is rare. */
static void number_format(double d, char out[NUMBER_LEN])
{
	int digits, exponent;

	if (isnan(d) || isinf(d)) {
		strcpy(out, isnan(d) ? "NaN" : d > 0 ? "+Inf" : "-Inf");
		return;
	}
	for (digits = 1; digits < 17; digits++) {
		snprintf(out, NUMBER_LEN, "%.*e", digits - 1, d);
		if (strtod(out, NULL) == d)
			break;
	}
	snprintf(out, NUMBER_LEN, "%.*e", digits - 1, d);
	exponent = (int)strtol(strchr(out, 'e') + 1, NULL, 10);
	/* %g switches to an exponent once it reaches the precision. */
	if (exponent >= digits && exponent < 17)
		digits = exponent + 1;
	snprintf(out, NUMBER_LEN, "%.*g", digits, d);
}

/* One sample line: name+suffix{labels[,le="le"]} value. */
static void sample_print(FILE *f, const struct metric *s, const char *suffix, const char *le,
			 const char *value)
{
	fputs(s->family->name, f);
	fputs(suffix, f);
	if (*s->labels || le) {
		fprintf(f, "{%s", s->labels);
		if (le)
			fprintf(f, "%sle=\"%s\"", *s->labels ? "," : "", le);
		fputc('}', f);
	}
	fprintf(f, " %s\n", value);
}

/* The buckets cumulative, and _count as their total so that it always
 * equals the +Inf bucket, however observations interleave. */
static void histogram_print(FILE *f, struct metric *s)
{
	char number[NUMBER_LEN];
	uint64_t total = 0;

	for (size_t i = 0; i < BUCKETS; i++) {
		total += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
		snprintf(number, sizeof(number), "%" PRIu64, total);
		sample_print(f, s, "_bucket", bucket_les[i], number);
	}
	number_format(bits_double(atomic_load_explicit(&s->value, memory_order_relaxed)), number);
	sample_print(f, s, "_sum", NULL, number);
	snprintf(number, sizeof(number), "%" PRIu64, total);
	sample_print(f, s, "_count", NULL, number);
}

static void series_print(FILE *f, struct metric *s)
{
	char number[NUMBER_LEN];
	uint64_t v;

	if (s->type == METRIC_HISTOGRAM) {
		histogram_print(f, s);
		return;
	}
	v = atomic_load_explicit(&s->value, memory_order_relaxed);
	if (s->type == METRIC_COUNTER)
		snprintf(number, sizeof(number), "%" PRIu64, v);
	else
		number_format(bits_double(v), number);
	sample_print(f, s, "", NULL, number);
}

/* HELP escapes backslash and newline only; quotes stay as they are. */
static void family_print(FILE *f, const struct family *fam)
{
	if (*fam->help) {
		fprintf(f, "# HELP %s ", fam->name);
		for (const char *p = fam->help; *p; p++) {
			if (*p == '\\')
				fputs("\\\\", f);
			else if (*p == '\n')
				fputs("\\n", f);
			else
				fputc(*p, f);
		}
		fputc('\n', f);
	}
	fprintf(f, "# TYPE %s %s\n", fam->name, type_names[fam->type]);
}

static int series_compare(const void *a, const void *b)
{
	const struct metric *x = *(struct metric *const *)a, *y = *(struct metric *const *)b;
	int r = strcmp(x->family->name, y->family->name);

	return r ? r : strcmp(x->labels, y->labels);
}

/* A sorted copy of the list of series, taken under the lock. */
static int series_snapshot(struct metrics *m, struct metric ***ret, size_t *ret_n)
{
	struct metric **list;
	size_t n;

	pthread_mutex_lock(&m->lock);
	n = m->n_series;
	/* NOLINTBEGIN(bugprone-sizeof-expression): list is an array of pointers */
	list = malloc(n * sizeof(*list));
	if (list)
		memcpy(list, m->series, n * sizeof(*list));
	pthread_mutex_unlock(&m->lock);
	if (!list)
		return PS_E_NOMEM;
	qsort(list, n, sizeof(*list), series_compare);
	/* NOLINTEND(bugprone-sizeof-expression) */
	*ret = list;
	*ret_n = n;
	return 0;
}

int metrics_render(struct metrics *m, char **ret_text, size_t *ret_len)
{
	_cleanup_free_ struct metric **list = NULL;
	char *text = NULL;
	size_t n, len = 0;
	bool failed;
	FILE *f;
	int r;

	r = series_snapshot(m, &list, &n);
	if (r < 0)
		return r;
	f = open_memstream(&text, &len);
	if (!f)
		return PS_E_NOMEM;
	for (size_t i = 0; i < n; i++) {
		if (i == 0 || list[i]->family != list[i - 1]->family)
			family_print(f, list[i]->family);
		series_print(f, list[i]);
	}
	failed = ferror(f);
	if (fclose(f) != 0 || failed) {
		free(text);
		return PS_E_NOMEM;
	}
	*ret_text = text;
	if (ret_len)
		*ret_len = len;
	return 0;
}
