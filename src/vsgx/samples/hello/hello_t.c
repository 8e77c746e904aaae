/* Trusted bridges and OCALL proxies for hello.edl, written by hand in the
   layout Intel's edger8r generates (ms_<name>_t structs with ms_retval
   first, [in] copies, [out] copy-back, ordinals in declaration order,
   sgx_tstdc.edl's OCALLs after the enclave's own). */
#include "hello_t.h"

#define CHECK_REF_POINTER(p, size)                                                     \
    do {                                                                               \
        if (!(p) || !sgx_is_outside_enclave((p), (size)))                              \
            return SGX_ERROR_INVALID_PARAMETER;                                         \
    } while (0)
#define CHECK_UNIQUE_POINTER(p, size)                                                  \
    do {                                                                               \
        if ((p) && !sgx_is_outside_enclave((p), (size)))                               \
            return SGX_ERROR_INVALID_PARAMETER;                                         \
    } while (0)

typedef struct { int ms_retval; const char *ms_name; size_t ms_name_len; } ms_ecall_hello_t;
typedef struct { int ms_retval; int ms_a; int ms_b; } ms_ecall_add_t;
typedef struct { int ms_retval; int ms_count; } ms_ecall_ocall_nop_t;
typedef struct {
    int ms_retval;
    const uint8_t *ms_in;
    size_t ms_length;
    uint8_t *ms_out;
    size_t ms_capacity;
} ms_ecall_seal_t, ms_ecall_unseal_t;
typedef struct {
    int ms_retval;
    const uint8_t *ms_target;
    const uint8_t *ms_data;
    uint8_t *ms_report;
} ms_ecall_report_t;
typedef struct { int ms_retval; uint8_t *ms_target; } ms_ecall_target_info_t;
typedef struct { int ms_retval; const uint8_t *ms_report; } ms_ecall_verify_report_t;
typedef struct { int ms_retval; int ms_kind; } ms_ecall_fault_t, ms_ecall_call_back_t,
    ms_ecall_private_t;
typedef struct { int ms_retval; uint32_t ms_leaf; uint32_t *ms_regs; } ms_ecall_cpuid_t;
typedef struct {
    sgx_status_t ms_retval;
    const sgx_target_info_t *ms_qe_target_info;
    sgx_report_t *ms_report;
    uint8_t *ms_public_key;
} ms_ecall_ra_begin_t;
typedef struct {
    sgx_status_t ms_retval;
    const uint8_t *ms_peer_public_key;
    const uint8_t *ms_nonce;
    const uint8_t *ms_ciphertext;
    size_t ms_length;
    const uint8_t *ms_tag;
} ms_ecall_ra_provision_t;
typedef struct {
    sgx_status_t ms_retval;
    const uint8_t *ms_challenge;
    uint8_t *ms_mac;
} ms_ecall_ra_use_t;

typedef struct { const char *ms_text; } ms_ocall_print_t;
typedef struct { int ms_retval; int ms_x; } ms_ocall_call_back_t;
typedef struct { int *ms_cpuinfo; int ms_leaf; int ms_subleaf; } ms_sgx_oc_cpuidex_t;
typedef struct { int ms_retval; const void *ms_self; } ms_wait_event_t;
typedef struct { int ms_retval; const void *ms_waiter; } ms_set_event_t;
typedef struct { int ms_retval; const void *ms_waiter; const void *ms_self; } ms_setwait_events_t;
typedef struct { int ms_retval; const void **ms_waiters; size_t ms_total; } ms_set_multiple_t;
typedef struct { int ms_retval; unsigned long long ms_waiter; unsigned long long ms_timeout; }
    ms_pthread_wait_timeout_t;
typedef struct { int ms_retval; unsigned long long ms_arg; } ms_pthread_one_t;
typedef struct { int ms_retval; int ms_arg; } ms_int_int_t;
typedef struct { int ms_retval; } ms_int_t;

/* Copy an [in] buffer into the enclave; NULL stays NULL. */
static sgx_status_t copy_in(const void *untrusted, size_t size, void **copy)
{
    *copy = 0;
    if (!untrusted)
        return SGX_SUCCESS;
    if (!sgx_is_outside_enclave(untrusted, size))
        return SGX_ERROR_INVALID_PARAMETER;
    *copy = malloc(size);
    if (!*copy)
        return SGX_ERROR_OUT_OF_MEMORY;
    memcpy(*copy, untrusted, size);
    return SGX_SUCCESS;
}

static sgx_status_t out_buffer(const void *untrusted, size_t size, void **copy)
{
    *copy = 0;
    if (!untrusted)
        return SGX_SUCCESS;
    if (!sgx_is_outside_enclave(untrusted, size))
        return SGX_ERROR_INVALID_PARAMETER;
    *copy = malloc(size ? size : 1);
    if (!*copy)
        return SGX_ERROR_OUT_OF_MEMORY;
    memset(*copy, 0, size);
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_hello(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_hello_t));
    ms_ecall_hello_t ms = *(ms_ecall_hello_t *)pms;
    char *name = 0;
    if (!ms.ms_name || ms.ms_name_len == 0 || ms.ms_name_len > 4096)
        return SGX_ERROR_INVALID_PARAMETER;
    sgx_status_t status = copy_in(ms.ms_name, ms.ms_name_len, (void **)&name);
    if (status)
        return status;
    name[ms.ms_name_len - 1] = 0;
    if (strlen(name) + 1 != ms.ms_name_len) {
        free(name);
        return SGX_ERROR_UNEXPECTED;
    }
    ((ms_ecall_hello_t *)pms)->ms_retval = ecall_hello(name);
    free(name);
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_add(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_add_t));
    ms_ecall_add_t *ms = pms;
    ms->ms_retval = ecall_add(ms->ms_a, ms->ms_b);
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_nop(void *pms)
{
    if (pms)
        return SGX_ERROR_INVALID_PARAMETER;
    ecall_nop();
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_ocall_nop(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_ocall_nop_t));
    ms_ecall_ocall_nop_t *ms = pms;
    ms->ms_retval = ecall_ocall_nop(ms->ms_count);
    return SGX_SUCCESS;
}

typedef int (*buffer_fn)(const uint8_t *, size_t, uint8_t *, size_t);

static sgx_status_t buffer_bridge(void *pms, buffer_fn fn)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_seal_t));
    ms_ecall_seal_t ms = *(ms_ecall_seal_t *)pms;
    void *in = 0, *out = 0;
    if (ms.ms_length > (1 << 20) || ms.ms_capacity > (1 << 20))
        return SGX_ERROR_INVALID_PARAMETER;
    CHECK_UNIQUE_POINTER(ms.ms_in, ms.ms_length);
    CHECK_UNIQUE_POINTER(ms.ms_out, ms.ms_capacity);
    sgx_status_t status = copy_in(ms.ms_in, ms.ms_length, &in);
    if (!status)
        status = out_buffer(ms.ms_out, ms.ms_capacity, &out);
    if (!status) {
        ((ms_ecall_seal_t *)pms)->ms_retval = fn(in, ms.ms_length, out, ms.ms_capacity);
        if (out)
            memcpy(ms.ms_out, out, ms.ms_capacity);
    }
    free(in);
    free(out);
    return status;
}

static sgx_status_t sgx_ecall_seal(void *pms) { return buffer_bridge(pms, ecall_seal); }
static sgx_status_t sgx_ecall_unseal(void *pms) { return buffer_bridge(pms, ecall_unseal); }

static sgx_status_t sgx_ecall_report(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_report_t));
    ms_ecall_report_t ms = *(ms_ecall_report_t *)pms;
    void *target = 0, *data = 0, *report = 0;
    CHECK_UNIQUE_POINTER(ms.ms_target, 512);
    CHECK_UNIQUE_POINTER(ms.ms_data, 64);
    CHECK_UNIQUE_POINTER(ms.ms_report, 432);
    sgx_status_t status = copy_in(ms.ms_target, 512, &target);
    if (!status)
        status = copy_in(ms.ms_data, 64, &data);
    if (!status)
        status = out_buffer(ms.ms_report, 432, &report);
    if (!status) {
        ((ms_ecall_report_t *)pms)->ms_retval = ecall_report(target, data, report);
        if (report)
            memcpy(ms.ms_report, report, 432);
    }
    free(target);
    free(data);
    free(report);
    return status;
}

static sgx_status_t sgx_ecall_target_info(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_target_info_t));
    ms_ecall_target_info_t ms = *(ms_ecall_target_info_t *)pms;
    void *target = 0;
    CHECK_UNIQUE_POINTER(ms.ms_target, 512);
    sgx_status_t status = out_buffer(ms.ms_target, 512, &target);
    if (!status) {
        ((ms_ecall_target_info_t *)pms)->ms_retval = ecall_target_info(target);
        if (target)
            memcpy(ms.ms_target, target, 512);
    }
    free(target);
    return status;
}

static sgx_status_t sgx_ecall_verify_report(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_verify_report_t));
    ms_ecall_verify_report_t ms = *(ms_ecall_verify_report_t *)pms;
    void *report = 0;
    CHECK_UNIQUE_POINTER(ms.ms_report, 432);
    sgx_status_t status = copy_in(ms.ms_report, 432, &report);
    if (!status)
        ((ms_ecall_verify_report_t *)pms)->ms_retval = ecall_verify_report(report);
    free(report);
    return status;
}

static sgx_status_t sgx_ecall_fault(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_fault_t));
    ms_ecall_fault_t *ms = pms;
    ms->ms_retval = ecall_fault(ms->ms_kind);
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_cpuid(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_cpuid_t));
    ms_ecall_cpuid_t ms = *(ms_ecall_cpuid_t *)pms;
    uint32_t regs[4] = {0};
    CHECK_UNIQUE_POINTER(ms.ms_regs, sizeof(regs));
    ((ms_ecall_cpuid_t *)pms)->ms_retval = ecall_cpuid(ms.ms_leaf, regs);
    if (ms.ms_regs)
        memcpy(ms.ms_regs, regs, sizeof(regs));
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_call_back(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_call_back_t));
    ms_ecall_call_back_t *ms = pms;
    ms->ms_retval = ecall_call_back(ms->ms_kind);
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_private(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_private_t));
    ms_ecall_private_t *ms = pms;
    ms->ms_retval = ecall_private(ms->ms_kind);
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_wait_event(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_int_t));
    ((ms_int_t *)pms)->ms_retval = ecall_wait_event();
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_wake_event(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_int_int_t));
    ms_int_int_t *ms = pms;
    ms->ms_retval = ecall_wake_event(ms->ms_arg);
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_spawn(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_int_int_t));
    ms_int_int_t *ms = pms;
    ms->ms_retval = ecall_spawn(ms->ms_arg);
    return SGX_SUCCESS;
}

static sgx_status_t sgx_ecall_ra_begin(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_ra_begin_t));
    ms_ecall_ra_begin_t ms = *(ms_ecall_ra_begin_t *)pms;
    void *target = 0, *report = 0, *public_key = 0;
    CHECK_UNIQUE_POINTER(ms.ms_qe_target_info, sizeof(sgx_target_info_t));
    CHECK_UNIQUE_POINTER(ms.ms_report, sizeof(sgx_report_t));
    CHECK_UNIQUE_POINTER(ms.ms_public_key, 32);
    sgx_status_t status = copy_in(ms.ms_qe_target_info, sizeof(sgx_target_info_t), &target);
    if (!status)
        status = out_buffer(ms.ms_report, sizeof(sgx_report_t), &report);
    if (!status)
        status = out_buffer(ms.ms_public_key, 32, &public_key);
    if (!status) {
        ((ms_ecall_ra_begin_t *)pms)->ms_retval = ecall_ra_begin(target, report, public_key);
        if (report)
            memcpy(ms.ms_report, report, sizeof(sgx_report_t));
        if (public_key)
            memcpy(ms.ms_public_key, public_key, 32);
    }
    free(target);
    free(report);
    free(public_key);
    return status;
}

static sgx_status_t sgx_ecall_ra_provision(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_ra_provision_t));
    ms_ecall_ra_provision_t ms = *(ms_ecall_ra_provision_t *)pms;
    void *peer = 0, *nonce = 0, *ciphertext = 0, *tag = 0;
    if (ms.ms_length > (1 << 20))
        return SGX_ERROR_INVALID_PARAMETER;
    CHECK_UNIQUE_POINTER(ms.ms_peer_public_key, 32);
    CHECK_UNIQUE_POINTER(ms.ms_nonce, 16);
    CHECK_UNIQUE_POINTER(ms.ms_ciphertext, ms.ms_length);
    CHECK_UNIQUE_POINTER(ms.ms_tag, 16);
    sgx_status_t status = copy_in(ms.ms_peer_public_key, 32, &peer);
    if (!status)
        status = copy_in(ms.ms_nonce, 16, &nonce);
    if (!status)
        status = copy_in(ms.ms_ciphertext, ms.ms_length, &ciphertext);
    if (!status)
        status = copy_in(ms.ms_tag, 16, &tag);
    if (!status)
        ((ms_ecall_ra_provision_t *)pms)->ms_retval =
            ecall_ra_provision(peer, nonce, ciphertext, ms.ms_length, tag);
    free(peer);
    free(nonce);
    free(ciphertext);
    free(tag);
    return status;
}

static sgx_status_t sgx_ecall_ra_use(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_ecall_ra_use_t));
    ms_ecall_ra_use_t ms = *(ms_ecall_ra_use_t *)pms;
    void *challenge = 0, *mac = 0;
    CHECK_UNIQUE_POINTER(ms.ms_challenge, 32);
    CHECK_UNIQUE_POINTER(ms.ms_mac, 32);
    sgx_status_t status = copy_in(ms.ms_challenge, 32, &challenge);
    if (!status)
        status = out_buffer(ms.ms_mac, 32, &mac);
    if (!status) {
        ((ms_ecall_ra_use_t *)pms)->ms_retval = ecall_ra_use(challenge, mac);
        if (mac)
            memcpy(ms.ms_mac, mac, 32);
    }
    free(challenge);
    free(mac);
    return status;
}

#define NR_ECALL 19
#define NR_OCALL 11

const struct {
    size_t nr_ecall;
    struct ecall_entry ecall_table[NR_ECALL];
} g_ecall_table_storage __asm__("g_ecall_table") = {
    NR_ECALL,
    {
        {(const void *)sgx_ecall_hello, 0, 0},
        {(const void *)sgx_ecall_add, 0, 0},
        {(const void *)sgx_ecall_nop, 0, 0},
        {(const void *)sgx_ecall_ocall_nop, 0, 0},
        {(const void *)sgx_ecall_seal, 0, 0},
        {(const void *)sgx_ecall_unseal, 0, 0},
        {(const void *)sgx_ecall_report, 0, 0},
        {(const void *)sgx_ecall_target_info, 0, 0},
        {(const void *)sgx_ecall_verify_report, 0, 0},
        {(const void *)sgx_ecall_fault, 0, 0},
        {(const void *)sgx_ecall_cpuid, 0, 0},
        {(const void *)sgx_ecall_call_back, 0, 0},
        {(const void *)sgx_ecall_private, 1, 0},
        {(const void *)sgx_ecall_wait_event, 0, 0},
        {(const void *)sgx_ecall_wake_event, 0, 0},
        {(const void *)sgx_ecall_spawn, 0, 0},
        {(const void *)sgx_ecall_ra_begin, 0, 0},
        {(const void *)sgx_ecall_ra_provision, 0, 0},
        {(const void *)sgx_ecall_ra_use, 0, 0},
    },
};

/* Row = OCALL, column = ECALL: ocall_call_back (2) allows ecall_private (12). */
const struct {
    size_t nr_ocall;
    uint8_t entry_table[NR_OCALL][NR_ECALL];
} g_dyn_entry_table_storage __asm__("g_dyn_entry_table") = {
    NR_OCALL,
    {
        [2] = {[12] = 1},
    },
};

/* OCALL proxies: the ms struct and its buffers are allocated on the
   untrusted stack below SSA[0].URSP. */
sgx_status_t ocall_print(const char *text)
{
    size_t len = text ? strlen(text) + 1 : 0;
    ms_ocall_print_t *ms = sgx_ocalloc(sizeof(*ms) + len);
    char *copy = (char *)(ms + 1);
    memcpy(copy, text, len);
    ms->ms_text = text ? copy : 0;
    sgx_status_t status = sgx_ocall(0, ms);
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_nop(void) { return sgx_ocall(1, 0); }

sgx_status_t ocall_call_back(int *retval, int x)
{
    ms_ocall_call_back_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_x = x;
    sgx_status_t status = sgx_ocall(2, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t sgx_oc_cpuidex(int cpuinfo[4], int leaf, int subleaf)
{
    ms_sgx_oc_cpuidex_t *ms = sgx_ocalloc(sizeof(*ms) + 16);
    int *slot = (int *)(ms + 1);
    memset(slot, 0, 16);
    ms->ms_cpuinfo = slot;
    ms->ms_leaf = leaf;
    ms->ms_subleaf = subleaf;
    sgx_status_t status = sgx_ocall(3, ms);
    if (status == SGX_SUCCESS)
        memcpy(cpuinfo, slot, 16);
    sgx_ocfree();
    return status;
}

/* sgx_tstdc.edl's untrusted events (OCALLs 4-7) and sgx_pthread.edl's
   OCALLs (8-10): imported after the enclave's own, in import order. */
sgx_status_t sgx_thread_wait_untrusted_event_ocall(int *retval, const void *self)
{
    ms_wait_event_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_self = self;
    sgx_status_t status = sgx_ocall(4, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t sgx_thread_set_untrusted_event_ocall(int *retval, const void *waiter)
{
    ms_set_event_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_waiter = waiter;
    sgx_status_t status = sgx_ocall(5, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t sgx_thread_setwait_untrusted_events_ocall(int *retval, const void *waiter,
                                                       const void *self)
{
    ms_setwait_events_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_waiter = waiter;
    ms->ms_self = self;
    sgx_status_t status = sgx_ocall(6, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t sgx_thread_set_multiple_untrusted_events_ocall(int *retval, const void **waiters,
                                                            size_t total)
{
    size_t len = total * sizeof(void *);
    if (total > (1 << 16))
        return SGX_ERROR_INVALID_PARAMETER;
    ms_set_multiple_t *ms = sgx_ocalloc(sizeof(*ms) + len);
    const void **copy = (const void **)(ms + 1);
    memcpy(copy, waiters, len);
    ms->ms_waiters = waiters ? copy : 0;
    ms->ms_total = total;
    sgx_status_t status = sgx_ocall(7, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t pthread_wait_timeout_ocall(int *retval, unsigned long long waiter,
                                        unsigned long long timeout)
{
    ms_pthread_wait_timeout_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_waiter = waiter;
    ms->ms_timeout = timeout;
    sgx_status_t status = sgx_ocall(8, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

static sgx_status_t pthread_one(uint32_t index, int *retval, unsigned long long arg)
{
    ms_pthread_one_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_arg = arg;
    sgx_status_t status = sgx_ocall(index, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t pthread_create_ocall(int *retval, unsigned long long self)
{
    return pthread_one(9, retval, self);
}

sgx_status_t pthread_wakeup_ocall(int *retval, unsigned long long waiter)
{
    return pthread_one(10, retval, waiter);
}
