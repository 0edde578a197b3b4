/* libFuzzer target: the client's parsers of Azure Resource Manager answers
 * (arm.h).  An input is a mode byte, a status byte (fuzz_status()) and the
 * body:
 *   'a'  arm_answer_parse()              any answer to any request
 *   'c'  arm_certificate_from_body()     one certificate description
 *   'l'  arm_certificate_list_from_body() {"value": [...]}
 *   'e'  arm_error_from_answer()         an error answer, then printed
 * Besides crashes, leaks and undefined behaviour it checks that whatever is
 * accepted has the members arm.h says are required. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arm.h"
#include "error.h"
#include "fuzz.h"

static FILE *devnull;

static void check_certificate(const struct arm_certificate *c)
{
	if (!c || !c->name || !c->subject || !c->expiry_text || !arm_etag_valid(c->etag))
		abort();
	if (!c->thumbprint || strlen(c->thumbprint) != 40 ||
	    strspn(c->thumbprint, "0123456789abcdefABCDEF") != 40)
		abort();
}

static void check_error(const struct azure_error *e, long status)
{
	if (!memchr(e->code, '\0', sizeof(e->code)) ||
	    !memchr(e->message, '\0', sizeof(e->message)) || e->status != status ||
	    e->failure == AZURE_FAILURE_NONE || e->failure > AZURE_FAILURE_MISMATCH)
		abort();
	(void)arm_error_certificate_missing(e);
	azure_error_print(devnull, e);
}

static void check_answer(const struct arm_answer *a, long status)
{
	switch (a->kind) {
	case ARM_ANSWER_CERTIFICATE:
		check_certificate(a->certificate);
		break;
	case ARM_ANSWER_LIST:
		if (!a->list)
			abort();
		for (size_t i = 0; i < a->list->n; i++)
			check_certificate(&a->list->items[i]);
		break;
	case ARM_ANSWER_ERROR:
		check_error(&a->error, status);
		break;
	case ARM_ANSWER_EMPTY:
	case ARM_ANSWER_RESOURCE:
		break;
	default:
		abort();
	}
}

static void answer(long status, const char *body, size_t len)
{
	struct arm_answer a;
	int r = arm_answer_parse(status, body, len, &a);

	if (r == 0)
		check_answer(&a, status);
	else if (r != PS_E_INVALID_REQUEST && r != PS_E_NOMEM)
		abort();
	arm_answer_clear(&a);
}

static void certificate(const char *body, size_t len)
{
	struct arm_certificate *c = NULL;
	int r = arm_certificate_from_body(body, len, &c);

	if (r == 0)
		check_certificate(c);
	else if ((r != PS_E_INVALID_REQUEST && r != PS_E_NOMEM) || c)
		abort();
	arm_certificate_free(c);
}

static void list(const char *body, size_t len)
{
	struct arm_certificate_list *l = NULL;
	int r = arm_certificate_list_from_body(body, len, &l);

	if (r == 0) {
		if (!l)
			abort();
		for (size_t i = 0; i < l->n; i++)
			check_certificate(&l->items[i]);
	} else if ((r != PS_E_INVALID_REQUEST && r != PS_E_NOMEM) || l) {
		abort();
	}
	arm_certificate_list_free(l);
}

static void error(long status, const char *body, size_t len)
{
	struct azure_error e;
	int r;

	memset(&e, 'x', sizeof(e));
	r = arm_error_from_answer(status, body, len, &e);
	if (r != 0 && r != PS_E_INVALID_REQUEST)
		abort();
	check_error(&e, status);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *body = (const char *)data + 2;
	long status;

	if (size < 2)
		return 0;
	if (!devnull && !(devnull = fopen("/dev/null", "w")))
		abort();
	status = fuzz_status(data[1]);
	size -= 2;
	switch (data[0]) {
	case 'a':
		answer(status, body, size);
		break;
	case 'c':
		certificate(body, size);
		break;
	case 'l':
		list(body, size);
		break;
	case 'e':
		error(status, body, size);
		break;
	}
	return 0;
}
