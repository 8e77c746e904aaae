/* The parameter test enclave: every ECALL answers with a function of what
   it received, so the untrusted side can check each byte of the
   marshalling. Bridges and OCALL proxies are in params_t.c.

   The standard EDLs' ECALLs stand in for the SDK libraries that are not
   linked here (switchless, key exchange, DCAP's verification library):
   they hash what they received (FNV-1a) and write outputs derived from it,
   to show every byte crossed at the right place. */
#include "params_t.h"

#define FNV_OFFSET 2166136261u
#define FNV_PRIME 16777619u

static uint32_t fnv(uint32_t hash, const void *data, size_t size)
{
    const uint8_t *bytes = data;
    for (size_t i = 0; i < size; i++) {
        hash ^= bytes[i];
        hash *= FNV_PRIME;
    }
    return hash;
}

size_t get_buffer_len(const char *buf)
{
    uint32_t length;
    memcpy(&length, buf, sizeof(length));
    return length >= sizeof(length) && length <= 4096 ? length : sizeof(length);
}

/* -- types ------------------------------------------------------------------- */
int ecall_type_char(char val) { return val + 1; }
int ecall_type_int(int val) { return val * 3; }
double ecall_type_float(float val) { return (double)val * 2; }
double ecall_type_double(double val) { return val / 4; }
size_t ecall_type_size_t(size_t val) { return ~val; }
int ecall_type_wchar_t(wchar_t val) { return (int)val + 1; }
uint64_t ecall_type_struct(struct struct_foo_t val)
{
    return (uint64_t)val.struct_foo_0 * 1000 + val.struct_foo_1;
}

uint64_t ecall_type_enum_union(enum enum_foo_t val1, union union_foo_t *val2)
{
    if (!val2 || !sgx_is_outside_enclave(val2, sizeof(*val2)))
        return 0;
    uint64_t before = val2->union_foo_3;
    val2->union_foo_3 = val1 == ENUM_FOO_1 ? 0x1111111111111111ull : 0x2222222222222222ull;
    return before;
}

struct struct_foo_t ecall_type_struct_return(uint32_t a, uint64_t b)
{
    struct struct_foo_t result = {a + 1, b * 2};
    return result;
}

int16_t ecall_type_mixed(int8_t a, int16_t b, uint32_t c, int64_t d)
{
    return (int16_t)(a * 1000 + b - (int64_t)c + d);
}

/* -- pointers ------------------------------------------------------------------ */
size_t ecall_pointer_user_check(void *val, size_t sz)
{
    if (!val || !sgx_is_outside_enclave(val, sz))
        return 0;
    uint8_t *bytes = val;
    size_t sum = 0;
    for (size_t i = 0; i < sz; i++) {
        sum += bytes[i];
        bytes[i] = (uint8_t)~bytes[i];
    }
    return sum;
}

int ecall_pointer_in(int *val)
{
    *val += 1; /* only the enclave's copy changes */
    return *val;
}

void ecall_pointer_out(int *val) { *val = *val == 0 ? 1234 : -1; /* arrives zeroed */ }
void ecall_pointer_in_out(int *val) { *val *= 2; }

void ecall_pointer_string(char *str)
{
    for (; *str; str++)
        if (*str >= 'a' && *str <= 'z')
            *str = (char)(*str - 'a' + 'A');
}

size_t ecall_pointer_string_const(const char *str) { return strlen(str); }

size_t ecall_pointer_wstring(const wchar_t *str)
{
    size_t sum = 0;
    for (; *str; str++)
        sum += (size_t)*str;
    return sum;
}

void ecall_pointer_size(void *ptr, size_t len)
{
    uint8_t *bytes = ptr;
    for (size_t i = 0; i < len; i++)
        bytes[i] ^= 0x5A;
}

void ecall_pointer_count(int *arr, size_t cnt)
{
    for (size_t i = 0; i < cnt; i++)
        arr[i] = -arr[i];
}

size_t ecall_pointer_isptr_readonly(buffer_t buf, size_t len)
{
    const uint8_t *bytes = buf;
    size_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum = sum * 31 + bytes[i];
    return sum;
}

void ecall_pointer_isptr_out(buffer_t buf, size_t len)
{
    uint8_t *bytes = buf;
    for (size_t i = 0; i < len; i++)
        bytes[i] = bytes[i] ? 0xEE : (uint8_t)(i * 7); /* arrives zeroed */
}

/* The payload after the length header: each byte + its index. */
void ecall_pointer_sizefunc(char *buf)
{
    size_t len = get_buffer_len(buf);
    for (size_t i = sizeof(uint32_t); i < len; i++)
        buf[i] = (char)(buf[i] + i);
}

uint64_t ecall_pointer_struct(struct struct_foo_t *foo)
{
    uint64_t before = foo->struct_foo_0 + foo->struct_foo_1;
    foo->struct_foo_0 += 1;
    foo->struct_foo_1 *= 3;
    return before;
}

size_t ecall_pointer_size_count(const uint8_t *items, size_t sz, size_t n)
{
    return (size_t)fnv(FNV_OFFSET, items, sz * n) + (sz << 32);
}

/* -- arrays -------------------------------------------------------------------- */
int ecall_array_user_check(int arr[4])
{
    if (!arr || !sgx_is_outside_enclave(arr, 4 * sizeof(int)))
        return -1;
    int sum = 0;
    for (int i = 0; i < 4; i++) {
        sum += arr[i];
        arr[i] += 10;
    }
    return sum;
}

int ecall_array_in(int arr[4])
{
    int sum = 0;
    for (int i = 0; i < 4; i++) {
        sum += (i + 1) * arr[i];
        arr[i] = 0; /* the caller's array stays as it was */
    }
    return sum;
}

void ecall_array_out(int arr[4])
{
    for (int i = 0; i < 4; i++)
        arr[i] = arr[i] ? -1 : i * i;
}

void ecall_array_in_out(int arr[4])
{
    for (int i = 0; i < 4; i++)
        arr[i] = arr[i] * arr[i];
}

int ecall_array_isary(array_t arr)
{
    if (!arr || !sgx_is_outside_enclave(arr, sizeof(array_t)))
        return -1;
    int sum = 0;
    for (int i = 0; i < 10; i++) {
        sum += arr[i];
        arr[i] = 100 - i;
    }
    return sum;
}

int ecall_array_isary_in(array_t arr)
{
    int sum = 0;
    for (int i = 0; i < 10; i++)
        sum += (i + 1) * arr[i];
    return sum;
}

void ecall_array_isary_out(array_t arr)
{
    for (int i = 0; i < 10; i++)
        arr[i] = arr[i] ? -1 : 1000 + i;
}

void ecall_array_2d(int arr[2][3])
{
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            arr[i][j] = arr[i][j] * 10 + i * 3 + j;
}

/* -- functions ------------------------------------------------------------------ */
int ecall_function_public(int x)
{
    int answer = 0;
    if (ocall_function_allow(&answer, x) != SGX_SUCCESS)
        return -1;
    return answer + 1;
}

int ecall_function_private(int x) { return x * 7; }

/* Every kind of OCALL parameter; the untrusted side's handlers answer
   known values. A set bit k: check k failed. */
int ecall_ocalls(void)
{
    int failed = 0, check = 0;
#define CHECK(ok)                                                                      \
    do {                                                                               \
        if (!(ok))                                                                     \
            failed |= 1 << check;                                                      \
        check++;                                                                       \
    } while (0)
    CHECK(ocall_print_string("hello from the params enclave") == SGX_SUCCESS);
    int local = 41;
    CHECK(ocall_pointer_user_check(&local) == SGX_SUCCESS && local == 41);
    int value = 7;
    CHECK(ocall_pointer_in(&value) == SGX_SUCCESS && value == 7); /* not copied back */
    value = 5;
    CHECK(ocall_pointer_out(&value) == SGX_SUCCESS && value == 99);
    value = 5;
    CHECK(ocall_pointer_in_out(&value) == SGX_SUCCESS && value == 50);
    size_t lengths = 0;
    CHECK(ocall_strings(&lengths, "narrow", L"wide \u2603") == SGX_SUCCESS
          && lengths == 6 * 100 + 6);
    char sized[12] = {12, 0, 0, 0, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'};
    int sum = 0;
    CHECK(ocall_sizefunc(&sum, sized) == SGX_SUCCESS && sum == 'a' + 'b' + 'c' + 'd' + 'e' + 'f'
          + 'g' + 'h' && sized[4] == 'h' && sized[11] == 'a');
    array_t arr = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    CHECK(ocall_isary(&sum, arr) == SGX_SUCCESS && sum == 55 && arr[0] == 2 && arr[9] == 20);
    size_t checksum = 0;
    CHECK(ocall_isptr(&checksum, (buffer_t) "isptr!", 6) == SGX_SUCCESS
          && checksum == 'i' + 's' + 'p' + 't' + 'r' + '!');
    struct struct_foo_t foo = {0x11, 0x2200000033ull}, copy = {0, 0};
    union union_foo_t u;
    u.union_foo_3 = 0x1122334455667788ull;
    uint64_t combined = 0;
    CHECK(ocall_struct(&combined, foo, &copy, ENUM_FOO_1, u) == SGX_SUCCESS
          && copy.struct_foo_0 == 0x33 && copy.struct_foo_1 == 0x2200000011ull
          && combined == 1 + 0x55667788ull);
    int result = 0, error = 0;
    CHECK(ocall_errno(&result, &error, 13) == SGX_SUCCESS && result == -1 && error == 13);
    uint8_t timeb[16] = {0};
    int64_t seconds;
    CHECK(u_sgxssl_ftime(timeb, sizeof(timeb)) == SGX_SUCCESS
          && (memcpy(&seconds, timeb, sizeof(seconds)), seconds > 1600000000));
#undef CHECK
    return failed;
}

/* -- stand-ins for the standard EDLs' ECALLs ---------------------------------------- */
sgx_status_t sl_init_switchless(void *sl_data)
{
    return sl_data && sgx_is_outside_enclave(sl_data, 1) ? SGX_SUCCESS
                                                         : SGX_ERROR_INVALID_PARAMETER;
}

sgx_status_t sl_run_switchless_tworker(void) { return SGX_SUCCESS; }

sgx_status_t sgx_ra_get_ga(sgx_ra_context_t context, sgx_ec256_public_t *g_a)
{
    uint8_t *bytes = (uint8_t *)g_a;
    for (size_t i = 0; i < sizeof(*g_a); i++)
        bytes[i] = (uint8_t)(context + i);
    return context ^ 0x1000;
}

sgx_status_t sgx_ra_proc_msg2_trusted(sgx_ra_context_t context, const sgx_ra_msg2_t *p_msg2,
                                      const sgx_target_info_t *p_qe_target,
                                      sgx_report_t *p_report, sgx_quote_nonce_t *p_nonce)
{
    const uint8_t *msg2 = (const uint8_t *)p_msg2, *target = (const uint8_t *)p_qe_target;
    uint8_t *report = (uint8_t *)p_report, *nonce = (uint8_t *)p_nonce;
    for (size_t i = 0; i < sizeof(*p_report); i++)
        report[i] = msg2[i % sizeof(*p_msg2)] ^ target[i % sizeof(*p_qe_target)];
    for (size_t i = 0; i < sizeof(*p_nonce); i++)
        nonce[i] = (uint8_t)(context + i);
    return fnv(fnv(FNV_OFFSET, p_msg2, sizeof(*p_msg2)), p_qe_target, sizeof(*p_qe_target));
}

sgx_status_t sgx_ra_get_msg3_trusted(sgx_ra_context_t context, uint32_t quote_size,
                                     sgx_report_t *qe_report, sgx_ra_msg3_t *p_msg3,
                                     uint32_t msg3_size)
{
    if (!p_msg3 || msg3_size < 16 || !sgx_is_outside_enclave(p_msg3, msg3_size))
        return SGX_ERROR_INVALID_PARAMETER;
    memcpy(p_msg3, qe_report, 16); /* [user_check]: written in place */
    return fnv(FNV_OFFSET, qe_report, sizeof(*qe_report)) + quote_size + context;
}

quote3_error_t sgx_tvl_verify_qve_report_and_identity(
    const uint8_t *p_quote, uint32_t quote_size, const sgx_ql_qe_report_info_t *p_qve_report_info,
    time_t expiration_check_date, uint32_t collateral_expiration_status,
    sgx_ql_qv_result_t quote_verification_result, const uint8_t *p_supplemental_data,
    uint32_t supplemental_data_size, sgx_isv_svn_t qve_isvsvn_threshold)
{
    uint32_t hash = fnv(FNV_OFFSET, p_quote, quote_size);
    hash = fnv(hash, p_qve_report_info, sizeof(*p_qve_report_info));
    hash = fnv(hash, p_supplemental_data, supplemental_data_size);
    return hash ^ (uint32_t)expiration_check_date ^ collateral_expiration_status * 3
        ^ quote_verification_result * 5 ^ (uint32_t)qve_isvsvn_threshold * 7;
}

quote3_error_t tee_verify_qae_report_and_identity(qae_verification_input_t *input,
                                                  sgx_ql_qe_report_info_t qae_report_info,
                                                  sgx_isv_svn_t qae_isvsvn_threshold)
{
    uint32_t hash = fnv(FNV_OFFSET, input, sizeof(*input));
    hash = fnv(hash, &qae_report_info, sizeof(qae_report_info));
    return hash ^ qae_isvsvn_threshold;
}
