#ifndef POPSIGN_OUTPUT_H
#define POPSIGN_OUTPUT_H
#endif
