/* Messages between the front end and the signer process.
 *
 * One message per SOCK_SEQPACKET datagram: a fixed header, then a payload of
 * exactly header.len bytes.  Every field is checked on receipt; a message that
 * does not parse ends the conversation (the front end restarts the signer).
 *
 *   HELLO   signer -> front end   the keys: u16 count, then per key
 *                                 u16 name length, name, u32 DER length, CA DER
 *   ISSUE   front end -> signer   u16 key index, u16 code length, code
 *   ISSUED  signer -> front end   status 0: the certificate's DER; else empty
 *   PING    front end -> signer   u16 ping version (1), u32 request timeout in ms
 *                                 (or empty: keep the timeout); answered by PONG
 *   PONG    signer -> front end   STATUS: u16 status version (1), u32 ms the
 *                                 running maintenance pass has taken (0: idle),
 *                                 u32 sessions in use, u16 workers, then per
 *                                 worker u32 ms its job has taken (0: idle),
 *                                 u16 keys, then per key (config order) u8 ready,
 *                                 u8 state length, state text, u16 error codes,
 *                                 then per code u8 name length, CKR_ name, u64
 *                                 failed calls so far
 *
 * Fields are in host byte order: both ends are the same executable. */
#ifndef POPSIGN_SIGNER_PROTO_H
#define POPSIGN_SIGNER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIGNER_PROTO_VERSION 1
#define SIGNER_MSG_MAX 65536           /* header included */
#define SIGNER_KEYS_MAX 1024
#define SIGNER_PING_VERSION 1
#define SIGNER_STATUS_VERSION 1
#define SIGNER_STATE_MAX 32            /* a key's state text, NUL included */
#define SIGNER_CKR_NAME_MAX 48         /* a CKR_ name, NUL included */
#define SIGNER_WORKERS_MAX 1024
#define SIGNER_ERRORS_MAX 256

enum signer_msg_type {
	SIGNER_MSG_HELLO = 1,
	SIGNER_MSG_ISSUE = 2,
	SIGNER_MSG_ISSUED = 3,
	SIGNER_MSG_PING = 4,
	SIGNER_MSG_PONG = 5,
};

struct signer_msg_header {
	uint16_t version;
	uint16_t type;
	uint32_t id;                   /* request id, echoed in the answer */
	int32_t status;                /* 0 or PS_E_* */
	uint32_t len;                  /* payload bytes that follow */
};

/* A received message: header and payload in one buffer of SIGNER_MSG_MAX. */
struct signer_msg {
	struct signer_msg_header h;
	uint8_t payload[SIGNER_MSG_MAX - sizeof(struct signer_msg_header)];
};

/* Sends one message (header + len bytes of payload) as one datagram.
 * Returns 0, or PS_E_IO (peer gone or message too large). */
int signer_msg_send(int fd, uint16_t type, uint32_t id, int32_t status, const void *payload,
		    size_t len);

/* Receives one message into m and checks its framing (version, type, length
 * equal to what arrived).  Returns 0, PS_E_IO (peer gone: EOF or error), or
 * PS_E_INVALID_REQUEST (a malformed message). */
int signer_msg_recv(int fd, struct signer_msg *m);

/* A cursor over a payload, for reading fields with bounds checks. */
struct signer_reader {
	const uint8_t *p;
	size_t left;
};

/* Each returns 0, or PS_E_INVALID_REQUEST when the payload is too short. */
int signer_read_u8(struct signer_reader *r, uint8_t *ret);
int signer_read_u16(struct signer_reader *r, uint16_t *ret);
int signer_read_u32(struct signer_reader *r, uint32_t *ret);
int signer_read_u64(struct signer_reader *r, uint64_t *ret);
int signer_read_bytes(struct signer_reader *r, size_t n, const uint8_t **ret);

/* A growing payload for building messages; data is freed by the caller. */
struct signer_writer {
	uint8_t *data;
	size_t len;
	size_t cap;
	int err;                       /* first error; later writes do nothing */
};

void signer_write_u8(struct signer_writer *w, uint8_t v);
void signer_write_u16(struct signer_writer *w, uint16_t v);
void signer_write_u32(struct signer_writer *w, uint32_t v);
void signer_write_u64(struct signer_writer *w, uint64_t v);
void signer_write_bytes(struct signer_writer *w, const void *p, size_t n);

/* The PING payload.  Decoding an empty payload gives *ret_timeout_ms 0 (no
 * change).  Decode returns 0, or PS_E_INVALID_REQUEST. */
int signer_encode_ping(struct signer_writer *w, uint32_t timeout_ms);
int signer_decode_ping(const uint8_t *payload, size_t len, uint32_t *ret_timeout_ms);

struct signer_key_status {
	bool ready;
	char state[SIGNER_STATE_MAX];  /* "ready", "token not present", ... */
};

struct signer_error_count {
	char name[SIGNER_CKR_NAME_MAX];
	uint64_t count;
};

/* What the signer tells the front end in each PONG. */
struct signer_status {
	uint32_t monitor_busy_ms;
	uint32_t sessions_in_use;
	uint16_t n_workers;
	uint32_t *worker_busy_ms;
	uint16_t n_keys;
	struct signer_key_status *keys;
	uint16_t n_errors;
	struct signer_error_count *errors;
};

/* The PONG payload of st.  Returns 0 (w->err otherwise). */
int signer_encode_status(struct signer_writer *w, const struct signer_status *st);

/* Decodes a PONG payload: exact length, known version, texts without NUL
 * bytes.  Returns 0 and *ret (free with signer_status_free()), or
 * PS_E_INVALID_REQUEST, PS_E_NOMEM. */
int signer_decode_status(const uint8_t *payload, size_t len, struct signer_status **ret);

/* Frees st.  Accepts NULL. */
void signer_status_free(struct signer_status *st);

struct issued;

/* The ISSUED payload of a certificate: DER, PEM, serial, fingerprint and
 * validity, so that the front end never parses or builds certificates.
 * Returns 0 (w->err otherwise). */
int signer_encode_issued(struct signer_writer *w, const struct issued *c);

/* Decodes an ISSUED payload.  Returns 0 and *ret (free with issued_free()),
 * or PS_E_INVALID_REQUEST, PS_E_NOMEM. */
int signer_decode_issued(const uint8_t *payload, size_t len, struct issued **ret);

#endif
