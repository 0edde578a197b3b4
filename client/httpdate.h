/* HTTP dates, as Azure writes them: RFC 1123 (RFC 9110's IMF-fixdate),
 * "Sun, 03 Dec 2017 21:02:47 GMT".  Used for Retry-After and for the
 * expiry, created and updated fields of certificate descriptions.
 *
 * Times are seconds since 1970-01-01T00:00:00Z as int64_t, so year 0001
 * (which DPS and IoT Hub send as "created") is representable. */
#ifndef POPSIGN_HTTPDATE_H
#define POPSIGN_HTTPDATE_H

#include <stdint.h>

/* Room for "YYYY-MM-DDTHH:MM:SSZ" and its NUL. */
#define HTTPDATE_RFC3339_LEN 21

/* Parses text, exactly "Www, DD Mon YYYY HH:MM:SS GMT" (day 01-31 valid for
 * the month and year, year 0001-9999, second 00-60 read as 59 plus one).
 * The weekday must be one of the seven names; it is not checked against the
 * date (the service computes it, a mismatch says nothing useful).  Returns 0
 * and *ret, or PS_E_INVALID_REQUEST with *ret untouched. */
int httpdate_parse(const char *text, int64_t *ret);

/* Formats t as "YYYY-MM-DDTHH:MM:SSZ" (years 0001 to 9999; others are
 * clamped to that range) into out. */
void httpdate_format_rfc3339(int64_t t, char out[HTTPDATE_RFC3339_LEN]);

#endif
