/* A loader written for vsgx's tests that loads the plain test enclave
   (tests/enclaves/plain) the way Intel's PSW before 2.16 does through the
   legacy drivers: the out-of-tree driver's /dev/isgx (mmap of the device
   before CREATE, one ADD_PAGE per page with mrmask 0xFFFF or 0, a launch
   token from aesmd over /var/run/aesmd/aesm.socket, INIT with it, EENTER
   by raw ENCLU), then the DCAP driver's /dev/sgx (SET_ATTRIBUTE with a
   /dev/sgx_prv descriptor, INIT without a token). It checks what those
   drivers answer, bad input included. Prints "ok NAME" or "FAIL NAME: why";
   the exit status is the number of failures.

   usage: isgx_loader ENCLAVE.elf ENCLAVE.elf.sig [locked | partial]
   "locked": the EVM's launch control is locked to its launch enclave's
   signer (no FLC): the token is a MACed one, and the DCAP driver's INIT,
   which brings none, fails as EINIT does there. "partial": the first heap
   page is added with mrmask 0x0101 (chunks 0 and 8 measured), which the
   SIGSTRUCT given must have been signed for. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define PAGE 4096UL
#define ISGX_CREATE 0x4008a400UL
#define ISGX_ADD_PAGE 0x401aa401UL
#define ISGX_INIT 0x4018a402UL
#define DCAP_INIT 0x4010a402UL
#define DCAP_SET_ATTRIBUTE 0x4010a403UL
#define ISGX_EMODPR 0x4018a409UL
#define SGX_INVALID_SIGNATURE 8
#define SGX_INVALID_EINITTOKEN 16

enum { OP_NOP, OP_PUT_BUFFER, OP_GET_BUFFER };

struct add_page { uint64_t addr, src, secinfo; uint16_t mrmask; } __attribute__((packed));
struct init_isgx { uint64_t addr, sigstruct, einittoken; };
struct init_dcap { uint64_t addr, sigstruct; };
struct set_attribute { uint64_t addr, attribute_fd; };
struct modification_param { struct { unsigned long start_addr; unsigned int nr_pages; } range;
                            unsigned long flags; };

static int failures, locked;
static uint16_t first_heap_mask;  /* "partial": 0x0101 */
#define CHECK(name, cond, ...)                                                  \
    do {                                                                        \
        if (cond) {                                                             \
            printf("ok %s\n", name);                                            \
        } else {                                                                \
            printf("FAIL %s: ", name);                                          \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
            failures++;                                                         \
        }                                                                       \
        fflush(stdout);                                                         \
    } while (0)

/* Raw ENCLU EENTER with RCX = the AEP; EEXIT resumes after the ENCLU. */
uint64_t raw_enter(uint64_t tcs, uint64_t *op);
__asm__(".text\n"
        ".globl raw_enter\n"
        "raw_enter:\n"
        "    push %rbx\n"
        "    push %rbp\n"
        "    push %r12\n"
        "    push %r13\n"
        "    push %r14\n"
        "    push %r15\n"
        "    mov %rdi, %rbx\n"
        "    mov %rsi, %rdi\n"
        "    lea 1f(%rip), %rcx\n"
        "    mov $2, %eax\n"
        "1:  .byte 0x0f, 0x01, 0xd7\n"
        "    pop %r15\n"
        "    pop %r14\n"
        "    pop %r13\n"
        "    pop %r12\n"
        "    pop %rbp\n"
        "    pop %rbx\n"
        "    ret\n");

static void *read_file(const char *path, size_t *length)
{
    int f = open(path, O_RDONLY);
    if (f < 0)
        return NULL;
    struct stat st;
    fstat(f, &st);
    void *data = malloc((size_t)st.st_size);
    if (read(f, data, (size_t)st.st_size) != st.st_size) {
        close(f);
        return NULL;
    }
    close(f);
    *length = (size_t)st.st_size;
    return data;
}

/* -- aesmd's GetLaunchToken, as libsgx_launch asks for it ------------------ */
static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    for (; v > 0x7f; v >>= 7)
        out[n++] = (uint8_t)(v & 0x7f) | 0x80;
    out[n++] = (uint8_t)v;
    return n;
}

static size_t put_bytes(uint8_t *out, unsigned number, const void *data, size_t length)
{
    size_t n = put_varint(out, number << 3 | 2);
    n += put_varint(out + n, length);
    memcpy(out + n, data, length);
    return n + length;
}

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}

/* Field `want` of a message: a varint in *value or bytes in *data. */
static int find_field(const uint8_t *msg, size_t length, unsigned want, uint64_t *value,
                      const uint8_t **data, size_t *data_length)
{
    const uint8_t *p = msg, *end = msg + length;
    while (p < end) {
        uint64_t key, v;
        if (get_varint(&p, end, &key))
            return -1;
        if ((key & 7) == 0) {
            if (get_varint(&p, end, &v))
                return -1;
            if (key >> 3 == want) {
                *value = v;
                return 0;
            }
        } else if ((key & 7) == 2) {
            if (get_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return -1;
            if (key >> 3 == want) {
                *data = p;
                *data_length = (size_t)v;
                return 0;
            }
            p += v;
        } else {
            return -1;
        }
    }
    return 1;
}

/* 0 and the token, or -1 (no aesmd), or aesmd's error code. */
static int get_launch_token(const uint8_t *sigstruct, uint64_t attributes, uint64_t xfrm,
                            uint8_t token[304])
{
    uint8_t inner[1024], request[1100], se_attributes[16];
    memcpy(se_attributes, &attributes, 8);
    memcpy(se_attributes + 8, &xfrm, 8);
    size_t n = put_bytes(inner, 1, sigstruct + 960, 32);   /* mr_enclave: ENCLAVEHASH */
    n += put_bytes(inner + n, 2, sigstruct + 128, 384);     /* mr_signer: the modulus */
    n += put_bytes(inner + n, 3, se_attributes, 16);
    size_t length = put_bytes(request, 3, inner, n);        /* getLicTokenReq */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, "/var/run/aesmd/aesm.socket");    /* Intel's, compiled in */
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return -1;
    uint8_t header[4] = {length & 0xff, length >> 8 & 0xff, 0, 0};
    if (write(fd, header, 4) != 4 || write(fd, request, length) != (ssize_t)length ||
        recv(fd, header, 4, MSG_WAITALL) != 4) {
        close(fd);
        return -1;
    }
    uint32_t size = header[0] | header[1] << 8 | header[2] << 16 | (uint32_t)header[3] << 24;
    static uint8_t body[4096];
    if (size > sizeof(body) || recv(fd, body, size, MSG_WAITALL) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    close(fd);
    const uint8_t *response, *data;
    size_t response_length, data_length;
    uint64_t code = 1, unused;
    if (find_field(body, size, 3, &unused, &response, &response_length) != 0)
        return -1;
    find_field(response, response_length, 1, &code, &data, &data_length);
    if (code != 0)
        return (int)code;
    if (find_field(response, response_length, 2, &unused, &data, &data_length) != 0 ||
        data_length != 304)
        return -1;
    memcpy(token, data, 304);
    return 0;
}

/* -- the enclave's layout (vsgx's plain enclaves) ---------------------------- */
static uint8_t *elf, *sigstruct;
static uint64_t image_end, enclave_size;
static uint32_t heap_pages;

struct segment { uint64_t start, end; int prot; uint8_t *pages; int tcs; };
static struct segment segments[16];
static int segment_count;

static void layout(void)
{
    Elf64_Ehdr *ehdr = (Elf64_Ehdr *)elf;
    Elf64_Phdr *phdr = (Elf64_Phdr *)(elf + ehdr->e_phoff);
    memcpy(&heap_pages, sigstruct + 40, 4);
    int first = 1;
    for (int i = 0; i < ehdr->e_phnum && segment_count < 15; i++) {
        Elf64_Phdr *p = &phdr[i];
        if (p->p_type != PT_LOAD)
            continue;
        struct segment *s = &segments[segment_count++];
        s->start = p->p_vaddr & ~(PAGE - 1);
        s->end = (p->p_vaddr + p->p_memsz + PAGE - 1) & ~(PAGE - 1);
        s->pages = mmap(NULL, s->end - s->start, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memcpy(s->pages + (p->p_vaddr - s->start), elf + p->p_offset, p->p_filesz);
        s->prot = (p->p_flags & PF_R ? PROT_READ : 0) | (p->p_flags & PF_W ? PROT_WRITE : 0) |
                  (p->p_flags & PF_X ? PROT_EXEC : 0);
        s->tcs = first;
        first = 0;
        image_end = s->end;
    }
    image_end += heap_pages * PAGE;
    for (enclave_size = 2 * PAGE; enclave_size < image_end; enclave_size <<= 1)
        ;
}

static void make_secs(uint8_t *secs, uint64_t base)
{
    uint64_t attributes, xfrm;
    uint32_t miscselect, ssaframesize = 1;
    memcpy(&miscselect, sigstruct + 900, 4);
    memcpy(&attributes, sigstruct + 928, 8);
    memcpy(&xfrm, sigstruct + 936, 8);
    attributes &= ~1ull;  /* INIT */
    memset(secs, 0, 4096);
    memcpy(secs, &enclave_size, 8);
    memcpy(secs + 8, &base, 8);
    memcpy(secs + 16, &ssaframesize, 4);
    memcpy(secs + 20, &miscselect, 4);
    memcpy(secs + 48, &attributes, 8);
    memcpy(secs + 56, &xfrm, 8);
}

/* ADD_PAGE of every page, as enclave_load_data does: 0 or the first errno. */
static int add_all(int device, uint64_t base)
{
    static uint64_t secinfo[8] __attribute__((aligned(64)));
    static uint8_t zero_page[PAGE] __attribute__((aligned(PAGE)));
    for (int i = 0; i < segment_count; i++) {
        struct segment *s = &segments[i];
        memset(secinfo, 0, sizeof(secinfo));
        secinfo[0] = s->tcs ? 0x100 : (0x200 | (uint64_t)s->prot);
        for (uint64_t at = s->start; at < s->end; at += PAGE) {
            struct add_page add = {base + at, (uint64_t)(s->pages + (at - s->start)),
                                   (uint64_t)secinfo, 0xffff};
            if (ioctl(device, ISGX_ADD_PAGE, &add) != 0)
                return errno;
        }
    }
    secinfo[0] = 0x203;
    for (uint32_t n = 0; n < heap_pages; n++) {
        struct add_page add = {base + segments[segment_count - 1].end + n * PAGE,
                               (uint64_t)zero_page, (uint64_t)secinfo,
                               n == 0 ? first_heap_mask : 0};
        if (ioctl(device, ISGX_ADD_PAGE, &add) != 0)
            return errno;
    }
    return 0;
}

static void protect_all(uint64_t base)
{
    for (int i = 0; i < segment_count; i++)
        mprotect((void *)(base + segments[i].start), segments[i].end - segments[i].start,
                 segments[i].tcs ? PROT_READ | PROT_WRITE : segments[i].prot);
}

static int round_trip(uint64_t tcs, uint64_t value)
{
    uint64_t put[8] = {OP_PUT_BUFFER, value};
    raw_enter(tcs, put);
    uint64_t get[8] = {OP_GET_BUFFER, 0};
    raw_enter(tcs, get);
    return get[1] == value;
}

static void isgx(void)
{
    /* Probes, and the EDMM probe of urts: an all-zero EMODPR. */
    int probe = open("/dev/isgx", O_RDWR);
    CHECK("isgx probe", probe >= 0 && close(probe) == 0, "errno %d", errno);
    if (probe < 0)
        return;  /* no such driver here: nothing else to check */
    int device = open("/dev/isgx", O_RDWR);
    struct modification_param zero = {0};
    errno = 0;
    CHECK("edmm probe", ioctl(device, ISGX_EMODPR, &zero) == -1 && errno == ENOTTY,
          "errno %d", errno);

    /* mmap of the device makes ELRANGE: a power of two, shared, aligned. */
    errno = 0;
    CHECK("mmap private", mmap(NULL, enclave_size, PROT_NONE, MAP_PRIVATE, device, 0) ==
          MAP_FAILED && errno == EINVAL, "errno %d", errno);
    errno = 0;
    CHECK("mmap not a power of two", mmap(NULL, 3 * PAGE, PROT_NONE, MAP_SHARED, device, 0) ==
          MAP_FAILED && errno == EINVAL, "errno %d", errno);
    uint8_t *area = mmap(NULL, enclave_size, PROT_NONE, MAP_SHARED, device, 0);
    uint64_t base = (uint64_t)area;
    CHECK("mmap", area != MAP_FAILED && base % enclave_size == 0, "errno %d base %#lx", errno,
          (unsigned long)base);

    static uint8_t secs[4096] __attribute__((aligned(4096)));
    struct add_page add = {base, (uint64_t)segments[0].pages, (uint64_t)secs, 0xffff};
    errno = 0;
    CHECK("add before create", ioctl(device, ISGX_ADD_PAGE, &add) == -1 && errno == EINVAL,
          "errno %d", errno);
    uint64_t create_arg = (uint64_t)secs;
    make_secs(secs, base + enclave_size);  /* no mapping there */
    errno = 0;
    CHECK("create outside the mapping", ioctl(device, ISGX_CREATE, &create_arg) == -1 &&
          errno == EINVAL, "errno %d", errno);
    make_secs(secs, base);
    uint64_t attributes;
    memcpy(&attributes, secs + 48, 8);
    uint64_t no64 = attributes & ~4ull;
    memcpy(secs + 48, &no64, 8);
    errno = 0;
    CHECK("create without mode64bit", ioctl(device, ISGX_CREATE, &create_arg) == -1 &&
          errno == EINVAL, "errno %d", errno);
    make_secs(secs, base);
    secs[300] = 1;  /* reserved4 */
    errno = 0;
    CHECK("create reserved set", ioctl(device, ISGX_CREATE, &create_arg) == -1 &&
          errno == EINVAL, "errno %d", errno);
    make_secs(secs, base);
    CHECK("create from an unreadable secs", ioctl(device, ISGX_CREATE, &(uint64_t){8}) == 4096,
          "not the bytes left");
    errno = 0;
    CHECK("create bad arg", ioctl(device, ISGX_CREATE, (void *)8) == -1 && errno == EFAULT,
          "errno %d", errno);
    CHECK("create", ioctl(device, ISGX_CREATE, &create_arg) == 0, "errno %d", errno);

    /* ADD_PAGE: the driver's checks, then every page. */
    static uint64_t secinfo[8] __attribute__((aligned(64)));
    memset(secinfo, 0, sizeof(secinfo));
    secinfo[0] = 0x100;
    add = (struct add_page){base + 4, (uint64_t)segments[0].pages, (uint64_t)secinfo, 0xffff};
    errno = 0;
    CHECK("add misaligned", ioctl(device, ISGX_ADD_PAGE, &add) == -1 && errno == EINVAL,
          "errno %d", errno);
    add.addr = base;
    add.secinfo = 8;
    errno = 0;
    CHECK("add unreadable secinfo", ioctl(device, ISGX_ADD_PAGE, &add) == -1 && errno == EFAULT,
          "errno %d", errno);
    add.secinfo = (uint64_t)secinfo;
    add.src = 8;
    errno = 0;
    CHECK("add unreadable source", ioctl(device, ISGX_ADD_PAGE, &add) == -1 && errno == EFAULT,
          "errno %d", errno);
    add.src = (uint64_t)segments[0].pages;
    secinfo[0] = 0x202;  /* write without read */
    errno = 0;
    CHECK("add bad secinfo", ioctl(device, ISGX_ADD_PAGE, &add) == -1 && errno == EINVAL,
          "errno %d", errno);
    static uint8_t bad_tcs[PAGE] __attribute__((aligned(PAGE)));
    memcpy(bad_tcs, segments[0].pages, PAGE);
    bad_tcs[8] = 1;  /* TCS.FLAGS */
    secinfo[0] = 0x100;
    add.src = (uint64_t)bad_tcs;
    errno = 0;
    CHECK("add bad tcs", ioctl(device, ISGX_ADD_PAGE, &add) == -1 && errno == EINVAL,
          "errno %d", errno);
    int failed = add_all(device, base);
    CHECK("add pages", failed == 0, "errno %d", failed);
    add = (struct add_page){base, (uint64_t)segments[0].pages, (uint64_t)secinfo, 0xffff};
    errno = 0;
    CHECK("add twice", ioctl(device, ISGX_ADD_PAGE, &add) == -1 && errno == EEXIST,
          "errno %d", errno);
    protect_all(base);

    /* A launch token from aesmd, then INIT: a wrong or absent token fails
       as EINIT does; the launch enclave's passes. */
    uint64_t xfrm;
    memcpy(&attributes, secs + 48, 8);
    memcpy(&xfrm, secs + 56, 8);
    static uint8_t token[304];
    int status = get_launch_token(sigstruct, attributes, xfrm, token);
    CHECK("launch token", status == 0, "aesmd answered %d", status);
    /* Under flexible launch control the launch enclave answers with an
       invalid (all-zero) token, which EINIT accepts there; locked, a valid one. */
    CHECK("launch token valid bit", (token[0] & 1) == locked, "VALID %d", token[0] & 1);
    /* What libsgx_enclave_common does: dlopen the launch library by its
       SONAME and ask it (vsgx's drop-in, on LD_LIBRARY_PATH under vsgx exec). */
    static uint8_t library_token[1024];
    void *launch = dlopen("libsgx_launch.so.1", RTLD_LAZY);
    uint32_t (*get_token)(const void *, const void *, void *) =
        launch ? (uint32_t (*)(const void *, const void *, void *))dlsym(launch,
                                                                         "get_launch_token")
               : NULL;
    CHECK("launch library", get_token != NULL, "%s", dlerror());
    if (get_token != NULL) {
        CHECK("launch library bad argument", get_token(sigstruct, NULL, library_token) == 2,
              "not SGX_ERROR_INVALID_PARAMETER");
        uint32_t library_status = get_token(sigstruct, secs + 48, library_token);
        CHECK("launch library token", library_status == 0 && (library_token[0] & 1) == locked,
              "status %#x VALID %d", library_status, library_token[0] & 1);
        memcpy(token, library_token, 304);  /* INIT below takes this one */
    }
    static uint8_t wrong[304];
    memcpy(wrong, token, 304);
    wrong[0] ^= 1;  /* VALID without the launch enclave's MAC */
    struct init_isgx init = {base, (uint64_t)sigstruct, (uint64_t)wrong};
    int ret = ioctl(device, ISGX_INIT, &init);
    CHECK("init wrong token", ret == SGX_INVALID_EINITTOKEN, "ret %d errno %d", ret, errno);
    init.einittoken = 0;
    ret = ioctl(device, ISGX_INIT, &init);
    CHECK("init without a token", ret == 304, "ret %d errno %d", ret, errno);
    static uint8_t bad_sigstruct[1808];
    memcpy(bad_sigstruct, sigstruct, 1808);
    bad_sigstruct[960] ^= 1;
    init = (struct init_isgx){base, (uint64_t)bad_sigstruct, (uint64_t)token};
    ret = ioctl(device, ISGX_INIT, &init);
    CHECK("init wrong measurement", ret == SGX_INVALID_SIGNATURE, "ret %d errno %d", ret, errno);
    init = (struct init_isgx){base + enclave_size, (uint64_t)sigstruct, (uint64_t)token};
    errno = 0;
    CHECK("init outside the enclave", ioctl(device, ISGX_INIT, &init) == -1 && errno == EINVAL,
          "errno %d", errno);
    init.addr = base + PAGE;  /* any address inside it names it */
    ret = ioctl(device, ISGX_INIT, &init);
    CHECK("init", ret == 0, "ret %d errno %d", ret, errno);
    errno = 0;
    CHECK("init twice", ioctl(device, ISGX_INIT, &init) == -1 && errno == EINVAL,
          "errno %d", errno);
    errno = 0;
    CHECK("add after init", ioctl(device, ISGX_ADD_PAGE, &add) == -1 && errno == EINVAL,
          "errno %d", errno);
    errno = 0;
    CHECK("dcap init on isgx", ioctl(device, DCAP_INIT, &init) == -1 && errno == ENOTTY,
          "errno %d", errno);

    /* Raw ENCLU, on two TCS; the enclave lives with its mapping, not the fd. */
    CHECK("enter", round_trip(base, 0x15a1) && round_trip(base + PAGE, 0x15a2),
          "the value did not come back");
    close(device);
    CHECK("after close", round_trip(base, 0x15a3), "the enclave is gone");
    munmap(area, enclave_size);
}

static void dcap(void)
{
    int device = open("/dev/sgx", O_RDWR);
    CHECK("dcap open", device >= 0, "errno %d", errno);
    if (device < 0)
        return;
    uint8_t *area = mmap(NULL, enclave_size, PROT_NONE, MAP_SHARED, device, 0);
    uint64_t base = (uint64_t)area;
    CHECK("dcap mmap", area != MAP_FAILED && base % enclave_size == 0, "errno %d", errno);
    static uint8_t secs[4096] __attribute__((aligned(4096)));
    make_secs(secs, base);
    uint64_t create_arg = (uint64_t)secs;
    CHECK("dcap create", ioctl(device, ISGX_CREATE, &create_arg) == 0, "errno %d", errno);
    int failed = add_all(device, base);
    CHECK("dcap add pages", failed == 0, "errno %d", failed);
    protect_all(base);
    struct set_attribute attribute = {base, (uint64_t)device};
    errno = 0;
    CHECK("dcap set attribute without provision fd",
          ioctl(device, DCAP_SET_ATTRIBUTE, &attribute) == -1 && errno == EINVAL,
          "errno %d", errno);
    int provision = open("/dev/sgx_prv", O_RDWR);
    attribute.attribute_fd = (uint64_t)provision;
    CHECK("dcap set attribute", provision >= 0 &&
          ioctl(device, DCAP_SET_ATTRIBUTE, &attribute) == 0, "errno %d", errno);
    close(provision);
    struct init_isgx with_token = {base, (uint64_t)sigstruct, 0};
    errno = 0;
    CHECK("isgx init on dcap", ioctl(device, ISGX_INIT, &with_token) == -1 && errno == ENOTTY,
          "errno %d", errno);
    struct init_dcap init = {base, (uint64_t)sigstruct};
    int ret = ioctl(device, DCAP_INIT, &init);
    if (locked) {
        CHECK("dcap init", ret == SGX_INVALID_EINITTOKEN, "ret %d errno %d", ret, errno);
    } else {
        CHECK("dcap init", ret == 0, "ret %d errno %d", ret, errno);
        CHECK("dcap enter", round_trip(base + PAGE, 0xdca9), "the value did not come back");
    }
    munmap(area, enclave_size);
    close(device);
}

int main(int argc, char **argv)
{
    locked = argc == 4 && !strcmp(argv[3], "locked");
    first_heap_mask = argc == 4 && !strcmp(argv[3], "partial") ? 0x0101 : 0;
    if (argc != 3 && !locked && !first_heap_mask) {
        fprintf(stderr, "usage: %s ENCLAVE.elf ENCLAVE.elf.sig [locked]\n", argv[0]);
        return 100;
    }
    size_t elf_length, sig_length;
    elf = read_file(argv[1], &elf_length);
    sigstruct = read_file(argv[2], &sig_length);
    if (elf == NULL || sigstruct == NULL || sig_length != 1808) {
        fprintf(stderr, "cannot read the enclave or its SIGSTRUCT\n");
        return 100;
    }
    layout();
    isgx();
    dcap();
    printf("done %d failures\n", failures);
    return failures;
}
