/* Verification codes: what DPS and IoT Hub hand out and popsignd signs. */
#ifndef POPSIGN_CODE_H
#define POPSIGN_CODE_H

#include <stddef.h>

/* Longest verification code accepted (Azure hands out 48 hex characters). */
#define CODE_MAX_LEN 64

/* 0 if the len bytes at code are 1 to CODE_MAX_LEN characters of [A-Za-z0-9],
 * PS_E_INVALID_CODE otherwise (empty, too long, any other byte, NUL included). */
int code_validate(const char *code, size_t len);

#endif
