#include "signer.h"
/* STUB: to be written. */
