#include "uri.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/uri.h>

#include "error.h"

struct uri_error {
	int err;
	const char *why;
};

#define FAIL(e, w) ((struct uri_error){ .err = (e), .why = (w) })
#define FAIL_CONFIG(w) FAIL(PS_E_CONFIG, w)
#define FAIL_NOMEM FAIL(PS_E_NOMEM, "out of memory")
#define URI_OK ((struct uri_error){ 0, NULL })

static const char *parse_result_why(int result)
{
	switch (result) {
	case P11_KIT_URI_BAD_SCHEME:
		return "not a pkcs11: uri";
	case P11_KIT_URI_BAD_ENCODING:
		return "bad percent-encoding in the uri";
	case P11_KIT_URI_BAD_SYNTAX:
		return "uri syntax error (expected name=value attributes)";
	case P11_KIT_URI_BAD_VERSION:
		return "bad library-version in the uri";
	case P11_KIT_URI_UNEXPECTED: /* also p11-kit's "no memory" */
		return "p11-kit failed to parse the uri (out of memory?)";
	default:
		return "p11-kit returned an unknown error parsing the uri";
	}
}

/* The start of the item after the one at p, or end. */
static const char *item_next(const char *p, const char *end, char sep)
{
	const char *q = memchr(p, sep, (size_t)(end - p));

	return q ? q + 1 : end;
}

static size_t item_name_len(const char *p, const char *end, char sep)
{
	const char *q = p;

	while (q < end && *q != '=' && *q != sep)
		q++;
	return (size_t)(q - p);
}

/* Whether an attribute name occurs twice among the sep-separated items in
 * [p, end).  p11-kit silently keeps the last one, which would let a second
 * object= or token= override the first unnoticed. */
static bool items_repeat(const char *p, const char *end, char sep)
{
	for (const char *a = p; a < end; a = item_next(a, end, sep)) {
		size_t alen = item_name_len(a, end, sep);

		if (alen == 0)
			continue;
		for (const char *b = item_next(a, end, sep); b < end; b = item_next(b, end, sep))
			if (item_name_len(b, end, sep) == alen && memcmp(a, b, alen) == 0)
				return true;
	}
	return false;
}

/* Whether every query attribute in [p, end) is one p11-kit understands:
 * p11-kit ignores unknown query attributes, so a misspelt "pin-sorce" would
 * otherwise pass unnoticed. */
static bool query_names_known(const char *p, const char *end)
{
	static const char *const known[] = { "module-path", "module-name", "pin-source", "pin-value" };

	for (; p < end; p = item_next(p, end, '&')) {
		size_t len = item_name_len(p, end, '&');
		bool found = len == 0;

		for (size_t i = 0; i < sizeof(known) / sizeof(known[0]) && !found; i++)
			found = strlen(known[i]) == len && memcmp(known[i], p, len) == 0;
		if (!found)
			return false;
	}
	return true;
}

static struct uri_error check_names(const char *text)
{
	const char *path = strchr(text, ':') + 1; /* p11-kit checked the scheme */
	const char *end = path + strlen(path);
	const char *query = strchr(path, '?');
	const char *path_end = query ? query : end;

	if (items_repeat(path, path_end, ';'))
		return FAIL_CONFIG("an attribute is repeated in the uri path");
	if (!query)
		return URI_OK;
	if (items_repeat(query + 1, end, '&'))
		return FAIL_CONFIG("an attribute is repeated in the uri query");
	if (!query_names_known(query + 1, end))
		return FAIL_CONFIG("unknown query attribute in the uri "
				   "(supported: module-path, pin-source)");
	return URI_OK;
}

/* Whether a blank-padded PKCS#11 text field holds anything: p11-kit leaves
 * unset fields zeroed and pads set ones with blanks. */
static size_t field_trimmed_len(const unsigned char *f, size_t n)
{
	while (n > 0 && (f[n - 1] == ' ' || f[n - 1] == '\0'))
		n--;
	return n;
}

/* Copies the text field f (n bytes, blank-padded) to a trimmed C string, or
 * NULL if unset. */
static struct uri_error field_dup(const unsigned char *f, size_t n, char **ret)
{
	size_t len = field_trimmed_len(f, n);

	*ret = NULL;
	if (len == 0)
		return URI_OK;
	if (memchr(f, '\0', len))
		return FAIL_CONFIG("a token attribute contains a nul byte");
	*ret = strndup((const char *)f, len);
	return *ret ? URI_OK : FAIL_NOMEM;
}

static struct uri_error take_token(P11KitUri *p, struct key_uri *u)
{
	CK_TOKEN_INFO *ti = p11_kit_uri_get_token_info(p);
	struct uri_error e;

	e = field_dup(ti->label, sizeof(ti->label), &u->token_label);
	if (!e.err)
		e = field_dup(ti->serialNumber, sizeof(ti->serialNumber), &u->token_serial);
	if (!e.err)
		e = field_dup(ti->manufacturerID, sizeof(ti->manufacturerID), &u->token_manufacturer);
	if (!e.err)
		e = field_dup(ti->model, sizeof(ti->model), &u->token_model);
	return e;
}

/* Slot and library attributes are understood by p11-kit but not honoured
 * by token.c: refusing them beats silently matching a wider set. */
static struct uri_error check_unsupported(P11KitUri *p)
{
	CK_SLOT_INFO *si = p11_kit_uri_get_slot_info(p);
	CK_INFO *mi = p11_kit_uri_get_module_info(p);

	if (p11_kit_uri_get_slot_id(p) != (CK_SLOT_ID)-1 ||
	    field_trimmed_len(si->slotDescription, sizeof(si->slotDescription)) ||
	    field_trimmed_len(si->manufacturerID, sizeof(si->manufacturerID)))
		return FAIL_CONFIG("slot attributes are not supported; name the token with "
				   "token, serial, manufacturer or model");
	if (field_trimmed_len(mi->libraryDescription, sizeof(mi->libraryDescription)) ||
	    field_trimmed_len(mi->manufacturerID, sizeof(mi->manufacturerID)) ||
	    mi->libraryVersion.major != (CK_BYTE)-1)
		return FAIL_CONFIG("library attributes are not supported; use module-path");
	if (p11_kit_uri_get_module_name(p))
		return FAIL_CONFIG("module-name is not supported; use module-path with an absolute path");
	return URI_OK;
}

/* The file a pin-source names: "file:/abs", "file:///abs" or "/abs". */
static struct uri_error pin_file_of(const char *source, char **ret)
{
	const char *path = source;

	if (strncmp(source, "file:", 5) == 0) {
		path = source + 5;
		if (strncmp(path, "//", 2) == 0)
			path += 2; /* file:///abs: an empty authority is the local host */
		if (path[0] != '/')
			return FAIL_CONFIG("pin-source file: must name an absolute local path");
	} else if (source[0] != '/') {
		return FAIL_CONFIG("pin-source must be file:PATH or an absolute path");
	}
	*ret = strdup(path);
	return *ret ? URI_OK : FAIL_NOMEM;
}

static struct uri_error take_module_and_pin(P11KitUri *p, struct key_uri *u)
{
	const char *module = p11_kit_uri_get_module_path(p);
	const char *source = p11_kit_uri_get_pin_source(p);

	if (p11_kit_uri_get_pin_value(p))
		return FAIL_CONFIG("pin-value is refused: a pin in the config would be readable by "
				   "whoever can read the config; use pin-source=file:PATH");
	if (!module || !module[0])
		return FAIL_CONFIG("module-path is missing: name the module to load");
	if (module[0] != '/')
		return FAIL_CONFIG("module-path must be an absolute path");
	u->module_path = strdup(module);
	if (!u->module_path)
		return FAIL_NOMEM;
	if (!source)
		return URI_OK;
	return pin_file_of(source, &u->pin_file);
}

static struct uri_error check_class(P11KitUri *p)
{
	CK_ATTRIBUTE *a = p11_kit_uri_get_attribute(p, CKA_CLASS);
	CK_OBJECT_CLASS class;

	if (!a)
		return URI_OK; /* type= absent: token.c looks for private keys only */
	if (a->ulValueLen != sizeof(class))
		return FAIL_CONFIG("malformed type attribute");
	memcpy(&class, a->pValue, sizeof(class));
	if (class != CKO_PRIVATE_KEY)
		return FAIL_CONFIG("type must be private: popsignd signs with private keys only");
	return URI_OK;
}

static struct uri_error take_object(P11KitUri *p, struct key_uri *u)
{
	CK_ATTRIBUTE *label = p11_kit_uri_get_attribute(p, CKA_LABEL);
	CK_ATTRIBUTE *id = p11_kit_uri_get_attribute(p, CKA_ID);

	if (!label && !id)
		return FAIL_CONFIG("the uri names no key: give object=LABEL and/or id=%XX");
	if (id && id->ulValueLen == 0)
		return FAIL_CONFIG("id is empty");
	if (id && id->ulValueLen > KEY_URI_ID_MAX)
		return FAIL_CONFIG("id is longer than 64 bytes");
	if (label && label->ulValueLen == 0)
		return FAIL_CONFIG("object is empty");
	if (label && memchr(label->pValue, '\0', label->ulValueLen))
		return FAIL_CONFIG("object contains a nul byte");
	if (id) {
		memcpy(u->id, id->pValue, id->ulValueLen);
		u->id_len = id->ulValueLen;
	}
	if (label) {
		u->object_label = strndup(label->pValue, label->ulValueLen);
		if (!u->object_label)
			return FAIL_NOMEM;
	}
	return URI_OK;
}

static struct uri_error convert(const char *text, P11KitUri *p, struct key_uri *u)
{
	struct uri_error e = check_names(text);

	if (e.err)
		return e;
	if (p11_kit_uri_any_unrecognized(p))
		return FAIL_CONFIG("unknown, malformed or over-long attribute in the uri path");
	e = take_module_and_pin(p, u);
	if (!e.err)
		e = check_unsupported(p);
	if (!e.err)
		e = check_class(p);
	if (!e.err)
		e = take_token(p, u);
	if (!e.err)
		e = take_object(p, u);
	return e;
}

int key_uri_parse(const char *text, struct key_uri **ret, const char **why)
{
	struct key_uri *u = NULL;
	P11KitUri *p = NULL;
	struct uri_error e;
	int result;

	if (!text || !text[0]) {
		*why = "the uri is empty";
		return PS_E_CONFIG;
	}
	p = p11_kit_uri_new();
	u = calloc(1, sizeof(*u));
	if (!p || !u) {
		e = FAIL_NOMEM;
		goto out;
	}
	result = p11_kit_uri_parse(text, P11_KIT_URI_FOR_ANY, p);
	if (result != P11_KIT_URI_OK) {
		e = FAIL_CONFIG(parse_result_why(result));
		goto out;
	}
	e = convert(text, p, u);
out:
	if (p)
		p11_kit_uri_free(p);
	if (e.err) {
		key_uri_free(u);
		*why = e.why;
		return e.err;
	}
	*ret = u;
	return 0;
}

void key_uri_free(struct key_uri *u)
{
	if (!u)
		return;
	free(u->module_path);
	free(u->pin_file);
	free(u->token_label);
	free(u->token_serial);
	free(u->token_manufacturer);
	free(u->token_model);
	free(u->object_label);
	free(u);
}
