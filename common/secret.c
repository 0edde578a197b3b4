#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "error.h"

static int open_checked(const char *path, size_t max, int *ret_fd)
{
	struct stat st;
	/* O_NONBLOCK: a FIFO must be refused, not waited on. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

	if (fd < 0)
		return errno == ENOENT ? PS_E_NOT_FOUND : errno == EACCES ? PS_E_PERMISSIONS : PS_E_IO;
	/* fstat on the open descriptor: no window between check and use. */
	if (fstat(fd, &st) < 0) {
		close(fd);
		return PS_E_IO;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return PS_E_INVALID_REQUEST;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		close(fd);
		return PS_E_PERMISSIONS;
	}
	if ((unsigned long long)st.st_size > max) {
		close(fd);
		return PS_E_TOO_LARGE;
	}
	*ret_fd = fd;
	return 0;
}

/* A zeroed secret with room for cap bytes, in locked memory. */
static struct secret *secret_alloc(size_t cap)
{
	struct secret *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->data = calloc(1, cap);
	if (!s->data) {
		free(s);
		return NULL;
	}
	s->cap = cap;
	/* Best effort: without CAP_IPC_LOCK a small mlock still fits RLIMIT_MEMLOCK. */
	(void)mlock(s->data, cap);
	(void)madvise(s->data, cap, MADV_DONTDUMP);
	return s;
}

struct secret *secret_new(const char *data, size_t len)
{
	struct secret *s = secret_alloc(len + 1);

	if (s && data && len > 0) {
		memcpy(s->data, data, len);
		s->len = len;
	}
	return s;
}

static int read_all(int fd, char *buf, size_t cap, size_t *ret_len)
{
	size_t len = 0;

	for (;;) {
		ssize_t n = read(fd, buf + len, cap - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return PS_E_IO;
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == cap)
			return PS_E_TOO_LARGE; /* the file grew after fstat */
	}
	*ret_len = len;
	return 0;
}

int secret_read_file(const char *path, struct secret **ret)
{
	return secret_read_file_max(path, SECRET_MAX_SIZE, ret);
}

int secret_read_file_max(const char *path, size_t max, struct secret **ret)
{
	struct secret *s = NULL;
	int fd = -1, r;
	size_t len = 0;

	r = open_checked(path, max, &fd);
	if (r < 0)
		return r;
	/* Room for the file, a byte to see one that grew, and a NUL. */
	s = secret_alloc(max + 2);
	if (!s) {
		r = PS_E_NOMEM;
		goto out;
	}
	r = read_all(fd, s->data, max + 1, &len);
	if (r < 0)
		goto out;
	if (len > 0 && s->data[len - 1] == '\n')
		len--;
	if (len > 0 && s->data[len - 1] == '\r')
		len--;
	s->data[len] = '\0';
	if (len == 0 || memchr(s->data, '\0', len)) {
		r = PS_E_INVALID_REQUEST;
		goto out;
	}
	s->len = len;
	*ret = s;
	s = NULL;
	r = 0;
out:
	secret_free(s);
	close(fd);
	return r;
}

void secret_free(struct secret *s)
{
	if (!s)
		return;
	if (s->data) {
		OPENSSL_cleanse(s->data, s->cap);
		(void)munlock(s->data, s->cap);
		free(s->data);
	}
	free(s);
}
