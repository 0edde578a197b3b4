#include "azure_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "error.h"
#include "output.h"
#include "retry.h"
#include "util.h"

bool azure_host_is_loopback(const char *host)
{
	struct in_addr a4;

	if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
		return true;
	/* inet_pton() takes dotted quads only: no "127.1", no octal. */
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	return false;
}

/* Why the parsed URL u does not fit policy; NULL if it does. */
static const char *url_problem(CURLU *u, const char *scheme, const char *host,
			       enum azure_url_policy policy)
{
	const char *extra = transport_url_extra(u);

	if (extra)
		return extra;
	if (strcmp(scheme, "https") == 0)
		return NULL;
	if (strcmp(scheme, "http") != 0)
		return "only https:// URLs are supported";
	if (policy == AZURE_URL_HTTPS && !azure_host_is_loopback(host))
		return "plain http:// is accepted only for a loopback host (127.0.0.0/8, ::1, "
		       "localhost): use https://";
	return NULL;
}

int azure_url_check(const char *url, enum azure_url_policy policy, char **ret, const char **why)
{
	_cleanup_(curl_url_cleanupp) CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL, *origin = NULL;
	const char *problem = NULL;
	int r = PS_E_NOMEM;

	if (!u)
		return PS_E_NOMEM;
	if (strlen(url) > AZURE_URL_MAX)
		problem = "the URL is too long";
	else if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
		 curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
		 curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0])
		problem = "not a valid URL with a host";
	else
		problem = url_problem(u, scheme, host, policy);
	if (problem) {
		*why = problem;
		r = PS_E_INVALID_REQUEST;
		goto out;
	}
	(void)curl_url_get(u, CURLUPART_PORT, &port, 0);
	if (asprintf(&origin, "%s://%s%s%s", scheme, host, port ? ":" : "", port ? port : "") < 0)
		goto out;
	*ret = origin;
	r = 0;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	return r;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* The Retry-After of a retryable answer in ms, or -1 without a usable one. */
static int64_t answer_retry_after(const struct transport_response *resp)
{
	int64_t ms;

	if (!resp->retry_after || retry_after_parse(resp->retry_after, time(NULL), &ms) < 0)
		return -1;
	return ms;
}

/* Fills *err for a transfer that failed for good. */
static int transfer_failed(const struct azure_http_request *req, int r, const char *errbuf,
			   unsigned tries, struct azure_error *err)
{
	if (r == PS_E_TIMEOUT || r == PS_E_IO)
		azure_error_set(err, AZURE_FAILURE_UNREACHABLE, "cannot reach %s: %s", req->what,
				errbuf);
	else if (r == PS_E_TOO_LARGE || r == PS_E_INVALID_REQUEST)
		azure_error_set(err, AZURE_FAILURE_MALFORMED, "%s's answer is unusable: %s",
				req->what, errbuf);
	else
		azure_error_set(err, AZURE_FAILURE_INTERNAL, "cannot send a request to %s: %s",
				req->what, errbuf[0] ? errbuf : ps_strerror(r));
	err->tries = tries;
	return r;
}

/* Announces the next try: why, and after how long. */
static void announce(const struct azure_http_request *req, long status, const char *errbuf,
		     int64_t delay_ms, unsigned next)
{
	char why[TRANSPORT_ERROR_MAX + 32];

	if (status)
		snprintf(why, sizeof(why), "HTTP %ld", status);
	else
		snprintf(why, sizeof(why), "%s", errbuf);
	output_errorf("%s: %s; trying again in %.1f s (try %u of %d)", req->what, why,
		      (double)delay_ms / 1000.0, next, RETRY_MAX_TRIES);
}

/* One try, its timeout cut to what the budget has left. */
static int send_once(const struct azure_http_request *req, int64_t elapsed_ms,
		     struct transport_response *resp, char errbuf[TRANSPORT_ERROR_MAX])
{
	long left_s = (long)((RETRY_BUDGET_MS - elapsed_ms) / 1000);
	bool plain = strncasecmp(req->url, "http://", 7) == 0;
	struct transport_request t = {
		.method = req->method,
		.url = req->url,
		.accept = "application/json",
		.content_type = req->content_type,
		.body = req->body,
		.body_len = req->body_len,
		.bearer = req->bearer,
		.headers = req->headers,
		.protocols = plain ? "http" : "https",
		.env_proxy = !plain,
		.connect_timeout_s = AZURE_CONNECT_TIMEOUT_S,
		.timeout_s = left_s < 1 ? 1 : left_s < AZURE_TIMEOUT_S ? left_s : AZURE_TIMEOUT_S,
		.max_response = AZURE_RESPONSE_MAX,
	};

	return transport_perform(&t, resp, errbuf);
}

int azure_http_send(const struct azure_http_request *req, struct transport_response *ret,
		    unsigned *ret_tries, struct azure_error *err)
{
	struct transport_response resp = {0};
	char errbuf[TRANSPORT_ERROR_MAX];
	int64_t start = now_ms(), delay;
	unsigned tries = 0;
	int r;

	for (;;) {
		r = send_once(req, now_ms() - start, &resp, errbuf);
		tries++;
		if (r < 0 && !retry_transfer_error(r))
			return transfer_failed(req, r, errbuf, tries, err);
		if (r == 0 && !retry_status(resp.status))
			break;
		if (retry_next_delay(tries, now_ms() - start, r == 0 ? answer_retry_after(&resp) : -1,
				     &delay) < 0)
			break;
		announce(req, r == 0 ? resp.status : 0, errbuf, delay, tries + 1);
		transport_response_clear(&resp);
		sleep_ms(delay);
	}
	if (r < 0)
		return transfer_failed(req, r, errbuf, tries, err);
	*ret = resp;
	*ret_tries = tries;
	return 0;
}
