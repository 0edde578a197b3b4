/* A fault-injecting PKCS#11 module for tests.  It forwards every call to a
 * real module (FAULTY_PKCS11_MODULE, default SoftHSM2) and, following the
 * rules in the control file named by FAULTY_PKCS11_CONTROL, makes chosen
 * calls fail, wait or hang.  Each call is logged as "<C_Function> <CKR_NAME>"
 * to FAULTY_PKCS11_LOG when that is set.  The control file format and the
 * fault model are documented in tests/fakes/README.md.
 *
 * The environment is read once, when the module is first asked for its
 * function list; the control file is checked on every call. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define MAX_RULES 64
#define MAX_LINE 256
#define MAX_DELAY_MS 3600000UL
#define HANG_POLL_MS 50
#define MAX_SLOTS 64
#define RULE_ANY (-1)

/* Parameter shapes shared by many functions: "(params), (args)". */
#define SH_S (CK_SESSION_HANDLE s), (s)
#define SH_IN (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b)
#define SH_OUT (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b)
#define SH_IO (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), \
	(s, a, b, c, d)
#define SH_KEYOP (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), (s, a, b)
#define SH_ATTRS (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), \
	(s, a, b, c)

/* What a faulted call does to the real module so that it is left as a real
 * failure would leave it.  A failed single-part or final call ends its
 * operation (PKCS#11 2.40, 5.2); a call that was never forwarded would leave
 * it running in the real module and the caller's next *Init would get
 * CKR_OPERATION_ACTIVE, which no real device does. */
#define END_NONE ((void)0)
#define END_IO(fn) drain_io(real->fn, s, a, b)
#define END_OUT(fn) drain_out(real->fn, s)
#define END_CALL(fn, ...) ((void)real->fn(__VA_ARGS__))
#define END_VERIFY drain_verify(s)

/* Every function of the v2.40 list but C_GetFunctionList:
 * X(name, kind, end, (params), (args)).  Kinds: MOD (module-wide, not
 * matched by "*"), SLOT, SESS (first argument is the session), CUSTOM
 * (written out below).  Order is that of struct ck_function_list. */
#define FK_FUNCTIONS(X)                                                                          \
	X(C_Initialize, MOD, END_NONE, (CK_VOID_PTR a), (a))                                     \
	X(C_Finalize, MOD, END_NONE, (CK_VOID_PTR a), (a))                                       \
	X(C_GetInfo, MOD, END_NONE, (CK_INFO_PTR a), (a))                                        \
	X(C_GetSlotList, CUSTOM, END_NONE, (CK_BBOOL a, CK_SLOT_ID_PTR b, CK_ULONG_PTR c), (a, b, c)) \
	X(C_GetSlotInfo, CUSTOM, END_NONE, (CK_SLOT_ID a, CK_SLOT_INFO_PTR b), (a, b))           \
	X(C_GetTokenInfo, SLOT, END_NONE, (CK_SLOT_ID a, CK_TOKEN_INFO_PTR b), (a, b))           \
	X(C_GetMechanismList, SLOT, END_NONE,                                                    \
	  (CK_SLOT_ID a, CK_MECHANISM_TYPE_PTR b, CK_ULONG_PTR c), (a, b, c))                    \
	X(C_GetMechanismInfo, SLOT, END_NONE,                                                    \
	  (CK_SLOT_ID a, CK_MECHANISM_TYPE b, CK_MECHANISM_INFO_PTR c), (a, b, c))               \
	X(C_InitToken, SLOT, END_NONE,                                                           \
	  (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d), (a, b, c, d))        \
	X(C_InitPIN, SESS, END_NONE, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR a, CK_ULONG b), (s, a, b)) \
	X(C_SetPIN, SESS, END_NONE,                                                              \
	  (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR a, CK_ULONG b, CK_UTF8CHAR_PTR c, CK_ULONG d),   \
	  (s, a, b, c, d))                                                                       \
	X(C_OpenSession, SLOT, END_NONE,                                                         \
	  (CK_SLOT_ID a, CK_FLAGS b, CK_VOID_PTR c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e),       \
	  (a, b, c, d, e))                                                                       \
	X(C_CloseSession, SESS, END_NONE, SH_S)                                                  \
	X(C_CloseAllSessions, SLOT, END_NONE, (CK_SLOT_ID a), (a))                               \
	X(C_GetSessionInfo, SESS, END_NONE, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR a), (s, a)) \
	X(C_GetOperationState, SESS, END_NONE, SH_OUT)                                           \
	X(C_SetOperationState, SESS, END_NONE,                                                   \
	  (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d), \
	  (s, a, b, c, d))                                                                       \
	X(C_Login, SESS, END_NONE,                                                               \
	  (CK_SESSION_HANDLE s, CK_USER_TYPE a, CK_UTF8CHAR_PTR b, CK_ULONG c), (s, a, b, c))    \
	X(C_Logout, SESS, END_NONE, SH_S)                                                        \
	X(C_CreateObject, SESS, END_NONE,                                                        \
	  (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR a, CK_ULONG b, CK_OBJECT_HANDLE_PTR c), (s, a, b, c)) \
	X(C_CopyObject, SESS, END_NONE,                                                          \
	  (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c,              \
	   CK_OBJECT_HANDLE_PTR d), (s, a, b, c, d))                                             \
	X(C_DestroyObject, SESS, END_NONE, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a), (s, a))    \
	X(C_GetObjectSize, SESS, END_NONE,                                                       \
	  (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ULONG_PTR b), (s, a, b))                  \
	X(C_GetAttributeValue, SESS, END_NONE, SH_ATTRS)                                         \
	X(C_SetAttributeValue, SESS, END_NONE, SH_ATTRS)                                         \
	X(C_FindObjectsInit, SESS, END_NONE,                                                     \
	  (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR a, CK_ULONG b), (s, a, b))                      \
	X(C_FindObjects, SESS, END_NONE,                                                         \
	  (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR a, CK_ULONG b, CK_ULONG_PTR c), (s, a, b, c)) \
	X(C_FindObjectsFinal, SESS, END_CALL(C_FindObjectsFinal, s), SH_S)                       \
	X(C_EncryptInit, SESS, END_NONE, SH_KEYOP)                                               \
	X(C_Encrypt, SESS, END_IO(C_Encrypt), SH_IO)                                             \
	X(C_EncryptUpdate, SESS, END_OUT(C_EncryptFinal), SH_IO)                                 \
	X(C_EncryptFinal, SESS, END_OUT(C_EncryptFinal), SH_OUT)                                 \
	X(C_DecryptInit, SESS, END_NONE, SH_KEYOP)                                               \
	X(C_Decrypt, SESS, END_IO(C_Decrypt), SH_IO)                                             \
	X(C_DecryptUpdate, SESS, END_OUT(C_DecryptFinal), SH_IO)                                 \
	X(C_DecryptFinal, SESS, END_OUT(C_DecryptFinal), SH_OUT)                                 \
	X(C_DigestInit, SESS, END_NONE, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a), (s, a))       \
	X(C_Digest, SESS, END_IO(C_Digest), SH_IO)                                               \
	X(C_DigestUpdate, SESS, END_OUT(C_DigestFinal), SH_IN)                                   \
	X(C_DigestKey, SESS, END_OUT(C_DigestFinal), (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a), (s, a)) \
	X(C_DigestFinal, SESS, END_OUT(C_DigestFinal), SH_OUT)                                   \
	X(C_SignInit, SESS, END_NONE, SH_KEYOP)                                                  \
	X(C_Sign, SESS, END_IO(C_Sign), SH_IO)                                                   \
	X(C_SignUpdate, SESS, END_OUT(C_SignFinal), SH_IN)                                       \
	X(C_SignFinal, SESS, END_OUT(C_SignFinal), SH_OUT)                                       \
	X(C_SignRecoverInit, SESS, END_NONE, SH_KEYOP)                                           \
	X(C_SignRecover, SESS, END_IO(C_SignRecover), SH_IO)                                     \
	X(C_VerifyInit, SESS, END_NONE, SH_KEYOP)                                                \
	X(C_Verify, SESS, END_CALL(C_Verify, s, a, b, c, d),                                     \
	  (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG d),           \
	  (s, a, b, c, d))                                                                       \
	X(C_VerifyUpdate, SESS, END_VERIFY, SH_IN)                                               \
	X(C_VerifyFinal, SESS, END_CALL(C_VerifyFinal, s, a, b), SH_IN)                          \
	X(C_VerifyRecoverInit, SESS, END_NONE, SH_KEYOP)                                         \
	X(C_VerifyRecover, SESS, END_IO(C_VerifyRecover), SH_IO)                                 \
	X(C_DigestEncryptUpdate, SESS, END_NONE, SH_IO)                                          \
	X(C_DecryptDigestUpdate, SESS, END_NONE, SH_IO)                                          \
	X(C_SignEncryptUpdate, SESS, END_NONE, SH_IO)                                            \
	X(C_DecryptVerifyUpdate, SESS, END_NONE, SH_IO)                                          \
	X(C_GenerateKey, SESS, END_NONE,                                                         \
	  (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_ATTRIBUTE_PTR b, CK_ULONG c,              \
	   CK_OBJECT_HANDLE_PTR d), (s, a, b, c, d))                                             \
	X(C_GenerateKeyPair, SESS, END_NONE,                                                     \
	  (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_ATTRIBUTE_PTR b, CK_ULONG c,              \
	   CK_ATTRIBUTE_PTR d, CK_ULONG e, CK_OBJECT_HANDLE_PTR f, CK_OBJECT_HANDLE_PTR g),      \
	  (s, a, b, c, d, e, f, g))                                                              \
	X(C_WrapKey, SESS, END_NONE,                                                             \
	  (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_OBJECT_HANDLE c,      \
	   CK_BYTE_PTR d, CK_ULONG_PTR e), (s, a, b, c, d, e))                                   \
	X(C_UnwrapKey, SESS, END_NONE,                                                           \
	  (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_BYTE_PTR c,           \
	   CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g),                  \
	  (s, a, b, c, d, e, f, g))                                                              \
	X(C_DeriveKey, SESS, END_NONE,                                                           \
	  (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c,      \
	   CK_ULONG d, CK_OBJECT_HANDLE_PTR e), (s, a, b, c, d, e))                              \
	X(C_SeedRandom, SESS, END_NONE, SH_IN)                                                   \
	X(C_GenerateRandom, SESS, END_NONE, SH_IN)                                               \
	X(C_GetFunctionStatus, SESS, END_NONE, SH_S)                                             \
	X(C_CancelFunction, SESS, END_NONE, SH_S)                                                \
	X(C_WaitForSlotEvent, SLOT, END_NONE, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c), (a, b, c))

enum kind { KIND_MOD, KIND_SLOT, KIND_SESS, KIND_CUSTOM };

#define FK_ENUM(name, ...) FN_##name,
enum fn { FK_FUNCTIONS(FK_ENUM) FN_COUNT };

#define FK_NAME(name, ...) #name,
static const char *const fn_names[FN_COUNT] = { FK_FUNCTIONS(FK_NAME) };

#define FK_KIND(name, kind, ...) KIND_##kind,
static const enum kind fn_kinds[FN_COUNT] = { FK_FUNCTIONS(FK_KIND) };

/* Every return value the 2.40 header names, for the control file and the log. */
#define R(x) { #x, x }
static const struct {
	const char *name;
	CK_RV rv;
} ckr_names[] = {
	R(CKR_OK), R(CKR_CANCEL), R(CKR_HOST_MEMORY), R(CKR_SLOT_ID_INVALID),
	R(CKR_GENERAL_ERROR), R(CKR_FUNCTION_FAILED), R(CKR_ARGUMENTS_BAD), R(CKR_NO_EVENT),
	R(CKR_NEED_TO_CREATE_THREADS), R(CKR_CANT_LOCK), R(CKR_ATTRIBUTE_READ_ONLY),
	R(CKR_ATTRIBUTE_SENSITIVE), R(CKR_ATTRIBUTE_TYPE_INVALID), R(CKR_ATTRIBUTE_VALUE_INVALID),
	R(CKR_ACTION_PROHIBITED), R(CKR_DATA_INVALID), R(CKR_DATA_LEN_RANGE), R(CKR_DEVICE_ERROR),
	R(CKR_DEVICE_MEMORY), R(CKR_DEVICE_REMOVED), R(CKR_ENCRYPTED_DATA_INVALID),
	R(CKR_ENCRYPTED_DATA_LEN_RANGE), R(CKR_FUNCTION_CANCELED), R(CKR_FUNCTION_NOT_PARALLEL),
	R(CKR_FUNCTION_NOT_SUPPORTED), R(CKR_KEY_HANDLE_INVALID), R(CKR_KEY_SIZE_RANGE),
	R(CKR_KEY_TYPE_INCONSISTENT), R(CKR_KEY_NOT_NEEDED), R(CKR_KEY_CHANGED), R(CKR_KEY_NEEDED),
	R(CKR_KEY_INDIGESTIBLE), R(CKR_KEY_FUNCTION_NOT_PERMITTED), R(CKR_KEY_NOT_WRAPPABLE),
	R(CKR_KEY_UNEXTRACTABLE), R(CKR_MECHANISM_INVALID), R(CKR_MECHANISM_PARAM_INVALID),
	R(CKR_OBJECT_HANDLE_INVALID), R(CKR_OPERATION_ACTIVE), R(CKR_OPERATION_NOT_INITIALIZED),
	R(CKR_PIN_INCORRECT), R(CKR_PIN_INVALID), R(CKR_PIN_LEN_RANGE), R(CKR_PIN_EXPIRED),
	R(CKR_PIN_LOCKED), R(CKR_SESSION_CLOSED), R(CKR_SESSION_COUNT),
	R(CKR_SESSION_HANDLE_INVALID), R(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
	R(CKR_SESSION_READ_ONLY), R(CKR_SESSION_EXISTS), R(CKR_SESSION_READ_ONLY_EXISTS),
	R(CKR_SESSION_READ_WRITE_SO_EXISTS), R(CKR_SIGNATURE_INVALID), R(CKR_SIGNATURE_LEN_RANGE),
	R(CKR_TEMPLATE_INCOMPLETE), R(CKR_TEMPLATE_INCONSISTENT), R(CKR_TOKEN_NOT_PRESENT),
	R(CKR_TOKEN_NOT_RECOGNIZED), R(CKR_TOKEN_WRITE_PROTECTED),
	R(CKR_UNWRAPPING_KEY_SIZE_RANGE), R(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
	R(CKR_USER_ALREADY_LOGGED_IN), R(CKR_USER_NOT_LOGGED_IN), R(CKR_USER_PIN_NOT_INITIALIZED),
	R(CKR_USER_TYPE_INVALID), R(CKR_USER_ANOTHER_ALREADY_LOGGED_IN), R(CKR_USER_TOO_MANY_TYPES),
	R(CKR_WRAPPED_KEY_INVALID), R(CKR_WRAPPED_KEY_LEN_RANGE), R(CKR_WRAPPING_KEY_HANDLE_INVALID),
	R(CKR_WRAPPING_KEY_SIZE_RANGE), R(CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
	R(CKR_RANDOM_SEED_NOT_SUPPORTED), R(CKR_RANDOM_NO_RNG), R(CKR_DOMAIN_PARAMS_INVALID),
	R(CKR_CURVE_NOT_SUPPORTED), R(CKR_BUFFER_TOO_SMALL), R(CKR_SAVED_STATE_INVALID),
	R(CKR_INFORMATION_SENSITIVE), R(CKR_STATE_UNSAVEABLE), R(CKR_CRYPTOKI_NOT_INITIALIZED),
	R(CKR_CRYPTOKI_ALREADY_INITIALIZED), R(CKR_MUTEX_BAD), R(CKR_MUTEX_NOT_LOCKED),
	R(CKR_NEW_PIN_MODE), R(CKR_NEXT_OTP), R(CKR_EXCEEDED_MAX_ITERATIONS),
	R(CKR_FIPS_SELF_TEST_FAILED), R(CKR_LIBRARY_LOAD_FAILED), R(CKR_PIN_TOO_WEAK),
	R(CKR_PUBLIC_KEY_INVALID), R(CKR_FUNCTION_REJECTED),
};
#undef R

enum action { ACT_FAIL, ACT_DELAY, ACT_HANG };

struct rule {
	int fn; /* enum fn, or RULE_ANY for "*" */
	enum action action;
	CK_RV rv;
	unsigned long ms;
	bool once;
	bool spent;
};

/* What a call does after its waits: go through, fail, or (for a device-gone
 * "*" rule on C_GetSlotList/C_GetSlotInfo) see the slot without its token. */
enum outcome { PASS, FAIL, ABSENT };

struct verdict {
	enum outcome outcome;
	CK_RV rv;
	bool drop_sessions;
};

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static CK_FUNCTION_LIST_PTR real;
/* Static, not heap: a caller that unloads the module must not leak them. */
static char control_path[PATH_MAX], log_path[PATH_MAX];

/* Protects everything below: the rules of the current control file. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static size_t n_rules;
static bool have_file;
static struct stat seen;
/* Bumped whenever the control file changes: once-rules re-arm, and the
 * first device-gone failure after it drops the real sessions again. */
static unsigned long generation;
static unsigned long dropped_generation;

static const char *ckr_name(CK_RV rv)
{
	for (size_t i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++)
		if (ckr_names[i].rv == rv)
			return ckr_names[i].name;
	return NULL;
}

static bool ckr_parse(const char *name, CK_RV *ret)
{
	for (size_t i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++)
		if (strcmp(ckr_names[i].name, name) == 0) {
			*ret = ckr_names[i].rv;
			return true;
		}
	return false;
}

static bool fn_parse(const char *name, int *ret)
{
	if (strcmp(name, "*") == 0) {
		*ret = RULE_ANY;
		return true;
	}
	for (int i = 0; i < FN_COUNT; i++)
		if (strcmp(fn_names[i], name) == 0) {
			*ret = i;
			return true;
		}
	return false;
}

static void sleep_ms(unsigned long ms)
{
	struct timespec t = { .tv_sec = (time_t)(ms / 1000),
			      .tv_nsec = (long)(ms % 1000) * 1000000 };

	while (nanosleep(&t, &t) < 0 && errno == EINTR)
		;
}

/* Appends "<C_Function> <CKR_NAME>" with one write(2) on an O_APPEND
 * descriptor, so lines from concurrent calls never interleave. */
static CK_RV log_call(enum fn fn, CK_RV rv)
{
	char line[128];
	const char *name = ckr_name(rv);
	int fd, len;

	if (!log_path[0])
		return rv;
	if (name)
		len = snprintf(line, sizeof(line), "%s %s\n", fn_names[fn], name);
	else
		len = snprintf(line, sizeof(line), "%s 0x%08lx\n", fn_names[fn], (unsigned long)rv);
	fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd >= 0) {
		if (write(fd, line, (size_t)len) != len)
			fprintf(stderr, "faulty-pkcs11: short write to %s\n", log_path);
		close(fd);
	}
	return rv;
}

/* Parses one non-blank, non-comment line; on failure *why says why. */
static bool rule_parse(char *line, struct rule *ret, const char **why)
{
	char *w[5], *save = NULL, *end;
	size_t n = 0;
	struct rule r = { 0 };

	for (char *t = strtok_r(line, " \t\r\n", &save); t; t = strtok_r(NULL, " \t\r\n", &save)) {
		if (n == 4)
			return *why = "too many words", false;
		w[n++] = t;
	}
	if (n < 2)
		return *why = "expected a function and an action", false;
	if (!fn_parse(w[0], &r.fn))
		return *why = "unknown function", false;
	r.once = n >= 3 && strcmp(w[n - 1], "once") == 0;
	n -= r.once;
	if (strcmp(w[1], "fail") == 0 && n == 3) {
		r.action = ACT_FAIL;
		if (!ckr_parse(w[2], &r.rv) || r.rv == CKR_OK)
			return *why = "unknown or non-error CKR name", false;
	} else if (strcmp(w[1], "delay") == 0 && n == 3) {
		r.action = ACT_DELAY;
		errno = 0;
		r.ms = strtoul(w[2], &end, 10);
		if (errno || *end || end == w[2] || w[2][0] == '-' || r.ms > MAX_DELAY_MS)
			return *why = "bad milliseconds", false;
	} else if (strcmp(w[1], "hang") == 0 && n == 2 && !r.once) {
		r.action = ACT_HANG;
	} else {
		return *why = "expected fail CKR_NAME, delay MS or hang", false;
	}
	*ret = r;
	return true;
}

/* Replaces the rules with those of f.  A bad line is reported on stderr and
 * ignored, so the rules around it still apply. */
static void rules_load(FILE *f)
{
	char line[MAX_LINE];
	unsigned lineno = 0;
	const char *why;

	n_rules = 0;
	while (fgets(line, sizeof(line), f)) {
		size_t skip = strspn(line, " \t\r\n");
		bool complete = strchr(line, '\n') || feof(f);

		lineno++;
		if (!complete)
			why = "line too long";
		else if (line[skip] == '\0' || line[skip] == '#')
			continue;
		else if (n_rules == MAX_RULES)
			why = "too many rules";
		else if (rule_parse(line, &rules[n_rules], &why)) {
			n_rules++;
			continue;
		}
		fprintf(stderr, "faulty-pkcs11: %s:%u: %s, line ignored\n", control_path, lineno, why);
		while (!complete && fgets(line, sizeof(line), f))
			complete = strchr(line, '\n') != NULL;
	}
}

static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Called with lock held.  Rereads the control file if it is not the one
 * read last (a rename always brings a new inode, so an atomic rewrite is
 * never missed); a missing file means no rules. */
static void control_reload(void)
{
	struct stat st;
	FILE *f;

	if (!control_path[0])
		return;
	if (stat(control_path, &st) < 0) {
		if (have_file) {
			have_file = false;
			n_rules = 0;
			generation++;
		}
		return;
	}
	if (have_file && same_file(&st, &seen))
		return;
	f = fopen(control_path, "re");
	if (!f || fstat(fileno(f), &seen) < 0) {
		if (f)
			fclose(f);
		return;
	}
	rules_load(f);
	fclose(f);
	have_file = true;
	generation++;
}

static bool rule_matches(const struct rule *r, enum fn fn, enum action action)
{
	if (r->spent || r->action != action)
		return false;
	if (r->fn == RULE_ANY)
		return fn_kinds[fn] != KIND_MOD;
	return r->fn == (int)fn;
}

/* Total delay that applies to fn; spends matching once-delays. */
static unsigned long control_delay(enum fn fn)
{
	unsigned long ms = 0;

	pthread_mutex_lock(&lock);
	control_reload();
	for (size_t i = 0; i < n_rules; i++)
		if (rule_matches(&rules[i], fn, ACT_DELAY)) {
			ms += rules[i].ms;
			rules[i].spent = rules[i].once;
		}
	pthread_mutex_unlock(&lock);
	return ms;
}

static bool control_hangs(enum fn fn)
{
	bool hang = false;

	pthread_mutex_lock(&lock);
	control_reload();
	for (size_t i = 0; i < n_rules && !hang; i++)
		hang = rule_matches(&rules[i], fn, ACT_HANG);
	pthread_mutex_unlock(&lock);
	return hang;
}

static bool device_gone(CK_RV rv)
{
	return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT;
}

/* The first matching fail rule decides; once-rules are spent here. */
static struct verdict control_verdict(enum fn fn)
{
	struct verdict v = { .outcome = PASS, .rv = CKR_OK };

	pthread_mutex_lock(&lock);
	control_reload();
	for (size_t i = 0; i < n_rules; i++) {
		struct rule *r = &rules[i];

		if (!rule_matches(r, fn, ACT_FAIL))
			continue;
		r->spent = r->once;
		v.outcome = FAIL;
		v.rv = r->rv;
		if (device_gone(r->rv)) {
			if (r->fn == RULE_ANY && (fn == FN_C_GetSlotList || fn == FN_C_GetSlotInfo))
				v.outcome = ABSENT;
			v.drop_sessions = dropped_generation != generation;
			dropped_generation = generation;
		}
		break;
	}
	pthread_mutex_unlock(&lock);
	return v;
}

/* Waits as the rules say, then decides.  Never holds the lock while
 * sleeping, so a hung call does not stop the others. */
static struct verdict fault_check(enum fn fn)
{
	unsigned long ms = control_delay(fn);

	if (ms > 0)
		sleep_ms(ms);
	while (control_hangs(fn))
		sleep_ms(HANG_POLL_MS);
	return control_verdict(fn);
}

/* A removed device takes its sessions and its login state with it. */
static void drop_all_sessions(void)
{
	CK_SLOT_ID slots[MAX_SLOTS];
	CK_ULONG n = MAX_SLOTS;

	if (real->C_GetSlotList(CK_FALSE, slots, &n) != CKR_OK)
		return;
	for (CK_ULONG i = 0; i < n; i++)
		(void)real->C_CloseAllSessions(slots[i]);
}

/* Makes the real module agree with the fault the caller was told about. */
static void fault_effects(const struct verdict *v, CK_SESSION_HANDLE s)
{
	if (v->drop_sessions)
		drop_all_sessions();
	if (s == CK_INVALID_HANDLE)
		return;
	if (v->rv == CKR_SESSION_HANDLE_INVALID || v->rv == CKR_SESSION_CLOSED)
		(void)real->C_CloseSession(s);
	else if (v->rv == CKR_USER_NOT_LOGGED_IN)
		(void)real->C_Logout(s);
}

typedef CK_RV (*io_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*out_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);

/* Ends the operation a faulted single-part call left running: asks for the
 * output length, then runs it into a scratch buffer. */
static void drain_io(io_fn f, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len)
{
	CK_ULONG len = 0;
	CK_BYTE *buf;

	if (f(s, in, in_len, NULL, &len) != CKR_OK)
		return;
	buf = malloc(len ? len : 1);
	if (!buf)
		return;
	(void)f(s, in, in_len, buf, &len);
	explicit_bzero(buf, len);
	free(buf);
}

/* The same for a multi-part operation, through its final call. */
static void drain_out(out_fn f, CK_SESSION_HANDLE s)
{
	CK_ULONG len = 0;
	CK_BYTE *buf;

	if (f(s, NULL, &len) != CKR_OK)
		return;
	buf = malloc(len ? len : 1);
	if (!buf)
		return;
	(void)f(s, buf, &len);
	explicit_bzero(buf, len);
	free(buf);
}

/* A verification always ends at C_VerifyFinal, whatever the signature. */
static void drain_verify(CK_SESSION_HANDLE s)
{
	CK_BYTE junk[1] = { 0 };

	(void)real->C_VerifyFinal(s, junk, sizeof(junk));
}

#define SESSION_OF_MOD CK_INVALID_HANDLE
#define SESSION_OF_SLOT CK_INVALID_HANDLE
#define SESSION_OF_SESS s

#define FK_WRAP(name, kind, end, params, args)                         \
	static CK_RV fk_##name params                                  \
	{                                                              \
		struct verdict v = fault_check(FN_##name);             \
                                                                       \
		if (v.outcome == PASS)                                 \
			return log_call(FN_##name, real->name args);   \
		end;                                                   \
		fault_effects(&v, SESSION_OF_##kind);                  \
		return log_call(FN_##name, v.rv);                      \
	}
#define FK_GEN_MOD(...) FK_WRAP(__VA_ARGS__)
#define FK_GEN_SLOT(...) FK_WRAP(__VA_ARGS__)
#define FK_GEN_SESS(...) FK_WRAP(__VA_ARGS__)
#define FK_GEN_CUSTOM(...)
#define FK_GEN(name, kind, ...) FK_GEN_##kind(name, kind, __VA_ARGS__)
FK_FUNCTIONS(FK_GEN)

/* Under a device-gone "*" rule the slot stays but its token is gone. */
static CK_RV fk_C_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	struct verdict v = fault_check(FN_C_GetSlotList);
	CK_RV rv;

	fault_effects(&v, CK_INVALID_HANDLE);
	if (v.outcome == FAIL)
		rv = v.rv;
	else if (v.outcome == ABSENT && present && count) {
		*count = 0;
		rv = CKR_OK;
	} else
		rv = real->C_GetSlotList(present, list, count);
	return log_call(FN_C_GetSlotList, rv);
}

static CK_RV fk_C_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
	struct verdict v = fault_check(FN_C_GetSlotInfo);
	CK_RV rv;

	fault_effects(&v, CK_INVALID_HANDLE);
	if (v.outcome == FAIL)
		return log_call(FN_C_GetSlotInfo, v.rv);
	rv = real->C_GetSlotInfo(slot, info);
	if (rv == CKR_OK && v.outcome == ABSENT)
		info->flags &= ~(CK_FLAGS)CKF_TOKEN_PRESENT;
	return log_call(FN_C_GetSlotInfo, rv);
}

#define FK_ENTRY(name, ...) .name = fk_##name,
static CK_FUNCTION_LIST fk_list = {
	.version = { CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR },
	FK_FUNCTIONS(FK_ENTRY)
	.C_GetFunctionList = C_GetFunctionList,
};

static void load_real(void)
{
	const char *path = getenv("FAULTY_PKCS11_MODULE");
	const char *env;
	CK_C_GetFunctionList get;
	void *h;

	if (!path || !*path)
		path = DEFAULT_MODULE;
	if ((env = getenv("FAULTY_PKCS11_CONTROL")))
		snprintf(control_path, sizeof(control_path), "%s", env);
	if ((env = getenv("FAULTY_PKCS11_LOG")))
		snprintf(log_path, sizeof(log_path), "%s", env);
	h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	get = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
	if (!get || get(&real) != CKR_OK || !real) {
		fprintf(stderr, "faulty-pkcs11: cannot load %s: %s\n", path,
			h ? "no usable C_GetFunctionList" : dlerror());
		real = NULL;
	}
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ret)
{
	pthread_once(&load_once, load_real);
	if (!ret)
		return CKR_ARGUMENTS_BAD;
	if (!real)
		return CKR_GENERAL_ERROR;
	*ret = &fk_list;
	return CKR_OK;
}
