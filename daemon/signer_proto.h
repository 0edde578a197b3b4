/* Messages between the front end and the signer process.
 *
 * One message per SOCK_SEQPACKET datagram: a fixed header, then a payload of
 * exactly header.len bytes.  Every field is checked on receipt; a message that
 * does not parse ends the conversation (the front end restarts the signer).
 *
 * Two kinds of socket.  The control socket (the signer's fd 3) carries HELLO,
 * CHANNEL, PING and PONG.  Each signer worker has a channel of its own, a
 * socketpair the signer makes and hands over in a CHANNEL message: it
 * carries ISSUE and ISSUED only, one request at a time.
 *
 *   HELLO   signer -> front end   the keys: u16 count, then per key
 *                                 u16 name length, name, u32 DER length, CA DER
 *   CHANNEL signer -> front end   right after HELLO, one per worker: u16 index,
 *                                 u16 count; the front end's end of the
 *                                 worker's socketpair rides along (SCM_RIGHTS)
 *   ISSUE   front end -> signer   u16 key index, u64 deadline (CLOCK_MONOTONIC
 *                                 ms: the front end gives up then, so a later
 *                                 request is dropped unissued), u16 code
 *                                 length, code
 *   ISSUED  signer -> front end   status 0: the certificate (see
 *                                 signer_encode_issued()); else empty
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
 * Fields are in host byte order and deadlines on the host's monotonic clock:
 * both ends are the same executable on the same machine. */
#ifndef POPSIGN_SIGNER_PROTO_H
#define POPSIGN_SIGNER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "code.h"

#define SIGNER_PROTO_VERSION 2         /* 2: channels, ISSUE with a deadline */
#define SIGNER_MSG_MAX 65536           /* header included */
#define SIGNER_KEYS_MAX 1024
#define SIGNER_PING_VERSION 1
#define SIGNER_STATUS_VERSION 1
#define SIGNER_STATE_MAX 32            /* a key's state text, NUL included */
#define SIGNER_CKR_NAME_MAX 48         /* a CKR_ name, NUL included */
#define SIGNER_WORKERS_MAX 1024
#define SIGNER_ERRORS_MAX 256
#define SIGNER_CHANNELS_MAX 1024
/* An ISSUE payload at its longest. */
#define SIGNER_ISSUE_MAX (2 + 8 + 2 + CODE_MAX_LEN)

enum signer_msg_type {
	SIGNER_MSG_HELLO = 1,
	SIGNER_MSG_ISSUE = 2,
	SIGNER_MSG_ISSUED = 3,
	SIGNER_MSG_PING = 4,
	SIGNER_MSG_PONG = 5,
	SIGNER_MSG_CHANNEL = 6,
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

/* signer_msg_send() with the descriptor pass_fd attached (SCM_RIGHTS); the
 * caller keeps its own copy.  Returns 0 or PS_E_IO. */
int signer_msg_send_fd(int fd, uint16_t type, uint32_t id, int32_t status, const void *payload,
		       size_t len, int pass_fd);

/* signer_msg_recv() for a message carrying exactly one descriptor: 0 and
 * *ret_fd (close-on-exec, the caller's to close), or PS_E_IO, or
 * PS_E_INVALID_REQUEST (malformed, or not exactly one descriptor: any that
 * came are closed). */
int signer_msg_recv_fd(int fd, struct signer_msg *m, int *ret_fd);

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

/* The CHANNEL payload: this is channel index of count (index < count <=
 * SIGNER_CHANNELS_MAX).  Decode returns 0, or PS_E_INVALID_REQUEST. */
int signer_encode_channel(struct signer_writer *w, uint16_t index, uint16_t count);
int signer_decode_channel(const uint8_t *payload, size_t len, uint16_t *ret_index,
			  uint16_t *ret_count);

/* An ISSUE request.  code holds code_len bytes and a NUL; a NUL inside is
 * left for code_validate() to refuse. */
struct signer_issue {
	uint16_t key;
	uint64_t deadline_ms;          /* CLOCK_MONOTONIC */
	size_t code_len;
	char code[CODE_MAX_LEN + 1];
};

/* Writes the ISSUE payload of is into out: 0 and *ret_len, or
 * PS_E_INVALID_CODE (code_len over CODE_MAX_LEN). */
int signer_encode_issue(const struct signer_issue *is, uint8_t out[SIGNER_ISSUE_MAX],
			size_t *ret_len);

/* Decodes an ISSUE payload: exact length, code at most CODE_MAX_LEN bytes.
 * Returns 0 and fills *ret, or PS_E_INVALID_REQUEST. */
int signer_decode_issue(const uint8_t *payload, size_t len, struct signer_issue *ret);

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
