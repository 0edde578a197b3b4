/* key_uri_parse: every accepted form and every refusal with its reason. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "uri.h"
#include "check_run.h"

#define MOD "module-path=/usr/lib/softhsm/libsofthsm2.so"

static struct key_uri *parse_ok(const char *text)
{
	struct key_uri *u = NULL;
	const char *why = NULL;
	int r = key_uri_parse(text, &u, &why);

	ck_assert_msg(r == 0, "%s: refused (%d): %s", text, r, why ? why : "(null)");
	ck_assert_ptr_nonnull(u);
	return u;
}

/* Asserts that text is refused with PS_E_CONFIG, *ret untouched, and a
 * reason containing want. */
static void parse_bad(const char *text, const char *want)
{
	struct key_uri *sentinel = (struct key_uri *)0x1, *u = sentinel;
	const char *why = NULL;
	int r = key_uri_parse(text, &u, &why);

	ck_assert_msg(r == PS_E_CONFIG, "%s: got %d, want PS_E_CONFIG", text, r);
	ck_assert_ptr_eq(u, sentinel);
	ck_assert_ptr_nonnull(why);
	ck_assert_msg(strstr(why, want), "%s: reason \"%s\" lacks \"%s\"", text, why, want);
	/* House style for reasons: lowercase start, no trailing period. */
	ck_assert_msg(why[0] >= 'a' && why[0] <= 'z', "reason \"%s\" not lowercase", why);
	ck_assert_msg(why[strlen(why) - 1] != '.', "reason \"%s\" ends with a period", why);
}

START_TEST(full_uri)
{
	struct key_uri *u = parse_ok("pkcs11:token=dev-ca;object=root-ca;type=private"
				     "?module-path=/usr/lib/softhsm/libsofthsm2.so"
				     "&pin-source=file:/etc/popsign/dev-ca.pin");

	ck_assert_str_eq(u->module_path, "/usr/lib/softhsm/libsofthsm2.so");
	ck_assert_str_eq(u->pin_file, "/etc/popsign/dev-ca.pin");
	ck_assert_str_eq(u->token_label, "dev-ca");
	ck_assert_ptr_null(u->token_serial);
	ck_assert_ptr_null(u->token_manufacturer);
	ck_assert_ptr_null(u->token_model);
	ck_assert_str_eq(u->object_label, "root-ca");
	ck_assert_uint_eq(u->id_len, 0);
	key_uri_free(u);
}
END_TEST

START_TEST(token_fields)
{
	struct key_uri *u = parse_ok("pkcs11:token=My%20Token;serial=0123abcd;"
				     "manufacturer=SoftHSM%20project;model=SoftHSM%20v2;object=k?" MOD);

	ck_assert_str_eq(u->token_label, "My Token");
	ck_assert_str_eq(u->token_serial, "0123abcd");
	ck_assert_str_eq(u->token_manufacturer, "SoftHSM project");
	ck_assert_str_eq(u->token_model, "SoftHSM v2");
	ck_assert_ptr_null(u->pin_file);
	key_uri_free(u);
}
END_TEST

START_TEST(token_field_trailing_blanks_trimmed)
{
	struct key_uri *u = parse_ok("pkcs11:token=ca%20%20;object=k?" MOD);

	ck_assert_str_eq(u->token_label, "ca");
	key_uri_free(u);
}
END_TEST

START_TEST(token_field_all_blank_is_unset)
{
	struct key_uri *u = parse_ok("pkcs11:token=%20%20;object=k?" MOD);

	ck_assert_ptr_null(u->token_label);
	key_uri_free(u);
}
END_TEST

START_TEST(token_label_32_bytes)
{
	struct key_uri *u = parse_ok("pkcs11:token=abcdefghijklmnopqrstuvwxyz012345;object=k?" MOD);

	ck_assert_str_eq(u->token_label, "abcdefghijklmnopqrstuvwxyz012345");
	key_uri_free(u);
}
END_TEST

START_TEST(id_hex)
{
	struct key_uri *u = parse_ok("pkcs11:id=%01?" MOD);

	ck_assert_uint_eq(u->id_len, 1);
	ck_assert_uint_eq(u->id[0], 0x01);
	ck_assert_ptr_null(u->object_label);
	ck_assert_ptr_null(u->token_label);
	key_uri_free(u);
}
END_TEST

START_TEST(id_multi_byte_and_label)
{
	static const uint8_t want[] = { 0xde, 0xad, 0x00, 0xbe, 0xef };
	struct key_uri *u = parse_ok("pkcs11:object=a%20key;id=%de%ad%00%BE%ef?" MOD);

	ck_assert_uint_eq(u->id_len, sizeof(want));
	ck_assert_mem_eq(u->id, want, sizeof(want));
	ck_assert_str_eq(u->object_label, "a key");
	key_uri_free(u);
}
END_TEST

START_TEST(id_max_length)
{
	char text[512] = "pkcs11:id=";

	for (int i = 0; i < KEY_URI_ID_MAX; i++)
		strcat(text, "%7f");
	strcat(text, "?" MOD);
	struct key_uri *u = parse_ok(text);

	ck_assert_uint_eq(u->id_len, KEY_URI_ID_MAX);
	ck_assert_uint_eq(u->id[KEY_URI_ID_MAX - 1], 0x7f);
	key_uri_free(u);
}
END_TEST

START_TEST(id_too_long)
{
	char text[512] = "pkcs11:id=";

	for (int i = 0; i <= KEY_URI_ID_MAX; i++)
		strcat(text, "%7f");
	strcat(text, "?" MOD);
	parse_bad(text, "longer than 64 bytes");
}
END_TEST

START_TEST(pin_source_file_forms)
{
	struct key_uri *u = parse_ok("pkcs11:object=k?" MOD "&pin-source=file:/run/creds/pin");

	ck_assert_str_eq(u->pin_file, "/run/creds/pin");
	key_uri_free(u);
	u = parse_ok("pkcs11:object=k?" MOD "&pin-source=/etc/popsign/a%20pin");
	ck_assert_str_eq(u->pin_file, "/etc/popsign/a pin");
	key_uri_free(u);
	u = parse_ok("pkcs11:object=k?" MOD "&pin-source=file:///etc/pin");
	ck_assert_str_eq(u->pin_file, "/etc/pin");
	key_uri_free(u);
}
END_TEST

START_TEST(type_absent_or_private)
{
	struct key_uri *u = parse_ok("pkcs11:object=k?" MOD);

	key_uri_free(u);
	u = parse_ok("pkcs11:object=k;type=private?" MOD);
	key_uri_free(u);
}
END_TEST

START_TEST(scheme_case_insensitive)
{
	struct key_uri *u = parse_ok("PKCS11:object=k?" MOD);

	ck_assert_str_eq(u->object_label, "k");
	key_uri_free(u);
}
END_TEST

START_TEST(refuse_pin_value)
{
	parse_bad("pkcs11:object=k?" MOD "&pin-value=1234", "pin-value is refused");
	parse_bad("pkcs11:object=k?" MOD "&pin-value=1234",
		  "readable by whoever can read the config");
	parse_bad("pkcs11:object=k?" MOD "&pin-value=1234", "pin-source=file:PATH");
	/* Even next to a valid pin-source. */
	parse_bad("pkcs11:object=k?" MOD "&pin-source=/p&pin-value=1", "pin-value is refused");
}
END_TEST

START_TEST(refuse_bad_pin_source)
{
	parse_bad("pkcs11:object=k?" MOD "&pin-source=relative/pin", "file:PATH or an absolute path");
	parse_bad("pkcs11:object=k?" MOD "&pin-source=", "file:PATH or an absolute path");
	parse_bad("pkcs11:object=k?" MOD "&pin-source=https://example.com/pin",
		  "file:PATH or an absolute path");
	parse_bad("pkcs11:object=k?" MOD "&pin-source=file:relative", "absolute local path");
	parse_bad("pkcs11:object=k?" MOD "&pin-source=file://host/etc/pin", "absolute local path");
	parse_bad("pkcs11:object=k?" MOD "&pin-source=file:", "absolute local path");
}
END_TEST

START_TEST(refuse_module_path)
{
	parse_bad("pkcs11:object=k", "module-path is missing");
	parse_bad("pkcs11:object=k?pin-source=/p", "module-path is missing");
	parse_bad("pkcs11:object=k?module-path=", "module-path is missing");
	parse_bad("pkcs11:object=k?module-path=libsofthsm2.so", "absolute path");
	parse_bad("pkcs11:object=k?module-path=./lib/x.so", "absolute path");
	parse_bad("pkcs11:object=k?module-name=softhsm2", "module-path is missing");
	parse_bad("pkcs11:object=k?" MOD "&module-name=softhsm2", "module-name is not supported");
}
END_TEST

START_TEST(refuse_bad_scheme)
{
	parse_bad("http://example.com/", "not a pkcs11: uri");
	parse_bad("pkcs12:object=k?" MOD, "not a pkcs11: uri");
	parse_bad("/usr/lib/softhsm/libsofthsm2.so", "not a pkcs11: uri");
	parse_bad("", "empty");
	parse_bad(NULL, "empty");
}
END_TEST

START_TEST(refuse_wrong_type)
{
	parse_bad("pkcs11:object=k;type=cert?" MOD, "type must be private");
	parse_bad("pkcs11:object=k;type=public?" MOD, "type must be private");
	parse_bad("pkcs11:object=k;type=secret-key?" MOD, "type must be private");
	parse_bad("pkcs11:object=k;type=data?" MOD, "type must be private");
	parse_bad("pkcs11:object=k;type=bogus?" MOD, "unknown, malformed or over-long attribute");
}
END_TEST

START_TEST(refuse_no_object)
{
	parse_bad("pkcs11:token=dev-ca?" MOD, "names no key");
	parse_bad("pkcs11:?" MOD, "names no key");
	parse_bad("pkcs11:type=private?" MOD, "names no key");
	parse_bad("pkcs11:object=?" MOD, "object is empty");
	parse_bad("pkcs11:id=?" MOD, "id is empty");
	parse_bad("pkcs11:object=a%00b?" MOD, "nul byte");
	parse_bad("pkcs11:token=a%00b;object=k?" MOD, "nul byte");
}
END_TEST

START_TEST(refuse_garbage)
{
	parse_bad("pkcs11:id=%zz?" MOD, "percent-encoding");
	parse_bad("pkcs11:id=%0?" MOD, "percent-encoding");
	parse_bad("pkcs11:object?" MOD, "syntax");
	parse_bad("pkcs11:library-version=x;object=k?" MOD, "library-version");
	parse_bad("pkcs11:object=k;colour=blue?" MOD, "unknown, malformed or over-long");
	/* 33 bytes: longer than CK_TOKEN_INFO's label field. */
	parse_bad("pkcs11:token=abcdefghijklmnopqrstuvwxyz0123456;object=k?" MOD,
		  "unknown, malformed or over-long");
	parse_bad("pkcs11:object=k?" MOD "&pin-sorce=/p", "unknown query attribute");
	parse_bad("pkcs11:object=k?" MOD "&x-vendor=1", "unknown query attribute");
}
END_TEST

START_TEST(refuse_repeats)
{
	parse_bad("pkcs11:object=a;object=b?" MOD, "repeated in the uri path");
	parse_bad("pkcs11:token=a;object=k;token=b?" MOD, "repeated in the uri path");
	parse_bad("pkcs11:object=k?" MOD "&pin-source=/a&pin-source=/b", "repeated in the uri query");
	parse_bad("pkcs11:object=k?module-path=/a.so&" MOD, "repeated in the uri query");
}
END_TEST

START_TEST(refuse_slot_and_library)
{
	parse_bad("pkcs11:object=k;slot-id=1?" MOD, "slot attributes are not supported");
	parse_bad("pkcs11:object=k;slot-description=s?" MOD, "slot attributes are not supported");
	parse_bad("pkcs11:object=k;slot-manufacturer=m?" MOD, "slot attributes are not supported");
	parse_bad("pkcs11:object=k;library-manufacturer=m?" MOD, "library attributes");
	parse_bad("pkcs11:object=k;library-description=d?" MOD, "library attributes");
	parse_bad("pkcs11:object=k;library-version=2.6?" MOD, "library attributes");
}
END_TEST

START_TEST(free_null)
{
	key_uri_free(NULL);
}
END_TEST

static Suite *uri_suite(void)
{
	Suite *s = suite_create("uri");
	TCase *ok = tcase_create("accept"), *bad = tcase_create("refuse");

	tcase_add_test(ok, full_uri);
	tcase_add_test(ok, token_fields);
	tcase_add_test(ok, token_field_trailing_blanks_trimmed);
	tcase_add_test(ok, token_field_all_blank_is_unset);
	tcase_add_test(ok, token_label_32_bytes);
	tcase_add_test(ok, id_hex);
	tcase_add_test(ok, id_multi_byte_and_label);
	tcase_add_test(ok, id_max_length);
	tcase_add_test(ok, pin_source_file_forms);
	tcase_add_test(ok, type_absent_or_private);
	tcase_add_test(ok, scheme_case_insensitive);
	tcase_add_test(ok, free_null);
	tcase_add_test(bad, id_too_long);
	tcase_add_test(bad, refuse_pin_value);
	tcase_add_test(bad, refuse_bad_pin_source);
	tcase_add_test(bad, refuse_module_path);
	tcase_add_test(bad, refuse_bad_scheme);
	tcase_add_test(bad, refuse_wrong_type);
	tcase_add_test(bad, refuse_no_object);
	tcase_add_test(bad, refuse_garbage);
	tcase_add_test(bad, refuse_repeats);
	tcase_add_test(bad, refuse_slot_and_library);
	suite_add_tcase(s, ok);
	suite_add_tcase(s, bad);
	return s;
}

int main(void)
{
	return check_run(uri_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
