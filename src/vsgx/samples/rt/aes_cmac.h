/* AES-128 (with AES-NI) and AES-CMAC inside enclaves: the enclave's own
   crypto for sealing and report verification. */
#ifndef VSGX_AES_CMAC_H
#define VSGX_AES_CMAC_H
#include <stddef.h>
#include <stdint.h>

struct aes128 {
    uint8_t round_keys[11][16] __attribute__((aligned(16)));
};

void aes128_init(struct aes128 *ctx, const uint8_t key[16]);
void aes128_encrypt(const struct aes128 *ctx, const uint8_t in[16], uint8_t out[16]);
void aes128_cmac(const uint8_t key[16], const void *data, size_t length, uint8_t mac[16]);
/* AES-128-CTR with a 16-byte initial counter block (big-endian increment). */
void aes128_ctr(const uint8_t key[16], const uint8_t iv[16], const void *in, void *out,
                size_t length);
int constant_time_equal(const void *a, const void *b, size_t length);

#endif
