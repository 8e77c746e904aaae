/* Local attestation and sealing for vsgx sample enclaves, on EREPORT and
   EGETKEY (the shape of the SDK's sgx_create_report / sgx_verify_report /
   sgx_seal_data, with AES-128-CTR + CMAC instead of AES-GCM). */
#include "aes_cmac.h"
#include "vsgx_rt.h"

#define ATTRIBUTES_INIT_DEBUG 0x3ull
#define REPORT_CPUSVN 0
#define REPORT_ISVSVN 258

int vsgx_rdrand64(uint64_t *value)
{
    for (int i = 0; i < 10; i++) {
        unsigned char ok;
        __asm__ volatile("rdrand %0; setc %1" : "=r"(*value), "=qm"(ok));
        if (ok)
            return 1;
    }
    return 0;
}

sgx_status_t vsgx_create_report(const struct sgx_targetinfo *target, const uint8_t data[64],
                                struct sgx_report *report)
{
    struct sgx_targetinfo t;
    uint8_t d[64] __attribute__((aligned(128)));
    struct sgx_report r;
    if (target)
        memcpy(&t, target, sizeof(t));
    else
        memset(&t, 0, sizeof(t));
    if (data)
        memcpy(d, data, 64);
    else
        memset(d, 0, 64);
    enclu(ENCLU_EREPORT, (uint64_t)&t, (uint64_t)d, (uint64_t)&r);
    memcpy(report, &r, SGX_REPORT_SIZE);
    return SGX_SUCCESS;
}

sgx_status_t vsgx_self_targetinfo(struct sgx_targetinfo *target)
{
    struct sgx_report r;
    vsgx_create_report(0, 0, &r);
    memset(target, 0, sizeof(*target));
    memcpy(target->bytes, r.body + SGX_REPORT_BODY_MRENCLAVE, 32);   /* MEASUREMENT */
    memcpy(target->bytes + 32, r.body + SGX_REPORT_BODY_ATTRIBUTES, 16);
    memcpy(target->bytes + 52, r.body + 16, 4);                      /* MISCSELECT */
    return SGX_SUCCESS;
}

sgx_status_t vsgx_verify_report(const struct sgx_report *report)
{
    struct sgx_keyrequest request;
    struct sgx_report r;
    uint8_t key[16] __attribute__((aligned(16)));
    uint8_t mac[16];
    memcpy(&r, report, SGX_REPORT_SIZE);
    memset(&request, 0, sizeof(request));
    request.keyname = SGX_KEYNAME_REPORT;
    memcpy(request.keyid, r.keyid, 32);
    if (enclu(ENCLU_EGETKEY, (uint64_t)&request, (uint64_t)key, 0) != 0)
        return SGX_ERROR_UNEXPECTED;
    aes128_cmac(key, r.body, sizeof(r.body), mac);
    memset(key, 0, sizeof(key));
    return constant_time_equal(mac, r.mac, 16) ? SGX_SUCCESS : SGX_ERROR_MAC_MISMATCH;
}

static sgx_status_t seal_key(const struct vsgx_sealed_header *h, uint8_t enc[16], uint8_t mac[16])
{
    struct sgx_keyrequest request;
    uint8_t key[16] __attribute__((aligned(16)));
    memset(&request, 0, sizeof(request));
    request.keyname = SGX_KEYNAME_SEAL;
    request.keypolicy = h->keypolicy;
    request.isvsvn = h->isvsvn;
    memcpy(request.cpusvn, h->cpusvn, 16);
    request.attributemask = ATTRIBUTES_INIT_DEBUG;
    request.miscmask = 0;
    memcpy(request.keyid, h->keyid, 32);
    if (enclu(ENCLU_EGETKEY, (uint64_t)&request, (uint64_t)key, 0) != 0)
        return SGX_ERROR_MAC_MISMATCH;
    /* Separate keys for encryption and authentication. */
    struct aes128 ctx;
    uint8_t block[16] = {1};
    aes128_init(&ctx, key);
    aes128_encrypt(&ctx, block, enc);
    block[0] = 2;
    aes128_encrypt(&ctx, block, mac);
    memset(key, 0, sizeof(key));
    return SGX_SUCCESS;
}

size_t vsgx_sealed_size(size_t length) { return sizeof(struct vsgx_sealed_header) + length; }

sgx_status_t vsgx_seal(uint16_t keypolicy, const void *plaintext, size_t length, void *sealed,
                       size_t capacity)
{
    struct vsgx_sealed_header h;
    struct sgx_report self;
    uint8_t enc[16], mac_key[16];
    if (capacity < vsgx_sealed_size(length) || length > 0xFFFFFFFF)
        return SGX_ERROR_INVALID_PARAMETER;
    memset(&h, 0, sizeof(h));
    vsgx_create_report(0, 0, &self);
    memcpy(h.cpusvn, self.body + REPORT_CPUSVN, 16);
    memcpy(&h.isvsvn, self.body + REPORT_ISVSVN, 2);
    h.keypolicy = keypolicy;
    h.length = (uint32_t)length;
    for (int i = 0; i < 4; i++) {
        uint64_t r;
        if (!vsgx_rdrand64(&r))
            return SGX_ERROR_UNEXPECTED;
        memcpy(h.keyid + 8 * i, &r, 8);
    }
    for (int i = 0; i < 2; i++) {
        uint64_t r;
        if (!vsgx_rdrand64(&r))
            return SGX_ERROR_UNEXPECTED;
        memcpy(h.iv + 8 * i, &r, 8);
    }
    sgx_status_t status = seal_key(&h, enc, mac_key);
    if (status)
        return status;
    uint8_t *blob = sealed;
    memcpy(blob, &h, sizeof(h));
    aes128_ctr(enc, h.iv, plaintext, blob + sizeof(h), length);
    aes128_cmac(mac_key, blob + 16, vsgx_sealed_size(length) - 16, blob);
    memset(enc, 0, 16);
    memset(mac_key, 0, 16);
    return SGX_SUCCESS;
}

sgx_status_t vsgx_unseal(const void *sealed, size_t sealed_length, void *plaintext,
                         size_t capacity, size_t *length)
{
    struct vsgx_sealed_header h;
    uint8_t enc[16], mac_key[16], tag[16];
    if (sealed_length < sizeof(h))
        return SGX_ERROR_INVALID_PARAMETER;
    memcpy(&h, sealed, sizeof(h));
    if (sealed_length != vsgx_sealed_size(h.length) || capacity < h.length)
        return SGX_ERROR_INVALID_PARAMETER;
    sgx_status_t status = seal_key(&h, enc, mac_key);
    if (status)
        return status;
    const uint8_t *blob = sealed;
    aes128_cmac(mac_key, blob + 16, sealed_length - 16, tag);
    if (!constant_time_equal(tag, h.mac, 16))
        return SGX_ERROR_MAC_MISMATCH;
    const uint8_t *in = blob + sizeof(h);
    aes128_ctr(enc, h.iv, in, plaintext, h.length);
    *length = h.length;
    memset(enc, 0, 16);
    memset(mac_key, 0, 16);
    return SGX_SUCCESS;
}
