/* popsignd-signer: the signer process, started by popsignd (signer.c) as
 * "popsignd-signer --signer 3 -c CONFIG", never by hand.
 *
 * An executable of its own rather than popsignd run again: the process that
 * holds the token sessions and reads the PINs then maps neither the HTTP
 * server nor the TLS library that comes with it (less code where the keys
 * are, and about 1.5 MiB less memory). */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "signer_main.h"

int main(int argc, char **argv)
{
	log_init("popsignd-signer");
	if (argc != 5 || strcmp(argv[1], "--signer") != 0 || strcmp(argv[2], "3") != 0 ||
	    strcmp(argv[3], "-c") != 0) {
		fprintf(stderr, "popsignd-signer: started by popsignd only, never by hand\n");
		return 2;
	}
	return signer_main(argv[4], 3);
}
