/* signer_proto.c: PING and STATUS payloads round-trip, and every malformed
 * payload is refused (each truncation, trailing bytes, wrong versions,
 * counts over the limits, NUL bytes and overlong texts). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "signer_proto.h"

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

int main(void)
{
	Suite *s = suite_create("signer_proto");
	TCase *tc = tcase_create("payloads");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, ping_round_trip);
	tcase_add_test(tc, status_round_trip);
	tcase_add_test(tc, status_truncated_or_padded);
	tcase_add_test(tc, status_malformed_fields);
	tcase_add_test(tc, status_texts_cut_to_fit);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
