#include "httpdate.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

#define DAY_SECONDS 86400
#define MIN_TIME (-62135596800LL)  /* 0001-01-01T00:00:00Z */
#define MAX_TIME (253402300799LL)  /* 9999-12-31T23:59:59Z */

static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
				      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char *const weekdays[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar: the
 * well-known era arithmetic, valid for every year here without timegm()'s
 * dependence on the width of time_t and the C library's range. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int *ret_y, unsigned *ret_m, unsigned *ret_d)
{
	int64_t era, y;
	unsigned doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = (unsigned)(z - era * 146097);
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	y = (int64_t)yoe + era * 400;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*ret_d = doy - (153 * mp + 2) / 5 + 1;
	*ret_m = mp < 10 ? mp + 3 : mp - 9;
	*ret_y = (int)(y + (*ret_m <= 2));
}

static bool is_leap(unsigned y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned month_days(unsigned y, unsigned m)
{
	static const unsigned days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* The n decimal digits at s as a number, or -1. */
static int digits(const char *s, size_t n)
{
	int v = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static int name_index(const char *s, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strncmp(s, names[i], 3) == 0)
			return (int)i;
	return -1;
}

int httpdate_parse(const char *text, int64_t *ret)
{
	/* "Sun, 03 Dec 2017 21:02:47 GMT": 29 characters, fixed positions. */
	int day, mon, year, hh, mm, ss;

	if (!text || strlen(text) != 29 || name_index(text, weekdays, 7) < 0 ||
	    memcmp(text + 3, ", ", 2) != 0 || text[7] != ' ' || text[11] != ' ' ||
	    text[16] != ' ' || text[19] != ':' || text[22] != ':' || strcmp(text + 25, " GMT") != 0)
		return PS_E_INVALID_REQUEST;
	day = digits(text + 5, 2);
	mon = name_index(text + 8, months, 12) + 1;
	year = digits(text + 12, 4);
	hh = digits(text + 17, 2);
	mm = digits(text + 20, 2);
	ss = digits(text + 23, 2);
	if (year < 1 || mon < 1 || day < 1 || (unsigned)day > month_days((unsigned)year, (unsigned)mon) ||
	    hh < 0 || hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss > 60)
		return PS_E_INVALID_REQUEST;
	*ret = days_from_civil(year, (unsigned)mon, (unsigned)day) * DAY_SECONDS + hh * 3600 +
	       mm * 60 + ss;
	return 0;
}

void httpdate_format_rfc3339(int64_t t, char out[HTTPDATE_RFC3339_LEN])
{
	int64_t days, secs;
	unsigned m, d;
	char tmp[64];
	int y;

	if (t < MIN_TIME)
		t = MIN_TIME;
	if (t > MAX_TIME)
		t = MAX_TIME;
	days = t >= 0 ? t / DAY_SECONDS : -((-t + DAY_SECONDS - 1) / DAY_SECONDS);
	secs = t - days * DAY_SECONDS;
	civil_from_days(days, &y, &m, &d);
	/* Each field is in range by now; the roomy buffer keeps the compiler's
	 * worst case (ten digits each) from truncating. */
	snprintf(tmp, sizeof(tmp), "%04d-%02u-%02uT%02u:%02u:%02uZ", y, m, d,
		 (unsigned)(secs / 3600), (unsigned)(secs / 60 % 60), (unsigned)(secs % 60));
	memcpy(out, tmp, HTTPDATE_RFC3339_LEN - 1);
	out[HTTPDATE_RFC3339_LEN - 1] = '\0';
}
