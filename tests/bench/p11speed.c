/* p11speed: the token's own signing limit, the ceiling popsignd is measured
 * against.
 *
 *   p11speed MODULE TOKEN_LABEL PIN_FILE KEY_LABEL SECONDS THREADS...
 *
 * For each THREADS count, that many threads each open their own session,
 * find the private key's handle once and then run C_SignInit + C_Sign for
 * SECONDS, with the mechanism popsignd uses: CKM_ECDSA over a 32-byte digest
 * for EC keys, CKM_RSA_PKCS over a SHA-256 DigestInfo for RSA keys.  One line
 * per count on stdout:
 *
 *   P11SPEED key=ec256 type=EC threads=2 signatures=28012 seconds=2.000 per_second=14006.0
 *
 * Exit status 0, or 1 with a message on stderr naming the failed call. */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#define MAX_THREADS 64
#define PIN_MAX 256

/* SHA-256 DigestInfo prefix (RFC 8017, section 9.2, note 1). */
static const uint8_t sha256_prefix[19] = {
	0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
	0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
};

struct bench {
	CK_FUNCTION_LIST_PTR p11;
	CK_SLOT_ID slot;
	const char *key_label;
	double seconds;
	pthread_barrier_t start;
};

struct worker {
	struct bench *b;
	pthread_t thread;
	uint64_t count;
	CK_KEY_TYPE key_type;
	CK_RV rv;
	const char *failed_call;
	double elapsed;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(const char *call, CK_RV rv)
{
	fprintf(stderr, "p11speed: %s failed: CK_RV 0x%08lx\n", call, (unsigned long)rv);
	return 1;
}

/* Reads the PIN, trailing newline trimmed.  Returns 0 or 1. */
static int read_pin(const char *path, char pin[PIN_MAX])
{
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f) {
		fprintf(stderr, "p11speed: %s: %s\n", path, strerror(errno));
		return 1;
	}
	n = fread(pin, 1, PIN_MAX - 1, f);
	fclose(f);
	while (n > 0 && (pin[n - 1] == '\n' || pin[n - 1] == '\r'))
		n--;
	pin[n] = '\0';
	return 0;
}

/* dlopen()s the module and initialises it with OS locking, which SoftHSM2
 * needs to keep its own locks on. */
static int module_load(const char *path, CK_FUNCTION_LIST_PTR *ret)
{
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR p11;
	void *handle;
	CK_RV rv;

	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!handle) {
		fprintf(stderr, "p11speed: dlopen %s: %s\n", path, dlerror());
		return 1;
	}
	get = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
	if (!get)
		return fail("dlsym C_GetFunctionList", CKR_GENERAL_ERROR);
	rv = get(&p11);
	if (rv != CKR_OK)
		return fail("C_GetFunctionList", rv);
	rv = p11->C_Initialize(&args);
	if (rv != CKR_OK)
		return fail("C_Initialize", rv);
	*ret = p11;
	return 0;
}

/* The slot whose token label (blank padded to 32 bytes) is label. */
static int slot_find(CK_FUNCTION_LIST_PTR p11, const char *label, CK_SLOT_ID *ret)
{
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64;
	CK_TOKEN_INFO info;
	char want[32];
	size_t len = strlen(label);
	CK_RV rv;

	if (len > sizeof(want))
		return fail("token label too long", CKR_ARGUMENTS_BAD);
	memset(want, ' ', sizeof(want));
	memcpy(want, label, len);
	rv = p11->C_GetSlotList(CK_TRUE, slots, &n);
	if (rv != CKR_OK)
		return fail("C_GetSlotList", rv);
	for (CK_ULONG i = 0; i < n; i++) {
		if (p11->C_GetTokenInfo(slots[i], &info) != CKR_OK)
			continue;
		if (memcmp(info.label, want, sizeof(want)) == 0) {
			*ret = slots[i];
			return 0;
		}
	}
	fprintf(stderr, "p11speed: no token labelled %s\n", label);
	return 1;
}

/* The private key labelled label in session s, and its type. */
/* NOLINTBEGIN(readability-non-const-parameter): C_GetAttributeValue() writes *ret_type */
static CK_RV key_find(CK_FUNCTION_LIST_PTR p11, CK_SESSION_HANDLE s, const char *label,
		      CK_OBJECT_HANDLE *ret, CK_KEY_TYPE *ret_type)
/* NOLINTEND(readability-non-const-parameter) */
{
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE tmpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_LABEL, (void *)label, strlen(label) },
	};
	CK_ATTRIBUTE type = { CKA_KEY_TYPE, ret_type, sizeof(*ret_type) };
	CK_ULONG found = 0;
	CK_RV rv;

	rv = p11->C_FindObjectsInit(s, tmpl, 2);
	if (rv != CKR_OK)
		return rv;
	rv = p11->C_FindObjects(s, ret, 1, &found);
	p11->C_FindObjectsFinal(s);
	if (rv != CKR_OK)
		return rv;
	if (found != 1)
		return CKR_KEY_HANDLE_INVALID;
	return p11->C_GetAttributeValue(s, *ret, &type, 1);
}

/* The input popsignd hands the token: a digest for EC, a DigestInfo for
 * RSA.  The content does not matter to the speed; the length and mechanism
 * do. */
static void sign_input(CK_KEY_TYPE type, CK_MECHANISM *mech, uint8_t in[51], CK_ULONG *inlen)
{
	memset(in, 0x5a, 51);
	if (type == CKK_RSA) {
		mech->mechanism = CKM_RSA_PKCS;
		memcpy(in, sha256_prefix, sizeof(sha256_prefix));
		*inlen = 51;
	} else {
		mech->mechanism = CKM_ECDSA;
		*inlen = 32;
	}
}

/* C_SignInit + C_Sign until the deadline; counts signatures. */
static void sign_loop(struct worker *w, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
	CK_FUNCTION_LIST_PTR p11 = w->b->p11;
	CK_MECHANISM mech = { 0, NULL, 0 };
	uint8_t in[51], sig[1024];
	CK_ULONG inlen, siglen;
	double start, deadline;

	sign_input(w->key_type, &mech, in, &inlen);
	start = now();
	deadline = start + w->b->seconds;
	do {
		in[inlen - 1] = (uint8_t)w->count;
		w->rv = p11->C_SignInit(s, &mech, key);
		if (w->rv != CKR_OK) {
			w->failed_call = "C_SignInit";
			return;
		}
		siglen = sizeof(sig);
		w->rv = p11->C_Sign(s, in, inlen, sig, &siglen);
		if (w->rv != CKR_OK) {
			w->failed_call = "C_Sign";
			return;
		}
		w->count++;
	} while (now() < deadline);
	w->elapsed = now() - start;
}

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	CK_FUNCTION_LIST_PTR p11 = w->b->p11;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;

	w->rv = p11->C_OpenSession(w->b->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
	if (w->rv != CKR_OK)
		w->failed_call = "C_OpenSession";
	else {
		w->rv = key_find(p11, s, w->b->key_label, &key, &w->key_type);
		if (w->rv != CKR_OK)
			w->failed_call = "finding the key";
	}
	/* Everyone waits here, so session set-up is not timed. */
	pthread_barrier_wait(&w->b->start);
	if (!w->failed_call)
		sign_loop(w, s, key);
	if (s != CK_INVALID_HANDLE)
		p11->C_CloseSession(s);
	return NULL;
}

/* Runs n threads once and prints their total rate. */
static int run_threads(struct bench *b, unsigned n)
{
	struct worker w[MAX_THREADS];
	uint64_t total = 0;
	double elapsed = 0;
	int r = 0;

	memset(w, 0, sizeof(w));
	pthread_barrier_init(&b->start, NULL, n);
	for (unsigned i = 0; i < n; i++) {
		w[i].b = b;
		if (pthread_create(&w[i].thread, NULL, worker_run, &w[i]) != 0) {
			fprintf(stderr, "p11speed: pthread_create failed\n");
			exit(1);
		}
	}
	for (unsigned i = 0; i < n; i++) {
		pthread_join(w[i].thread, NULL);
		if (w[i].failed_call && r == 0)
			r = fail(w[i].failed_call, w[i].rv);
		total += w[i].count;
		if (w[i].elapsed > elapsed)
			elapsed = w[i].elapsed;
	}
	pthread_barrier_destroy(&b->start);
	if (r == 0)
		printf("P11SPEED key=%s type=%s threads=%u signatures=%" PRIu64
		       " seconds=%.3f per_second=%.1f\n", b->key_label,
		       w[0].key_type == CKK_RSA ? "RSA" : "EC", n, total, elapsed,
		       (double)total / elapsed);
	fflush(stdout);
	return r;
}

static int parse_args(int argc, char **argv, struct bench *b, unsigned *threads, unsigned *n)
{
	char *end;

	if (argc < 7) {
		fprintf(stderr, "usage: p11speed MODULE TOKEN_LABEL PIN_FILE KEY_LABEL "
			"SECONDS THREADS...\n");
		return 1;
	}
	b->key_label = argv[4];
	errno = 0;
	b->seconds = strtod(argv[5], &end);
	if (errno || *end || !(b->seconds > 0 && b->seconds <= 600)) {
		fprintf(stderr, "p11speed: bad SECONDS %s\n", argv[5]);
		return 1;
	}
	*n = 0;
	for (int i = 6; i < argc && *n < MAX_THREADS; i++) {
		unsigned long t = strtoul(argv[i], &end, 10);
		if (*end || t < 1 || t > MAX_THREADS) {
			fprintf(stderr, "p11speed: bad THREADS %s\n", argv[i]);
			return 1;
		}
		threads[(*n)++] = (unsigned)t;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct bench b = { 0 };
	unsigned threads[MAX_THREADS], n;
	char pin[PIN_MAX];
	CK_SESSION_HANDLE login;
	CK_RV rv;

	if (parse_args(argc, argv, &b, threads, &n) || read_pin(argv[3], pin) ||
	    module_load(argv[1], &b.p11) || slot_find(b.p11, argv[2], &b.slot))
		return 1;
	/* A login belongs to the token, so every later session is logged in;
	 * this one stays open to keep it so. */
	rv = b.p11->C_OpenSession(b.slot, CKF_SERIAL_SESSION, NULL, NULL, &login);
	if (rv != CKR_OK)
		return fail("C_OpenSession", rv);
	rv = b.p11->C_Login(login, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
	memset(pin, 0, sizeof(pin));
	if (rv != CKR_OK)
		return fail("C_Login", rv);
	for (unsigned i = 0; i < n; i++)
		if (run_threads(&b, threads[i]))
			return 1;
	b.p11->C_Logout(login);
	b.p11->C_CloseSession(login);
	b.p11->C_Finalize(NULL);
	return 0;
}
