/* CKR_ names for log lines, and how often each code came back from a failed
 * PKCS#11 call (the token error counters of /metrics). */
#include <stddef.h>

#include "error.h"
#include "token_internal.h"
#include "util.h"

#define CKR(x) { x, #x }
static const struct {
	CK_RV rv;
	const char *name;
} names[] = {
	CKR(CKR_OK), CKR(CKR_CANCEL), CKR(CKR_HOST_MEMORY), CKR(CKR_SLOT_ID_INVALID),
	CKR(CKR_GENERAL_ERROR), CKR(CKR_FUNCTION_FAILED), CKR(CKR_ARGUMENTS_BAD),
	CKR(CKR_CANT_LOCK), CKR(CKR_ATTRIBUTE_SENSITIVE), CKR(CKR_ATTRIBUTE_TYPE_INVALID),
	CKR(CKR_ACTION_PROHIBITED), CKR(CKR_DEVICE_ERROR), CKR(CKR_DEVICE_MEMORY),
	CKR(CKR_DEVICE_REMOVED), CKR(CKR_DATA_INVALID), CKR(CKR_DATA_LEN_RANGE),
	CKR(CKR_FUNCTION_CANCELED), CKR(CKR_FUNCTION_NOT_SUPPORTED),
	CKR(CKR_KEY_HANDLE_INVALID), CKR(CKR_KEY_TYPE_INCONSISTENT),
	CKR(CKR_KEY_FUNCTION_NOT_PERMITTED), CKR(CKR_MECHANISM_INVALID),
	CKR(CKR_MECHANISM_PARAM_INVALID), CKR(CKR_OBJECT_HANDLE_INVALID),
	CKR(CKR_OPERATION_ACTIVE), CKR(CKR_OPERATION_NOT_INITIALIZED),
	CKR(CKR_PIN_INCORRECT), CKR(CKR_PIN_INVALID), CKR(CKR_PIN_LEN_RANGE),
	CKR(CKR_PIN_EXPIRED), CKR(CKR_PIN_LOCKED), CKR(CKR_SESSION_CLOSED),
	CKR(CKR_SESSION_COUNT), CKR(CKR_SESSION_HANDLE_INVALID),
	CKR(CKR_SESSION_PARALLEL_NOT_SUPPORTED), CKR(CKR_SESSION_READ_ONLY),
	CKR(CKR_TEMPLATE_INCOMPLETE), CKR(CKR_TEMPLATE_INCONSISTENT),
	CKR(CKR_TOKEN_NOT_PRESENT), CKR(CKR_TOKEN_NOT_RECOGNIZED),
	CKR(CKR_USER_ALREADY_LOGGED_IN), CKR(CKR_USER_NOT_LOGGED_IN),
	CKR(CKR_USER_PIN_NOT_INITIALIZED), CKR(CKR_USER_TYPE_INVALID),
	CKR(CKR_BUFFER_TOO_SMALL), CKR(CKR_CRYPTOKI_NOT_INITIALIZED),
	CKR(CKR_CRYPTOKI_ALREADY_INITIALIZED), CKR(CKR_FUNCTION_REJECTED),
};
#undef CKR

#define UNKNOWN_NAME "CKR_(unknown)"

/* One counter per name, the last for codes without one.  Process-wide:
 * counters only grow, whatever token set saw the failure. */
static unsigned long long counts[ELEMENTSOF(names) + 1];

static size_t index_of(CK_RV rv)
{
	for (size_t i = 0; i < ELEMENTSOF(names); i++)
		if (names[i].rv == rv)
			return i;
	return ELEMENTSOF(names);
}

const char *ckr_name(CK_RV rv)
{
	size_t i = index_of(rv);

	return i < ELEMENTSOF(names) ? names[i].name : UNKNOWN_NAME;
}

void ckr_count(CK_RV rv)
{
	__atomic_fetch_add(&counts[index_of(rv)], 1, __ATOMIC_RELAXED);
}

int fail_token(struct p11_fail *f, const char *call, CK_RV rv)
{
	ckr_count(rv);
	f->call = call;
	f->rv = rv;
	return PS_E_TOKEN;
}

void token_errors_foreach(void (*cb)(void *ctx, const char *ckr_name, unsigned long long n),
			  void *ctx)
{
	for (size_t i = 0; i <= ELEMENTSOF(names); i++) {
		unsigned long long n = __atomic_load_n(&counts[i], __ATOMIC_RELAXED);

		if (n)
			cb(ctx, i < ELEMENTSOF(names) ? names[i].name : UNKNOWN_NAME, n);
	}
}
