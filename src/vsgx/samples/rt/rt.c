/* vsgx enclave runtime: command dispatch, initialisation, ECALLs, OCALLs,
   two-phase exception handling, in the Intel SGX SDK's ENCLU-level protocol
   (sdk/trts: trts_nsp.cpp, trts_ecall.cpp, trts_ocall.cpp, trts_veh.cpp). */
#include "rt_internal.h"
#include "vsgx_rt.h"

#define STATE_NOT_STARTED 0
#define STATE_IN_PROGRESS 1
#define STATE_INIT_DONE 2
#define STATE_CRASHED 3
#define SYSTEM_FEATURES_SIZE 176
#define MAX_HANDLERS 8

#define R_X86_64_RELATIVE 8
#define DT_NULL 0
#define DT_RELA 7
#define DT_RELASZ 8

extern uint8_t __encl_base[];
/* Hidden, so that it is reached PC-relative before relocation. */
extern const uint64_t _DYNAMIC[] __attribute__((visibility("hidden")));

/* Patched by `vsgx sign` (the metadata patch table) before measurement. */
struct vsgx_global_data g_vsgx_global_data __attribute__((used)) = {.magic = 1};
const struct dyn_entry_table g_dyn_entry_table __attribute__((weak)) = {0};

static volatile uint32_t g_enclave_state = STATE_NOT_STARTED;
static uint64_t g_cpu_features;
static sgx_exception_handler_t g_handlers[MAX_HANDLERS];
static volatile uint32_t g_handler_count;

uint64_t vsgx_cpu_features(void) { return g_cpu_features; }

void *vsgx_enclave_base(void) { return __encl_base; }

static struct thread_data *get_td(void)
{
    struct thread_data *td;
    __asm__ volatile("mov %%gs:0, %0" : "=r"(td));
    return td;
}

static struct thread_data *td_of_tcs(uint64_t tcs)
{
    return (struct thread_data *)(tcs + g_vsgx_global_data.td_from_tcs);
}

int sgx_is_within_enclave(const void *addr, size_t size)
{
    uint64_t start = (uint64_t)addr, base = (uint64_t)__encl_base;
    uint64_t end = base + g_vsgx_global_data.enclave_size;
    return size <= g_vsgx_global_data.enclave_size && start >= base && start + size >= start &&
           start + size <= end;
}

int sgx_is_outside_enclave(const void *addr, size_t size)
{
    uint64_t start = (uint64_t)addr, base = (uint64_t)__encl_base;
    uint64_t end = base + g_vsgx_global_data.enclave_size;
    if (start + size < start)
        return 0;
    return start + size <= base || start >= end;
}

void vsgx_abort(void)
{
    g_enclave_state = STATE_CRASHED;
    for (;;)
        __asm__ volatile("ud2");
}

/* The thread data of a TCS, from the signer's layout (TCS-relative). */
static void init_thread(uint64_t tcs)
{
    struct vsgx_global_data *gd = &g_vsgx_global_data;
    struct thread_data *td = td_of_tcs(tcs);
    uint64_t top = tcs + gd->stack_top_from_tcs;
    td->self_addr = (uint64_t)td;
    td->stack_base = top - STATIC_STACK_SIZE;
    td->last_sp = td->stack_base;
    td->stack_limit = top - gd->stack_size;
    td->first_ssa_gpr = tcs + gd->ssa_from_tcs + gd->ssa_frame_size * 4096 - sizeof(struct ssa_gpr);
    td->tcs = tcs;
    td->exception_flag = 0;
}

/* Apply the enclave's own R_X86_64_RELATIVE relocations (static PIE). */
static int relocate(void)
{
    const uint64_t *dyn = _DYNAMIC;
    uint64_t rela = 0, relasz = 0, base = (uint64_t)__encl_base;
    if (!dyn)
        return 0;
    for (; dyn[0] != DT_NULL; dyn += 2) {
        if (dyn[0] == DT_RELA)
            rela = dyn[1];
        else if (dyn[0] == DT_RELASZ)
            relasz = dyn[1];
    }
    for (uint64_t off = 0; off < relasz; off += 24) {
        const uint64_t *r = (const uint64_t *)(base + rela + off);
        if ((r[1] & 0xffffffff) != R_X86_64_RELATIVE)
            return -1;
        *(uint64_t *)(base + r[0]) = base + r[2];
    }
    return 0;
}

static sgx_status_t do_init(const void *features, uint64_t tcs)
{
    if (!__sync_bool_compare_and_swap(&g_enclave_state, STATE_NOT_STARTED, STATE_IN_PROGRESS))
        return SGX_ERROR_UNEXPECTED;
    if (!features || !sgx_is_outside_enclave(features, SYSTEM_FEATURES_SIZE))
        return SGX_ERROR_UNEXPECTED;
    if (relocate() != 0)
        return SGX_ERROR_UNEXPECTED;
    /* system_features_t: cpu_features @0, sfs @12 (bit 62: cpu_features_ext @164 valid). */
    const uint8_t *f = features;
    uint64_t sfs, legacy, ext;
    memcpy(&legacy, f, 8);
    memcpy(&sfs, f + 12, 8);
    memcpy(&ext, f + 164, 8);
    g_cpu_features = (sfs >> 62 & 1) ? ext : legacy;
    init_thread(tcs);
    g_enclave_state = STATE_INIT_DONE;
    return SGX_SUCCESS;
}

static int is_root(const struct thread_data *td) { return td->last_sp == td->stack_base; }

uint64_t vsgx_self_tcs(void) { return get_td()->tcs; }

/* ECMD_ECALL_PTHREAD: a thread the enclave asked for with
   pthread_create_ocall, on a fresh TCS (trts_ecall.cpp, _pthread_thread_run). */
static sgx_status_t do_pthread(void *ms, uint64_t tcs)
{
    struct thread_data *td = td_of_tcs(tcs);
    if (td->self_addr == 0 || is_root(td))
        init_thread(tcs);
    if (!is_root(td) || !vsgx_pthread_run)
        return SGX_ERROR_INVALID_FUNCTION;
    if (!ms || !sgx_is_outside_enclave(ms, sizeof(uint64_t)))
        return SGX_ERROR_INVALID_PARAMETER;
    return vsgx_pthread_run(ms);
}

static sgx_status_t do_ecall(int index, void *ms, uint64_t tcs)
{
    struct thread_data *td = td_of_tcs(tcs);
    if (td->self_addr == 0 || (is_root(td) && g_vsgx_global_data.tcs_policy == 1))
        init_thread(tcs);
    const struct ecall_table *table = &g_ecall_table;
    if ((uint64_t)index >= table->nr_ecall)
        return SGX_ERROR_INVALID_FUNCTION;
    const struct ecall_entry *entry = &table->ecall_table[index];
    if (is_root(td)) {
        if (entry->is_priv)
            return SGX_ERROR_ECALL_NOT_ALLOWED;
    } else {
        const struct ocall_context *ctx = (const struct ocall_context *)td->last_sp;
        if (ctx->flag != OCALL_FLAG)
            vsgx_abort();
        if (ctx->index >= g_dyn_entry_table.nr_ocall)
            return SGX_ERROR_INVALID_FUNCTION;
        const uint8_t *allowed = (const uint8_t *)&g_dyn_entry_table + sizeof(size_t);
        if (!allowed[ctx->index * table->nr_ecall + index])
            return SGX_ERROR_ECALL_NOT_ALLOWED;
    }
    if (!sgx_is_within_enclave(entry->ecall_addr, 1))
        return SGX_ERROR_UNEXPECTED;
    return ((ecall_fn)entry->ecall_addr)(ms);
}

static sgx_status_t do_oret(uint64_t status)
{
    struct thread_data *td = get_td();
    struct ocall_context *ctx = (struct ocall_context *)td->last_sp;
    if (is_root(td) || ctx->flag != OCALL_FLAG || ctx->pre_last_sp > td->stack_base ||
        ctx->pre_last_sp <= (uint64_t)ctx)
        return SGX_ERROR_UNEXPECTED;
    td->last_sp = ctx->pre_last_sp;
    asm_oret(ctx, status);
}

sgx_status_t sgx_ocall(uint32_t index, void *ms)
{
    if (index >= g_dyn_entry_table.nr_ocall)
        return SGX_ERROR_INVALID_FUNCTION;
    return (sgx_status_t)do_ocall(index, ms);
}

static struct ssa_gpr *ssa0(void) { return (struct ssa_gpr *)get_td()->first_ssa_gpr; }

void *sgx_ocalloc(size_t size)
{
    struct ssa_gpr *gpr = ssa0();
    uint64_t ursp = gpr->ursp;
    uint64_t addr = (ursp - size) & ~15ull;
    if (size > ursp || !sgx_is_outside_enclave((void *)ursp, 1) ||
        !sgx_is_outside_enclave((void *)addr, size))
        vsgx_abort();
    gpr->ursp = addr;
    return (void *)addr;
}

void sgx_ocfree(void)
{
    /* Back to the URSP of the open ECALL frame ([S-24]). */
    struct thread_data *td = get_td();
    ssa0()->ursp = *(uint64_t *)(td->last_sp - 24);
}

int sgx_register_exception_handler(sgx_exception_handler_t handler)
{
    uint32_t slot = __sync_fetch_and_add(&g_handler_count, 1);
    if (slot >= MAX_HANDLERS)
        return 0;
    g_handlers[slot] = handler;
    return 1;
}

/* Phase 1, at CSSA = 1: move the fault's state onto the faulting thread's
   stack and make ERESUME continue in internal_handle_exception. */
static sgx_status_t handle_exception(uint64_t tcs)
{
    struct thread_data *td = td_of_tcs(tcs);
    if (g_enclave_state != STATE_INIT_DONE || td->self_addr == 0 || td->exception_flag < 0)
        goto crash;
    struct ssa_gpr *gpr = (struct ssa_gpr *)td->first_ssa_gpr;
    if (!(gpr->exitinfo >> 31))
        goto crash;
    uint64_t sp = gpr->rsp;
    if (sp <= td->stack_limit + 1024 || sp > td->stack_base)
        goto overrun;
    uint64_t info_addr = (sp - 128 - sizeof(sgx_exception_info_t)) & ~63ull;
    if (info_addr - 16 <= td->stack_limit)
        goto overrun;
    sgx_exception_info_t *info = (sgx_exception_info_t *)info_addr;
    memcpy(&info->cpu_context, gpr, sizeof(info->cpu_context));
    info->exception_vector = gpr->exitinfo & 0xff;
    info->exception_type = gpr->exitinfo >> 8 & 0x7;
    const uint64_t *exinfo = (const uint64_t *)((uint8_t *)gpr - 16);
    info->faulting_address = exinfo[0];
    info->error_code = (uint32_t)exinfo[1];
    info->reserved = 0;
    uint64_t *new_sp = (uint64_t *)info_addr - 1; /* as if called: RSP = 8 mod 16 */
    new_sp[0] = gpr->rip;
    td->exception_flag++;
    gpr->rip = (uint64_t)internal_handle_exception;
    gpr->rsp = (uint64_t)new_sp;
    gpr->rdi = info_addr;
    return SGX_SUCCESS;
overrun:
    g_enclave_state = STATE_CRASHED;
    return SGX_ERROR_STACK_OVERRUN;
crash:
    g_enclave_state = STATE_CRASHED;
    return SGX_ERROR_ENCLAVE_CRASHED;
}

/* Phase 2, after ERESUME, on the faulting thread's stack. */
void internal_handle_exception(void *arg)
{
    sgx_exception_info_t *info = arg;
    struct thread_data *td = get_td();
    for (uint32_t i = 0; i < g_handler_count && i < MAX_HANDLERS; i++) {
        if (g_handlers[i](info) == EXCEPTION_CONTINUE_EXECUTION) {
            td->exception_flag--;
            continue_execution(info);
        }
    }
    td->exception_flag = -1;
    vsgx_abort();
}

sgx_status_t enter_enclave(int64_t cmd, void *ms, uint64_t tcs, uint64_t cssa)
{
    if (g_enclave_state == STATE_CRASHED)
        return SGX_ERROR_ENCLAVE_CRASHED;
    sgx_status_t status = SGX_ERROR_UNEXPECTED;
    if (cssa == 0) {
        if (cmd == ECMD_INIT_ENCLAVE)
            return do_init(ms, tcs);
        if (g_enclave_state != STATE_INIT_DONE)
            status = SGX_ERROR_UNEXPECTED;
        else if (cmd >= 0)
            status = do_ecall((int)cmd, ms, tcs);
        else if (cmd == ECMD_ECALL_PTHREAD)
            status = do_pthread(ms, tcs);
        else if (cmd == ECMD_ORET)
            status = do_oret((uint64_t)ms);
        else if (cmd == ECMD_UNINIT_ENCLAVE) {
            g_enclave_state = STATE_CRASHED;
            return SGX_SUCCESS;
        }
    } else if (cssa == 1 && cmd == ECMD_EXCEPT) {
        return handle_exception(tcs);
    }
    if (status == SGX_ERROR_UNEXPECTED)
        g_enclave_state = STATE_CRASHED;
    return status;
}
