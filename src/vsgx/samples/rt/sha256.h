/* SHA-256 (FIPS 180-4) in portable C: the compute kernel the benchmarks run
   natively, on bare Unicorn and as an enclave, and the hash under the
   sample's HMAC and HKDF. */
#ifndef VSGX_SHA256_H
#define VSGX_SHA256_H
#include <stddef.h>
#include <stdint.h>

struct sha256_ctx {
    uint32_t h[8];
    uint8_t block[64];
    uint64_t length; /* bytes hashed so far */
};

void sha256_init(struct sha256_ctx *ctx);
void sha256_update(struct sha256_ctx *ctx, const void *data, size_t length);
void sha256_final(struct sha256_ctx *ctx, uint8_t digest[32]);
void sha256(const void *data, size_t length, uint8_t digest[32]);

#endif
