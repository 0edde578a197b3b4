/* What the fuzz targets share: the entry point libFuzzer calls, and how an
 * input names the HTTP status of the answer it stands for. */
#ifndef POPSIGN_FUZZ_H
#define POPSIGN_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The statuses Azure answers with, and a few it should not; picked by one
 * input byte so that the seed files stay readable ('0' is 200). */
static inline long fuzz_status(uint8_t b)
{
	static const long statuses[] = {200, 201, 202, 204, 400, 401, 403, 404, 409, 412,
					429, 500, 502, 503, 504, 0,   100, 299, 300, 999};

	return statuses[(uint8_t)(b - '0') % (sizeof(statuses) / sizeof(statuses[0]))];
}

#endif
