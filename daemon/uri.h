/* A PKCS#11 key URI (RFC 7512), parsed by p11-kit and turned into plain
 * strings so that nothing outside token.c needs the PKCS#11 headers.
 *
 *   pkcs11:token=dev-ca;object=root-ca;type=private
 *       ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/popsign/dev-ca.pin
 */
#ifndef POPSIGN_URI_H
#define POPSIGN_URI_H

#include <stddef.h>
#include <stdint.h>

#define KEY_URI_ID_MAX 64

struct key_uri {
	char *module_path;         /* required: the PKCS#11 module to load */
	char *pin_file;            /* from pin-source (file:PATH or PATH); NULL: no login */
	char *token_label;         /* NULL matches any; otherwise exact match */
	char *token_serial;
	char *token_manufacturer;
	char *token_model;
	char *object_label;        /* object=; NULL matches any */
	uint8_t id[KEY_URI_ID_MAX];/* id=; id_len 0 matches any */
	size_t id_len;
};

/* Parses text.  Refuses: a string that is not a pkcs11: URI, pin-value (a PIN
 * must not sit in the config), a pin-source that is not a file, a missing
 * module-path, a type other than private, and a URI naming neither object
 * nor id.  Returns 0 and *ret (free with key_uri_free()), or PS_E_CONFIG with
 * *ret untouched and a static reason in *why. */
int key_uri_parse(const char *text, struct key_uri **ret, const char **why);

/* Frees u.  Accepts NULL. */
void key_uri_free(struct key_uri *u);

#endif
