/* Counters, gauges and histograms, rendered in the Prometheus text format
 * (version 0.0.4).
 *
 * A series is one family name plus one set of labels.  metrics_counter(),
 * metrics_gauge() and metrics_histogram() find or create it under the
 * registry's mutex and return a handle; updating through a handle is one or
 * two atomic operations and never takes a lock, so request threads keep the
 * handles of fixed series (requests by route, say) from start-up.  For labels
 * known only at run time (a CKR_ name, a status code) call the same function
 * on each update: it is a hash lookup under the mutex.
 *
 * Labels are passed as name, value, name, value, ..., NULL.  Values are
 * escaped here; names must be valid Prometheus names.  Pass the labels of a
 * family in the same order every time: the order is part of the series.
 *
 * The registry holds at most METRICS_SERIES_MAX series, its own
 * popsign_metrics_dropped_total included.  A series that cannot be created
 * (registry full, out of memory, invalid name or labels, a name already used
 * with another type, labels longer than METRICS_LABELS_MAX) is not: the
 * lookup returns NULL, every update accepts NULL and does nothing, and
 * popsign_metrics_dropped_total counts each such refusal.  Metrics never
 * fail a request.
 *
 * Handles stay valid until metrics_free(); series are never removed. */
#ifndef POPSIGN_METRICS_H
#define POPSIGN_METRICS_H

#include <stddef.h>

#define METRICS_SERIES_MAX 4096 /* series in one registry */
#define METRICS_LABELS_MAX 512  /* bytes of one rendered, escaped label set */
#define METRICS_DROPPED_NAME "popsign_metrics_dropped_total"

struct metrics;
struct metric;

/* An empty registry (but for popsign_metrics_dropped_total, at 0).
 * Returns 0 and *ret (free with metrics_free()), or PS_E_NOMEM. */
int metrics_new(struct metrics **ret);

/* Frees m and every handle it gave out.  Accepts NULL.  No other thread
 * may be using m. */
void metrics_free(struct metrics *m);

/* The series name{labels} of a counter, a gauge, or a histogram of seconds
 * with buckets 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
 * 0.5, 1, 2.5, 5, 10 and +Inf.  help is the family's HELP text, copied
 * from the call that creates the family (NULL or "": no HELP line).  Returns the handle, owned by m, or NULL if the series
 * cannot be created (see above; histograms also refuse the label "le"). */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help, ...)
	__attribute__((sentinel));
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help, ...)
	__attribute__((sentinel));
struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help, ...)
	__attribute__((sentinel));

/* Adds n to a counter.  Does nothing on NULL or another type. */
void metric_add(struct metric *counter, unsigned long long n);

/* Raises counter to total, a running total kept elsewhere; a smaller total
 * leaves it as it is, so the counter never goes back. */
void metric_raise(struct metric *counter, unsigned long long total);

/* Sets a gauge to v, or adds delta (negative to subtract) to it.  Do nothing
 * on NULL or another type. */
void metric_set(struct metric *gauge, double v);
void metric_adjust(struct metric *gauge, double delta);

/* Records one observation in a histogram; a value on a bucket's bound falls
 * in that bucket.  NaN is ignored.  Does nothing on NULL or another type. */
void metric_observe(struct metric *histogram, double seconds);

/* Renders every series: "# HELP" and "# TYPE" once per family, families
 * sorted by name, series sorted by their labels; counters as integers,
 * doubles with the fewest digits that read back exactly (whole numbers
 * below 1e17 without an exponent), +Inf/-Inf/NaN as Prometheus spells
 * them.  Values are read while others update them, not
 * at one instant, but a histogram's _count always equals its +Inf bucket.
 * Returns 0 with *ret_text (NUL-terminated, caller frees) and, if ret_len
 * is not NULL, its length in *ret_len; or PS_E_NOMEM with both untouched. */
int metrics_render(struct metrics *m, char **ret_text, size_t *ret_len);

#endif
