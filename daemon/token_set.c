/* Building a token set: modules, tokens found by their URI attributes,
 * PINs, sessions opened at start, and keys found and checked. */
#include "token.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "log.h"
#include "secret.h"
#include "text.h"
#include "token_internal.h"
#include "util.h"

int token_set_new(unsigned sessions, struct token_set **ret)
{
	struct token_set *set = calloc(1, sizeof(*set));

	if (!set)
		return PS_E_NOMEM;
	set->n_sessions = sessions ? sessions : 1;
	set->timeout_ms = TOKEN_TIMEOUT_DEFAULT_MS;
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
	/* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
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

static bool token_matches(const CK_TOKEN_INFO *ti, const struct token_match *want)
{
	return (ti->flags & CKF_TOKEN_INITIALIZED) &&
	       field_matches(ti->label, sizeof(ti->label), want->label) &&
	       field_matches(ti->serialNumber, sizeof(ti->serialNumber), want->serial) &&
	       field_matches(ti->manufacturerID, sizeof(ti->manufacturerID), want->manufacturer) &&
	       field_matches(ti->model, sizeof(ti->model), want->model);
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

static void label_copy(char label[33], const CK_UTF8CHAR field[32])
{
	memcpy(label, field, 32);
	label[32] = '\0';
	for (int j = 31; j >= 0 && label[j] == ' '; j--)
		label[j] = '\0';
}

int slot_search(struct module *m, const struct token_match *want, CK_SLOT_ID *ret,
		char label[33], unsigned long *ret_matches, struct p11_fail *f)
{
	_cleanup_free_ CK_SLOT_ID *slots = NULL;
	CK_TOKEN_INFO ti;
	CK_ULONG n = 0;
	unsigned long matches = 0;
	int r = slot_list(m, &slots, &n, f);

	if (r < 0)
		return r;
	for (CK_ULONG i = 0; i < n; i++) {
		CK_RV rv = m->fl->C_GetTokenInfo(slots[i], &ti);

		/* A slot whose token cannot be read is not the one we want. */
		if (rv != CKR_OK) {
			ckr_count(rv);
			continue;
		}
		if (!token_matches(&ti, want) || matches++ > 0)
			continue;
		*ret = slots[i];
		label_copy(label, ti.label);
	}
	*ret_matches = matches;
	return matches == 1 ? 0 : matches == 0 ? PS_E_NOT_FOUND : PS_E_CONFIG;
}

/* slot_search() for a new key: logs what went wrong. */
static int slot_find(struct module *m, const struct token_match *want, CK_SLOT_ID *ret,
		     char label[33])
{
	struct p11_fail f = { 0 };
	unsigned long matches = 0;
	int r = slot_search(m, want, ret, label, &matches, &f);

	if (r == PS_E_TOKEN && f.call)
		log_error("module %s: " FAIL_FMT, m->path, FAIL_ARGS(f));
	else if (r == PS_E_NOT_FOUND)
		log_error("module %s: no token matches token=%s serial=%s manufacturer=%s model=%s",
			  m->path, want->label ?: "*", want->serial ?: "*",
			  want->manufacturer ?: "*", want->model ?: "*");
	else if (r == PS_E_CONFIG)
		log_error("module %s: %lu tokens match; name one in the uri with token=, serial=, "
			  "manufacturer= or model=", m->path, matches);
	return r == PS_E_CONFIG ? PS_E_TOKEN : r;
}

static void match_free(struct token_match *w)
{
	free(w->label);
	free(w->serial);
	free(w->manufacturer);
	free(w->model);
}

static int dup_or_null(const char *in, char **ret)
{
	*ret = in ? strdup(in) : NULL;
	return in && !*ret ? PS_E_NOMEM : 0;
}

static int match_from_uri(const struct key_uri *uri, struct token_match *ret)
{
	struct token_match w = { 0 };

	if (dup_or_null(uri->token_label, &w.label) < 0 ||
	    dup_or_null(uri->token_serial, &w.serial) < 0 ||
	    dup_or_null(uri->token_manufacturer, &w.manufacturer) < 0 ||
	    dup_or_null(uri->token_model, &w.model) < 0) {
		match_free(&w);
		return PS_E_NOMEM;
	}
	*ret = w;
	return 0;
}

static void token_free(struct token *t)
{
	CK_FUNCTION_LIST_PTR fl = t->mod->fl;
	bool logout = t->pin && !module_shared(t->mod);

	module_enter(t->mod);
	for (unsigned i = 0; i < t->n_sessions; i++) {
		struct session *s = &t->sessions[i];

		if (s->h != CK_INVALID_HANDLE && s->epoch != t->mod->epoch)
			s->h = CK_INVALID_HANDLE;
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
	module_leave(t->mod);
	free(t->sessions);
	secret_free(t->pin);
	match_free(&t->match);
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->login_lock);
	pthread_cond_destroy(&t->freed);
	free(t);
}

static struct token *token_alloc(struct module *m, CK_SLOT_ID slot, const char *label)
{
	struct token *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->mod = m;
	t->slot = slot;
	snprintf(t->label, sizeof(t->label), "%s", label);
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_init(&t->login_lock, NULL);
	/* Waits for a free session have deadlines on the monotonic clock. */
	cond_init_monotonic(&t->freed);
	t->next_check = token_now_ms() + TOKEN_PROBE_MS;
	t->backoff_ms = TOKEN_BACKOFF_MIN_MS;
	return t;
}

static int token_new(struct token_set *set, struct module *m, CK_SLOT_ID slot,
		     const char *label, const struct key_uri *uri, struct token **ret)
{
	struct token *t = token_alloc(m, slot, label);
	struct p11_fail f = { 0 };

	if (!t)
		return PS_E_NOMEM;
	t->timeout_ms = set->timeout_ms;
	t->sessions = calloc(set->n_sessions, sizeof(*t->sessions));
	if (!t->sessions || match_from_uri(uri, &t->match) < 0) {
		token_free(t);
		return PS_E_NOMEM;
	}
	/* Eagerly: a token that cannot give us all its sessions fails at start. */
	for (; t->n_sessions < set->n_sessions; t->n_sessions++) {
		t->sessions[t->n_sessions].h = CK_INVALID_HANDLE;
		if (session_prepare(t, &t->sessions[t->n_sessions], &f) < 0) {
			log_error("token %s: " FAIL_FMT, t->label, FAIL_ARGS(f));
			token_free(t);
			return PS_E_TOKEN;
		}
	}
	*ret = t;
	return 0;
}

/* The set's token in slot of m, created on first use. */
static int set_token(struct token_set *set, struct module *m, CK_SLOT_ID slot, const char *label,
		     const struct key_uri *uri, struct token **ret)
{
	struct token *t;
	int r;

	for (t = set->tokens; t; t = t->next)
		if (t->mod == m && t->slot == slot) {
			*ret = t;
			return 0;
		}
	r = token_new(set, m, slot, label, uri, &t);
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
		t->pin_known = true;
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

	/* A key with a PIN after one without logs the token in now. */
	r = session_prepare(k->token, s, f);
	if (r == 0)
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

/* The set's token uri names in m, its PIN read. */
static int set_token_for(struct token_set *set, struct module *m, const struct key_uri *uri,
			 struct token **ret)
{
	struct token_match want = { (char *)uri->token_label, (char *)uri->token_serial,
				    (char *)uri->token_manufacturer, (char *)uri->token_model };
	char label[33] = "";
	CK_SLOT_ID slot = 0;
	struct token *t;
	int r;

	r = slot_find(m, &want, &slot, label);
	if (r < 0)
		return r;
	r = set_token(set, m, slot, label, uri, &t);
	if (r < 0)
		return r;
	r = token_read_pin(t, uri->pin_file);
	if (r < 0)
		return r;
	*ret = t;
	return 0;
}

static int add_key_in(struct token_set *set, struct module *m, const struct key_uri *uri,
		      struct token_key **ret)
{
	struct p11_fail f = { 0 };
	struct token_key *k;
	struct session *s;
	struct token *t;
	int r;

	r = set_token_for(set, m, uri, &t);
	if (r < 0)
		return r;
	r = key_new(t, uri, &k);
	if (r < 0)
		return r;
	r = session_take(t, &s);
	if (r == 0) {
		r = key_setup(k, s, &f);
		session_give(t, s);
	} else {
		log_error("key %s: the token cannot be used right now", k->name);
	}
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

int token_set_add_key(struct token_set *set, const struct key_uri *uri, struct token_key **ret)
{
	struct module *m;
	int r = set_module(set, uri->module_path, &m);

	if (r < 0)
		return r;
	module_enter(m);
	r = add_key_in(set, m, uri, ret);
	module_leave(m);
	return r;
}

void token_set_timeout(struct token_set *set, unsigned ms)
{
	set->timeout_ms = ms ? ms : TOKEN_TIMEOUT_DEFAULT_MS;
	for (struct token *t = set->tokens; t; t = t->next) {
		pthread_mutex_lock(&t->lock);
		t->timeout_ms = set->timeout_ms;
		pthread_mutex_unlock(&t->lock);
	}
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
