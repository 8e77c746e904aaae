/* The vsgx sample enclave. Bridges and OCALL proxies are in hello_t.c. */
#include "hello_t.h"

static const char greeting[] = "Hello from inside the enclave, ";

int ecall_hello(const char *name)
{
    char text[256];
    size_t n = 0, m = strlen(name);
    for (size_t i = 0; greeting[i] && n < sizeof(text) - 1; i++)
        text[n++] = greeting[i];
    for (size_t i = 0; i < m && n < sizeof(text) - 2; i++)
        text[n++] = name[i];
    text[n++] = '!';
    text[n] = 0;
    ocall_print(text);
    return (int)n;
}

int ecall_add(int a, int b) { return a + b; }

void ecall_nop(void) {}

int ecall_ocall_nop(int count)
{
    for (int i = 0; i < count; i++)
        if (ocall_nop() != SGX_SUCCESS)
            return -1;
    return count;
}

int ecall_seal(const uint8_t *secret, size_t length, uint8_t *sealed, size_t capacity)
{
    if (vsgx_seal(SGX_KEYPOLICY_MRENCLAVE, secret, length, sealed, capacity) != SGX_SUCCESS)
        return -1;
    return (int)vsgx_sealed_size(length);
}

int ecall_unseal(const uint8_t *sealed, size_t length, uint8_t *secret, size_t capacity)
{
    size_t out = 0;
    sgx_status_t status = vsgx_unseal(sealed, length, secret, capacity, &out);
    return status == SGX_SUCCESS ? (int)out : -(int)status;
}

int ecall_report(const uint8_t *target, const uint8_t *data, uint8_t *report)
{
    return (int)vsgx_create_report((const struct sgx_targetinfo *)target, data,
                                   (struct sgx_report *)report);
}

int ecall_target_info(uint8_t *target)
{
    return (int)vsgx_self_targetinfo((struct sgx_targetinfo *)target);
}

int ecall_verify_report(const uint8_t *report)
{
    return (int)vsgx_verify_report((const struct sgx_report *)report);
}

/* Exceptions: the handler fixes #UD (ud2) and #DE (div %rcx) by skipping the
   instruction, and #PF by pointing RAX at a readable word. */
static volatile uint64_t fixed_word = 0x600d;
static volatile int handler_calls;

static int exception_handler(sgx_exception_info_t *info)
{
    handler_calls++;
    switch (info->exception_vector) {
    case 6: /* #UD */
        info->cpu_context.rip += 2;
        return EXCEPTION_CONTINUE_EXECUTION;
    case 0: /* #DE */
        info->cpu_context.rip += 3;
        info->cpu_context.rax = 0xde;
        return EXCEPTION_CONTINUE_EXECUTION;
    case 14: /* #PF */
        info->cpu_context.rax = (uint64_t)&fixed_word;
        return EXCEPTION_CONTINUE_EXECUTION;
    default:
        return EXCEPTION_CONTINUE_SEARCH;
    }
}

int ecall_fault(int kind)
{
    static int registered;
    if (!registered)
        registered = sgx_register_exception_handler(exception_handler);
    int before = handler_calls;
    uint64_t value = 0;
    switch (kind) {
    case 1:
        __asm__ volatile("ud2");
        value = 1;
        break;
    case 2: {
        uint64_t rax = 7, rdx = 0, rcx = 0;
        __asm__ volatile("div %%rcx" : "+a"(rax), "+d"(rdx), "+c"(rcx));
        value = rax;
        break;
    }
    case 3:
        /* Read the guard page just below this thread's data: no EPC page. */
        __asm__ volatile("mov %%gs:0, %%rax\n\tsub $4096, %%rax\n\tmov (%%rax), %%rax"
                         : "=a"(value) : : "memory");
        break;
    case 4:
        __asm__ volatile("int3");
        break;
    default:
        return -1;
    }
    return (int)(handler_calls - before) * 1000000 + (int)(value & 0xffff);
}

int ecall_cpuid(uint32_t leaf, uint32_t *regs)
{
    int info[4] = {0};
    if (sgx_oc_cpuidex(info, (int)leaf, 0) != SGX_SUCCESS)
        return -1;
    for (int i = 0; i < 4; i++)
        regs[i] = (uint32_t)info[i];
    return 0;
}

int ecall_call_back(int x)
{
    int result = 0;
    if (ocall_call_back(&result, x) != SGX_SUCCESS)
        return -1;
    return result;
}

int ecall_private(int x) { return x * 2; }

/* Untrusted events (sgx_tstdc.edl): one thread waits on its own TCS's
   event, another wakes it, as sgx_thread_mutex and condition variables do. */
static volatile uint64_t g_waiter;

int ecall_wait_event(void)
{
    uint64_t self = vsgx_self_tcs();
    int ret = -1;
    __atomic_store_n(&g_waiter, self, __ATOMIC_SEQ_CST);
    if (sgx_thread_wait_untrusted_event_ocall(&ret, (const void *)self) != SGX_SUCCESS)
        return -1;
    return ret;
}

/* how: 0 set, 1 set_multiple, 2 setwait (wakes the waiter, then waits for
   it to be woken in turn: the host test wakes us back). */
int ecall_wake_event(int how)
{
    uint64_t waiter = __atomic_exchange_n(&g_waiter, 0, __ATOMIC_SEQ_CST);
    int ret = -1;
    sgx_status_t status;
    if (!waiter)
        return 0;
    if (how == 0) {
        status = sgx_thread_set_untrusted_event_ocall(&ret, (const void *)waiter);
    } else if (how == 1) {
        const void *waiters[1] = {(const void *)waiter};
        status = sgx_thread_set_multiple_untrusted_events_ocall(&ret, waiters, 1);
    } else {
        uint64_t self = vsgx_self_tcs();
        __atomic_store_n(&g_waiter, self, __ATOMIC_SEQ_CST);
        status = sgx_thread_setwait_untrusted_events_ocall(&ret, (const void *)waiter,
                                                           (const void *)self);
    }
    return status == SGX_SUCCESS && ret == 0 ? 1 : -1;
}

/* Threads (sgx_pthread.edl): each job is a new enclave thread the host
   starts on a free TCS with ECMD_ECALL_PTHREAD; it names the creator as the
   thread to wake when it ends, and the creator waits for that. */
static volatile int g_job_runs;
static volatile uint64_t g_joiner;

sgx_status_t vsgx_pthread_run(uint64_t *waiter)
{
    __atomic_add_fetch(&g_job_runs, 1, __ATOMIC_SEQ_CST);
    *waiter = g_joiner;
    return SGX_SUCCESS;
}

int ecall_spawn(int jobs)
{
    uint64_t self = vsgx_self_tcs();
    int before = g_job_runs, ret = -1;
    for (int i = 0; i < jobs; i++) {
        g_joiner = self;
        if (pthread_create_ocall(&ret, self) != SGX_SUCCESS || ret != 0)
            return ret == SGX_ERROR_OUT_OF_TCS ? -3 : -1;
        if (pthread_wait_timeout_ocall(&ret, self, 30) != SGX_SUCCESS || ret != 0)
            return -2;
    }
    return g_job_runs - before;
}
