/* HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) on the runtime's
   SHA-256, for enclaves that agree on keys (the sample's remote
   attestation). */
#ifndef VSGX_HMAC_SHA256_H
#define VSGX_HMAC_SHA256_H
#include <stddef.h>
#include <stdint.h>

#include "sha256.h"

struct hmac_sha256_ctx {
    struct sha256_ctx inner, outer;
};

void hmac_sha256_init(struct hmac_sha256_ctx *ctx, const void *key, size_t key_length);
void hmac_sha256_update(struct hmac_sha256_ctx *ctx, const void *data, size_t length);
void hmac_sha256_final(struct hmac_sha256_ctx *ctx, uint8_t mac[32]);
void hmac_sha256(const void *key, size_t key_length, const void *data, size_t length,
                 uint8_t mac[32]);
/* HKDF-SHA256 extract-then-expand into out (at most 255 * 32 bytes; -1
   beyond). A NULL salt is the RFC's default, 32 zero bytes. */
int hkdf_sha256(const void *salt, size_t salt_length, const void *ikm, size_t ikm_length,
                const void *info, size_t info_length, uint8_t *out, size_t out_length);

#endif
