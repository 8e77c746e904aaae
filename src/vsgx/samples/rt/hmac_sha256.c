/* HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869). */
#include "hmac_sha256.h"

static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = p;
    while (n--)
        *v++ = 0;
}

void hmac_sha256_init(struct hmac_sha256_ctx *ctx, const void *key, size_t key_length)
{
    uint8_t block[64] = {0};
    const uint8_t *k = key;
    if (key_length > sizeof(block)) {
        sha256(key, key_length, block); /* a long key is hashed first */
    } else {
        for (size_t i = 0; i < key_length; i++)
            block[i] = k[i];
    }
    for (int i = 0; i < 64; i++)
        block[i] ^= 0x36;
    sha256_init(&ctx->inner);
    sha256_update(&ctx->inner, block, sizeof(block));
    for (int i = 0; i < 64; i++)
        block[i] ^= 0x36 ^ 0x5c;
    sha256_init(&ctx->outer);
    sha256_update(&ctx->outer, block, sizeof(block));
    wipe(block, sizeof(block));
}

void hmac_sha256_update(struct hmac_sha256_ctx *ctx, const void *data, size_t length)
{
    sha256_update(&ctx->inner, data, length);
}

void hmac_sha256_final(struct hmac_sha256_ctx *ctx, uint8_t mac[32])
{
    uint8_t inner[32];
    sha256_final(&ctx->inner, inner);
    sha256_update(&ctx->outer, inner, sizeof(inner));
    sha256_final(&ctx->outer, mac);
    wipe(inner, sizeof(inner));
    wipe(ctx, sizeof(*ctx));
}

void hmac_sha256(const void *key, size_t key_length, const void *data, size_t length,
                 uint8_t mac[32])
{
    struct hmac_sha256_ctx ctx;
    hmac_sha256_init(&ctx, key, key_length);
    hmac_sha256_update(&ctx, data, length);
    hmac_sha256_final(&ctx, mac);
}

int hkdf_sha256(const void *salt, size_t salt_length, const void *ikm, size_t ikm_length,
                const void *info, size_t info_length, uint8_t *out, size_t out_length)
{
    static const uint8_t zeros[32];
    uint8_t prk[32], t[32];
    struct hmac_sha256_ctx ctx;
    if (out_length > 255 * 32)
        return -1;
    if (!salt) {
        salt = zeros;
        salt_length = sizeof(zeros);
    }
    hmac_sha256(salt, salt_length, ikm, ikm_length, prk); /* extract */
    /* expand: T(i) = HMAC(PRK, T(i-1) || info || i) */
    for (size_t done = 0, i = 1; done < out_length; i++) {
        uint8_t counter = (uint8_t)i;
        hmac_sha256_init(&ctx, prk, sizeof(prk));
        if (i > 1)
            hmac_sha256_update(&ctx, t, sizeof(t));
        hmac_sha256_update(&ctx, info, info_length);
        hmac_sha256_update(&ctx, &counter, 1);
        hmac_sha256_final(&ctx, t);
        for (size_t j = 0; j < sizeof(t) && done < out_length; j++)
            out[done++] = t[j];
    }
    wipe(prk, sizeof(prk));
    wipe(t, sizeof(t));
    return 0;
}
