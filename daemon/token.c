/* PKCS#11 modules, sessions, logins, key handles and signatures.  Building
 * a token set is in token_set.c, faults and recovery in token_health.c. */
#include "token.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "token_internal.h"
#include "util.h"

long long token_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- modules: process-wide, so that two token sets (a reload) never
 * finalise a module the other still uses ---- */

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct module *modules;

static CK_RV module_initialize(struct module *m)
{
	CK_C_INITIALIZE_ARGS args;

	/* SoftHSM turns its own locking off when given no arguments. */
	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	return m->fl->C_Initialize(&args);
}

static int module_init(struct module *m)
{
	CK_RV rv = module_initialize(m);

	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
		return 0;
	if (rv != CKR_OK) {
		ckr_count(rv);
		log_error("module %s: C_Initialize: %s (0x%lx)", m->path, ckr_name(rv), (unsigned long)rv);
		return PS_E_TOKEN;
	}
	m->initialized_here = true;
	return 0;
}

static int module_open(struct module *m)
{
	CK_C_GetFunctionList get;
	CK_RV rv;

	/* RTLD_NODELETE: a thread stuck in the module keeps valid code under it. */
	m->dl = dlopen(m->path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
	if (!m->dl) {
		log_error("module %s: cannot load: %s", m->path, dlerror());
		return PS_E_TOKEN;
	}
	get = (CK_C_GetFunctionList)dlsym(m->dl, "C_GetFunctionList");
	if (!get) {
		log_error("module %s: not a PKCS#11 module (no C_GetFunctionList)", m->path);
		return PS_E_TOKEN;
	}
	rv = get(&m->fl);
	if (rv != CKR_OK || !m->fl) {
		log_error("module %s: C_GetFunctionList: %s (0x%lx)", m->path, ckr_name(rv), (unsigned long)rv);
		return PS_E_TOKEN;
	}
	return module_init(m);
}

static void module_destroy(struct module *m)
{
	if (m->initialized_here)
		(void)m->fl->C_Finalize(NULL);
	if (m->dl)
		dlclose(m->dl);
	pthread_rwlock_destroy(&m->use);
	free(m->path);
	free(m);
}

/* The loaded module at canonical path canon, loading it on first use.
 * Caller holds modules_lock. */
static int module_acquire_locked(const char *canon, struct module **ret)
{
	struct module *m;
	int r;

	for (m = modules; m; m = m->next)
		if (strcmp(m->path, canon) == 0) {
			m->refs++;
			*ret = m;
			return 0;
		}
	m = calloc(1, sizeof(*m));
	if (!m || !(m->path = strdup(canon))) {
		free(m);
		return PS_E_NOMEM;
	}
	pthread_rwlock_init(&m->use, NULL);
	r = module_open(m);
	if (r < 0) {
		module_destroy(m);
		return r;
	}
	m->refs = 1;
	m->next = modules;
	modules = m;
	*ret = m;
	return 0;
}

int module_acquire(const char *canon, struct module **ret)
{
	int r;

	pthread_mutex_lock(&modules_lock);
	r = module_acquire_locked(canon, ret);
	pthread_mutex_unlock(&modules_lock);
	return r;
}

void module_release(struct module *m)
{
	pthread_mutex_lock(&modules_lock);
	if (--m->refs == 0) {
		struct module **p = &modules;

		while (*p != m)
			p = &(*p)->next;
		*p = m->next;
		module_destroy(m);
	}
	pthread_mutex_unlock(&modules_lock);
}

bool module_shared(struct module *m)
{
	bool shared;

	pthread_mutex_lock(&modules_lock);
	shared = m->refs > 1;
	pthread_mutex_unlock(&modules_lock);
	return shared;
}

void module_enter(struct module *m)
{
	/* glibc's default rwlock prefers readers: a re-initialisation waiting
	 * for a hung call never holds up the other callers. */
	pthread_rwlock_rdlock(&m->use);
}

void module_leave(struct module *m)
{
	pthread_rwlock_unlock(&m->use);
}

int module_reinit(struct module *m, struct p11_fail *f)
{
	struct timespec until;
	CK_RV rv;

	if (!m->initialized_here)
		return PS_E_UNSUPPORTED;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += TOKEN_REINIT_WAIT_MS / 1000;
	until.tv_nsec += (long)(TOKEN_REINIT_WAIT_MS % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	/* C_Finalize while another thread is inside the module is undefined. */
	if (pthread_rwlock_timedwrlock(&m->use, &until) != 0)
		return PS_E_TIMEOUT;
	(void)m->fl->C_Finalize(NULL);
	rv = module_initialize(m);
	m->epoch++;
	pthread_rwlock_unlock(&m->use);
	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
		return fail_token(f, "C_Initialize", rv);
	return 0;
}

/* ---- sessions ---- */

static struct session *free_session_locked(struct token *t, long long now)
{
	for (unsigned i = 0; i < t->n_sessions; i++)
		if (!t->sessions[i].busy) {
			t->sessions[i].busy = true;
			t->sessions[i].busy_since = now;
			return &t->sessions[i];
		}
	return NULL;
}

static void deadline_at(struct timespec *ts, long long ms)
{
	ts->tv_sec = ms / 1000;
	ts->tv_nsec = (long)(ms % 1000) * 1000000L;
}

int session_take(struct token *t, struct session **ret)
{
	long long now = token_now_ms(), deadline;
	struct timespec ts;
	int r = PS_E_TOKEN;

	pthread_mutex_lock(&t->lock);
	deadline = now + t->timeout_ms;
	for (;;) {
		if (t->fault != TOKEN_OK || token_stuck_locked(t, now))
			break;
		*ret = free_session_locked(t, now);
		if (*ret) {
			r = 0;
			break;
		}
		if (now >= deadline)
			break;
		deadline_at(&ts, deadline);
		(void)pthread_cond_timedwait(&t->freed, &t->lock, &ts);
		now = token_now_ms();
	}
	pthread_mutex_unlock(&t->lock);
	return r;
}

struct session *session_try_take(struct token *t)
{
	struct session *s;

	pthread_mutex_lock(&t->lock);
	s = free_session_locked(t, token_now_ms());
	pthread_mutex_unlock(&t->lock);
	return s;
}

void session_give(struct token *t, struct session *s)
{
	pthread_mutex_lock(&t->lock);
	s->busy = false;
	s->busy_since = 0;
	pthread_cond_signal(&t->freed);
	pthread_mutex_unlock(&t->lock);
}

void session_forget_handles(struct session *s)
{
	for (size_t i = 0; i < s->n_keys; i++)
		s->keys[i] = CK_INVALID_HANDLE;
}

void session_drop(struct token *t, struct session *s)
{
	/* After a re-initialisation the number may name someone else's session. */
	if (s->h != CK_INVALID_HANDLE && s->epoch == t->mod->epoch)
		(void)t->mod->fl->C_CloseSession(s->h);
	s->h = CK_INVALID_HANDLE;
	session_forget_handles(s);
}

static bool pin_rejected(CK_RV rv)
{
	return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_INVALID ||
	       rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_EXPIRED;
}

/* Retries lock real tokens: a PIN the token refused is wiped and never
 * offered again.  A login is done only while the session is public, so
 * threads that all saw the login go log in once between them. */
int token_login(struct token *t, struct session *s, struct p11_fail *f)
{
	CK_FUNCTION_LIST_PTR fl = t->mod->fl;
	CK_SESSION_INFO info;
	CK_RV rv;
	int r = 0;

	pthread_mutex_lock(&t->login_lock);
	if (t->pin_refused) {
		r = PS_E_PIN;
		goto out;
	}
	rv = fl->C_GetSessionInfo(s->h, &info);
	if (rv != CKR_OK) {
		r = fail_token(f, "C_GetSessionInfo", rv);
		goto out;
	}
	if (!t->pin || info.state == CKS_RO_USER_FUNCTIONS || info.state == CKS_RW_USER_FUNCTIONS)
		goto out;
	rv = fl->C_Login(s->h, CKU_USER, (CK_UTF8CHAR_PTR)t->pin->data, t->pin->len);
	if (rv == CKR_OK)
		__atomic_add_fetch(&t->login_gen, 1, __ATOMIC_RELEASE);
	if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN)
		goto out;
	r = fail_token(f, "C_Login", rv);
	if (pin_rejected(rv)) {
		t->pin_refused = true;
		secret_free(t->pin);
		t->pin = NULL;
		r = PS_E_PIN;
	}
out:
	pthread_mutex_unlock(&t->login_lock);
	return r;
}

static int session_open(struct token *t, struct session *s, struct p11_fail *f)
{
	CK_SLOT_ID slot;
	CK_RV rv;

	pthread_mutex_lock(&t->lock);
	slot = t->slot;
	s->reset = t->reset;
	pthread_mutex_unlock(&t->lock);
	s->epoch = t->mod->epoch;
	rv = t->mod->fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s->h);
	if (rv != CKR_OK) {
		s->h = CK_INVALID_HANDLE;
		return fail_token(f, "C_OpenSession", rv);
	}
	session_forget_handles(s);
	/* A session opened after a token reset starts out public. */
	return token_login(t, s, f);
}

int session_prepare(struct token *t, struct session *s, struct p11_fail *f)
{
	unsigned reset = __atomic_load_n(&t->reset, __ATOMIC_ACQUIRE);
	unsigned login;

	if (s->h != CK_INVALID_HANDLE && (s->epoch != t->mod->epoch || s->reset != reset))
		session_drop(t, s);
	if (s->h == CK_INVALID_HANDLE) {
		int r = session_open(t, s, f);

		if (r < 0)
			return r;
	}
	/* SoftHSM refuses private key handles found before a new login. */
	login = __atomic_load_n(&t->login_gen, __ATOMIC_ACQUIRE);
	if (s->login_gen != login) {
		session_forget_handles(s);
		s->login_gen = login;
	}
	return 0;
}

/* ---- objects ---- */

int find_object(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE h, const struct object_query *q,
		CK_OBJECT_HANDLE *ret, struct p11_fail *f)
{
	CK_OBJECT_CLASS class = q->class;
	CK_ATTRIBUTE tmpl[3] = { { CKA_CLASS, &class, sizeof(class) } };
	CK_ULONG n = 1, count = 0;
	CK_OBJECT_HANDLE found[2];
	CK_RV rv;

	if (q->label)
		tmpl[n++] = (CK_ATTRIBUTE){ CKA_LABEL, (void *)q->label, strlen(q->label) };
	if (q->id_len)
		tmpl[n++] = (CK_ATTRIBUTE){ CKA_ID, (void *)q->id, q->id_len };
	rv = fl->C_FindObjectsInit(h, tmpl, n);
	if (rv != CKR_OK)
		return fail_token(f, "C_FindObjectsInit", rv);
	rv = fl->C_FindObjects(h, found, ELEMENTSOF(found), &count);
	(void)fl->C_FindObjectsFinal(h);
	if (rv != CKR_OK)
		return fail_token(f, "C_FindObjects", rv);
	if (count == 0)
		return PS_E_NOT_FOUND;
	if (count > 1)
		return PS_E_CONFIG;
	*ret = found[0];
	return 0;
}

int get_attr_alloc(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj,
		   CK_ATTRIBUTE_TYPE type, uint8_t **ret, size_t *ret_len, struct p11_fail *f)
{
	CK_ATTRIBUTE a = { type, NULL, 0 };
	_cleanup_free_ uint8_t *buf = NULL;
	CK_RV rv;

	rv = fl->C_GetAttributeValue(h, obj, &a, 1);
	if (rv != CKR_OK)
		return fail_token(f, "C_GetAttributeValue", rv);
	if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return fail_token(f, "C_GetAttributeValue", CKR_ATTRIBUTE_SENSITIVE);
	buf = malloc(a.ulValueLen + 1); /* +1: NUL for text, and never malloc(0) */
	if (!buf)
		return PS_E_NOMEM;
	a.pValue = buf;
	rv = fl->C_GetAttributeValue(h, obj, &a, 1);
	if (rv != CKR_OK)
		return fail_token(f, "C_GetAttributeValue", rv);
	buf[a.ulValueLen] = 0;
	*ret_len = a.ulValueLen;
	*ret = TAKE_PTR(buf);
	return 0;
}

static struct object_query key_query(const struct token_key *k)
{
	return (struct object_query){ CKO_PRIVATE_KEY, k->label, k->id, k->id_len };
}

int key_handle(struct token_key *k, struct session *s, CK_OBJECT_HANDLE *ret,
	       struct p11_fail *f)
{
	struct object_query q = key_query(k);
	CK_OBJECT_HANDLE obj;
	int r;

	if (k->index < s->n_keys && s->keys[k->index] != CK_INVALID_HANDLE) {
		*ret = s->keys[k->index];
		return 0;
	}
	if (k->index >= s->n_keys) {
		CK_OBJECT_HANDLE *keys = realloc(s->keys, (k->index + 1) * sizeof(*keys));

		if (!keys)
			return PS_E_NOMEM;
		for (size_t i = s->n_keys; i <= k->index; i++)
			keys[i] = CK_INVALID_HANDLE;
		s->keys = keys;
		s->n_keys = k->index + 1;
	}
	r = find_object(k->token->mod->fl, s->h, &q, &obj, f);
	if (r < 0)
		return r;
	s->keys[k->index] = obj;
	*ret = obj;
	return 0;
}

/* ---- signing ---- */

int sign_once(struct token_key *k, struct session *s, const uint8_t *in, size_t inlen,
	      uint8_t *sig, size_t *siglen, struct p11_fail *f)
{
	CK_FUNCTION_LIST_PTR fl = k->token->mod->fl;
	CK_MECHANISM mech = { k->type == TOKEN_KEY_RSA ? CKM_RSA_PKCS : CKM_ECDSA, NULL, 0 };
	CK_ULONG len = TOKEN_SIG_MAX;
	CK_OBJECT_HANDLE obj;
	CK_RV rv;
	int r;

	r = key_handle(k, s, &obj, f);
	if (r < 0)
		return r;
	rv = fl->C_SignInit(s->h, &mech, obj);
	if (rv != CKR_OK)
		return fail_token(f, "C_SignInit", rv);
	rv = fl->C_Sign(s->h, (CK_BYTE_PTR)in, inlen, sig, &len);
	if (rv != CKR_OK)
		return fail_token(f, "C_Sign", rv);
	*siglen = len;
	return 0;
}

static int sign_attempt(struct token_key *k, struct session *s, const uint8_t *in,
			size_t inlen, uint8_t *sig, size_t *siglen, struct p11_fail *f)
{
	int r = session_prepare(k->token, s, f);

	return r < 0 ? r : sign_once(k, s, in, inlen, sig, siglen, f);
}

/* Signs in s; a lost session, login or handle is repaired and the
 * signature tried once more. */
static int sign_in(struct token_key *k, struct session *s, const uint8_t *in, size_t inlen,
		   uint8_t *sig, size_t *siglen, struct p11_fail *f)
{
	int r = sign_attempt(k, s, in, inlen, sig, siglen, f);

	if (r == PS_E_TOKEN && f->call && fault_repairable(f->rv)) {
		log_warning("key %s: " FAIL_FMT "; repairing and trying once more", k->name,
			    FAIL_ARGS(*f));
		r = session_repair(k->token, s, f->rv, f);
		if (r == 0) {
			f->call = NULL;
			r = sign_attempt(k, s, in, inlen, sig, siglen, f);
		}
	}
	/* A sign operation left active would refuse the next C_SignInit. */
	if (r < 0 && f->call && (f->rv == CKR_BUFFER_TOO_SMALL || f->rv == CKR_OPERATION_ACTIVE))
		session_drop(k->token, s);
	return r;
}

/* Logs why a signature failed, and fails the token if the reason is the
 * token's rather than this signature's. */
static void sign_failed(struct token_key *k, const struct session *s, int r,
			const struct p11_fail *f)
{
	enum token_fault fault = TOKEN_OK;

	if (r == PS_E_PIN)
		fault = FAULT_PIN;
	else if (r == PS_E_NOT_FOUND || r == PS_E_CONFIG)
		fault = FAULT_KEY;
	else if (f->call)
		fault = fault_of(f->rv);
	if (f->call)
		log_error("key %s: " FAIL_FMT, k->name, FAIL_ARGS(*f));
	else if (r == PS_E_NOT_FOUND || r == PS_E_CONFIG)
		log_error("key %s: %s in a reopened session", k->name,
			  r == PS_E_NOT_FOUND ? "not found" : "ambiguous");
	else if (r != PS_E_PIN)
		log_error("key %s: cannot sign: %s", k->name, ps_strerror(r));
	if (fault != TOKEN_OK)
		token_fail(k->token, s, fault, f->call ? f->rv : CKR_OK);
}

int token_key_sign(struct token_key *k, const uint8_t *in, size_t inlen, uint8_t *sig,
		   size_t *siglen)
{
	struct token *t = k->token;
	struct p11_fail f = { 0 };
	struct session *s;
	int r;

	/* Failed or hung: no log line per request, token_fail() said it once. */
	if (session_take(t, &s) < 0)
		return PS_E_TOKEN;
	module_enter(t->mod);
	r = sign_in(k, s, in, inlen, sig, siglen, &f);
	if (r < 0)
		sign_failed(k, s, r, &f);
	module_leave(t->mod);
	session_give(t, s);
	return r == 0 ? 0 : PS_E_TOKEN;
}

enum token_key_type token_key_type(const struct token_key *k)
{
	return k->type;
}

/* ---- certificates ---- */

static int cert_find(struct token_key *k, struct session *s, uint8_t **ret_der, size_t *ret_len,
		     struct p11_fail *f)
{
	struct object_query q = { CKO_CERTIFICATE, NULL, NULL, 0 };
	CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE; /* for the analyzer: find_object() sets it */
	int r;

	if (k->obj_id_len) {
		q.id = k->obj_id;
		q.id_len = k->obj_id_len;
	} else if (k->obj_label && k->obj_label[0]) {
		q.label = k->obj_label;
	} else {
		return PS_E_NOT_FOUND;
	}
	r = session_prepare(k->token, s, f);
	if (r < 0)
		return r;
	r = find_object(k->token->mod->fl, s->h, &q, &obj, f);
	if (r < 0)
		return r;
	return get_attr_alloc(k->token->mod->fl, s->h, obj, CKA_VALUE, ret_der, ret_len, f);
}

int token_key_certificate(struct token_key *k, uint8_t **ret_der, size_t *ret_len)
{
	struct token *t = k->token;
	struct p11_fail f = { 0 };
	struct session *s;
	int r;

	if (session_take(t, &s) < 0) {
		log_error("key %s: certificate: the token cannot be used right now", k->name);
		return PS_E_TOKEN;
	}
	module_enter(t->mod);
	r = cert_find(k, s, ret_der, ret_len, &f);
	if (r == PS_E_TOKEN && f.call && fault_repairable(f.rv))
		session_drop(t, s);
	module_leave(t->mod);
	session_give(t, s);
	if (r == PS_E_TOKEN && f.call)
		log_error("key %s: certificate: " FAIL_FMT, k->name, FAIL_ARGS(f));
	else if (r == PS_E_CONFIG)
		log_error("key %s: more than one certificate object has the key's id or label", k->name);
	return r == PS_E_CONFIG || r == PS_E_PIN ? PS_E_TOKEN : r;
}
