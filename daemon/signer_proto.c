#include "signer_proto.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "error.h"
#include "issue.h"

/* One datagram: the header, the payload and, if pass_fd >= 0, that
 * descriptor. */
static int send_msg(int fd, uint16_t type, uint32_t id, int32_t status, const void *payload,
		    size_t len, int pass_fd)
{
	struct signer_msg_header h = {SIGNER_PROTO_VERSION, type, id, status, (uint32_t)len};
	struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)(uintptr_t)payload, len}};
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
	struct {
		_Alignas(struct cmsghdr) char buf[CMSG_SPACE(sizeof(int))];
	} control;
	ssize_t n;

	if (len > SIGNER_MSG_MAX - sizeof(h))
		return PS_E_IO;
	if (pass_fd >= 0) {
		struct cmsghdr *c;

		memset(&control, 0, sizeof(control));
		mh.msg_control = control.buf;
		mh.msg_controllen = sizeof(control.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	do
		n = sendmsg(fd, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)(sizeof(h) + len) ? 0 : PS_E_IO;
}

int signer_msg_send(int fd, uint16_t type, uint32_t id, int32_t status, const void *payload,
		    size_t len)
{
	return send_msg(fd, type, id, status, payload, len, -1);
}

int signer_msg_send_fd(int fd, uint16_t type, uint32_t id, int32_t status, const void *payload,
		       size_t len, int pass_fd)
{
	return pass_fd >= 0 ? send_msg(fd, type, id, status, payload, len, pass_fd) : PS_E_IO;
}

static bool type_known(uint16_t type)
{
	return type >= SIGNER_MSG_HELLO && type <= SIGNER_MSG_CHANNEL;
}

/* Checks the framing of the n bytes that arrived in m. */
static int check_framing(const struct signer_msg *m, ssize_t n)
{
	if (n <= 0)
		return PS_E_IO;
	if ((size_t)n > sizeof(*m) || (size_t)n < sizeof(m->h))
		return PS_E_INVALID_REQUEST;
	if (m->h.version != SIGNER_PROTO_VERSION || !type_known(m->h.type) ||
	    m->h.len != (size_t)n - sizeof(m->h))
		return PS_E_INVALID_REQUEST;
	return 0;
}

int signer_msg_recv(int fd, struct signer_msg *m)
{
	ssize_t n;

	/* Descriptors nobody asked for are closed by the kernel (MSG_CTRUNC). */
	do
		n = recv(fd, m, sizeof(*m), MSG_TRUNC);
	while (n < 0 && errno == EINTR);
	return check_framing(m, n);
}

/* The descriptors that came with mh: closed, except the only one of a
 * single SCM_RIGHTS message, which goes to *ret_fd. */
static int take_fds(struct msghdr *mh, int *ret_fd)
{
	int fd = -1, extra = 0;

	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		size_t n;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int got;

			memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (fd < 0) {
				fd = got;
			} else {
				close(got);
				extra++;
			}
		}
	}
	if (fd < 0 || extra || (mh->msg_flags & MSG_CTRUNC)) {
		if (fd >= 0)
			close(fd);
		return PS_E_INVALID_REQUEST;
	}
	*ret_fd = fd;
	return 0;
}

int signer_msg_recv_fd(int fd, struct signer_msg *m, int *ret_fd)
{
	struct {
		_Alignas(struct cmsghdr) char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = {m, sizeof(*m)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			    .msg_controllen = sizeof(control.buf)};
	int passed = -1, r;
	ssize_t n;

	do
		n = recvmsg(fd, &mh, MSG_TRUNC | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return PS_E_IO;
	r = take_fds(&mh, &passed);
	if (r == 0)
		r = check_framing(m, n);
	if (r < 0) {
		if (passed >= 0)
			close(passed);
		return n == 0 ? PS_E_IO : r;
	}
	*ret_fd = passed;
	return 0;
}

/* Copies the next n bytes into out: 0, or PS_E_INVALID_REQUEST if fewer are left. */
static int read_fixed(struct signer_reader *r, void *out, size_t n)
{
	if (r->left < n)
		return PS_E_INVALID_REQUEST;
	memcpy(out, r->p, n);
	r->p += n;
	r->left -= n;
	return 0;
}

int signer_read_u8(struct signer_reader *r, uint8_t *ret)
{
	return read_fixed(r, ret, sizeof(*ret));
}

int signer_read_u16(struct signer_reader *r, uint16_t *ret)
{
	return read_fixed(r, ret, sizeof(*ret));
}

int signer_read_u32(struct signer_reader *r, uint32_t *ret)
{
	return read_fixed(r, ret, sizeof(*ret));
}

int signer_read_u64(struct signer_reader *r, uint64_t *ret)
{
	return read_fixed(r, ret, sizeof(*ret));
}

int signer_read_bytes(struct signer_reader *r, size_t n, const uint8_t **ret)
{
	if (r->left < n)
		return PS_E_INVALID_REQUEST;
	*ret = r->p;
	r->p += n;
	r->left -= n;
	return 0;
}

void signer_write_bytes(struct signer_writer *w, const void *p, size_t n)
{
	if (w->err)
		return;
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 256;
		uint8_t *d;

		while (cap < w->len + n)
			cap *= 2;
		d = realloc(w->data, cap);
		if (!d) {
			w->err = PS_E_NOMEM;
			return;
		}
		w->data = d;
		w->cap = cap;
	}
	memcpy(w->data + w->len, p, n);
	w->len += n;
}

void signer_write_u8(struct signer_writer *w, uint8_t v)
{
	signer_write_bytes(w, &v, sizeof(v));
}

void signer_write_u16(struct signer_writer *w, uint16_t v)
{
	signer_write_bytes(w, &v, sizeof(v));
}

void signer_write_u32(struct signer_writer *w, uint32_t v)
{
	signer_write_bytes(w, &v, sizeof(v));
}

void signer_write_u64(struct signer_writer *w, uint64_t v)
{
	signer_write_bytes(w, &v, sizeof(v));
}

/* ---- CHANNEL and ISSUE ---- */

int signer_encode_channel(struct signer_writer *w, uint16_t index, uint16_t count)
{
	signer_write_u16(w, index);
	signer_write_u16(w, count);
	return w->err;
}

int signer_decode_channel(const uint8_t *payload, size_t len, uint16_t *ret_index,
			  uint16_t *ret_count)
{
	struct signer_reader rd = {payload, len};
	uint16_t index = 0, count = 0;

	if (signer_read_u16(&rd, &index) < 0 || signer_read_u16(&rd, &count) < 0 ||
	    rd.left != 0 || index >= count || count > SIGNER_CHANNELS_MAX)
		return PS_E_INVALID_REQUEST;
	*ret_index = index;
	*ret_count = count;
	return 0;
}

/* Written in place: the request path allocates nothing for it. */
int signer_encode_issue(const struct signer_issue *is, uint8_t out[SIGNER_ISSUE_MAX],
			size_t *ret_len)
{
	uint16_t code_len = (uint16_t)is->code_len;
	uint8_t *p = out;

	if (is->code_len > CODE_MAX_LEN)
		return PS_E_INVALID_CODE;
	memcpy(p, &is->key, 2);
	memcpy(p + 2, &is->deadline_ms, 8);
	memcpy(p + 10, &code_len, 2);
	memcpy(p + 12, is->code, is->code_len);
	*ret_len = 12 + is->code_len;
	return 0;
}

int signer_decode_issue(const uint8_t *payload, size_t len, struct signer_issue *ret)
{
	struct signer_reader rd = {payload, len};
	const uint8_t *code = NULL;
	uint16_t key = 0, code_len = 0;
	uint64_t deadline = 0;

	if (signer_read_u16(&rd, &key) < 0 || signer_read_u64(&rd, &deadline) < 0 ||
	    signer_read_u16(&rd, &code_len) < 0 || code_len > CODE_MAX_LEN ||
	    signer_read_bytes(&rd, code_len, &code) < 0 || rd.left != 0)
		return PS_E_INVALID_REQUEST;
	ret->key = key;
	ret->deadline_ms = deadline;
	ret->code_len = code_len;
	memcpy(ret->code, code, code_len);
	ret->code[code_len] = '\0';
	return 0;
}

/* ---- PING and STATUS ---- */

int signer_encode_ping(struct signer_writer *w, uint32_t timeout_ms)
{
	signer_write_u16(w, SIGNER_PING_VERSION);
	signer_write_u32(w, timeout_ms);
	return w->err;
}

int signer_decode_ping(const uint8_t *payload, size_t len, uint32_t *ret_timeout_ms)
{
	struct signer_reader rd = {payload, len};
	uint16_t version = 0;
	uint32_t ms = 0;

	if (len == 0) {
		*ret_timeout_ms = 0;
		return 0;
	}
	if (signer_read_u16(&rd, &version) < 0 || version != SIGNER_PING_VERSION ||
	    signer_read_u32(&rd, &ms) < 0 || rd.left != 0)
		return PS_E_INVALID_REQUEST;
	*ret_timeout_ms = ms;
	return 0;
}

/* A short text: u8 length, bytes. */
static void write_text(struct signer_writer *w, const char *text, size_t max)
{
	size_t n = strnlen(text, max - 1);

	signer_write_u8(w, (uint8_t)n);
	signer_write_bytes(w, text, n);
}

static int read_text(struct signer_reader *rd, char *out, size_t max)
{
	const uint8_t *p = NULL;
	uint8_t n = 0;

	if (signer_read_u8(rd, &n) < 0 || n >= max || signer_read_bytes(rd, n, &p) < 0 ||
	    memchr(p, 0, n))
		return PS_E_INVALID_REQUEST;
	memcpy(out, p, n);
	out[n] = '\0';
	return 0;
}

int signer_encode_status(struct signer_writer *w, const struct signer_status *st)
{
	signer_write_u16(w, SIGNER_STATUS_VERSION);
	signer_write_u32(w, st->monitor_busy_ms);
	signer_write_u32(w, st->sessions_in_use);
	signer_write_u16(w, st->n_workers);
	for (size_t i = 0; i < st->n_workers; i++)
		signer_write_u32(w, st->worker_busy_ms[i]);
	signer_write_u16(w, st->n_keys);
	for (size_t i = 0; i < st->n_keys; i++) {
		signer_write_u8(w, st->keys[i].ready);
		write_text(w, st->keys[i].state, sizeof(st->keys[i].state));
	}
	signer_write_u16(w, st->n_errors);
	for (size_t i = 0; i < st->n_errors; i++) {
		write_text(w, st->errors[i].name, sizeof(st->errors[i].name));
		signer_write_u64(w, st->errors[i].count);
	}
	return w->err;
}

void signer_status_free(struct signer_status *st)
{
	if (!st)
		return;
	free(st->worker_busy_ms);
	free(st->keys);
	free(st->errors);
	free(st);
}

static int decode_workers(struct signer_reader *rd, struct signer_status *st)
{
	if (signer_read_u16(rd, &st->n_workers) < 0 || st->n_workers > SIGNER_WORKERS_MAX)
		return PS_E_INVALID_REQUEST;
	st->worker_busy_ms = calloc(st->n_workers + 1, sizeof(*st->worker_busy_ms));
	if (!st->worker_busy_ms)
		return PS_E_NOMEM;
	for (size_t i = 0; i < st->n_workers; i++)
		if (signer_read_u32(rd, &st->worker_busy_ms[i]) < 0)
			return PS_E_INVALID_REQUEST;
	return 0;
}

static int decode_keys(struct signer_reader *rd, struct signer_status *st)
{
	if (signer_read_u16(rd, &st->n_keys) < 0 || st->n_keys > SIGNER_KEYS_MAX)
		return PS_E_INVALID_REQUEST;
	st->keys = calloc(st->n_keys + 1, sizeof(*st->keys));
	if (!st->keys)
		return PS_E_NOMEM;
	for (size_t i = 0; i < st->n_keys; i++) {
		uint8_t ready = 0;

		if (signer_read_u8(rd, &ready) < 0 || ready > 1 ||
		    read_text(rd, st->keys[i].state, sizeof(st->keys[i].state)) < 0)
			return PS_E_INVALID_REQUEST;
		st->keys[i].ready = ready;
	}
	return 0;
}

static int decode_errors(struct signer_reader *rd, struct signer_status *st)
{
	if (signer_read_u16(rd, &st->n_errors) < 0 || st->n_errors > SIGNER_ERRORS_MAX)
		return PS_E_INVALID_REQUEST;
	st->errors = calloc(st->n_errors + 1, sizeof(*st->errors));
	if (!st->errors)
		return PS_E_NOMEM;
	for (size_t i = 0; i < st->n_errors; i++)
		if (read_text(rd, st->errors[i].name, sizeof(st->errors[i].name)) < 0 ||
		    st->errors[i].name[0] == '\0' ||
		    signer_read_u64(rd, &st->errors[i].count) < 0)
			return PS_E_INVALID_REQUEST;
	return 0;
}

int signer_decode_status(const uint8_t *payload, size_t len, struct signer_status **ret)
{
	struct signer_reader rd = {payload, len};
	struct signer_status *st = calloc(1, sizeof(*st));
	uint16_t version = 0;
	int r;

	if (!st)
		return PS_E_NOMEM;
	if (signer_read_u16(&rd, &version) < 0 || version != SIGNER_STATUS_VERSION ||
	    signer_read_u32(&rd, &st->monitor_busy_ms) < 0 ||
	    signer_read_u32(&rd, &st->sessions_in_use) < 0)
		r = PS_E_INVALID_REQUEST;
	else
		r = decode_workers(&rd, st);
	if (r == 0)
		r = decode_keys(&rd, st);
	if (r == 0)
		r = decode_errors(&rd, st);
	if (r == 0 && rd.left != 0)
		r = PS_E_INVALID_REQUEST;
	if (r < 0) {
		signer_status_free(st);
		return r;
	}
	*ret = st;
	return 0;
}

/* ---- ISSUED ---- */

int signer_encode_issued(struct signer_writer *w, const struct issued *c)
{
	int64_t nb = c->not_before, na = c->not_after;
	size_t pem_len = strlen(c->pem);

	signer_write_u32(w, (uint32_t)c->der_len);
	signer_write_bytes(w, c->der, c->der_len);
	signer_write_u32(w, (uint32_t)pem_len);
	signer_write_bytes(w, c->pem, pem_len);
	signer_write_bytes(w, c->serial_hex, sizeof(c->serial_hex) - 1);
	signer_write_bytes(w, c->sha256_fingerprint, sizeof(c->sha256_fingerprint) - 1);
	signer_write_bytes(w, &nb, sizeof(nb));
	signer_write_bytes(w, &na, sizeof(na));
	return w->err;
}

static int read_blob(struct signer_reader *rd, uint8_t **ret, size_t *ret_len)
{
	const uint8_t *p = NULL;
	uint32_t n = 0;
	uint8_t *copy;

	if (signer_read_u32(rd, &n) < 0 || signer_read_bytes(rd, n, &p) < 0)
		return PS_E_INVALID_REQUEST;
	copy = malloc((size_t)n + 1);
	if (!copy)
		return PS_E_NOMEM;
	memcpy(copy, p, n);
	copy[n] = '\0';
	*ret = copy;
	*ret_len = n;
	return 0;
}

static int read_fixed_text(struct signer_reader *rd, char *out, size_t n)
{
	const uint8_t *p = NULL;

	if (signer_read_bytes(rd, n, &p) < 0)
		return PS_E_INVALID_REQUEST;
	memcpy(out, p, n);
	out[n] = '\0';
	return strlen(out) == n ? 0 : PS_E_INVALID_REQUEST;
}

int signer_decode_issued(const uint8_t *payload, size_t len, struct issued **ret)
{
	struct signer_reader rd = {payload, len};
	struct issued *c = calloc(1, sizeof(*c));
	const uint8_t *t = NULL;
	int64_t nb = 0, na = 0;
	size_t pem_len = 0;
	int r;

	if (!c)
		return PS_E_NOMEM;
	r = read_blob(&rd, &c->der, &c->der_len);
	if (r == 0)
		r = read_blob(&rd, (uint8_t **)&c->pem, &pem_len);
	if (r == 0)
		r = read_fixed_text(&rd, c->serial_hex, sizeof(c->serial_hex) - 1);
	if (r == 0)
		r = read_fixed_text(&rd, c->sha256_fingerprint, sizeof(c->sha256_fingerprint) - 1);
	if (r == 0 && signer_read_bytes(&rd, sizeof(nb), &t) == 0)
		memcpy(&nb, t, sizeof(nb));
	else if (r == 0)
		r = PS_E_INVALID_REQUEST;
	if (r == 0 && signer_read_bytes(&rd, sizeof(na), &t) == 0 && rd.left == 0)
		memcpy(&na, t, sizeof(na));
	else if (r == 0)
		r = PS_E_INVALID_REQUEST;
	if (r < 0 || c->der_len == 0 || strlen(c->pem) != pem_len) {
		issued_free(c);
		return r < 0 ? r : PS_E_INVALID_REQUEST;
	}
	c->not_before = (time_t)nb;
	c->not_after = (time_t)na;
	*ret = c;
	return 0;
}
