#include "jwt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "error.h"
#include "util.h"
#include "wipe.h"

static inline void bio_freep(BIO **b)
{
	BIO_free(*b);
}

/* Never prompts: an encrypted key fails to load instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

/* The whole file, checked like a secret file (regular, private, capped). */
static int read_private_file(const char *path, char **ret, size_t *ret_len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	struct stat st;
	char *buf;
	ssize_t n;

	if (fd < 0)
		return errno == ENOENT ? PS_E_NOT_FOUND : errno == EACCES ? PS_E_PERMISSIONS : PS_E_IO;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return PS_E_IO;
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		return PS_E_PERMISSIONS;
	if (st.st_size > JWT_PEM_FILE_MAX)
		return PS_E_TOO_LARGE;
	buf = calloc(1, JWT_PEM_FILE_MAX + 1);
	if (!buf)
		return PS_E_NOMEM;
	n = read(fd, buf, JWT_PEM_FILE_MAX + 1);
	if (n < 0 || n > JWT_PEM_FILE_MAX) {
		wipe_free(buf);
		return n < 0 ? PS_E_IO : PS_E_TOO_LARGE;
	}
	*ret = buf;
	*ret_len = (size_t)n;
	return 0;
}

/* The first certificate in pem whose public key is key's. */
static X509 *find_cert(const char *pem, size_t len, EVP_PKEY *key)
{
	_cleanup_(bio_freep) BIO *bio = BIO_new_mem_buf(pem, (int)len);
	X509 *cert;

	while (bio && (cert = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL))) {
		if (X509_check_private_key(cert, key) == 1)
			return cert;
		X509_free(cert);
	}
	return NULL;
}

int jwt_load_pem(const char *path, EVP_PKEY **ret_key, X509 **ret_cert)
{
	_cleanup_(bio_freep) BIO *bio = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	char *pem = NULL;
	size_t len = 0;
	int r;

	r = read_private_file(path, &pem, &len);
	if (r < 0)
		return r;
	r = PS_E_NOMEM;
	bio = BIO_new_mem_buf(pem, (int)len);
	if (!bio)
		goto out;
	key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	r = PS_E_INVALID_REQUEST;
	if (!key)
		goto out;
	r = PS_E_UNSUPPORTED;
	if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA)
		goto out;
	cert = find_cert(pem, len, key);
	r = cert ? 0 : PS_E_INVALID_REQUEST;
out:
	ERR_clear_error();
	OPENSSL_cleanse(pem, len);
	free(pem);
	if (r < 0) {
		EVP_PKEY_free(key);
		return r;
	}
	*ret_key = key;
	*ret_cert = cert;
	return 0;
}

int jwt_base64url(const unsigned char *data, size_t len, char **ret)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);
	size_t n;

	if (!out)
		return PS_E_NOMEM;
	n = (size_t)EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	while (n > 0 && out[n - 1] == '=')
		n--;
	out[n] = '\0';
	for (size_t i = 0; i < n; i++)
		out[i] = (char)(out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i]);
	*ret = out;
	return 0;
}

/* base64url of the compact JSON of doc. */
static int encode_json(json_t *doc, char **ret)
{
	_cleanup_free_ char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

	if (!text)
		return PS_E_NOMEM;
	return jwt_base64url((const unsigned char *)text, strlen(text), ret);
}

static int header_json(X509 *cert, char **ret)
{
	unsigned char sha1[20];
	unsigned int len = 0;
	_cleanup_free_ char *x5t = NULL;
	json_t *doc;
	int r;

	if (X509_digest(cert, EVP_sha1(), sha1, &len) != 1 || len != sizeof(sha1))
		return PS_E_CRYPTO;
	if (jwt_base64url(sha1, sizeof(sha1), &x5t) < 0)
		return PS_E_NOMEM;
	/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
	doc = json_pack("{s:s, s:s, s:s}", "alg", "RS256", "typ", "JWT", "x5t", x5t);
	r = encode_json(doc, ret);
	json_decref(doc);
	return r;
}

/* A random (version 4) UUID, so no two assertions share a jti. */
static int random_uuid(char out[37])
{
	unsigned char b[16];

	if (RAND_bytes(b, sizeof(b)) != 1)
		return PS_E_CRYPTO;
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
		 b[13], b[14], b[15]);
	return 0;
}

static int claims_json(const char *audience, const char *client_id, int64_t now, char **ret)
{
	char jti[37];
	json_t *doc;
	int r;

	if (random_uuid(jti) < 0)
		return PS_E_CRYPTO;
	doc = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", audience, "iss", client_id,
			"sub", client_id, "jti", jti, "nbf", (json_int_t)now, "iat",
			(json_int_t)now, "exp", (json_int_t)now + JWT_LIFETIME_S);
	r = encode_json(doc, ret);
	json_decref(doc);
	return r;
}

static int sign_rs256(EVP_PKEY *key, const char *input, unsigned char **ret, size_t *ret_len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char *sig = NULL;
	size_t len = 0;
	int r = PS_E_CRYPTO;

	if (!ctx)
		return PS_E_NOMEM;
	if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
	    EVP_DigestSign(ctx, NULL, &len, (const unsigned char *)input, strlen(input)) != 1)
		goto out;
	sig = malloc(len);
	if (!sig) {
		r = PS_E_NOMEM;
		goto out;
	}
	if (EVP_DigestSign(ctx, sig, &len, (const unsigned char *)input, strlen(input)) != 1)
		goto out;
	*ret = TAKE_PTR(sig);
	*ret_len = len;
	r = 0;
out:
	free(sig);
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return r;
}

int jwt_client_assertion(EVP_PKEY *key, X509 *cert, const char *audience, const char *client_id,
			 int64_t now, char **ret)
{
	_cleanup_free_ char *header = NULL, *claims = NULL, *input = NULL, *sig64 = NULL;
	_cleanup_free_ unsigned char *sig = NULL;
	size_t sig_len = 0;
	char *jwt;
	int r;

	r = header_json(cert, &header);
	if (r == 0)
		r = claims_json(audience, client_id, now, &claims);
	if (r < 0)
		return r; /* NOLINT(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
	if (asprintf(&input, "%s.%s", header, claims) < 0) {
		input = NULL;
		return PS_E_NOMEM;
	}
	/* NOLINTBEGIN(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
	r = sign_rs256(key, input, &sig, &sig_len);
	if (r == 0)
		r = jwt_base64url(sig, sig_len, &sig64);
	/* NOLINTEND(clang-analyzer-unix.Malloc) */
	if (r < 0)
		return r;
	if (asprintf(&jwt, "%s.%s", input, sig64) < 0)
		return PS_E_NOMEM;
	*ret = jwt;
	return 0;
}
