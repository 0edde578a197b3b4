#include "retry.h"

#include "error.h"
#include "httpdate.h"
#include "text.h"

bool retry_status(long status)
{
	return status == 408 || status == 429 || (status >= 500 && status <= 599);
}

bool retry_transfer_error(int err)
{
	return err == PS_E_IO || err == PS_E_TIMEOUT;
}

int retry_after_parse(const char *value, int64_t now, int64_t *ret_ms)
{
	unsigned long long secs;
	int64_t when;

	if (!value)
		return PS_E_INVALID_REQUEST;
	/* A day is more than any budget here; larger values are still "long". */
	if (parse_uint(value, 0, 86400ULL * 365, &secs) == 0) {
		*ret_ms = (int64_t)secs * 1000;
		return 0;
	}
	if (httpdate_parse(value, &when) < 0)
		return PS_E_INVALID_REQUEST;
	*ret_ms = when > now ? (when - now) * 1000 : 0;
	return 0;
}

int retry_next_delay(unsigned tries, int64_t elapsed_ms, int64_t retry_after_ms,
		     int64_t *ret_ms)
{
	int64_t delay;

	if (tries == 0 || tries >= RETRY_MAX_TRIES)
		return PS_E_TIMEOUT;
	delay = retry_after_ms >= 0 ? retry_after_ms
				    : (int64_t)RETRY_FIRST_DELAY_MS << (tries - 1);
	if (elapsed_ms < 0)
		elapsed_ms = 0;
	if (delay > RETRY_BUDGET_MS - elapsed_ms)
		return PS_E_TIMEOUT;
	*ret_ms = delay;
	return 0;
}
