/* When to try an Azure request again, and how long to wait first.
 *
 * Answers 429 and 5xx, dropped connections and timeouts are tried again
 * with exponential back-off (RETRY_FIRST_DELAY_MS, then twice that, ...),
 * or after exactly what a Retry-After header asks for.  A request is sent
 * at most RETRY_MAX_TRIES times and never past RETRY_BUDGET_MS from its
 * first try: a wait that would end past the budget is not made.  Pure
 * functions: the caller sleeps and sends. */
#ifndef POPSIGN_RETRY_H
#define POPSIGN_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#define RETRY_MAX_TRIES 3
#define RETRY_BUDGET_MS 60000
#define RETRY_FIRST_DELAY_MS 1000

/* True for an answer worth trying again: 408, 429 and every 5xx. */
bool retry_status(long status);

/* True for a failed transfer worth trying again: PS_E_IO (refused,
 * dropped) and PS_E_TIMEOUT.  Not for PS_E_TOO_LARGE, PS_E_INVALID_REQUEST
 * (not HTTP) or local failures. */
bool retry_transfer_error(int err);

/* Parses a Retry-After value: delta-seconds ("120") or an HTTP date
 * (httpdate_parse()), relative to now (seconds since the epoch).  A date in
 * the past is 0.  Returns 0 and *ret_ms, or PS_E_INVALID_REQUEST. */
int retry_after_parse(const char *value, int64_t now, int64_t *ret_ms);

/* The wait before the next try, after tries (>= 1) tries that began
 * elapsed_ms ago, given Retry-After in retry_after_ms (negative: none).
 * Returns 0 and *ret_ms, or PS_E_TIMEOUT if no further try is allowed:
 * RETRY_MAX_TRIES reached, or the wait would end past RETRY_BUDGET_MS. */
int retry_next_delay(unsigned tries, int64_t elapsed_ms, int64_t retry_after_ms,
		     int64_t *ret_ms);

#endif
