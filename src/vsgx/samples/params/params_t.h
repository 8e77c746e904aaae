/* Trusted-side declarations for params.edl (what edger8r's params_t.h
   holds): the ECALLs the enclave implements, the OCALL proxies it calls,
   and SDK 1.x's sizefunc. */
#ifndef PARAMS_T_H
#define PARAMS_T_H
#include <stddef.h>
#include <stdint.h>

#include "params_ms.h"
#include "vsgx_rt.h"

void *malloc(size_t size);
void free(void *p);

/* [sizefunc = get_buffer_len]: a uint32 header holds the buffer's size. */
size_t get_buffer_len(const char *buf);

int ecall_type_char(char val);
int ecall_type_int(int val);
double ecall_type_float(float val);
double ecall_type_double(double val);
size_t ecall_type_size_t(size_t val);
int ecall_type_wchar_t(wchar_t val);
uint64_t ecall_type_struct(struct struct_foo_t val);
uint64_t ecall_type_enum_union(enum enum_foo_t val1, union union_foo_t *val2);
struct struct_foo_t ecall_type_struct_return(uint32_t a, uint64_t b);
int16_t ecall_type_mixed(int8_t a, int16_t b, uint32_t c, int64_t d);
size_t ecall_pointer_user_check(void *val, size_t sz);
int ecall_pointer_in(int *val);
void ecall_pointer_out(int *val);
void ecall_pointer_in_out(int *val);
void ecall_pointer_string(char *str);
size_t ecall_pointer_string_const(const char *str);
size_t ecall_pointer_wstring(const wchar_t *str);
void ecall_pointer_size(void *ptr, size_t len);
void ecall_pointer_count(int *arr, size_t cnt);
size_t ecall_pointer_isptr_readonly(buffer_t buf, size_t len);
void ecall_pointer_isptr_out(buffer_t buf, size_t len);
void ecall_pointer_sizefunc(char *buf);
uint64_t ecall_pointer_struct(struct struct_foo_t *foo);
size_t ecall_pointer_size_count(const uint8_t *items, size_t sz, size_t n);
int ecall_array_user_check(int arr[4]);
int ecall_array_in(int arr[4]);
void ecall_array_out(int arr[4]);
void ecall_array_in_out(int arr[4]);
int ecall_array_isary(array_t arr);
int ecall_array_isary_in(array_t arr);
void ecall_array_isary_out(array_t arr);
void ecall_array_2d(int arr[2][3]);
int ecall_function_public(int x);
int ecall_function_private(int x);
int ecall_ocalls(void);
sgx_status_t sl_init_switchless(void *sl_data);
sgx_status_t sl_run_switchless_tworker(void);
sgx_status_t sgx_ra_get_ga(sgx_ra_context_t context, sgx_ec256_public_t *g_a);
sgx_status_t sgx_ra_proc_msg2_trusted(sgx_ra_context_t context, const sgx_ra_msg2_t *p_msg2,
                                      const sgx_target_info_t *p_qe_target,
                                      sgx_report_t *p_report, sgx_quote_nonce_t *p_nonce);
sgx_status_t sgx_ra_get_msg3_trusted(sgx_ra_context_t context, uint32_t quote_size,
                                     sgx_report_t *qe_report, sgx_ra_msg3_t *p_msg3,
                                     uint32_t msg3_size);
quote3_error_t sgx_tvl_verify_qve_report_and_identity(
    const uint8_t *p_quote, uint32_t quote_size, const sgx_ql_qe_report_info_t *p_qve_report_info,
    time_t expiration_check_date, uint32_t collateral_expiration_status,
    sgx_ql_qv_result_t quote_verification_result, const uint8_t *p_supplemental_data,
    uint32_t supplemental_data_size, sgx_isv_svn_t qve_isvsvn_threshold);
quote3_error_t tee_verify_qae_report_and_identity(qae_verification_input_t *input,
                                                  sgx_ql_qe_report_info_t qae_report_info,
                                                  sgx_isv_svn_t qae_isvsvn_threshold);

sgx_status_t ocall_print_string(const char *str);
sgx_status_t ocall_function_allow(int *retval, int x);
sgx_status_t ocall_pointer_user_check(int *val);
sgx_status_t ocall_pointer_in(int *val);
sgx_status_t ocall_pointer_out(int *val);
sgx_status_t ocall_pointer_in_out(int *val);
sgx_status_t ocall_strings(size_t *retval, const char *s, const wchar_t *w);
sgx_status_t ocall_sizefunc(int *retval, char *buf);
sgx_status_t ocall_isary(int *retval, array_t arr);
sgx_status_t ocall_isptr(size_t *retval, buffer_t buf, size_t len);
sgx_status_t ocall_struct(uint64_t *retval, struct struct_foo_t foo, struct struct_foo_t *copy,
                          enum enum_foo_t e, union union_foo_t u);
sgx_status_t ocall_errno(int *retval, int *error, int value);
sgx_status_t u_sgxssl_ftime(void *timeptr, uint32_t timeb_len);

#endif
