#include "token.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <p11-kit/pkcs11.h>

#include "error.h"
#include "log.h"
#include "secret.h"
#include "text.h"
#include "util.h"

/* ---- PKCS#11 return values in log lines ---- */

static const char *ckr_name(CK_RV rv)
{
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

	for (size_t i = 0; i < ELEMENTSOF(names); i++)
		if (names[i].rv == rv)
			return names[i].name;
	return "CKR_(unknown)";
}

/* The failing C_* call a helper saw, for the deciding code to log. */
struct p11_fail {
	const char *call;
	CK_RV rv;
};

static int fail_token(struct p11_fail *f, const char *call, CK_RV rv)
{
	f->call = call;
	f->rv = rv;
	return PS_E_TOKEN;
}

#define FAIL_FMT "%s: %s (0x%lx)"
#define FAIL_ARGS(f) (f).call, ckr_name((f).rv), (unsigned long)(f).rv

/* ---- modules: process-wide, so that two token sets (a reload) never
 * finalise a module the other still uses ---- */

struct module {
	char *path; /* canonical */
	void *dl;
	CK_FUNCTION_LIST_PTR fl;
	bool initialized_here; /* false: someone else in the process did; never finalise */
	unsigned refs;         /* token sets using it */
	struct module *next;
};

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct module *modules;

static int module_init(struct module *m)
{
	CK_C_INITIALIZE_ARGS args;
	CK_RV rv;

	/* SoftHSM turns its own locking off when given no arguments. */
	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	rv = m->fl->C_Initialize(&args);
	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
		return 0;
	if (rv != CKR_OK) {
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

	m->dl = dlopen(m->path, RTLD_NOW | RTLD_LOCAL);
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

static int module_acquire(const char *canon, struct module **ret)
{
	int r;

	pthread_mutex_lock(&modules_lock);
	r = module_acquire_locked(canon, ret);
	pthread_mutex_unlock(&modules_lock);
	return r;
}

static void module_release(struct module *m)
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

static bool module_shared(struct module *m)
{
	bool shared;

	pthread_mutex_lock(&modules_lock);
	shared = m->refs > 1;
	pthread_mutex_unlock(&modules_lock);
	return shared;
}

/* ---- tokens, sessions and keys ---- */

struct session {
	CK_SESSION_HANDLE h;   /* CK_INVALID_HANDLE: (re)open before use */
	CK_OBJECT_HANDLE *keys; /* by token_key.index; CK_INVALID_HANDLE: not found yet */
	size_t n_keys;
	bool busy;
};

struct token {
	struct module *mod;
	CK_SLOT_ID slot;
	char label[33]; /* for log lines */

	pthread_mutex_t lock; /* busy flags, n_keys */
	pthread_cond_t freed;
	struct session *sessions;
	unsigned n_sessions;
	unsigned n_keys;

	/* Taken only while holding a session, never the other way round. */
	pthread_mutex_t login_lock;
	struct secret *pin; /* NULL: none known (yet) */
	bool pin_refused;   /* the token refused it once: never try again */

	struct token *next;
};

struct object_query {
	CK_OBJECT_CLASS class;
	const char *label; /* NULL: any */
	const uint8_t *id;
	size_t id_len; /* 0: any */
};

struct token_key {
	struct token *token;
	unsigned index; /* slot in each session's handle cache */
	enum token_key_type type;
	char *name;     /* "token/object" for log lines */
	char *label;    /* as the URI names it */
	uint8_t id[KEY_URI_ID_MAX];
	size_t id_len;
	uint8_t *obj_id;    /* as the token holds it: finds the certificate */
	size_t obj_id_len;
	char *obj_label;
	struct token_key *next;
};

struct token_set {
	unsigned n_sessions;
	struct module **modules;
	size_t n_modules;
	struct token *tokens;
	struct token_key *keys;
};

static struct session *session_take(struct token *t)
{
	pthread_mutex_lock(&t->lock);
	for (;;) {
		for (unsigned i = 0; i < t->n_sessions; i++)
			if (!t->sessions[i].busy) {
				t->sessions[i].busy = true;
				pthread_mutex_unlock(&t->lock);
				return &t->sessions[i];
			}
		pthread_cond_wait(&t->freed, &t->lock);
	}
}

static void session_give(struct token *t, struct session *s)
{
	pthread_mutex_lock(&t->lock);
	s->busy = false;
	pthread_cond_signal(&t->freed);
	pthread_mutex_unlock(&t->lock);
}

static void session_forget_handles(struct session *s)
{
	for (size_t i = 0; i < s->n_keys; i++)
		s->keys[i] = CK_INVALID_HANDLE;
}

/* Closes s (its handle may already be dead) so its next use reopens it. */
static void session_drop(struct token *t, struct session *s)
{
	if (s->h != CK_INVALID_HANDLE)
		(void)t->mod->fl->C_CloseSession(s->h);
	s->h = CK_INVALID_HANDLE;
	session_forget_handles(s);
}

static bool pin_rejected(CK_RV rv)
{
	return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_INVALID ||
	       rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_EXPIRED;
}

/* Logs in through s unless the token is logged in already or no PIN is
 * known.  A PIN the token refused is wiped and never offered again: retries
 * lock real tokens. */
static int token_login(struct token *t, struct session *s, struct p11_fail *f)
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
	CK_RV rv = t->mod->fl->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &s->h);

	if (rv != CKR_OK) {
		s->h = CK_INVALID_HANDLE;
		return fail_token(f, "C_OpenSession", rv);
	}
	session_forget_handles(s);
	/* A session opened after a token reset starts out public. */
	return token_login(t, s, f);
}

/* Finds the one object q names.  Returns 0 and *ret, PS_E_NOT_FOUND (none),
 * PS_E_CONFIG (more than one) or PS_E_TOKEN (f says which call failed). */
static int find_object(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE h, const struct object_query *q,
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

/* Reads attribute type of obj into a new buffer (caller frees). */
static int get_attr_alloc(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj,
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

/* The handle of k in s: cached, or found once and cached. */
static int key_handle(struct token_key *k, struct session *s, CK_OBJECT_HANDLE *ret,
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

static int sign_once(struct token_key *k, struct session *s, const uint8_t *in, size_t inlen,
		     uint8_t *sig, size_t *siglen, struct p11_fail *f)
{
	CK_FUNCTION_LIST_PTR fl = k->token->mod->fl;
	CK_MECHANISM mech = { k->type == TOKEN_KEY_RSA ? CKM_RSA_PKCS : CKM_ECDSA, NULL, 0 };
	CK_ULONG len = TOKEN_SIG_MAX;
	CK_OBJECT_HANDLE obj;
	CK_RV rv;
	int r;

	if (s->h == CK_INVALID_HANDLE) {
		r = session_open(k->token, s, f);
		if (r < 0)
			return r;
	}
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

/* Whether a failure is one a fresh session, handle or login cures. */
static bool sign_recoverable(CK_RV rv)
{
	return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
	       rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID ||
	       rv == CKR_USER_NOT_LOGGED_IN;
}

/* Makes s fit for a retry after rv. */
static void sign_recover(struct token_key *k, struct session *s, CK_RV rv)
{
	struct p11_fail f = { 0 };

	if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID) {
		session_forget_handles(s);
	} else if (rv == CKR_USER_NOT_LOGGED_IN) {
		if (token_login(k->token, s, &f) < 0 && f.call)
			log_error("key %s: " FAIL_FMT, k->name, FAIL_ARGS(f));
	} else {
		session_drop(k->token, s);
	}
}

int token_key_sign(struct token_key *k, const uint8_t *in, size_t inlen, uint8_t *sig,
		   size_t *siglen)
{
	struct session *s = session_take(k->token);
	struct p11_fail f = { 0 };
	int r;

	r = sign_once(k, s, in, inlen, sig, siglen, &f);
	if (r == PS_E_TOKEN && f.call && sign_recoverable(f.rv)) {
		log_warning("key %s: " FAIL_FMT "; retrying once", k->name, FAIL_ARGS(f));
		sign_recover(k, s, f.rv);
		f.call = NULL;
		r = sign_once(k, s, in, inlen, sig, siglen, &f);
	}
	/* A sign operation left active would refuse the next C_SignInit. */
	if (r < 0 && f.call && (f.rv == CKR_BUFFER_TOO_SMALL || f.rv == CKR_OPERATION_ACTIVE))
		session_drop(k->token, s);
	session_give(k->token, s);
	if (r == 0)
		return 0;
	if (f.call)
		log_error("key %s: " FAIL_FMT, k->name, FAIL_ARGS(f));
	else if (r == PS_E_NOT_FOUND || r == PS_E_CONFIG)
		log_error("key %s: %s in a reopened session", k->name,
			  r == PS_E_NOT_FOUND ? "not found" : "ambiguous");
	else
		log_error("key %s: cannot sign: %s", k->name, ps_strerror(r));
	return PS_E_TOKEN;
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
	CK_OBJECT_HANDLE obj;
	int r;

	if (k->obj_id_len) {
		q.id = k->obj_id;
		q.id_len = k->obj_id_len;
	} else if (k->obj_label && k->obj_label[0]) {
		q.label = k->obj_label;
	} else {
		return PS_E_NOT_FOUND;
	}
	if (s->h == CK_INVALID_HANDLE) {
		r = session_open(k->token, s, f);
		if (r < 0)
			return r;
	}
	r = find_object(k->token->mod->fl, s->h, &q, &obj, f);
	if (r < 0)
		return r;
	return get_attr_alloc(k->token->mod->fl, s->h, obj, CKA_VALUE, ret_der, ret_len, f);
}

int token_key_certificate(struct token_key *k, uint8_t **ret_der, size_t *ret_len)
{
	struct session *s = session_take(k->token);
	struct p11_fail f = { 0 };
	int r;

	r = cert_find(k, s, ret_der, ret_len, &f);
	if (r == PS_E_TOKEN && f.call && sign_recoverable(f.rv))
		session_drop(k->token, s);
	session_give(k->token, s);
	if (r == PS_E_TOKEN && f.call)
		log_error("key %s: certificate: " FAIL_FMT, k->name, FAIL_ARGS(f));
	else if (r == PS_E_CONFIG)
		log_error("key %s: more than one certificate object has the key's id or label", k->name);
	return r == PS_E_CONFIG ? PS_E_TOKEN : r;
}

/* ---- building a set ---- */

int token_set_new(unsigned sessions, struct token_set **ret)
{
	struct token_set *set = calloc(1, sizeof(*set));

	if (!set)
		return PS_E_NOMEM;
	set->n_sessions = sessions ? sessions : 1;
	*ret = set;
	return 0;
}

static int set_module(struct token_set *set, const char *path, struct module **ret)
{
	_cleanup_free_ char *canon = realpath(path, NULL);
	struct module **mods;
	int r;

	if (!canon) {
		log_error("module %s: %s", path, strerror(errno));
		return errno == ENOENT || errno == ENOTDIR ? PS_E_NOT_FOUND : PS_E_TOKEN;
	}
	for (size_t i = 0; i < set->n_modules; i++)
		if (strcmp(set->modules[i]->path, canon) == 0) {
			*ret = set->modules[i];
			return 0;
		}
	mods = realloc(set->modules, (set->n_modules + 1) * sizeof(*mods));
	if (!mods)
		return PS_E_NOMEM;
	set->modules = mods;
	r = module_acquire(canon, &mods[set->n_modules]);
	if (r < 0)
		return r;
	*ret = mods[set->n_modules++];
	return 0;
}

/* Whether a blank-padded token info field equals want (NULL: anything). */
static bool field_matches(const CK_UTF8CHAR *field, size_t n, const char *want)
{
	while (n > 0 && (field[n - 1] == ' ' || field[n - 1] == '\0'))
		n--;
	return !want || (strlen(want) == n && memcmp(field, want, n) == 0);
}

static bool token_matches(const CK_TOKEN_INFO *ti, const struct key_uri *uri)
{
	return (ti->flags & CKF_TOKEN_INITIALIZED) &&
	       field_matches(ti->label, sizeof(ti->label), uri->token_label) &&
	       field_matches(ti->serialNumber, sizeof(ti->serialNumber), uri->token_serial) &&
	       field_matches(ti->manufacturerID, sizeof(ti->manufacturerID), uri->token_manufacturer) &&
	       field_matches(ti->model, sizeof(ti->model), uri->token_model);
}

static int slot_list(struct module *m, CK_SLOT_ID **ret, CK_ULONG *ret_n, struct p11_fail *f)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG n = 0;
	CK_RV rv;

	/* Slots can appear between the two calls: ask again then. */
	for (int attempt = 0; attempt < 3; attempt++) {
		rv = m->fl->C_GetSlotList(CK_TRUE, NULL, &n);
		if (rv != CKR_OK)
			return fail_token(f, "C_GetSlotList", rv);
		free(slots);
		slots = calloc(n + 1, sizeof(*slots));
		if (!slots)
			return PS_E_NOMEM;
		rv = m->fl->C_GetSlotList(CK_TRUE, slots, &n);
		if (rv != CKR_BUFFER_TOO_SMALL)
			break;
	}
	if (rv != CKR_OK) {
		free(slots);
		return fail_token(f, "C_GetSlotList", rv);
	}
	*ret = slots;
	*ret_n = n;
	return 0;
}

/* The one slot whose token matches uri, and its trimmed label. */
static int slot_find(struct module *m, const struct key_uri *uri, CK_SLOT_ID *ret, char label[33])
{
	_cleanup_free_ CK_SLOT_ID *slots = NULL;
	struct p11_fail f = { 0 };
	CK_TOKEN_INFO ti;
	CK_ULONG n = 0, matches = 0;
	int r = slot_list(m, &slots, &n, &f);

	if (r == PS_E_TOKEN)
		log_error("module %s: " FAIL_FMT, m->path, FAIL_ARGS(f));
	if (r < 0)
		return r;
	for (CK_ULONG i = 0; i < n; i++) {
		CK_RV rv = m->fl->C_GetTokenInfo(slots[i], &ti);

		if (rv != CKR_OK) {
			log_warning("module %s: slot %lu: C_GetTokenInfo: %s (0x%lx)", m->path,
				    (unsigned long)slots[i], ckr_name(rv), (unsigned long)rv);
			continue;
		}
		if (!token_matches(&ti, uri))
			continue;
		if (matches++ == 0) {
			*ret = slots[i];
			memcpy(label, ti.label, sizeof(ti.label));
			label[32] = '\0';
			for (int j = 31; j >= 0 && label[j] == ' '; j--)
				label[j] = '\0';
		}
	}
	if (matches == 1)
		return 0;
	if (matches == 0)
		log_error("module %s: no token matches token=%s serial=%s manufacturer=%s model=%s",
			  m->path, uri->token_label ?: "*", uri->token_serial ?: "*",
			  uri->token_manufacturer ?: "*", uri->token_model ?: "*");
	else
		log_error("module %s: %lu tokens match; name one in the uri with token=, serial=, "
			  "manufacturer= or model=", m->path, (unsigned long)matches);
	return matches == 0 ? PS_E_NOT_FOUND : PS_E_TOKEN;
}

static void token_free(struct token *t)
{
	CK_FUNCTION_LIST_PTR fl = t->mod->fl;
	bool logout = t->pin && !module_shared(t->mod);

	for (unsigned i = 0; i < t->n_sessions; i++) {
		struct session *s = &t->sessions[i];

		/* Logging out ends the login for every session of the process on
		 * this token: skip it while another token set still uses it. */
		if (logout && s->h != CK_INVALID_HANDLE) {
			(void)fl->C_Logout(s->h);
			logout = false;
		}
		if (s->h != CK_INVALID_HANDLE)
			(void)fl->C_CloseSession(s->h);
		free(s->keys);
	}
	free(t->sessions);
	secret_free(t->pin);
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->login_lock);
	pthread_cond_destroy(&t->freed);
	free(t);
}

static int token_new(struct module *m, CK_SLOT_ID slot, const char *label, unsigned n_sessions,
		     struct token **ret)
{
	struct token *t = calloc(1, sizeof(*t));
	struct p11_fail f = { 0 };

	if (!t)
		return PS_E_NOMEM;
	t->mod = m;
	t->slot = slot;
	snprintf(t->label, sizeof(t->label), "%s", label);
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_init(&t->login_lock, NULL);
	pthread_cond_init(&t->freed, NULL);
	t->sessions = calloc(n_sessions, sizeof(*t->sessions));
	if (!t->sessions) {
		token_free(t);
		return PS_E_NOMEM;
	}
	/* Eagerly: a token that cannot give us all its sessions fails at start. */
	for (; t->n_sessions < n_sessions; t->n_sessions++)
		if (session_open(t, &t->sessions[t->n_sessions], &f) < 0) {
			log_error("token %s: " FAIL_FMT, t->label, FAIL_ARGS(f));
			token_free(t);
			return PS_E_TOKEN;
		}
	*ret = t;
	return 0;
}

/* The set's token in slot of m, created on first use. */
static int set_token(struct token_set *set, struct module *m, CK_SLOT_ID slot, const char *label,
		     struct token **ret)
{
	struct token *t;
	int r;

	for (t = set->tokens; t; t = t->next)
		if (t->mod == m && t->slot == slot) {
			*ret = t;
			return 0;
		}
	r = token_new(m, slot, label, set->n_sessions, &t);
	if (r < 0)
		return r;
	t->next = set->tokens;
	set->tokens = t;
	*ret = t;
	return 0;
}

static const char *pin_problem(const char *path, int r)
{
	struct stat st;

	switch (r) {
	case PS_E_NOT_FOUND:
		return "does not exist";
	case PS_E_PERMISSIONS:
		if (stat(path, &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)))
			return "is readable or writable by group or others (make it mode 0600)";
		return "cannot be opened: permission denied";
	case PS_E_TOO_LARGE:
		return "is too large to hold a PIN";
	case PS_E_INVALID_REQUEST:
		return "is empty or not a regular file";
	default:
		return "cannot be read";
	}
}

/* Whether a and b hold the same PIN. */
static bool pin_same(const struct secret *a, const struct secret *b)
{
	return a->len == b->len && bytes_equal_ct(a->data, b->data, a->len);
}

/* Reads and checks the PIN file path names (NULL: none).  The first PIN of
 * a token is kept for logging in; every later key's PIN file is still
 * checked, so a broken pin-source never hides behind a login another key
 * made, and must hold the same PIN: a second PIN is never offered. */
static int token_read_pin(struct token *t, const char *path)
{
	struct secret *pin = NULL;
	int r = 0;

	pthread_mutex_lock(&t->login_lock);
	if (t->pin_refused) {
		log_error("token %s: the token refused the PIN before; not trying again", t->label);
		r = PS_E_PIN;
		goto out;
	}
	if (!path)
		goto out;
	r = secret_read_file(path, &pin);
	if (r < 0) {
		if (r != PS_E_NOMEM) {
			log_error("token %s: PIN file %s %s", t->label, path, pin_problem(path, r));
			r = PS_E_PIN;
		}
		goto out;
	}
	if (!t->pin) {
		t->pin = TAKE_PTR(pin);
	} else if (!pin_same(pin, t->pin)) {
		log_error("token %s: PIN file %s holds another PIN than that of the token's other keys",
			  t->label, path);
		r = PS_E_PIN;
	}
out:
	secret_free(pin);
	pthread_mutex_unlock(&t->login_lock);
	return r;
}

/* ---- keys ---- */

static void key_free(struct token_key *k)
{
	if (!k)
		return;
	free(k->name);
	free(k->label);
	free(k->obj_id);
	free(k->obj_label);
	free(k);
}

static int key_new(struct token *t, const struct key_uri *uri, struct token_key **ret)
{
	struct token_key *k = calloc(1, sizeof(*k));
	char hex[2 * KEY_URI_ID_MAX + 1];
	int n;

	if (!k)
		return PS_E_NOMEM;
	k->token = t;
	k->id_len = uri->id_len;
	memcpy(k->id, uri->id, uri->id_len);
	hex_encode(uri->id, uri->id_len, false, hex);
	if (uri->object_label)
		n = asprintf(&k->name, "%s/%s", t->label, uri->object_label);
	else
		n = asprintf(&k->name, "%s/id=%s", t->label, hex);
	if (n < 0)
		k->name = NULL; /* asprintf leaves it undefined on failure */
	if (uri->object_label)
		k->label = strdup(uri->object_label);
	if (!k->name || (uri->object_label && !k->label)) {
		key_free(k);
		return PS_E_NOMEM;
	}
	pthread_mutex_lock(&t->lock);
	k->index = t->n_keys++;
	pthread_mutex_unlock(&t->lock);
	*ret = k;
	return 0;
}

static int key_read_type(struct token_key *k, struct session *s, CK_OBJECT_HANDLE obj,
			 struct p11_fail *f)
{
	CK_KEY_TYPE kt;
	CK_ATTRIBUTE a = { CKA_KEY_TYPE, &kt, sizeof(kt) };
	CK_RV rv = k->token->mod->fl->C_GetAttributeValue(s->h, obj, &a, 1);

	if (rv != CKR_OK)
		return fail_token(f, "C_GetAttributeValue", rv);
	if (kt == CKK_RSA)
		k->type = TOKEN_KEY_RSA;
	else if (kt == CKK_EC)
		k->type = TOKEN_KEY_EC;
	else
		return PS_E_UNSUPPORTED;
	return 0;
}

/* Finds k through s (logging in first), learns its type, id and label. */
static int key_setup(struct token_key *k, struct session *s, struct p11_fail *f)
{
	CK_FUNCTION_LIST_PTR fl = k->token->mod->fl;
	CK_OBJECT_HANDLE obj;
	uint8_t *label = NULL;
	size_t len;
	int r;

	if (s->h == CK_INVALID_HANDLE)
		r = session_open(k->token, s, f);
	else
		r = token_login(k->token, s, f);
	if (r < 0)
		return r;
	r = key_handle(k, s, &obj, f);
	if (r < 0)
		return r;
	r = key_read_type(k, s, obj, f);
	if (r < 0)
		return r;
	r = get_attr_alloc(fl, s->h, obj, CKA_ID, &k->obj_id, &k->obj_id_len, f);
	if (r < 0)
		return r;
	r = get_attr_alloc(fl, s->h, obj, CKA_LABEL, &label, &len, f);
	if (r < 0)
		return r;
	k->obj_label = (char *)label; /* get_attr_alloc NUL-terminates */
	return 0;
}

static void key_setup_log(const struct token_key *k, int r, const struct p11_fail *f)
{
	if (r == PS_E_NOT_FOUND)
		log_error("key %s: no such private key on the token%s", k->name,
			  k->token->pin ? "" : " (no pin-source given, so not logged in)");
	else if (r == PS_E_CONFIG)
		log_error("key %s: the uri matches more than one private key; add object= or id=",
			  k->name);
	else if (r == PS_E_UNSUPPORTED)
		log_error("key %s: neither an RSA nor an EC key", k->name);
	else if (r == PS_E_PIN && f->call)
		log_error("key %s: the token refused the PIN: " FAIL_FMT " (not retried)", k->name,
			  FAIL_ARGS(*f));
	else if (r == PS_E_PIN)
		log_error("key %s: the token refused the PIN before; not trying again", k->name);
	else if (f->call)
		log_error("key %s: " FAIL_FMT, k->name, FAIL_ARGS(*f));
}

/* The set's token uri names, its PIN read. */
static int set_token_for(struct token_set *set, const struct key_uri *uri, struct token **ret)
{
	char label[33] = "";
	CK_SLOT_ID slot = 0;
	struct module *m;
	struct token *t;
	int r;

	r = set_module(set, uri->module_path, &m);
	if (r < 0)
		return r;
	r = slot_find(m, uri, &slot, label);
	if (r < 0)
		return r;
	r = set_token(set, m, slot, label, &t);
	if (r < 0)
		return r;
	r = token_read_pin(t, uri->pin_file);
	if (r < 0)
		return r;
	*ret = t;
	return 0;
}

int token_set_add_key(struct token_set *set, const struct key_uri *uri, struct token_key **ret)
{
	struct p11_fail f = { 0 };
	struct token_key *k;
	struct session *s;
	struct token *t;
	int r;

	r = set_token_for(set, uri, &t);
	if (r < 0)
		return r;
	r = key_new(t, uri, &k);
	if (r < 0)
		return r;
	s = session_take(t);
	r = key_setup(k, s, &f);
	session_give(t, s);
	if (r < 0) {
		key_setup_log(k, r, &f);
		key_free(k);
		return r == PS_E_CONFIG ? PS_E_TOKEN : r;
	}
	k->next = set->keys;
	set->keys = k;
	*ret = k;
	return 0;
}

void token_set_free(struct token_set *set)
{
	if (!set)
		return;
	while (set->keys) {
		struct token_key *k = set->keys;

		set->keys = k->next;
		key_free(k);
	}
	while (set->tokens) {
		struct token *t = set->tokens;

		set->tokens = t->next;
		token_free(t);
	}
	for (size_t i = 0; i < set->n_modules; i++)
		module_release(set->modules[i]);
	free(set->modules);
	free(set);
}
