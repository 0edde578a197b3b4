#include "http.h"
/* STUB: to be written. */
