/* What popsign prints and writes: messages, the keys table, JSON, and files
 * written whole or not at all. */
#ifndef POPSIGN_OUTPUT_H
#define POPSIGN_OUTPUT_H

#include <jansson.h>
#include <stdio.h>
#include <sys/types.h>

#include "daemon_api.h"

/* output_write_file(): replace a file already at the path (else refuse). */
#define OUTPUT_REPLACE (1u << 0)

/* A copy of text (free()) with every control character replaced by '?': C0
 * bytes, DEL, C1 characters in UTF-8 (U+0080-U+009F) and bytes that are not
 * UTF-8, so text from a server cannot drive the terminal.  NULL without
 * memory. */
char *output_printable(const char *text);

/* Prints "popsign: " and the formatted message, with a newline, to stderr. */
void output_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints e, made printable, as "popsign: MESSAGE (CODE, HTTP STATUS)" for an
 * error answer with a code, "popsign: MESSAGE (HTTP STATUS)" for one without
 * and "popsign: MESSAGE" for any other failure. */
void output_daemon_error(FILE *f, const struct daemon_error *e);

/* Prints keys, a JSON array of entries daemon_key_info_parse() accepts, as a
 * table: a header NAME ALGORITHM SUBJECT SHA1-THUMBPRINT EXPIRES (not_after),
 * then one row per key, columns padded to their widest cell (counting UTF-8
 * characters) and two spaces apart, cells made printable.  Returns 0,
 * PS_E_INVALID_REQUEST for an entry of another shape (nothing printed),
 * PS_E_NOMEM, or PS_E_IO if writing to f failed. */
int output_keys_table(FILE *f, json_t *keys);

/* Prints a table of rows rows of cols cells each (row-major, the first row
 * the header): cells made printable, columns padded to their widest cell
 * (counting UTF-8 characters) and two spaces apart.  Returns 0, PS_E_NOMEM
 * (nothing printed), or PS_E_IO if writing to f failed. */
int output_table(FILE *f, const char *const *text, size_t rows, size_t cols);

/* doc as JSON indented by two spaces, with a final newline.  Returns 0 and
 * *ret (free()), or PS_E_NOMEM. */
int output_json_text(const json_t *doc, char **ret);

/* Writes len bytes of data to stdout and flushes it.  Returns 0, or PS_E_IO
 * (a closed pipe, a full disk) with errno set. */
int output_write_stdout(const void *data, size_t len);

/* Writes len bytes of data to path, whole or not at all: into a new
 * temporary file beside path (same directory, so the rename cannot cross
 * file systems) with exactly mode, fsync'ed, then renamed over path.  A
 * symbolic link at path is replaced, never followed.  Without
 * OUTPUT_REPLACE in flags an existing path (a dangling link included) is
 * left alone and the call fails with errno EEXIST.  Returns 0, or PS_E_IO
 * with errno saying why (the temporary file removed, path untouched), or
 * PS_E_NOMEM. */
int output_write_file(const char *path, const void *data, size_t len, mode_t mode,
		      unsigned flags);

/* The mode a newly created ordinary file gets here: 0666 less the umask. */
mode_t output_default_mode(void);

#endif
