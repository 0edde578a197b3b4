/* Inside the token module: what token.c (modules, sessions, logins,
 * signatures), token_health.c (faults, probes, recovery) and token_ckr.c
 * (CKR_ names and error counters) share.  No other file includes this: the
 * PKCS#11 headers stay inside token*.c.
 *
 * Locking, outermost first:
 *   module.use (read)   held by every thread while it calls into the module;
 *                       taken for writing only to re-initialise it
 *   token.login_lock    around C_GetSessionInfo + C_Login
 *   token.lock          session busy flags, the token's state; never held
 *                       across a call into the module
 * A session is owned by the thread that took it (busy) until it gives it
 * back, so its fields need no lock. */
#ifndef POPSIGN_TOKEN_INTERNAL_H
#define POPSIGN_TOKEN_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>

#include <p11-kit/pkcs11.h>

#include "secret.h"
#include "token.h"

#define TOKEN_PROBE_MS 2000         /* a ready token is probed this often */
#define TOKEN_BACKOFF_MIN_MS 250    /* first recovery attempt after a fault */
#define TOKEN_BACKOFF_MAX_MS 5000   /* later attempts double up to this */
#define TOKEN_REINIT_AFTER 2        /* failed attempts before C_Finalize + C_Initialize */
#define TOKEN_REINIT_WAIT_MS 1000   /* how long a re-initialisation waits for callers */
#define TOKEN_TIMEOUT_DEFAULT_MS 5000

/* The failing C_* call a helper saw, for the deciding code to log. */
struct p11_fail {
	const char *call;
	CK_RV rv;
};

#define FAIL_FMT "%s: %s (0x%lx)"
#define FAIL_ARGS(f) (f).call, ckr_name((f).rv), (unsigned long)(f).rv

struct module {
	char *path;                 /* canonical */
	void *dl;
	CK_FUNCTION_LIST_PTR fl;
	bool initialized_here;      /* false: someone else in the process did; never finalise */
	unsigned refs;              /* token sets using it (modules_lock) */
	pthread_rwlock_t use;
	unsigned epoch;             /* bumped by each re-initialisation (under use, write) */
	struct module *next;
};

struct session {
	CK_SESSION_HANDLE h;        /* CK_INVALID_HANDLE: (re)open before use */
	unsigned epoch;             /* module epoch h belongs to: older handles mean nothing */
	unsigned reset;             /* token reset h was opened in: older ones are reopened */
	unsigned login_gen;         /* token login the cached key handles were found under */
	CK_OBJECT_HANDLE *keys;     /* by token_key.index; CK_INVALID_HANDLE: not found yet */
	size_t n_keys;
	bool busy;
	long long busy_since;       /* monotonic ms, while busy */
};

/* Why a token cannot sign; TOKEN_OK: it can. */
enum token_fault {
	TOKEN_OK = 0,
	FAULT_ABSENT,               /* device removed, token not present, slot gone */
	FAULT_LOGIN,                /* logged out and not logged in again yet */
	FAULT_SESSION,              /* sessions lost and not reopened yet */
	FAULT_DEVICE,               /* CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY */
	FAULT_MODULE,               /* CKR_GENERAL_ERROR and other module failures */
	FAULT_UNINITIALIZED,        /* CKR_CRYPTOKI_NOT_INITIALIZED */
	FAULT_KEY,                  /* a key of the token is not on it any more */
	FAULT_PIN,                  /* the token refused the PIN: final */
};

/* The URI attributes that chose the token: it is found again by them,
 * because its slot id can change while it is away. */
struct token_match {
	char *label, *serial, *manufacturer, *model; /* NULL: any */
};

struct token {
	struct module *mod;
	struct token_match match;
	char label[33];             /* for log lines */

	pthread_mutex_t lock;       /* everything up to login_lock */
	pthread_cond_t freed;       /* a session was given back, or the token failed */
	CK_SLOT_ID slot;
	struct session *sessions;
	unsigned n_sessions;
	unsigned n_keys;
	unsigned timeout_ms;        /* a call running longer (9/10 of it) makes the token "not responding" */
	enum token_fault fault;
	CK_RV fault_rv;             /* the code behind fault, for log lines */
	unsigned reset;             /* recoveries so far (atomic reads outside lock) */
	long long next_check;       /* monotonic ms: next probe or recovery attempt */
	unsigned backoff_ms;
	unsigned attempts;          /* failed recovery attempts since the fault */

	/* Taken only while holding a session, never the other way round. */
	pthread_mutex_t login_lock;
	struct secret *pin;         /* NULL: none known (yet) */
	bool pin_known;             /* a PIN was given (set before any thread runs) */
	bool pin_refused;           /* the token refused it once: never try again */
	unsigned login_gen;         /* successful C_Login calls (atomic reads outside lock) */

	struct token *next;
};

struct token_key {
	struct token *token;
	unsigned index;             /* slot in each session's handle cache */
	enum token_key_type type;
	char *name;                 /* "token/object" for log lines */
	char *label;                /* as the URI names it */
	uint8_t id[KEY_URI_ID_MAX];
	size_t id_len;
	uint8_t *obj_id;            /* as the token holds it: finds the certificate */
	size_t obj_id_len;
	char *obj_label;
	struct token_key *next;
};

struct token_set {
	unsigned n_sessions;
	unsigned timeout_ms;
	struct module **modules;
	size_t n_modules;
	struct token *tokens;
	struct token_key *keys;
};

/* ---- token_ckr.c ---- */

/* "CKR_DEVICE_REMOVED" for CKR_DEVICE_REMOVED, "CKR_(unknown)" otherwise. */
const char *ckr_name(CK_RV rv);

/* Counts one failed call that returned rv (lock-free). */
void ckr_count(CK_RV rv);

/* Records the failing call in f, counts it, and returns PS_E_TOKEN. */
int fail_token(struct p11_fail *f, const char *call, CK_RV rv);

/* ---- token.c ---- */

long long token_now_ms(void);

/* The loaded module at canonical path canon (loaded and initialised on
 * first use, then reference-counted), and its release. */
int module_acquire(const char *canon, struct module **ret);
void module_release(struct module *m);

/* Whether another token set holds m too. */
bool module_shared(struct module *m);

/* Brackets every use of m's functions (see the locking order above). */
void module_enter(struct module *m);
void module_leave(struct module *m);

/* C_Finalize + C_Initialize: every session and object handle of every token
 * on m is void afterwards (the epoch moves on).  Waits at most
 * TOKEN_REINIT_WAIT_MS for calls in progress; the caller must not be inside
 * m.  Returns 0, PS_E_TIMEOUT (a call into m is still running),
 * PS_E_UNSUPPORTED (someone else initialised m) or PS_E_TOKEN (f). */
int module_reinit(struct module *m, struct p11_fail *f);

/* A free session for a signature.  Fails at once (PS_E_TOKEN) while the
 * token is failed or stuck in a call, and waits at most its timeout for a
 * free session. */
int session_take(struct token *t, struct session **ret);

/* A free session whatever the token's state, or NULL if all are busy. */
struct session *session_try_take(struct token *t);
void session_give(struct token *t, struct session *s);

/* Makes s usable inside m: reopens it if it is closed or from before a
 * reset or re-initialisation (logging in if it comes back public), and
 * forgets key handles found under an older login. */
int session_prepare(struct token *t, struct session *s, struct p11_fail *f);

/* Forgets the key handles found in s: they are searched for again. */
void session_forget_handles(struct session *s);

/* Closes s (unless its handle is from an older epoch) and forgets it. */
void session_drop(struct token *t, struct session *s);

/* Logs in through s unless logged in already, no PIN is known, or the PIN
 * was refused before (PS_E_PIN).  A refused PIN is wiped. */
int token_login(struct token *t, struct session *s, struct p11_fail *f);

struct object_query {
	CK_OBJECT_CLASS class;
	const char *label; /* NULL: any */
	const uint8_t *id;
	size_t id_len; /* 0: any */
};

/* Finds the one object q names.  Returns 0 and *ret, PS_E_NOT_FOUND (none),
 * PS_E_CONFIG (more than one) or PS_E_TOKEN (f says which call failed). */
int find_object(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE h, const struct object_query *q,
		CK_OBJECT_HANDLE *ret, struct p11_fail *f);

/* Reads attribute type of obj into a new NUL-terminated buffer (caller
 * frees).  PS_E_TOKEN (f), PS_E_NOMEM. */
int get_attr_alloc(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj,
		   CK_ATTRIBUTE_TYPE type, uint8_t **ret, size_t *ret_len, struct p11_fail *f);

/* The handle of k in s: cached, or found once and cached.  PS_E_NOT_FOUND,
 * PS_E_CONFIG (ambiguous), PS_E_TOKEN (f). */
int key_handle(struct token_key *k, struct session *s, CK_OBJECT_HANDLE *ret,
	       struct p11_fail *f);

/* One C_SignInit + C_Sign with k in a prepared session s. */
int sign_once(struct token_key *k, struct session *s, const uint8_t *in, size_t inlen,
	      uint8_t *sig, size_t *siglen, struct p11_fail *f);

/* ---- token_set.c ---- */

/* The one slot of m whose token matches want, and its trimmed label.
 * Quiet: PS_E_NOT_FOUND (none), PS_E_CONFIG (*ret_matches > 1 match), or
 * PS_E_TOKEN (a call failed: f). */
int slot_search(struct module *m, const struct token_match *want, CK_SLOT_ID *ret,
		char label[33], unsigned long *ret_matches, struct p11_fail *f);

/* ---- token_health.c ---- */

/* The fault a failed call's code means, or TOKEN_OK for a code that says
 * nothing about the token (e.g. CKR_DATA_LEN_RANGE). */
enum token_fault fault_of(CK_RV rv);

/* Whether rv is cured in place: a new session (session lost), a new login
 * (logged out) or finding the key's handle again. */
bool fault_repairable(CK_RV rv);

/* Makes s fit for one more try after rv (fault_repairable(rv)). */
int session_repair(struct token *t, struct session *s, CK_RV rv, struct p11_fail *f);

/* Marks t failed (fault, rv): signatures fail at once and the maintenance
 * thread starts recovering it.  Logs the change from ready.  Ignored if s
 * (the session the failure came from; may be NULL) is from before the last
 * recovery: a call that hung through it says nothing about the token now. */
void token_fail(struct token *t, const struct session *s, enum token_fault fault, CK_RV rv);

/* Whether a call into t has been running longer than its timeout.  Caller
 * holds t->lock. */
bool token_stuck_locked(const struct token *t, long long now);

#endif
