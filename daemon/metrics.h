/* Counters and histograms, rendered in the Prometheus text format.
 *
 * Every update is lock-free (atomic adds) so the request path never waits on
 * metrics; rendering takes a consistent-enough snapshot. */
#ifndef POPSIGN_METRICS_H
#define POPSIGN_METRICS_H

#include <stddef.h>

#define METRICS_LABEL_MAX 64      /* longest label value kept */

struct metrics;

/* An empty registry.  Returns 0 and *ret (free with metrics_free()), or
 * PS_E_NOMEM. */
int metrics_new(struct metrics **ret);

/* Adds n to the counter name{label_name="label_value"} (label_name may be
 * NULL for an unlabelled counter; two labels are joined as one string by the
 * caller, e.g. route="sign",status="201" is passed as label_name NULL and the
 * pre-rendered label_value "route=\"sign\",status=\"201\"" through
 * metrics_count_raw()).  help is the HELP text of the family (static).
 * Counters are created on first use, at most METRICS_SERIES_MAX series. */
#define METRICS_SERIES_MAX 4096
void metrics_count(struct metrics *m, const char *name, const char *help,
		   const char *label_name, const char *label_value, unsigned long long n);

/* The same with labels already rendered ("a=\"x\",b=\"y\"", values escaped
 * by the caller with metrics_escape()). */
void metrics_count_raw(struct metrics *m, const char *name, const char *help,
		       const char *labels, unsigned long long n);

/* Sets the gauge name{labels} to v. */
void metrics_gauge_set(struct metrics *m, const char *name, const char *help,
		       const char *labels, double v);

/* Records one observation (seconds) in the histogram name{labels}, with fixed
 * buckets from 0.0005 s to 10 s. */
void metrics_observe(struct metrics *m, const char *name, const char *help,
		     const char *labels, double seconds);

/* Escapes a label value per the text format (\\, \", \n) into out
 * (out_len bytes, truncated at METRICS_LABEL_MAX). */
void metrics_escape(const char *in, char *out, size_t out_len);

/* Renders every family in the text format 0.0.4, families sorted by name.
 * Returns a malloc()ed NUL-terminated string (caller frees), or NULL. */
char *metrics_render(struct metrics *m);

/* Frees m.  Accepts NULL. */
void metrics_free(struct metrics *m);

#endif
