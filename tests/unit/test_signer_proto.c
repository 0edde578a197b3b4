/* signer_proto.c: PING, STATUS, CHANNEL and ISSUE payloads round-trip, and
 * every malformed payload is refused (each truncation, trailing bytes, wrong
 * versions, counts over the limits, NUL bytes and overlong texts); messages
 * carry exactly one descriptor when one is expected, and nothing leaks when
 * they carry the wrong number. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "signer_proto.h"
#include "check_run.h"

static uint32_t workers[3] = { 0, 1500, 70000 };
static struct signer_key_status keys[2] = { { true, "ready" }, { false, "token not present" } };
static struct signer_error_count errors[2] = { { "CKR_DEVICE_REMOVED", 3 },
					       { "CKR_(unknown)", 1ULL << 40 } };

static struct signer_writer encoded_status(void)
{
	struct signer_status st = { 12, 2, 3, workers, 2, keys, 2, errors };
	struct signer_writer w = { 0 };

	ck_assert_int_eq(signer_encode_status(&w, &st), 0);
	return w;
}

START_TEST(ping_round_trip)
{
	struct signer_writer w = { 0 };
	uint32_t ms = 1;

	ck_assert_int_eq(signer_encode_ping(&w, 2500), 0);
	ck_assert_int_eq(signer_decode_ping(w.data, w.len, &ms), 0);
	ck_assert_uint_eq(ms, 2500);
	/* An empty PING keeps the timeout. */
	ck_assert_int_eq(signer_decode_ping(NULL, 0, &ms), 0);
	ck_assert_uint_eq(ms, 0);
	for (size_t n = 1; n < w.len; n++)
		ck_assert_int_eq(signer_decode_ping(w.data, n, &ms), PS_E_INVALID_REQUEST);
	w.data[0] = 2; /* version */
	ck_assert_int_eq(signer_decode_ping(w.data, w.len, &ms), PS_E_INVALID_REQUEST);
	free(w.data);
}
END_TEST

START_TEST(status_round_trip)
{
	struct signer_writer w = encoded_status();
	struct signer_status *st = NULL;

	ck_assert_int_eq(signer_decode_status(w.data, w.len, &st), 0);
	ck_assert_uint_eq(st->monitor_busy_ms, 12);
	ck_assert_uint_eq(st->sessions_in_use, 2);
	ck_assert_uint_eq(st->n_workers, 3);
	ck_assert_uint_eq(st->worker_busy_ms[2], 70000);
	ck_assert_uint_eq(st->n_keys, 2);
	ck_assert(st->keys[0].ready);
	ck_assert_str_eq(st->keys[0].state, "ready");
	ck_assert(!st->keys[1].ready);
	ck_assert_str_eq(st->keys[1].state, "token not present");
	ck_assert_uint_eq(st->n_errors, 2);
	ck_assert_str_eq(st->errors[0].name, "CKR_DEVICE_REMOVED");
	ck_assert_uint_eq(st->errors[0].count, 3);
	ck_assert_uint_eq(st->errors[1].count, 1ULL << 40);
	signer_status_free(st);
	signer_status_free(NULL);
	free(w.data);
}
END_TEST

START_TEST(status_truncated_or_padded)
{
	struct signer_writer w = encoded_status();
	struct signer_status *st = (struct signer_status *)0x1;
	uint8_t *longer = malloc(w.len + 1);

	for (size_t n = 0; n < w.len; n++)
		ck_assert_int_eq(signer_decode_status(w.data, n, &st), PS_E_INVALID_REQUEST);
	memcpy(longer, w.data, w.len);
	longer[w.len] = 0;
	ck_assert_int_eq(signer_decode_status(longer, w.len + 1, &st), PS_E_INVALID_REQUEST);
	ck_assert_ptr_eq(st, (struct signer_status *)0x1);
	free(longer);
	free(w.data);
}
END_TEST

/* Byte offsets in the encoding of encoded_status(). */
#define OFF_VERSION 0
#define OFF_WORKERS 10
#define OFF_KEYS (OFF_WORKERS + 2 + 3 * 4)
#define OFF_KEY0_READY (OFF_KEYS + 2)
#define OFF_KEY0_TEXT (OFF_KEY0_READY + 2)

static void refused_after(size_t off, const void *bytes, size_t n)
{
	struct signer_writer w = encoded_status();
	struct signer_status *st = NULL;

	memcpy(w.data + off, bytes, n);
	ck_assert_int_eq(signer_decode_status(w.data, w.len, &st), PS_E_INVALID_REQUEST);
	ck_assert_ptr_null(st);
	free(w.data);
}

START_TEST(status_malformed_fields)
{
	uint16_t v2 = 2, many = SIGNER_KEYS_MAX + 1, too_many_workers = SIGNER_WORKERS_MAX + 1;
	uint8_t two = 2, nul = 0, long_text = SIGNER_STATE_MAX;

	refused_after(OFF_VERSION, &v2, sizeof(v2));
	refused_after(OFF_WORKERS, &too_many_workers, sizeof(too_many_workers));
	refused_after(OFF_KEYS, &many, sizeof(many));
	refused_after(OFF_KEY0_READY, &two, 1);                  /* ready is 0 or 1 */
	refused_after(OFF_KEY0_TEXT, &nul, 1);                   /* "\0eady" */
	refused_after(OFF_KEY0_READY + 1, &long_text, 1);        /* no room for the NUL */
}
END_TEST

START_TEST(status_texts_cut_to_fit)
{
	struct signer_key_status k = { true, "" };
	struct signer_status st = { 0, 0, 0, NULL, 1, &k, 0, NULL };
	struct signer_writer w = { 0 };
	struct signer_status *out = NULL;

	memset(k.state, 'x', sizeof(k.state)); /* no NUL: the encoder stops at the size */
	ck_assert_int_eq(signer_encode_status(&w, &st), 0);
	ck_assert_int_eq(signer_decode_status(w.data, w.len, &out), 0);
	ck_assert_uint_eq(strlen(out->keys[0].state), SIGNER_STATE_MAX - 1);
	signer_status_free(out);
	free(w.data);
}
END_TEST

static struct signer_issue sample_issue(void)
{
	struct signer_issue is = { .key = 3, .deadline_ms = 1ULL << 40, .code_len = 48 };

	memset(is.code, 'A', is.code_len);
	return is;
}

START_TEST(issue_round_trip)
{
	struct signer_issue is = sample_issue(), out;
	uint8_t buf[SIGNER_ISSUE_MAX], longer[SIGNER_ISSUE_MAX + 1];
	size_t len = 0;

	ck_assert_int_eq(signer_encode_issue(&is, buf, &len), 0);
	ck_assert_uint_eq(len, 12 + 48);
	memset(&out, 0x55, sizeof(out));
	ck_assert_int_eq(signer_decode_issue(buf, len, &out), 0);
	ck_assert_uint_eq(out.key, 3);
	ck_assert_uint_eq(out.deadline_ms, 1ULL << 40);
	ck_assert_uint_eq(out.code_len, 48);
	ck_assert_str_eq(out.code, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
	for (size_t n = 0; n < len; n++)
		ck_assert_int_eq(signer_decode_issue(buf, n, &out), PS_E_INVALID_REQUEST);
	memcpy(longer, buf, len);
	longer[len] = 'A';
	ck_assert_int_eq(signer_decode_issue(longer, len + 1, &out), PS_E_INVALID_REQUEST);
}
END_TEST

START_TEST(issue_code_bounded)
{
	struct signer_issue is = sample_issue(), out = sample_issue();
	uint8_t buf[SIGNER_ISSUE_MAX + 1];
	uint16_t too_long = CODE_MAX_LEN + 1;
	size_t len = 0;

	is.code_len = CODE_MAX_LEN;
	memset(is.code, 'B', CODE_MAX_LEN);
	ck_assert_int_eq(signer_encode_issue(&is, buf, &len), 0);
	ck_assert_uint_eq(len, SIGNER_ISSUE_MAX);
	ck_assert_int_eq(signer_decode_issue(buf, len, &out), 0);
	ck_assert_uint_eq(strlen(out.code), CODE_MAX_LEN);
	is.code_len = CODE_MAX_LEN + 1;
	ck_assert_int_eq(signer_encode_issue(&is, buf, &len), PS_E_INVALID_CODE);
	/* A hostile front end claiming a longer code, with the bytes there. */
	memcpy(buf + 10, &too_long, 2);
	buf[SIGNER_ISSUE_MAX] = 'B';
	ck_assert_int_eq(signer_decode_issue(buf, SIGNER_ISSUE_MAX + 1, &out), PS_E_INVALID_REQUEST);
	/* A NUL inside is carried: code_validate() refuses it in the signer. */
	is = sample_issue();
	is.code[5] = '\0';
	ck_assert_int_eq(signer_encode_issue(&is, buf, &len), 0);
	ck_assert_int_eq(signer_decode_issue(buf, len, &out), 0);
	ck_assert_uint_eq(out.code_len, 48);
	ck_assert_uint_eq(strlen(out.code), 5);
}
END_TEST

START_TEST(channel_round_trip)
{
	struct signer_writer w = { 0 };
	uint16_t index = 9, count = 9, bad = SIGNER_CHANNELS_MAX + 1;

	ck_assert_int_eq(signer_encode_channel(&w, 1, 2), 0);
	ck_assert_int_eq(signer_decode_channel(w.data, w.len, &index, &count), 0);
	ck_assert_uint_eq(index, 1);
	ck_assert_uint_eq(count, 2);
	for (size_t n = 0; n < w.len; n++)
		ck_assert_int_eq(signer_decode_channel(w.data, n, &index, &count),
				 PS_E_INVALID_REQUEST);
	signer_write_u8(&w, 0);
	ck_assert_int_eq(signer_decode_channel(w.data, w.len, &index, &count), PS_E_INVALID_REQUEST);
	w.len = 0;
	signer_encode_channel(&w, 2, 2);               /* index past the count */
	ck_assert_int_eq(signer_decode_channel(w.data, w.len, &index, &count), PS_E_INVALID_REQUEST);
	w.len = 0;
	signer_encode_channel(&w, 0, bad);
	ck_assert_int_eq(signer_decode_channel(w.data, w.len, &index, &count), PS_E_INVALID_REQUEST);
	ck_assert_uint_eq(index, 1);                  /* untouched on failure */
	free(w.data);
}
END_TEST

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void seqpacket_pair(int sv[2])
{
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
}

START_TEST(descriptor_passed)
{
	static struct signer_msg m;
	int sv[2], pv[2], got = -1;
	char c = 0;

	seqpacket_pair(sv);
	ck_assert_int_eq(pipe(pv), 0);
	ck_assert_int_eq(signer_msg_send_fd(sv[0], SIGNER_MSG_CHANNEL, 7, 0, "ab", 2, pv[1]), 0);
	close(pv[1]);
	ck_assert_int_eq(signer_msg_recv_fd(sv[1], &m, &got), 0);
	ck_assert_uint_eq(m.h.type, SIGNER_MSG_CHANNEL);
	ck_assert_uint_eq(m.h.id, 7);
	ck_assert_uint_eq(m.h.len, 2);
	ck_assert(fcntl(got, F_GETFD) & FD_CLOEXEC);
	ck_assert_int_eq(write(got, "x", 1), 1);       /* the same pipe */
	ck_assert_int_eq(read(pv[0], &c, 1), 1);
	ck_assert_int_eq(c, 'x');
	close(got);
	ck_assert_int_eq(signer_msg_send_fd(sv[0], SIGNER_MSG_CHANNEL, 0, 0, NULL, 0, -1), PS_E_IO);
	close(pv[0]);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(descriptor_missing_or_unwanted)
{
	static struct signer_msg m;
	int sv[2], got = -1, before;

	seqpacket_pair(sv);
	before = open_fds();
	/* Expected and missing. */
	ck_assert_int_eq(signer_msg_send(sv[0], SIGNER_MSG_CHANNEL, 0, 0, NULL, 0), 0);
	ck_assert_int_eq(signer_msg_recv_fd(sv[1], &m, &got), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(got, -1);
	/* Not expected: the kernel drops it, the message still arrives. */
	ck_assert_int_eq(signer_msg_send_fd(sv[0], SIGNER_MSG_PING, 0, 0, NULL, 0, sv[0]), 0);
	ck_assert_int_eq(signer_msg_recv(sv[1], &m), 0);
	ck_assert_uint_eq(m.h.type, SIGNER_MSG_PING);
	ck_assert_int_eq(open_fds(), before);
	close(sv[0]);
	ck_assert_int_eq(signer_msg_recv_fd(sv[1], &m, &got), PS_E_IO);
	close(sv[1]);
}
END_TEST

START_TEST(descriptor_with_bad_framing_closed)
{
	static struct signer_msg m;
	struct signer_msg_header h = { SIGNER_PROTO_VERSION + 1, SIGNER_MSG_CHANNEL, 0, 0, 0 };
	int sv[2], got = -1, before;
	struct {
		_Alignas(struct cmsghdr) char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = { &h, sizeof(h) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			     .msg_controllen = sizeof(control.buf) };
	struct cmsghdr *c;

	seqpacket_pair(sv);
	before = open_fds();
	memset(&control, 0, sizeof(control));
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &sv[0], sizeof(int));
	ck_assert_int_eq(sendmsg(sv[0], &mh, 0), (ssize_t)sizeof(h));
	ck_assert_int_eq(signer_msg_recv_fd(sv[1], &m, &got), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(got, -1);
	ck_assert_int_eq(open_fds(), before);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(two_descriptors_refused)
{
	static struct signer_msg m;
	struct signer_msg_header h = { SIGNER_PROTO_VERSION, SIGNER_MSG_CHANNEL, 0, 0, 0 };
	int sv[2], two[2], got = -1, before;
	struct {
		_Alignas(struct cmsghdr) char buf[CMSG_SPACE(sizeof(two))];
	} control;
	struct iovec iov = { &h, sizeof(h) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			     .msg_controllen = sizeof(control.buf) };
	struct cmsghdr *c;

	seqpacket_pair(sv);
	two[0] = two[1] = sv[0];
	before = open_fds();
	memset(&control, 0, sizeof(control));
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(two));
	memcpy(CMSG_DATA(c), two, sizeof(two));
	ck_assert_int_eq(sendmsg(sv[0], &mh, 0), (ssize_t)sizeof(h));
	ck_assert_int_eq(signer_msg_recv_fd(sv[1], &m, &got), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(got, -1);
	ck_assert_int_eq(open_fds(), before);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("signer_proto");
	TCase *tc = tcase_create("payloads");
	int failed;

	tcase_add_test(tc, ping_round_trip);
	tcase_add_test(tc, status_round_trip);
	tcase_add_test(tc, status_truncated_or_padded);
	tcase_add_test(tc, status_malformed_fields);
	tcase_add_test(tc, status_texts_cut_to_fit);
	tcase_add_test(tc, issue_round_trip);
	tcase_add_test(tc, issue_code_bounded);
	tcase_add_test(tc, channel_round_trip);
	tcase_add_test(tc, descriptor_passed);
	tcase_add_test(tc, descriptor_missing_or_unwanted);
	tcase_add_test(tc, descriptor_with_bad_framing_closed);
	tcase_add_test(tc, two_descriptors_refused);
	suite_add_tcase(s, tc);
	failed = check_run(s);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
