/* Remote attestation in the sample enclave: the enclave half of the flow
   that vsgx.samples.ra verifies (its docstring has the protocol).

   ecall_ra_begin      makes an X25519 key pair from RDRAND and EREPORTs to
                       the quoting enclave's TARGETINFO with REPORTDATA =
                       public key || SHA-256(RA_LABEL): the quote of that
                       report binds the key to this enclave's identity.
   ecall_ra_provision  takes a secret the verifier encrypted to that key:
                       X25519 with the verifier's key, HKDF-SHA256 to an
                       AES-128-CTR key and an AES-CMAC key, the tag checked
                       over nonce || ciphertext before anything is
                       decrypted. A good one consumes the key pair.
   ecall_ra_use        proves the secret is here: HMAC-SHA256(secret,
                       challenge).

   The state is one session (key pair) and one secret, under a lock, since
   any thread may call any ECALL. */
#include "aes_cmac.h"
#include "hello_t.h"
#include "hmac_sha256.h"
#include "x25519.h"

#define RA_LABEL "vsgx ra demo v1"
#define RA_KEYS_INFO RA_LABEL " provisioning"
#define RA_SECRET_MAX 1024

static volatile int g_ra_lock;
static uint8_t g_ra_private[X25519_SIZE], g_ra_public[X25519_SIZE];
static int g_ra_session;
static uint8_t g_ra_secret[RA_SECRET_MAX];
static size_t g_ra_secret_length; /* 0: none provisioned */

static void lock(void)
{
    while (__sync_lock_test_and_set(&g_ra_lock, 1))
        __asm__ volatile("pause");
}

static void unlock(void) { __sync_lock_release(&g_ra_lock); }

static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = p;
    while (n--)
        *v++ = 0;
}

static int random_bytes(uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r;
        if (!vsgx_rdrand64(&r))
            return 0;
        for (size_t j = 0; j < 8 && i + j < n; j++)
            out[i + j] = (uint8_t)(r >> (8 * j));
    }
    return 1;
}

sgx_status_t ecall_ra_begin(const sgx_target_info_t *qe_target_info, sgx_report_t *report,
                            uint8_t *public_key)
{
    uint8_t data[64];
    if (!qe_target_info || !report || !public_key)
        return SGX_ERROR_INVALID_PARAMETER;
    lock();
    if (!random_bytes(g_ra_private, sizeof(g_ra_private))) {
        unlock();
        return SGX_ERROR_UNEXPECTED;
    }
    x25519_public_key(g_ra_public, g_ra_private);
    g_ra_session = 1;
    memcpy(data, g_ra_public, 32);
    sha256(RA_LABEL, sizeof(RA_LABEL) - 1, data + 32);
    memcpy(public_key, g_ra_public, 32);
    unlock();
    return vsgx_create_report((const struct sgx_targetinfo *)qe_target_info, data,
                              (struct sgx_report *)report);
}

sgx_status_t ecall_ra_provision(const uint8_t *peer_public_key, const uint8_t *nonce,
                                const uint8_t *ciphertext, size_t length, const uint8_t *tag)
{
    uint8_t shared[32], keys[32], info[sizeof(RA_KEYS_INFO) - 1 + 64], mac[16];
    uint8_t authenticated[16 + RA_SECRET_MAX];
    static const uint8_t zero[32];
    sgx_status_t status = SGX_SUCCESS;
    if (!peer_public_key || !nonce || !ciphertext || !tag || length == 0 ||
        length > RA_SECRET_MAX)
        return SGX_ERROR_INVALID_PARAMETER;
    lock();
    if (!g_ra_session) {
        unlock();
        return SGX_ERROR_INVALID_STATE;
    }
    x25519(shared, g_ra_private, peer_public_key);
    /* A low-order peer key makes the shared secret zero (RFC 7748 section 6.1). */
    if (constant_time_equal(shared, zero, sizeof(shared))) {
        status = SGX_ERROR_INVALID_PARAMETER;
        goto out;
    }
    memcpy(info, RA_KEYS_INFO, sizeof(RA_KEYS_INFO) - 1);
    memcpy(info + sizeof(RA_KEYS_INFO) - 1, g_ra_public, 32);
    memcpy(info + sizeof(RA_KEYS_INFO) - 1 + 32, peer_public_key, 32);
    hkdf_sha256(0, 0, shared, sizeof(shared), info, sizeof(info), keys, sizeof(keys));
    memcpy(authenticated, nonce, 16);
    memcpy(authenticated + 16, ciphertext, length);
    aes128_cmac(keys + 16, authenticated, 16 + length, mac);
    if (!constant_time_equal(mac, tag, sizeof(mac))) {
        status = SGX_ERROR_MAC_MISMATCH;
        goto out;
    }
    aes128_ctr(keys, nonce, ciphertext, g_ra_secret, length);
    g_ra_secret_length = length;
    wipe(g_ra_private, sizeof(g_ra_private)); /* one secret per session */
    g_ra_session = 0;
out:
    unlock();
    wipe(shared, sizeof(shared));
    wipe(keys, sizeof(keys));
    return status;
}

sgx_status_t ecall_ra_use(const uint8_t *challenge, uint8_t *mac)
{
    if (!challenge || !mac)
        return SGX_ERROR_INVALID_PARAMETER;
    lock();
    if (!g_ra_secret_length) {
        unlock();
        return SGX_ERROR_INVALID_STATE;
    }
    hmac_sha256(g_ra_secret, g_ra_secret_length, challenge, 32, mac);
    unlock();
    return SGX_SUCCESS;
}
