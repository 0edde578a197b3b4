/* What a failed call says about a token, and getting the token back:
 * repairs in place (a new session, a new login, a handle found again),
 * failing a token so that its keys fail at once, probing ready tokens and
 * recovering failed ones in the background.  docs/pkcs11.md tells the why. */
#include "token.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "token_internal.h"
#include "util.h"

/* ---- faults ---- */

enum token_fault fault_of(CK_RV rv)
{
	switch (rv) {
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_TOKEN_NOT_RECOGNIZED:
	case CKR_SLOT_ID_INVALID:
		return FAULT_ABSENT;
	case CKR_USER_NOT_LOGGED_IN:
		return FAULT_LOGIN;
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
		return FAULT_SESSION;
	case CKR_OBJECT_HANDLE_INVALID:
	case CKR_KEY_HANDLE_INVALID:
		return FAULT_KEY;
	case CKR_DEVICE_ERROR:
	case CKR_DEVICE_MEMORY:
		return FAULT_DEVICE;
	case CKR_GENERAL_ERROR:
		return FAULT_MODULE;
	case CKR_CRYPTOKI_NOT_INITIALIZED:
		return FAULT_UNINITIALIZED;
	case CKR_PIN_INCORRECT:
	case CKR_PIN_LOCKED:
	case CKR_PIN_INVALID:
	case CKR_PIN_LEN_RANGE:
	case CKR_PIN_EXPIRED:
		return FAULT_PIN;
	default:
		return TOKEN_OK;
	}
}

bool fault_repairable(CK_RV rv)
{
	enum token_fault fault = fault_of(rv);

	return fault == FAULT_SESSION || fault == FAULT_LOGIN || fault == FAULT_KEY;
}

static const char *fault_name(enum token_fault fault)
{
	switch (fault) {
	case TOKEN_OK:
		return "ready";
	case FAULT_ABSENT:
		return "token not present";
	case FAULT_LOGIN:
		return "not logged in";
	case FAULT_SESSION:
		return "session lost";
	case FAULT_DEVICE:
		return "device error";
	case FAULT_MODULE:
		return "module error";
	case FAULT_UNINITIALIZED:
		return "module not initialised";
	case FAULT_KEY:
		return "key not found";
	case FAULT_PIN:
		return "PIN refused";
	}
	return "token error";
}

int session_repair(struct token *t, struct session *s, CK_RV rv, struct p11_fail *f)
{
	switch (fault_of(rv)) {
	case FAULT_SESSION:
		/* Reopened on the next try, and logged in if the login went with it. */
		session_drop(t, s);
		return 0;
	case FAULT_LOGIN:
		/* Logs in only if the session is public: once per reset among threads. */
		return token_login(t, s, f);
	default:
		/* The key handle: found again on the next try. */
		session_forget_handles(s);
		return 0;
	}
}

void token_fail(struct token *t, const struct session *s, enum token_fault fault, CK_RV rv)
{
	bool was_ready;

	pthread_mutex_lock(&t->lock);
	/* A call that hung through a recovery says nothing about the token now. */
	if (s && s->reset != t->reset) {
		pthread_mutex_unlock(&t->lock);
		return;
	}
	was_ready = t->fault == TOKEN_OK;
	/* A refused PIN is final; nothing else overrides it. */
	if (t->fault != FAULT_PIN) {
		t->fault = fault;
		t->fault_rv = rv;
	}
	if (was_ready) {
		t->attempts = 0;
		t->backoff_ms = TOKEN_BACKOFF_MIN_MS;
		t->next_check = token_now_ms() + TOKEN_BACKOFF_MIN_MS;
	}
	/* Signatures waiting for a session fail now rather than at the timeout. */
	pthread_cond_broadcast(&t->freed);
	pthread_mutex_unlock(&t->lock);
	if (fault == FAULT_PIN && was_ready)
		log_error("token %s: the token refused the PIN: not logging in again; its keys "
			  "stay unavailable until popsignd is restarted or reloaded", t->label);
	else if (was_ready)
		log_error("token %s: %s%s%s%s: its keys fail at once until it recovers; "
			  "recovering in the background", t->label, fault_name(fault),
			  rv != CKR_OK ? " (" : "", rv != CKR_OK ? ckr_name(rv) : "",
			  rv != CKR_OK ? ")" : "");
}

bool token_stuck_locked(const struct token *t, long long now)
{
	/* 9/10 of the timeout: by the time the front end gave up on a call and
	 * the next request arrives here, the call may have run a few ms less
	 * than the whole timeout, and that request must not join it. */
	long long limit = (long long)t->timeout_ms * 9 / 10;

	for (unsigned i = 0; i < t->n_sessions; i++)
		if (t->sessions[i].busy && now - t->sessions[i].busy_since > limit)
			return true;
	return false;
}

/* ---- probing a ready token ---- */

/* A real look at the token through a pooled session: the session is valid
 * and logged in (if we have a PIN), and the token is present. */
static int probe_session(struct token *t, struct session *s, struct p11_fail *f)
{
	CK_FUNCTION_LIST_PTR fl = t->mod->fl;
	CK_SESSION_INFO info;
	CK_TOKEN_INFO ti;
	CK_SLOT_ID slot;
	CK_RV rv;
	int r = session_prepare(t, s, f);

	if (r < 0)
		return r;
	rv = fl->C_GetSessionInfo(s->h, &info);
	if (rv != CKR_OK)
		return fail_token(f, "C_GetSessionInfo", rv);
	if (t->pin_known && info.state != CKS_RO_USER_FUNCTIONS &&
	    info.state != CKS_RW_USER_FUNCTIONS) {
		/* Logged out behind our back: no call failed, so none is counted. */
		f->call = "C_GetSessionInfo";
		f->rv = CKR_USER_NOT_LOGGED_IN;
		return PS_E_TOKEN;
	}
	pthread_mutex_lock(&t->lock);
	slot = t->slot;
	pthread_mutex_unlock(&t->lock);
	rv = fl->C_GetTokenInfo(slot, &ti);
	if (rv != CKR_OK)
		return fail_token(f, "C_GetTokenInfo", rv);
	return 0;
}

/* Probes t; a lost session or login is repaired at once, anything else
 * fails the token.  Skipped while every session is busy: signatures are
 * looking at the token then. */
static void token_probe(struct token *t)
{
	struct session *s = session_try_take(t);
	struct p11_fail f = { 0 };
	int r;

	if (!s)
		return;
	module_enter(t->mod);
	r = probe_session(t, s, &f);
	if (r == PS_E_TOKEN && f.call && fault_repairable(f.rv)) {
		log_warning("token %s: probe: " FAIL_FMT "; repairing", t->label, FAIL_ARGS(f));
		r = session_repair(t, s, f.rv, &f);
		if (r == 0) {
			f.call = NULL;
			r = probe_session(t, s, &f);
		}
	}
	module_leave(t->mod);
	if (r == PS_E_PIN)
		token_fail(t, s, FAULT_PIN, f.call ? f.rv : CKR_OK);
	else if (r < 0 && f.call)
		token_fail(t, s, fault_of(f.rv) != TOKEN_OK ? fault_of(f.rv) : FAULT_MODULE, f.rv);
	else if (r < 0)
		log_warning("token %s: probe: %s", t->label, ps_strerror(r));
	session_give(t, s);
}

/* ---- recovering a failed token ---- */

/* What one recovery attempt ended with. */
struct attempt {
	enum token_fault fault;
	struct p11_fail f;
	const char *what;           /* without a failed call: what went wrong */
};

static void attempt_failed(struct attempt *a, enum token_fault fault, const char *what)
{
	a->fault = fault;
	a->what = what;
}

/* Whether this attempt should start with C_Finalize + C_Initialize: the
 * module said it is not initialised, or lighter attempts failed and no
 * other token of the set needs the module meanwhile. */
static bool wants_reinit(struct token_set *set, struct token *t, enum token_fault fault,
			 unsigned attempts)
{
	if (fault == FAULT_UNINITIALIZED)
		return true;
	if (attempts < TOKEN_REINIT_AFTER || fault == FAULT_KEY)
		return false;
	for (struct token *o = set->tokens; o; o = o->next) {
		bool ready;

		if (o == t || o->mod != t->mod)
			continue;
		pthread_mutex_lock(&o->lock);
		ready = o->fault == TOKEN_OK;
		pthread_mutex_unlock(&o->lock);
		if (ready)
			return false;
	}
	return true;
}

/* Finds t again by its URI attributes: its slot may have changed. */
static int refind_slot(struct token *t, struct attempt *a)
{
	char label[33];
	CK_SLOT_ID slot = 0;
	unsigned long matches = 0;
	int r = slot_search(t->mod, &t->match, &slot, label, &matches, &a->f);

	if (r == PS_E_NOT_FOUND)
		attempt_failed(a, FAULT_ABSENT, "no slot holds the token");
	else if (r == PS_E_CONFIG)
		attempt_failed(a, FAULT_ABSENT, "several tokens match its uri");
	if (r < 0)
		return r;
	pthread_mutex_lock(&t->lock);
	if (t->slot != slot)
		log_info("token %s: now in slot %lu (was %lu)", t->label, (unsigned long)slot,
			 (unsigned long)t->slot);
	t->slot = slot;
	pthread_mutex_unlock(&t->lock);
	return 0;
}

/* Takes every free session and starts a new reset: sessions busy in a
 * signature (a hung one) are reopened when next used. */
static unsigned take_all(struct token *t, struct session **taken)
{
	unsigned n = 0;

	pthread_mutex_lock(&t->lock);
	for (unsigned i = 0; i < t->n_sessions; i++)
		if (!t->sessions[i].busy) {
			t->sessions[i].busy = true;
			t->sessions[i].busy_since = token_now_ms();
			taken[n++] = &t->sessions[i];
		}
	__atomic_add_fetch(&t->reset, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&t->lock);
	return n;
}

static void give_all(struct token *t, struct session **taken, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		session_give(t, taken[i]);
}

/* A test signature with k proves the key, the login and the session. */
static int test_sign(struct token_key *k, struct session *s, struct p11_fail *f)
{
	/* A SHA-256 DigestInfo of 32 zero bytes for RSA; the zero digest for EC. */
	static const uint8_t digest_info[51] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86,
						 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
						 0x00, 0x04, 0x20 };
	uint8_t sig[TOKEN_SIG_MAX];
	size_t len = 0;

	if (k->type == TOKEN_KEY_RSA)
		return sign_once(k, s, digest_info, sizeof(digest_info), sig, &len, f);
	return sign_once(k, s, digest_info + 19, 32, sig, &len, f);
}

/* Closes every session taken (the login goes with the last), opens them
 * again (the first one logs in), finds each key and signs with it. */
static int reopen_and_test(struct token_set *set, struct token *t, struct session **taken,
			   unsigned n, struct attempt *a)
{
	int r = 0;

	for (unsigned i = 0; i < n; i++)
		session_drop(t, taken[i]);
	for (unsigned i = 0; r == 0 && i < n; i++)
		r = session_prepare(t, taken[i], &a->f);
	for (struct token_key *k = set->keys; r == 0 && k; k = k->next)
		if (k->token == t)
			r = test_sign(k, taken[0], &a->f);
	if (r == PS_E_PIN)
		attempt_failed(a, FAULT_PIN, "the token refused the PIN");
	else if (r == PS_E_NOT_FOUND || r == PS_E_CONFIG)
		attempt_failed(a, FAULT_KEY, "a key is not on the token (or not once)");
	else if (r < 0 && !a->f.call)
		attempt_failed(a, FAULT_MODULE, ps_strerror(r));
	return r;
}

static int recover_in_module(struct token_set *set, struct token *t, struct attempt *a)
{
	/* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
	struct session **taken = calloc(t->n_sessions, sizeof(*taken));
	unsigned n;
	int r;

	if (!taken)
		return PS_E_NOMEM;
	r = refind_slot(t, a);
	n = r == 0 ? take_all(t, taken) : 0;
	if (r == 0 && n == 0) {
		attempt_failed(a, FAULT_MODULE, "every session is stuck in a call");
		r = PS_E_TOKEN;
	}
	if (r == 0)
		r = reopen_and_test(set, t, taken, n, a);
	give_all(t, taken, n);
	free(taken);
	return r;
}

/* Logs of attempts 1, 2, 4, 8, ... are enough to follow, and never a flood. */
static bool quiet(unsigned attempts)
{
	return (attempts & (attempts + 1)) != 0;
}

static int recover(struct token_set *set, struct token *t, enum token_fault fault,
		   unsigned attempts, struct attempt *a)
{
	int r;

	if (wants_reinit(set, t, fault, attempts)) {
		log_msg(quiet(attempts) ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO,
			"token %s: re-initialising module %s", t->label, t->mod->path);
		r = module_reinit(t->mod, &a->f);
		if (r == PS_E_TIMEOUT)
			attempt_failed(a, fault, "a call into the module is still running");
		if (r < 0 && r != PS_E_UNSUPPORTED)
			return r;
	}
	module_enter(t->mod);
	r = recover_in_module(set, t, a);
	module_leave(t->mod);
	return r;
}

static void recovered(struct token *t)
{
	pthread_mutex_lock(&t->lock);
	t->fault = TOKEN_OK;
	t->attempts = 0;
	t->backoff_ms = TOKEN_BACKOFF_MIN_MS;
	t->next_check = token_now_ms() + TOKEN_PROBE_MS;
	pthread_mutex_unlock(&t->lock);
	log_info("token %s: recovered: signing again", t->label);
}

static void not_recovered(struct token *t, const struct attempt *a)
{
	enum token_fault fault = a->fault;
	unsigned attempts;

	if (fault == TOKEN_OK)
		fault = a->f.call && fault_of(a->f.rv) != TOKEN_OK ? fault_of(a->f.rv) : FAULT_MODULE;
	pthread_mutex_lock(&t->lock);
	if (t->fault != FAULT_PIN) {
		t->fault = fault;
		t->fault_rv = a->f.call ? a->f.rv : CKR_OK;
	}
	attempts = t->attempts++;
	t->next_check = token_now_ms() + t->backoff_ms;
	t->backoff_ms = t->backoff_ms * 2 < TOKEN_BACKOFF_MAX_MS ? t->backoff_ms * 2
								: TOKEN_BACKOFF_MAX_MS;
	pthread_mutex_unlock(&t->lock);
	if (fault == FAULT_PIN)
		log_error("token %s: the token refused the PIN: not logging in again; its keys "
			  "stay unavailable until popsignd is restarted or reloaded", t->label);
	else if (quiet(attempts))
		return;
	else if (a->f.call)
		log_warning("token %s: still %s (attempt %u): " FAIL_FMT, t->label,
			    fault_name(fault), attempts + 1, FAIL_ARGS(a->f));
	else
		log_warning("token %s: still %s (attempt %u): %s", t->label, fault_name(fault),
			    attempts + 1, a->what ? a->what : "unknown");
}

static void token_recover(struct token_set *set, struct token *t)
{
	struct attempt a = { TOKEN_OK, { NULL, CKR_OK }, NULL };
	enum token_fault fault;
	unsigned attempts;

	pthread_mutex_lock(&t->lock);
	fault = t->fault;
	attempts = t->attempts;
	pthread_mutex_unlock(&t->lock);
	if (recover(set, t, fault, attempts, &a) == 0)
		recovered(t);
	else
		not_recovered(t, &a);
}

/* ---- the maintenance loop and status ---- */

/* Whether t is due for a probe or a recovery attempt; a probe's next time
 * is set here.  A refused PIN is never due. */
static bool token_due(struct token *t, enum token_fault *ret_fault, long long *next)
{
	long long now = token_now_ms();
	bool due;

	pthread_mutex_lock(&t->lock);
	*ret_fault = t->fault;
	due = t->fault != FAULT_PIN && t->next_check <= now;
	if (due && t->fault == TOKEN_OK)
		t->next_check = now + TOKEN_PROBE_MS;
	if (t->fault != FAULT_PIN && t->next_check < *next)
		*next = t->next_check;
	pthread_mutex_unlock(&t->lock);
	return due;
}

unsigned token_set_maintain(struct token_set *set)
{
	long long next = token_now_ms() + TOKEN_MAINTAIN_TICK_MS, wait;

	for (struct token *t = set->tokens; t; t = t->next) {
		enum token_fault fault;

		if (!token_due(t, &fault, &next))
			continue;
		if (fault == TOKEN_OK)
			token_probe(t);
		else
			token_recover(set, t);
	}
	/* Another token's attempt may have moved next; never spin, never oversleep. */
	wait = next - token_now_ms();
	return wait < 1 ? 1 : wait > TOKEN_MAINTAIN_TICK_MS ? TOKEN_MAINTAIN_TICK_MS : (unsigned)wait;
}

int token_key_state(const struct token_key *k, const char **ret_state)
{
	struct token *t = k->token;
	enum token_fault fault;
	bool stuck;

	pthread_mutex_lock(&t->lock);
	fault = t->fault;
	stuck = token_stuck_locked(t, token_now_ms());
	pthread_mutex_unlock(&t->lock);
	if (fault == TOKEN_OK && stuck) {
		*ret_state = "not responding";
		return PS_E_TOKEN;
	}
	*ret_state = fault_name(fault);
	return fault == TOKEN_OK ? 0 : fault == FAULT_PIN ? PS_E_PIN : PS_E_TOKEN;
}

unsigned token_set_sessions_in_use(struct token_set *set)
{
	unsigned n = 0;

	for (struct token *t = set->tokens; t; t = t->next) {
		pthread_mutex_lock(&t->lock);
		for (unsigned i = 0; i < t->n_sessions; i++)
			n += t->sessions[i].busy;
		pthread_mutex_unlock(&t->lock);
	}
	return n;
}
