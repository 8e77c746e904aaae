/* The compute kernel run natively: SHA-256 over a buffer, timed. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sha256.h"

int main(int argc, char **argv)
{
    size_t size = argc > 1 ? strtoull(argv[1], 0, 0) : 16u << 20;
    unsigned char *data = calloc(size, 1), digest[32];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    sha256(data, size, digest);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.9f ", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    for (int i = 0; i < 32; i++)
        printf("%02x", digest[i]);
    printf("\n");
    return 0;
}
