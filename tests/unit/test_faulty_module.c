/* The fault-injecting PKCS#11 module (tests/fakes/faulty_pkcs11.c) against a
 * real SoftHSM2 token: passthrough, every rule kind, the realism of session,
 * login and device faults, operations ended after a faulted call, and the
 * call log.  Each test runs in its own process (Check forks), so each loads
 * the module afresh. */
#include <check.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define TOKEN_LABEL "popsign-test"

static char tmpdir[] = "/tmp/popsign-faulty-XXXXXX";
static char control_path[PATH_MAX], log_path[PATH_MAX];
static char pin[64];

/* Per test, set up by load_and_login() in the forked child. */
static void *dl;
static CK_FUNCTION_LIST_PTR p;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE sess;
static CK_OBJECT_HANDLE ec_priv, ec_pub, rsa_priv, rsa_pub;
static CK_BYTE digest[32] = { 1, 2, 3, 4 };

static long now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Replaces the control file atomically, as tests of the daemon will. */
static void control_write(const char *text)
{
	char tmp[PATH_MAX + 8];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", control_path);
	f = fopen(tmp, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_ge(fputs(text, f), 0);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_int_eq(rename(tmp, control_path), 0);
}

/* Number of lines of the call log equal to want. */
static int log_count(const char *want)
{
	char line[256];
	int n = 0;
	FILE *f = fopen(log_path, "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		n += strcmp(line, want) == 0;
	}
	fclose(f);
	return n;
}

static CK_SLOT_ID find_slot(void)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16;
	CK_TOKEN_INFO ti;

	ck_assert_int_eq(p->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++) {
		ck_assert_int_eq(p->C_GetTokenInfo(slots[i], &ti), CKR_OK);
		if (memcmp(ti.label, TOKEN_LABEL, strlen(TOKEN_LABEL)) == 0 &&
		    ti.label[strlen(TOKEN_LABEL)] == ' ')
			return slots[i];
	}
	ck_abort_msg("token %s not found", TOKEN_LABEL);
	return 0;
}

static CK_SESSION_HANDLE open_session(void)
{
	CK_SESSION_HANDLE s;

	ck_assert_int_eq(p->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
	return s;
}

static CK_RV login(CK_SESSION_HANDLE s)
{
	return p->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
}

static CK_ULONG session_state(CK_SESSION_HANDLE s)
{
	CK_SESSION_INFO si;

	ck_assert_int_eq(p->C_GetSessionInfo(s, &si), CKR_OK);
	return si.state;
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label)
{
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_LABEL, (void *)label, strlen(label) },
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	CK_ULONG n = 0;

	ck_assert_int_eq(p->C_FindObjectsInit(s, t, 2), CKR_OK);
	ck_assert_int_eq(p->C_FindObjects(s, &h, 1, &n), CKR_OK);
	ck_assert_int_eq(p->C_FindObjectsFinal(s), CKR_OK);
	ck_assert_msg(n == 1, "key %s not found", label);
	return h;
}

/* SoftHSM2 gives private objects new handles at each login: the handle
 * found before the login was lost is refused with CKR_OBJECT_HANDLE_INVALID. */
static void relogin_find_key(CK_SESSION_HANDLE s)
{
	CK_OBJECT_HANDLE stale = ec_priv;

	ec_priv = find_key(s, CKO_PRIVATE_KEY, "ec256");
	ck_assert_uint_ne(ec_priv, stale);
}

/* C_SignInit + C_Sign with ECDSA: the first failure, or CKR_OK. */
static CK_RV sign_ec(CK_SESSION_HANDLE s)
{
	CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
	CK_BYTE sig[256];
	CK_ULONG len = sizeof(sig);
	CK_RV rv = p->C_SignInit(s, &m, ec_priv);

	if (rv != CKR_OK)
		return rv;
	rv = p->C_Sign(s, digest, sizeof(digest), sig, &len);
	if (rv == CKR_OK)
		ck_assert_uint_eq(len, 64);
	return rv;
}

static void load_module(void)
{
	const char *path = getenv("FAULTY_PKCS11_PATH");
	CK_C_GetFunctionList get;

	ck_assert_ptr_nonnull(path);
	dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(dl, "dlopen %s: %s", path, dlerror());
	get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	ck_assert_ptr_nonnull(get);
	ck_assert_int_eq(get(&p), CKR_OK);
}

static void load_and_login(void)
{
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };

	unlink(control_path);
	unlink(log_path);
	load_module();
	ck_assert_int_eq(p->C_Initialize(&args), CKR_OK);
	slot = find_slot();
	sess = open_session();
	ck_assert_int_eq(login(sess), CKR_OK);
	ec_priv = find_key(sess, CKO_PRIVATE_KEY, "ec256");
	ec_pub = find_key(sess, CKO_PUBLIC_KEY, "ec256");
	rsa_priv = find_key(sess, CKO_PRIVATE_KEY, "rsa2048");
	rsa_pub = find_key(sess, CKO_PUBLIC_KEY, "rsa2048");
}

static void unload(void)
{
	p->C_Finalize(NULL);
	dlclose(dl);
}

START_TEST(passthrough)
{
	CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
	CK_BYTE sig[64];
	CK_ULONG len = sizeof(sig);
	CK_FUNCTION_LIST_PTR again = NULL;
	void (**fns)(void) = (void (**)(void))&p->C_Initialize;

	/* All 68 functions of the 2.40 list are there. */
	ck_assert_uint_eq(sizeof(*p), offsetof(CK_FUNCTION_LIST, C_Initialize) + 68 * sizeof(*fns));
	for (size_t i = 0; i < 68; i++)
		ck_assert_msg(fns[i] != NULL, "function %zu missing", i);
	ck_assert_int_eq(p->C_GetFunctionList(&again), CKR_OK);
	ck_assert_ptr_eq(again, p);

	ck_assert_int_eq(p->C_SignInit(sess, &m, ec_priv), CKR_OK);
	ck_assert_int_eq(p->C_Sign(sess, digest, sizeof(digest), sig, &len), CKR_OK);
	ck_assert_int_eq(p->C_VerifyInit(sess, &m, ec_pub), CKR_OK);
	ck_assert_int_eq(p->C_Verify(sess, digest, sizeof(digest), sig, len), CKR_OK);
	sig[3] ^= 1;
	ck_assert_int_eq(p->C_VerifyInit(sess, &m, ec_pub), CKR_OK);
	ck_assert_int_eq(p->C_Verify(sess, digest, sizeof(digest), sig, len), CKR_SIGNATURE_INVALID);

	ck_assert_int_eq(log_count("C_Initialize CKR_OK"), 1);
	ck_assert_int_eq(log_count("C_Login CKR_OK"), 1);
	ck_assert_int_eq(log_count("C_FindObjectsInit CKR_OK"), 4);
	ck_assert_int_eq(log_count("C_Sign CKR_OK"), 1);
	ck_assert_int_eq(log_count("C_Verify CKR_OK"), 1);
	ck_assert_int_eq(log_count("C_Verify CKR_SIGNATURE_INVALID"), 1);
}
END_TEST

START_TEST(fail_until_removed)
{
	control_write("# device trouble\n\nC_Sign fail CKR_DEVICE_ERROR\n");
	ck_assert_int_eq(sign_ec(sess), CKR_DEVICE_ERROR);
	/* Still failing, and the faulted C_Sign ended its operation in the
	 * real module: C_SignInit is not refused with CKR_OPERATION_ACTIVE. */
	ck_assert_int_eq(sign_ec(sess), CKR_DEVICE_ERROR);
	ck_assert_int_eq(session_state(sess), CKS_RO_USER_FUNCTIONS);

	control_write("");
	ck_assert_int_eq(sign_ec(sess), CKR_OK);

	control_write("C_Sign fail CKR_FUNCTION_FAILED\n");
	ck_assert_int_eq(sign_ec(sess), CKR_FUNCTION_FAILED);
	ck_assert_int_eq(unlink(control_path), 0); /* a missing file is no rules */
	ck_assert_int_eq(sign_ec(sess), CKR_OK);

	ck_assert_int_eq(log_count("C_Sign CKR_DEVICE_ERROR"), 2);
	ck_assert_int_eq(log_count("C_Sign CKR_FUNCTION_FAILED"), 1);
	ck_assert_int_eq(log_count("C_Sign CKR_OK"), 2);
	ck_assert_int_eq(log_count("C_SignInit CKR_OK"), 5);
}
END_TEST

START_TEST(once_fails_one_call)
{
	control_write("C_Sign fail CKR_GENERAL_ERROR once\n");
	ck_assert_int_eq(sign_ec(sess), CKR_GENERAL_ERROR);
	ck_assert_int_eq(sign_ec(sess), CKR_OK);
	ck_assert_int_eq(sign_ec(sess), CKR_OK);

	/* Rewriting the same text re-arms it. */
	control_write("C_Sign fail CKR_GENERAL_ERROR once\n");
	ck_assert_int_eq(sign_ec(sess), CKR_GENERAL_ERROR);
	ck_assert_int_eq(sign_ec(sess), CKR_OK);
	ck_assert_int_eq(log_count("C_Sign CKR_GENERAL_ERROR"), 2);
	ck_assert_int_eq(log_count("C_Sign CKR_OK"), 3);
}
END_TEST

#define THREADS 4
#define SIGNS_PER_THREAD 100

static void *sign_many(void *arg)
{
	CK_SESSION_HANDLE s = open_session();
	long failures = 0;

	for (int i = 0; i < SIGNS_PER_THREAD; i++) {
		CK_RV rv = sign_ec(s);

		if (rv == CKR_DEVICE_ERROR)
			failures++;
		else if (rv != CKR_OK)
			return (void *)-1L;
	}
	p->C_CloseSession(s);
	return (void *)failures;
}

START_TEST(once_across_threads)
{
	pthread_t t[THREADS];
	long total = 0;
	void *ret;

	control_write("C_Sign fail CKR_DEVICE_ERROR once\n");
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, sign_many, NULL), 0);
	for (int i = 0; i < THREADS; i++) {
		ck_assert_int_eq(pthread_join(t[i], &ret), 0);
		ck_assert_int_ge((long)ret, 0);
		total += (long)ret;
	}
	ck_assert_int_eq(total, 1);
	ck_assert_int_eq(log_count("C_Sign CKR_DEVICE_ERROR"), 1);
	ck_assert_int_eq(log_count("C_Sign CKR_OK"), THREADS * SIGNS_PER_THREAD - 1);
}
END_TEST

START_TEST(delay)
{
	CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
	CK_BYTE sig[64];
	CK_ULONG len = sizeof(sig);
	CK_INFO info;
	CK_SESSION_INFO si;
	long t;

	control_write("C_Sign delay 200\n");
	t = now_ms();
	ck_assert_int_eq(p->C_SignInit(sess, &m, ec_priv), CKR_OK);
	ck_assert_int_lt(now_ms() - t, 150);
	t = now_ms();
	ck_assert_int_eq(p->C_Sign(sess, digest, sizeof(digest), sig, &len), CKR_OK);
	t = now_ms() - t;
	ck_assert_msg(t >= 200 && t < 1500, "C_Sign took %ld ms", t);

	/* "*" delays every call but the module-wide ones; once spends itself. */
	control_write("* delay 150\nC_GetSessionInfo delay 100 once\n");
	t = now_ms();
	ck_assert_int_eq(p->C_GetInfo(&info), CKR_OK);
	ck_assert_int_lt(now_ms() - t, 100);
	t = now_ms();
	ck_assert_int_eq(p->C_GetSessionInfo(sess, &si), CKR_OK);
	t = now_ms() - t;
	ck_assert_msg(t >= 250 && t < 1500, "C_GetSessionInfo took %ld ms", t);
	t = now_ms();
	ck_assert_int_eq(p->C_GetSessionInfo(sess, &si), CKR_OK);
	t = now_ms() - t;
	ck_assert_msg(t >= 150 && t < 250, "second C_GetSessionInfo took %ld ms", t);
}
END_TEST

struct call {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	CK_SESSION_HANDLE s;
	CK_RV rv;
	bool done;
};

static void *sign_in_thread(void *arg)
{
	struct call *c = arg;
	CK_RV rv = sign_ec(c->s);

	pthread_mutex_lock(&c->lock);
	c->rv = rv;
	c->done = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* Waits at most ms for the call to return. */
static bool call_wait(struct call *c, long ms)
{
	struct timespec until;
	bool done;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&c->lock);
	while (!c->done && pthread_cond_timedwait(&c->cond, &c->lock, &until) != ETIMEDOUT)
		;
	done = c->done;
	pthread_mutex_unlock(&c->lock);
	return done;
}

/* Starts a C_SignInit + C_Sign on a new session under a hang rule. */
static pthread_t start_hung_sign(struct call *c, const char *rule)
{
	pthread_t t;

	*c = (struct call){ .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	c->s = open_session();
	control_write(rule);
	ck_assert_int_eq(pthread_create(&t, NULL, sign_in_thread, c), 0);
	ck_assert_msg(!call_wait(c, 300), "C_Sign returned under a hang rule");
	return t;
}

START_TEST(hang_until_rewritten)
{
	struct call c;
	pthread_t t;
	CK_SESSION_INFO si;
	long start;

	t = start_hung_sign(&c, "C_Sign hang\n");
	/* Other calls on the token go on meanwhile. */
	start = now_ms();
	ck_assert_int_eq(p->C_GetSessionInfo(sess, &si), CKR_OK);
	ck_assert_int_eq(find_key(sess, CKO_PRIVATE_KEY, "ec256"), ec_priv);
	ck_assert_int_lt(now_ms() - start, 1000);
	ck_assert(!call_wait(&c, 0));

	control_write("");
	ck_assert_msg(call_wait(&c, 3000), "C_Sign still hung after the rule went");
	pthread_join(t, NULL);
	ck_assert_int_eq(c.rv, CKR_OK);
}
END_TEST

START_TEST(hang_then_fail)
{
	struct call c;
	pthread_t t;

	t = start_hung_sign(&c, "* hang\n");
	/* The fault that follows a hang is the one the call returns. */
	control_write("C_SignInit fail CKR_DEVICE_REMOVED\n");
	ck_assert_msg(call_wait(&c, 3000), "C_SignInit still hung after the rule went");
	pthread_join(t, NULL);
	ck_assert_int_eq(c.rv, CKR_DEVICE_REMOVED);
}
END_TEST

/* A session-invalid fault on C_SignInit or C_Sign. */
static const struct {
	/* cppcheck-suppress unusedStructMember ; read in the loop test below */
	const char *rule;
	/* cppcheck-suppress unusedStructMember ; read in the loop test below */
	CK_RV rv;
} session_faults[] = {
	{ "C_Sign fail CKR_SESSION_HANDLE_INVALID once\n", CKR_SESSION_HANDLE_INVALID },
	{ "C_Sign fail CKR_SESSION_CLOSED once\n", CKR_SESSION_CLOSED },
	{ "C_SignInit fail CKR_SESSION_HANDLE_INVALID once\n", CKR_SESSION_HANDLE_INVALID },
	{ "C_SignInit fail CKR_SESSION_CLOSED once\n", CKR_SESSION_CLOSED },
};

START_TEST(session_fault_closes_session)
{
	CK_SESSION_HANDLE s2;

	control_write(session_faults[_i].rule);
	ck_assert_int_eq(sign_ec(sess), session_faults[_i].rv);
	/* The rule is spent, yet the session stays gone. */
	ck_assert_int_eq(sign_ec(sess), CKR_SESSION_HANDLE_INVALID);
	ck_assert_int_eq(p->C_CloseSession(sess), CKR_SESSION_HANDLE_INVALID);

	/* It was the only session, so the login went with it. */
	s2 = open_session();
	ck_assert_uint_eq(session_state(s2), CKS_RO_PUBLIC_SESSION);
	ck_assert_int_eq(login(s2), CKR_OK);
	relogin_find_key(s2);
	ck_assert_int_eq(sign_ec(s2), CKR_OK);
}
END_TEST

static const char *const device_faults[] = { "CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT" };

static void assert_device_gone(CK_RV want)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16;
	CK_SLOT_INFO si;
	CK_TOKEN_INFO ti;
	CK_SESSION_HANDLE s;
	CK_INFO info;

	ck_assert_int_eq(p->C_GetInfo(&info), CKR_OK);
	ck_assert_int_eq(p->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	ck_assert_uint_eq(n, 0);
	n = 16;
	ck_assert_int_eq(p->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
	ck_assert_uint_gt(n, 0);
	ck_assert_int_eq(p->C_GetSlotInfo(slot, &si), CKR_OK);
	ck_assert_uint_eq(si.flags & CKF_TOKEN_PRESENT, 0);
	ck_assert_int_eq(p->C_GetTokenInfo(slot, &ti), want);
	ck_assert_int_eq(p->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), want);
	ck_assert_int_eq(sign_ec(sess), want);
	ck_assert_int_eq(login(sess), want);
}

/* _i: bit 0 picks the code, bit 1 re-initialises the module during the fault
 * (what a daemon may do to recover). */
START_TEST(device_gone_until_removed)
{
	CK_RV want = _i % 2 == 0 ? CKR_DEVICE_REMOVED : CKR_TOKEN_NOT_PRESENT;
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
	CK_SESSION_HANDLE other = open_session();
	CK_SLOT_INFO si;
	char rule[64];

	ck_assert_int_eq(sign_ec(sess), CKR_OK);
	snprintf(rule, sizeof(rule), "* fail %s\n", device_faults[_i % 2]);
	control_write(rule);
	assert_device_gone(want);
	if (_i / 2) {
		/* A re-initialisation does not bring the device back. */
		ck_assert_int_eq(p->C_Finalize(NULL), CKR_OK);
		ck_assert_int_eq(p->C_Initialize(&args), CKR_OK);
		assert_device_gone(want);
	}

	control_write("");
	ck_assert_int_eq(p->C_GetSlotInfo(slot, &si), CKR_OK);
	ck_assert_uint_ne(si.flags & CKF_TOKEN_PRESENT, 0);
	ck_assert_int_eq(find_slot(), slot);
	/* Every old session is gone, and the login with them. */
	ck_assert_int_eq(sign_ec(sess), CKR_SESSION_HANDLE_INVALID);
	ck_assert_int_eq(sign_ec(other), CKR_SESSION_HANDLE_INVALID);
	sess = open_session();
	ck_assert_uint_eq(session_state(sess), CKS_RO_PUBLIC_SESSION);
	ck_assert_int_eq(login(sess), CKR_OK);
	if (_i / 2)
		ec_priv = find_key(sess, CKO_PRIVATE_KEY, "ec256"); /* numbering restarted */
	else
		relogin_find_key(sess);
	ck_assert_int_eq(sign_ec(sess), CKR_OK);
	ck_assert_int_eq(log_count("C_Login CKR_OK"), 2);
}
END_TEST

/* Sessions are dropped when the device goes (the first device-gone failure
 * after the control file changed), not at every failure while it stays gone. */
START_TEST(device_gone_drops_sessions_once)
{
	CK_SESSION_HANDLE s2;

	control_write("C_Sign fail CKR_DEVICE_REMOVED\n");
	ck_assert_int_eq(sign_ec(sess), CKR_DEVICE_REMOVED);
	ck_assert_int_eq(sign_ec(sess), CKR_SESSION_HANDLE_INVALID);
	s2 = open_session();
	ck_assert_int_eq(login(s2), CKR_OK);
	relogin_find_key(s2);
	ck_assert_int_eq(sign_ec(s2), CKR_DEVICE_REMOVED);
	ck_assert_uint_eq(session_state(s2), CKS_RO_USER_FUNCTIONS);
	control_write("");
	ck_assert_int_eq(sign_ec(s2), CKR_OK);

	/* A blip: one failure, and the sessions are gone again. */
	control_write("C_Sign fail CKR_DEVICE_REMOVED once\n");
	ck_assert_int_eq(sign_ec(s2), CKR_DEVICE_REMOVED);
	ck_assert_int_eq(sign_ec(s2), CKR_SESSION_HANDLE_INVALID);
}
END_TEST

START_TEST(login_lost)
{
	control_write("C_Sign fail CKR_USER_NOT_LOGGED_IN once\n");
	ck_assert_int_eq(sign_ec(sess), CKR_USER_NOT_LOGGED_IN);
	ck_assert_uint_eq(session_state(sess), CKS_RO_PUBLIC_SESSION);
	ck_assert_int_eq(login(sess), CKR_OK);
	relogin_find_key(sess);
	ck_assert_int_eq(sign_ec(sess), CKR_OK);
	ck_assert_int_eq(log_count("C_Login CKR_OK"), 2);
}
END_TEST

START_TEST(pin_incorrect)
{
	ck_assert_int_eq(p->C_Logout(sess), CKR_OK);
	control_write("C_Login fail CKR_PIN_INCORRECT\n");
	ck_assert_int_eq(login(sess), CKR_PIN_INCORRECT);
	ck_assert_uint_eq(session_state(sess), CKS_RO_PUBLIC_SESSION);
	control_write("");
	ck_assert_int_eq(login(sess), CKR_OK);
	ck_assert_int_eq(log_count("C_Login CKR_PIN_INCORRECT"), 1);
	ck_assert_int_eq(log_count("C_Login CKR_OK"), 2);
}
END_TEST

/* Multi-step operations.  run_op returns the index of the first step that
 * failed (its result in *ret_rv), or -1 when all succeeded. */
enum op { OP_SIGN_EC, OP_SIGN_RSA, OP_VERIFY_EC, OP_VERIFY_RSA, OP_DIGEST, OP_DIGEST_MULTI, OP_FIND };

static CK_BYTE ec_sig[64], rsa_sig[256];
static CK_BYTE data[] = "to be signed";

#define STEP(call)                                  \
	do {                                        \
		if ((*ret_rv = (call)) != CKR_OK)   \
			return step;                \
		step++;                             \
	} while (0)

static int run_op(enum op op, CK_RV *ret_rv)
{
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 }, rsa = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	CK_MECHANISM sha = { CKM_SHA256, NULL, 0 };
	CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
	CK_ATTRIBUTE t = { CKA_CLASS, &cls, sizeof(cls) };
	CK_BYTE out[256];
	CK_ULONG len = sizeof(out);
	CK_OBJECT_HANDLE h[4];
	int step = 0;

	switch (op) {
	case OP_SIGN_EC:
		STEP(p->C_SignInit(sess, &ecdsa, ec_priv));
		STEP(p->C_Sign(sess, digest, sizeof(digest), out, &len));
		break;
	case OP_SIGN_RSA:
		STEP(p->C_SignInit(sess, &rsa, rsa_priv));
		STEP(p->C_SignUpdate(sess, data, sizeof(data)));
		STEP(p->C_SignFinal(sess, out, &len));
		break;
	case OP_VERIFY_EC:
		STEP(p->C_VerifyInit(sess, &ecdsa, ec_pub));
		STEP(p->C_Verify(sess, digest, sizeof(digest), ec_sig, sizeof(ec_sig)));
		break;
	case OP_VERIFY_RSA:
		STEP(p->C_VerifyInit(sess, &rsa, rsa_pub));
		STEP(p->C_VerifyUpdate(sess, data, sizeof(data)));
		STEP(p->C_VerifyFinal(sess, rsa_sig, sizeof(rsa_sig)));
		break;
	case OP_DIGEST:
		STEP(p->C_DigestInit(sess, &sha));
		STEP(p->C_Digest(sess, data, sizeof(data), out, &len));
		break;
	case OP_DIGEST_MULTI:
		STEP(p->C_DigestInit(sess, &sha));
		STEP(p->C_DigestUpdate(sess, data, sizeof(data)));
		STEP(p->C_DigestFinal(sess, out, &len));
		break;
	case OP_FIND:
		STEP(p->C_FindObjectsInit(sess, &t, 1));
		STEP(p->C_FindObjects(sess, h, 4, &len));
		STEP(p->C_FindObjectsFinal(sess));
		break;
	}
	return -1;
}

static const struct {
	const char *fn;
	enum op op;
	int step;
} op_faults[] = {
	{ "C_Sign", OP_SIGN_EC, 1 },
	{ "C_SignUpdate", OP_SIGN_RSA, 1 },
	{ "C_SignFinal", OP_SIGN_RSA, 2 },
	{ "C_Verify", OP_VERIFY_EC, 1 },
	{ "C_VerifyUpdate", OP_VERIFY_RSA, 1 },
	{ "C_VerifyFinal", OP_VERIFY_RSA, 2 },
	{ "C_Digest", OP_DIGEST, 1 },
	{ "C_DigestUpdate", OP_DIGEST_MULTI, 1 },
	{ "C_DigestFinal", OP_DIGEST_MULTI, 2 },
	{ "C_FindObjectsFinal", OP_FIND, 2 },
};

/* A faulted call ends its operation in the real module too, as a real
 * failure would: the caller can start the next one on the same session. */
START_TEST(faulted_call_ends_operation)
{
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 }, rsa = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	CK_ULONG len = sizeof(ec_sig);
	char rule[128];
	CK_RV rv = CKR_OK;

	ck_assert_int_eq(p->C_SignInit(sess, &ecdsa, ec_priv), CKR_OK);
	ck_assert_int_eq(p->C_Sign(sess, digest, sizeof(digest), ec_sig, &len), CKR_OK);
	len = sizeof(rsa_sig);
	ck_assert_int_eq(p->C_SignInit(sess, &rsa, rsa_priv), CKR_OK);
	ck_assert_int_eq(p->C_Sign(sess, data, sizeof(data), rsa_sig, &len), CKR_OK);
	ck_assert_int_eq(run_op(op_faults[_i].op, &rv), -1);

	snprintf(rule, sizeof(rule), "%s fail CKR_DEVICE_ERROR once\n", op_faults[_i].fn);
	control_write(rule);
	ck_assert_int_eq(run_op(op_faults[_i].op, &rv), op_faults[_i].step);
	ck_assert_int_eq(rv, CKR_DEVICE_ERROR);
	ck_assert_msg(run_op(op_faults[_i].op, &rv) == -1, "%s: next operation: 0x%lx",
		      op_faults[_i].fn, (unsigned long)rv);
}
END_TEST

START_TEST(star_and_rule_order)
{
	CK_INFO info;
	CK_SESSION_INFO si;
	CK_TOKEN_INFO ti;
	CK_SESSION_HANDLE s;
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16;

	control_write("C_GetSessionInfo fail CKR_DEVICE_ERROR\n* fail CKR_GENERAL_ERROR\n");
	ck_assert_int_eq(p->C_GetSessionInfo(sess, &si), CKR_DEVICE_ERROR);
	ck_assert_int_eq(p->C_GetTokenInfo(slot, &ti), CKR_GENERAL_ERROR);
	ck_assert_int_eq(p->C_GetSlotList(CK_TRUE, slots, &n), CKR_GENERAL_ERROR);
	ck_assert_int_eq(p->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_GENERAL_ERROR);
	/* "*" spares C_Initialize, C_Finalize and C_GetInfo; a named rule does not. */
	ck_assert_int_eq(p->C_GetInfo(&info), CKR_OK);
	control_write("C_GetInfo fail CKR_FUNCTION_FAILED\n");
	ck_assert_int_eq(p->C_GetInfo(&info), CKR_FUNCTION_FAILED);
	ck_assert_int_eq(p->C_GetSessionInfo(sess, &si), CKR_OK);
	/* Other session-kept codes do not touch the session. */
	control_write("C_SignInit fail CKR_OBJECT_HANDLE_INVALID once\n"
		      "C_Sign fail CKR_CRYPTOKI_NOT_INITIALIZED once\n");
	ck_assert_int_eq(sign_ec(sess), CKR_OBJECT_HANDLE_INVALID);
	ck_assert_int_eq(sign_ec(sess), CKR_CRYPTOKI_NOT_INITIALIZED);
	ck_assert_int_eq(sign_ec(sess), CKR_OK);
}
END_TEST

START_TEST(bad_lines_ignored)
{
	char text[1024];

	/* Each bad line is skipped; the good one after them applies. */
	snprintf(text, sizeof(text),
		 "C_Sgn fail CKR_DEVICE_ERROR\n"
		 "C_SignInit fail CKR_NO_SUCH_THING\n"
		 "C_SignInit fail CKR_OK\n"
		 "C_SignInit delay soon\n"
		 "C_SignInit delay -5\n"
		 "C_SignInit hang once\n"
		 "C_SignInit hang now\n"
		 "C_SignInit fail\n"
		 "C_GetFunctionList fail CKR_DEVICE_ERROR\n"
		 "C_SignInit fail CKR_DEVICE_ERROR once extra\n"
		 "# C_SignInit fail CKR_DEVICE_ERROR\n"
		 "C_SignInit %0300d\n"
		 "   \t\n"
		 "  C_Sign\tfail   CKR_PIN_INCORRECT  \r\n",
		 0);
	control_write(text);
	ck_assert_int_eq(sign_ec(sess), CKR_PIN_INCORRECT);
	ck_assert_int_eq(log_count("C_SignInit CKR_OK"), 1);
}
END_TEST

START_TEST(real_module_missing)
{
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR list = NULL;

	setenv("FAULTY_PKCS11_MODULE", "/nonexistent/libnothing.so", 1);
	dl = dlopen(getenv("FAULTY_PKCS11_PATH"), RTLD_NOW | RTLD_LOCAL);
	ck_assert_ptr_nonnull(dl);
	get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	ck_assert_ptr_nonnull(get);
	ck_assert_int_eq(get(NULL), CKR_ARGUMENTS_BAD);
	ck_assert_int_eq(get(&list), CKR_GENERAL_ERROR);
	ck_assert_ptr_null(list);
	/* Only C_GetFunctionList is exported. */
	ck_assert_ptr_null(dlsym(dl, "C_Sign"));
	dlclose(dl);
}
END_TEST

static void make_token(void)
{
	const char *make = getenv("MAKE_TOKEN");
	char cmd[PATH_MAX * 2], path[PATH_MAX];
	FILE *f;

	if (!make || !mkdtemp(tmpdir)) {
		fprintf(stderr, "MAKE_TOKEN unset or no temporary directory\n");
		exit(1);
	}
	snprintf(cmd, sizeof(cmd), "'%s' '%s' ec256 rsa2048", make, tmpdir);
	if (system(cmd) != 0) {
		fprintf(stderr, "%s failed\n", cmd);
		exit(1);
	}
	snprintf(path, sizeof(path), "%s/softhsm2.conf", tmpdir);
	setenv("SOFTHSM2_CONF", path, 1);
	snprintf(path, sizeof(path), "%s/user.pin", tmpdir);
	f = fopen(path, "r");
	if (!f || !fgets(pin, sizeof(pin), f)) {
		fprintf(stderr, "cannot read %s\n", path);
		exit(1);
	}
	fclose(f);
	pin[strcspn(pin, "\n")] = '\0';
	snprintf(control_path, sizeof(control_path), "%s/control", tmpdir);
	snprintf(log_path, sizeof(log_path), "%s/calls.log", tmpdir);
	setenv("FAULTY_PKCS11_CONTROL", control_path, 1);
	setenv("FAULTY_PKCS11_LOG", log_path, 1);
	unsetenv("FAULTY_PKCS11_MODULE");
}

static Suite *faulty_suite(void)
{
	Suite *s = suite_create("faulty_pkcs11");
	TCase *tc = tcase_create("module");
	TCase *bare = tcase_create("load");

	tcase_add_checked_fixture(tc, load_and_login, unload);
	tcase_add_test(tc, passthrough);
	tcase_add_test(tc, fail_until_removed);
	tcase_add_test(tc, once_fails_one_call);
	tcase_add_test(tc, once_across_threads);
	tcase_add_test(tc, delay);
	tcase_add_test(tc, hang_until_rewritten);
	tcase_add_test(tc, hang_then_fail);
	tcase_add_loop_test(tc, session_fault_closes_session, 0, 4);
	tcase_add_loop_test(tc, device_gone_until_removed, 0, 4);
	tcase_add_test(tc, device_gone_drops_sessions_once);
	tcase_add_test(tc, login_lost);
	tcase_add_test(tc, pin_incorrect);
	tcase_add_loop_test(tc, faulted_call_ends_operation, 0,
			    sizeof(op_faults) / sizeof(op_faults[0]));
	tcase_add_test(tc, star_and_rule_order);
	tcase_add_test(tc, bad_lines_ignored);
	suite_add_tcase(s, tc);
	tcase_add_test(bare, real_module_missing);
	suite_add_tcase(s, bare);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;
	char cmd[PATH_MAX + 16];

	make_token();
	sr = srunner_create(faulty_suite());
	srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		failed++;
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
