/* The signer process: the only process that loads PKCS#11 modules, reads
 * PINs and holds token sessions.  popsignd starts it as
 * "popsignd-signer --signer 3 -c CONFIG" (signer_exe.c). */
#ifndef POPSIGN_SIGNER_MAIN_H
#define POPSIGN_SIGNER_MAIN_H

/* Reads the config at config_path, opens every key, says HELLO on fd (a
 * SOCK_SEQPACKET socket to the front end) and hands over one channel per
 * worker (cfg->workers of them), then answers PING on fd, and ISSUE on each
 * channel with its own worker, until the front end goes away.  Returns the
 * exit status: 0 after the front end hung up, 1 if the keys could not be
 * opened (logged). */
int signer_main(const char *config_path, int fd);

#endif
