/* SHA-256 (FIPS 180-4) in portable C: the compute kernel the benchmarks run
   natively, on bare Unicorn and as an enclave. */
#ifndef VSGX_SHA256_H
#define VSGX_SHA256_H
#include <stddef.h>
#include <stdint.h>

void sha256(const void *data, size_t length, uint8_t digest[32]);

#endif
