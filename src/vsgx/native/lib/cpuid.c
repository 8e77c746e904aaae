/* CPUID that says SGX is there and agrees with the EVM: leaf 7 EBX bit 2
   (and ECX bit 30, launch control, which the in-kernel driver requires),
   leaf 0x12 sub-leaves 0, 1 and the EPC sections from the EVM's model,
   everything else from the real CPU.

   Where the CPU offers CPUID faulting (arch_prctl ARCH_SET_CPUID), every
   CPUID of the process traps (SIGSEGV). Elsewhere the CPUID instructions of
   the objects that ask — the program when its image mentions SGX, Intel's
   libsgx_* libraries, and those named in VSGX_CPUID_PATCH — become ud2
   (0f a2 -> 0f 0b, the same length) when they are loaded; the launcher
   finds the real instruction starts with a disassembler. */
#include "vsgx_exec.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012
#define MAX_MODEL 8
#define MAX_SITES 4096
#define MAX_OBJECTS 256

VSGX_HIDDEN int vsgx_cpuid_faulting;

static uint32_t model[MAX_MODEL][4];  /* CPUID 0x12 sub-leaves from 0 */
static int model_count;
static uint64_t sites[MAX_SITES];       /* sorted addresses of patched CPUIDs */
static int site_count;
static uint64_t done_objects[MAX_OBJECTS];
static int done_count;
static pthread_mutex_t patch_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *patch_list;  /* VSGX_CPUID_PATCH */

static void real_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    if (vsgx_cpuid_faulting)
        vsgx_syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1, 0, 0, 0, 0);
    __asm__ volatile("cpuid"
                     : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                     : "a"(leaf), "c"(subleaf));
    if (vsgx_cpuid_faulting)
        vsgx_syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0, 0, 0, 0, 0);
}

static void load_model(void)
{
    const char *text = getenv("VSGX_EXEC_CPUID");
    model_count = 0;
    if (text == NULL)
        return;
    /* 8 hex digits per register, little-endian words, 4 per sub-leaf */
    size_t length = strlen(text);
    for (size_t i = 0; i + 32 <= length && model_count < MAX_MODEL; i += 32) {
        for (int r = 0; r < 4; r++) {
            uint32_t value = 0;
            for (int d = 0; d < 8; d++) {
                char c = text[i + (size_t)r * 8 + (size_t)d];
                int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
                if (digit < 0)
                    return;
                value = value * 16 + (uint32_t)digit;
            }
            model[model_count][r] = value;
        }
        model_count++;
    }
}

void vsgx_cpuid_answer(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    uint32_t max[4];
    real_cpuid(0, 0, max);
    if (leaf == 0) {
        memcpy(out, max, 16);
        if (out[0] < 0x12)
            out[0] = 0x12;
        return;
    }
    if (leaf == 0x12) {
        if (subleaf < (uint32_t)model_count)
            memcpy(out, model[subleaf], 16);
        else
            memset(out, 0, 16);
        return;
    }
    if (leaf < 0x40000000 && leaf > max[0]) {
        memset(out, 0, 16);  /* beyond the CPU's leaves, below ours */
        return;
    }
    real_cpuid(leaf, subleaf, out);
    if (leaf == 7 && subleaf == 0) {
        out[1] |= 1u << 2;   /* SGX */
        out[2] |= 1u << 30;  /* SGX_LC */
    }
}

static int site_index(uint64_t address)
{
    int lo = 0, hi = site_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (sites[mid] == address)
            return mid;
        if (sites[mid] < address)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

int vsgx_handle_cpuid_trap(ucontext_t *uc, int faulting)
{
    uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    uint8_t code[2];
    if (vsgx_read_own(rip, code, 2) < 0 || code[0] != 0x0f)
        return 0;
    if (faulting ? code[1] != 0xa2 : (code[1] != 0x0b || site_index(rip) < 0))
        return 0;
    uint32_t out[4];
    vsgx_cpuid_answer((uint32_t)uc->uc_mcontext.gregs[REG_RAX],
                      (uint32_t)uc->uc_mcontext.gregs[REG_RCX], out);
    uc->uc_mcontext.gregs[REG_RAX] = out[0];
    uc->uc_mcontext.gregs[REG_RBX] = out[1];
    uc->uc_mcontext.gregs[REG_RCX] = out[2];
    uc->uc_mcontext.gregs[REG_RDX] = out[3];
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(rip + 2);
    return 1;
}

/* -- patching ------------------------------------------------------------ */
struct object {
    uint64_t base;
    char path[4096];
    int main_program;
    int segments;
    uint64_t vaddr[VSGX_MAX_SEGMENTS], memsz[VSGX_MAX_SEGMENTS];
    int prot[VSGX_MAX_SEGMENTS];
    int readable;
    uint64_t rstart[VSGX_MAX_SEGMENTS], rsize[VSGX_MAX_SEGMENTS];
};

static int listed(const char *name)
{
    if (patch_list == NULL || *patch_list == '\0')
        return 0;
    if (!strcmp(patch_list, "all"))
        return 1;
    const char *p = patch_list;
    while (*p) {
        const char *end = strchr(p, ':');
        size_t length = end ? (size_t)(end - p) : strlen(p);
        if (length && memmem(name, strlen(name), p, length) != NULL)
            return 1;
        p += length + (end ? 1 : 0);
    }
    return 0;
}

static int mentions_sgx(const struct object *o)
{
    for (int i = 0; i < o->readable; i++)
        if (memmem((const void *)(o->base + o->rstart[i]), o->rsize[i], "sgx", 3) != NULL)
            return 1;
    return 0;
}

static int wanted(struct object *o)
{
    if (!strcmp(patch_list ? patch_list : "", "none"))
        return 0;
    const char *name = strrchr(o->path, '/');
    name = name ? name + 1 : o->path;
    if (o->main_program)
        return listed("main") || listed(o->path) || mentions_sgx(o);
    if (!strncmp(name, "libsgx_", 7))
        return 1;
    if (!strncmp(name, "libc.so", 7) || !strncmp(name, "ld-linux", 8) ||
        !strncmp(name, "libvsgx", 7))
        return 0;
    return listed(o->path);
}

static int has_candidates(const struct object *o)
{
    for (int i = 0; i < o->segments; i++)
        if (memmem((const void *)(o->base + o->vaddr[i]), o->memsz[i], "\x0f\xa2", 2) != NULL)
            return 1;
    return 0;
}

struct scan {
    struct object *objects;
    int count, max;
};

static int collect(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct scan *scan = data;
    static int self_marker;
    Dl_info self;
    if (scan->count >= scan->max)
        return 1;
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    if (!strcmp(name, "linux-vdso.so.1") || strstr(name, "linux-vdso") != NULL)
        return 0;
    if (dladdr(&self_marker, &self) && (uint64_t)self.dli_fbase == info->dlpi_addr)
        return 0;  /* ourselves */
    for (int i = 0; i < done_count; i++)
        if (done_objects[i] == info->dlpi_addr)
            return 0;
    struct object *o = &scan->objects[scan->count];
    memset(o, 0, sizeof(*o));
    o->base = info->dlpi_addr;
    if (name[0] == '\0') {
        long n = vsgx_syscall(SYS_readlink, (long)"/proc/self/exe", (long)o->path,
                              sizeof(o->path) - 1, 0, 0, 0);
        if (n <= 0)
            return 0;
        o->path[n] = '\0';
        o->main_program = 1;
    } else {
        strncpy(o->path, name, sizeof(o->path) - 1);
    }
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const Elf64_Phdr *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        if ((ph->p_flags & PF_R) && o->readable < VSGX_MAX_SEGMENTS) {
            o->rstart[o->readable] = ph->p_vaddr;
            o->rsize[o->readable++] = ph->p_filesz;
        }
        if ((ph->p_flags & PF_X) && o->segments < VSGX_MAX_SEGMENTS) {
            o->vaddr[o->segments] = ph->p_vaddr;
            o->memsz[o->segments] = ph->p_memsz;
            o->prot[o->segments++] = ((ph->p_flags & PF_R) ? PROT_READ : 0) |
                                     ((ph->p_flags & PF_W) ? PROT_WRITE : 0) | PROT_EXEC;
        }
    }
    scan->count++;
    return 0;
}

static int segment_prot(const struct object *o, uint64_t address)
{
    for (int i = 0; i < o->segments; i++)
        if (address >= o->base + o->vaddr[i] && address < o->base + o->vaddr[i] + o->memsz[i])
            return o->prot[i];
    return PROT_READ | PROT_EXEC;
}

static int compare(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void patch_object(struct object *o)
{
    struct stat st;
    if (vsgx_syscall(SYS_stat, (long)o->path, (long)&st, 0, 0, 0, 0) < 0)
        return;
    struct vsgx_msg_cpuid_sites request = {0};
    request.type = VSGX_MSG_CPUID_SITES;
    request.base = o->base;
    request.dev = st.st_dev;
    request.ino = st.st_ino;
    request.size = (uint64_t)st.st_size;
    request.mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
    request.segments = (uint32_t)o->segments;
    request.path_length = (uint32_t)strlen(o->path);
    uint64_t segments[2 * VSGX_MAX_SEGMENTS];
    for (int i = 0; i < o->segments; i++) {
        segments[2 * i] = o->vaddr[i];
        segments[2 * i + 1] = o->memsz[i];
    }
    struct iovec iov[3] = {{&request, sizeof(request)},
                           {segments, (size_t)o->segments * 16},
                           {o->path, request.path_length}};
    struct vsgx_reply reply;
    if (vsgx_call_iov(iov, 3, &reply) < 0)
        return;
    const struct vsgx_msg_sites *answer = (const void *)reply.data;
    if (reply.length < sizeof(*answer) || answer->type != VSGX_MSG_SITES) {
        return;
    }
    if (answer->status < 0) {
        vsgx_log("CPUID of %s is not answered: %s", o->path, strerror(-answer->status));
        return;
    }
    size_t count = answer->count;
    if (sizeof(*answer) + count * 8 > reply.length)
        return;
    const uint8_t *list = reply.data + sizeof(*answer);
    int patched = 0;
    for (size_t i = 0; i < count && site_count < MAX_SITES; i++) {
        uint64_t vaddr;
        memcpy(&vaddr, list + i * 8, 8);
        uint64_t address = o->base + vaddr;
        uint8_t code[2];
        if (vsgx_read_own(address, code, 2) < 0 || code[0] != 0x0f || code[1] != 0xa2)
            continue;  /* not what the file said: leave it */
        uint64_t page = PAGE_DOWN(address), end = PAGE_UP(address + 2);
        int prot = segment_prot(o, address);
        if (vsgx_mprotect_raw((void *)page, end - page, PROT_READ | PROT_WRITE | PROT_EXEC) < 0 &&
            vsgx_mprotect_raw((void *)page, end - page, PROT_READ | PROT_WRITE) < 0)
            continue;
        ((volatile uint8_t *)address)[1] = 0x0b;  /* cpuid -> ud2 */
        vsgx_mprotect_raw((void *)page, end - page, prot);
        sites[site_count++] = address;
        patched++;
    }
    qsort(sites, (size_t)site_count, sizeof(sites[0]), compare);
    vsgx_log("CPUID: %d sites in %s", patched, o->path);
}

static struct object scan_objects[64];

void vsgx_cpuid_rescan(void)
{
    if (vsgx_cpuid_faulting)
        return;
    pthread_mutex_lock(&patch_lock);
    struct scan scan = {scan_objects, 0, 64};
    dl_iterate_phdr(collect, &scan);
    for (int i = 0; i < scan.count; i++) {
        struct object *o = &scan_objects[i];
        if (done_count < MAX_OBJECTS)
            done_objects[done_count++] = o->base;
        if (!wanted(o) || !has_candidates(o))
            continue;
        if (!vsgx_channel_available()) {
            vsgx_log("no launcher: CPUID of %s is the host's", o->path);
            continue;
        }
        patch_object(o);
    }
    pthread_mutex_unlock(&patch_lock);
}

void vsgx_cpuid_reload_model(void)
{
    load_model();
}

void vsgx_cpuid_probe(void)
{
    load_model();
    patch_list = getenv("VSGX_CPUID_PATCH");
    const char *force = getenv("VSGX_CPUID_FAULTING");
    if (force != NULL && force[0] == '0')
        return;
    /* CPUID faulting: every CPUID of this process (and of its children
       until they exec) traps. */
    if (vsgx_syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0, 0, 0, 0, 0) == 0)
        vsgx_cpuid_faulting = 1;
}

void vsgx_cpuid_init(void)
{
    vsgx_cpuid_rescan();
}

static void *(*real_dlopen)(const char *, int);
static void *(*real_dlmopen)(Lmid_t, const char *, int);

VSGX_EXPORT void *dlopen(const char *file, int mode)
{
    if (real_dlopen == NULL)
        real_dlopen = vsgx_real("dlopen");
    void *handle = real_dlopen(file, mode);
    if (handle != NULL)
        vsgx_cpuid_rescan();
    return handle;
}

VSGX_EXPORT void *dlmopen(Lmid_t lmid, const char *file, int mode)
{
    if (real_dlmopen == NULL)
        real_dlmopen = vsgx_real("dlmopen");
    void *handle = real_dlmopen(lmid, file, mode);
    if (handle != NULL)
        vsgx_cpuid_rescan();
    return handle;
}
