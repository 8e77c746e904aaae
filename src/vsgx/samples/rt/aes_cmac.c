/* AES-128 with AES-NI, CMAC (NIST SP 800-38B) and CTR mode. */
#include "aes_cmac.h"

#include <wmmintrin.h>

static __m128i expand_step(__m128i key, __m128i assist)
{
    assist = _mm_shuffle_epi32(assist, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

#define EXPAND(i, rcon)                                                                  \
    k = expand_step(k, _mm_aeskeygenassist_si128(k, rcon));                              \
    _mm_store_si128((__m128i *)ctx->round_keys[i], k)

void aes128_init(struct aes128 *ctx, const uint8_t key[16])
{
    __m128i k = _mm_loadu_si128((const __m128i *)key);
    _mm_store_si128((__m128i *)ctx->round_keys[0], k);
    EXPAND(1, 0x01);
    EXPAND(2, 0x02);
    EXPAND(3, 0x04);
    EXPAND(4, 0x08);
    EXPAND(5, 0x10);
    EXPAND(6, 0x20);
    EXPAND(7, 0x40);
    EXPAND(8, 0x80);
    EXPAND(9, 0x1b);
    EXPAND(10, 0x36);
}

void aes128_encrypt(const struct aes128 *ctx, const uint8_t in[16], uint8_t out[16])
{
    __m128i b = _mm_loadu_si128((const __m128i *)in);
    b = _mm_xor_si128(b, _mm_load_si128((const __m128i *)ctx->round_keys[0]));
    for (int i = 1; i < 10; i++)
        b = _mm_aesenc_si128(b, _mm_load_si128((const __m128i *)ctx->round_keys[i]));
    b = _mm_aesenclast_si128(b, _mm_load_si128((const __m128i *)ctx->round_keys[10]));
    _mm_storeu_si128((__m128i *)out, b);
}

static void double_block(uint8_t block[16])
{
    uint8_t carry = block[0] >> 7;
    for (int i = 0; i < 15; i++)
        block[i] = (uint8_t)(block[i] << 1 | block[i + 1] >> 7);
    block[15] = (uint8_t)(block[15] << 1) ^ (carry ? 0x87 : 0);
}

void aes128_cmac(const uint8_t key[16], const void *data, size_t length, uint8_t mac[16])
{
    struct aes128 ctx;
    uint8_t k1[16] = {0}, state[16] = {0}, last[16];
    const uint8_t *p = data;
    aes128_init(&ctx, key);
    aes128_encrypt(&ctx, k1, k1);
    double_block(k1);
    size_t blocks = length ? (length + 15) / 16 : 1;
    for (size_t i = 0; i + 1 < blocks; i++) {
        for (int j = 0; j < 16; j++)
            state[j] ^= p[16 * i + j];
        aes128_encrypt(&ctx, state, state);
    }
    size_t tail = length - 16 * (blocks - 1);
    if (tail == 16) {
        for (int j = 0; j < 16; j++)
            last[j] = p[16 * (blocks - 1) + j] ^ k1[j];
    } else {
        uint8_t k2[16];
        for (int j = 0; j < 16; j++)
            k2[j] = k1[j];
        double_block(k2);
        for (size_t j = 0; j < 16; j++) {
            uint8_t byte = j < tail ? p[16 * (blocks - 1) + j] : (j == tail ? 0x80 : 0);
            last[j] = byte ^ k2[j];
        }
    }
    for (int j = 0; j < 16; j++)
        state[j] ^= last[j];
    aes128_encrypt(&ctx, state, mac);
}

void aes128_ctr(const uint8_t key[16], const uint8_t iv[16], const void *in, void *out,
                size_t length)
{
    struct aes128 ctx;
    uint8_t counter[16], stream[16];
    const uint8_t *src = in;
    uint8_t *dst = out;
    aes128_init(&ctx, key);
    for (int i = 0; i < 16; i++)
        counter[i] = iv[i];
    for (size_t done = 0; done < length; done += 16) {
        aes128_encrypt(&ctx, counter, stream);
        for (size_t j = 0; j < 16 && done + j < length; j++)
            dst[done + j] = src[done + j] ^ stream[j];
        for (int i = 15; i >= 0 && ++counter[i] == 0; i--)
            ;
    }
}

int constant_time_equal(const void *a, const void *b, size_t length)
{
    const uint8_t *x = a, *y = b;
    uint8_t diff = 0;
    for (size_t i = 0; i < length; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}
