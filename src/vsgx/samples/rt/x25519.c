/* X25519 as RFC 7748 section 5 defines it: the Montgomery ladder over
   GF(p), p = 2^255 - 19, with a24 = 121665.

   Constant time: no branch and no memory address depends on the scalar or
   the point. The ladder swaps with a mask, the inversion is a fixed chain
   of squarings and multiplications (z^(p-2)), and the final reduction
   computes its "subtract p or not" as a carry. Field elements are five
   limbs of 51 bits; products go through unsigned __int128, which gcc turns
   into MUL instructions (no library call). */
#include "x25519.h"

#include <stddef.h>

typedef uint64_t fe[5];
typedef unsigned __int128 u128;

#define MASK51 ((1ull << 51) - 1)

static uint64_t load64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void store64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Little-endian bytes to limbs; bit 255 is dropped. A value in [p, 2^255)
   is kept as it is: arithmetic is modulo p either way (RFC 7748 asks that
   such non-canonical u-coordinates be accepted). */
static void fe_frombytes(fe h, const uint8_t s[32])
{
    h[0] = load64(s) & MASK51;
    h[1] = (load64(s + 6) >> 3) & MASK51;
    h[2] = (load64(s + 12) >> 6) & MASK51;
    h[3] = (load64(s + 19) >> 1) & MASK51;
    h[4] = (load64(s + 24) >> 12) & MASK51;
}

/* One carry pass: limbs back under 2^51 (limb 0 may keep a few bits
   more), the carry out of limb 4 folded in as 19 (2^255 = 19 mod p). */
static void fe_carry(fe h)
{
    uint64_t c;
    c = h[0] >> 51, h[0] &= MASK51, h[1] += c;
    c = h[1] >> 51, h[1] &= MASK51, h[2] += c;
    c = h[2] >> 51, h[2] &= MASK51, h[3] += c;
    c = h[3] >> 51, h[3] &= MASK51, h[4] += c;
    c = h[4] >> 51, h[4] &= MASK51, h[0] += 19 * c;
}

/* The canonical encoding: the value reduced into [0, p). */
static void fe_tobytes(uint8_t s[32], const fe f)
{
    fe h = {f[0], f[1], f[2], f[3], f[4]};
    fe_carry(h);
    fe_carry(h);
    /* h < 2p now; q = 1 exactly when h + 19 reaches 2^255, i.e. h >= p. */
    uint64_t q = (h[0] + 19) >> 51;
    q = (h[1] + q) >> 51;
    q = (h[2] + q) >> 51;
    q = (h[3] + q) >> 51;
    q = (h[4] + q) >> 51;
    /* h - q*p = h + 19q - q*2^255: add 19q, carry, drop bit 255. */
    h[0] += 19 * q;
    uint64_t c;
    c = h[0] >> 51, h[0] &= MASK51, h[1] += c;
    c = h[1] >> 51, h[1] &= MASK51, h[2] += c;
    c = h[2] >> 51, h[2] &= MASK51, h[3] += c;
    c = h[3] >> 51, h[3] &= MASK51, h[4] += c;
    h[4] &= MASK51;
    store64(s, h[0] | h[1] << 51);
    store64(s + 8, h[1] >> 13 | h[2] << 38);
    store64(s + 16, h[2] >> 26 | h[3] << 25);
    store64(s + 24, h[3] >> 39 | h[4] << 12);
}

static void fe_copy(fe h, const fe f)
{
    for (int i = 0; i < 5; i++)
        h[i] = f[i];
}

/* Sums stay unreduced (limbs under 2^53): they only feed fe_mul. */
static void fe_add(fe h, const fe f, const fe g)
{
    for (int i = 0; i < 5; i++)
        h[i] = f[i] + g[i];
}

/* f - g + 4p, carried: never negative for the limbs fe_mul leaves. */
static void fe_sub(fe h, const fe f, const fe g)
{
    h[0] = f[0] + 0x1FFFFFFFFFFFB4ull - g[0]; /* 4 * (2^51 - 19) */
    for (int i = 1; i < 5; i++)
        h[i] = f[i] + 0x1FFFFFFFFFFFFCull - g[i]; /* 4 * (2^51 - 1) */
    fe_carry(h);
}

/* Limbs of the product folded at 2^255 = 19: h may alias f or g. */
static void fe_reduce(fe h, u128 r0, u128 r1, u128 r2, u128 r3, u128 r4)
{
    r1 += (uint64_t)(r0 >> 51);
    r2 += (uint64_t)(r1 >> 51);
    r3 += (uint64_t)(r2 >> 51);
    r4 += (uint64_t)(r3 >> 51);
    uint64_t top = (uint64_t)(r4 >> 51);
    h[0] = ((uint64_t)r0 & MASK51) + 19 * top;
    h[1] = (uint64_t)r1 & MASK51;
    h[2] = (uint64_t)r2 & MASK51;
    h[3] = (uint64_t)r3 & MASK51;
    h[4] = (uint64_t)r4 & MASK51;
    h[1] += h[0] >> 51;
    h[0] &= MASK51;
}

static void fe_mul(fe h, const fe f, const fe g)
{
    uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    uint64_t g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3], g4 = g[4];
    uint64_t g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4;
    u128 r0 = (u128)f0 * g0 + (u128)f1 * g4_19 + (u128)f2 * g3_19 + (u128)f3 * g2_19 +
              (u128)f4 * g1_19;
    u128 r1 = (u128)f0 * g1 + (u128)f1 * g0 + (u128)f2 * g4_19 + (u128)f3 * g3_19 +
              (u128)f4 * g2_19;
    u128 r2 = (u128)f0 * g2 + (u128)f1 * g1 + (u128)f2 * g0 + (u128)f3 * g4_19 +
              (u128)f4 * g3_19;
    u128 r3 = (u128)f0 * g3 + (u128)f1 * g2 + (u128)f2 * g1 + (u128)f3 * g0 +
              (u128)f4 * g4_19;
    u128 r4 = (u128)f0 * g4 + (u128)f1 * g3 + (u128)f2 * g2 + (u128)f3 * g1 +
              (u128)f4 * g0;
    fe_reduce(h, r0, r1, r2, r3, r4);
}

static void fe_mul_a24(fe h, const fe f)
{
    fe_reduce(h, (u128)f[0] * 121665, (u128)f[1] * 121665, (u128)f[2] * 121665,
              (u128)f[3] * 121665, (u128)f[4] * 121665);
}

/* h = f^(2^n) */
static void fe_square_times(fe h, const fe f, int n)
{
    fe_copy(h, f);
    for (int i = 0; i < n; i++)
        fe_mul(h, h, h);
}

/* z^(p-2) = z^(2^255 - 21), which is 1/z for z != 0 (and 0 for 0). */
static void fe_invert(fe out, const fe z)
{
    fe z2, z9, z11, z_5, z_10, z_20, z_50, z_100, t;
    fe_mul(z2, z, z);                  /* z^2 */
    fe_square_times(t, z2, 2);         /* z^8 */
    fe_mul(z9, t, z);                  /* z^9 */
    fe_mul(z11, z9, z2);               /* z^11 */
    fe_mul(t, z11, z11);               /* z^22 */
    fe_mul(z_5, t, z9);                /* z^(2^5 - 1) */
    fe_square_times(t, z_5, 5);
    fe_mul(z_10, t, z_5);              /* z^(2^10 - 1) */
    fe_square_times(t, z_10, 10);
    fe_mul(z_20, t, z_10);             /* z^(2^20 - 1) */
    fe_square_times(t, z_20, 20);
    fe_mul(t, t, z_20);                /* z^(2^40 - 1) */
    fe_square_times(t, t, 10);
    fe_mul(z_50, t, z_10);             /* z^(2^50 - 1) */
    fe_square_times(t, z_50, 50);
    fe_mul(z_100, t, z_50);            /* z^(2^100 - 1) */
    fe_square_times(t, z_100, 100);
    fe_mul(t, t, z_100);               /* z^(2^200 - 1) */
    fe_square_times(t, t, 50);
    fe_mul(t, t, z_50);                /* z^(2^250 - 1) */
    fe_square_times(t, t, 5);          /* z^(2^255 - 32) */
    fe_mul(out, t, z11);               /* z^(2^255 - 21) */
}

/* Swap f and g when bit is 1, without a branch. */
static void fe_cswap(fe f, fe g, uint64_t bit)
{
    uint64_t mask = 0 - bit;
    for (int i = 0; i < 5; i++) {
        uint64_t x = mask & (f[i] ^ g[i]);
        f[i] ^= x;
        g[i] ^= x;
    }
}

static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = p;
    while (n--)
        *v++ = 0;
}

void x25519(uint8_t out[X25519_SIZE], const uint8_t scalar[X25519_SIZE],
            const uint8_t u[X25519_SIZE])
{
    uint8_t k[32];
    for (int i = 0; i < 32; i++)
        k[i] = scalar[i];
    k[0] &= 248; /* decodeScalar25519 */
    k[31] &= 127;
    k[31] |= 64;
    struct {
        fe x1, x2, z2, x3, z3, a, aa, b, bb, e, c, d, da, cb, t;
    } s;
    fe_frombytes(s.x1, u);
    for (int i = 0; i < 5; i++)
        s.x2[i] = s.z2[i] = s.z3[i] = 0;
    s.x2[0] = s.z3[0] = 1;
    fe_copy(s.x3, s.x1);
    uint64_t swap = 0;
    for (int t = 254; t >= 0; t--) {
        uint64_t bit = (k[t >> 3] >> (t & 7)) & 1;
        swap ^= bit;
        fe_cswap(s.x2, s.x3, swap);
        fe_cswap(s.z2, s.z3, swap);
        swap = bit;
        fe_add(s.a, s.x2, s.z2);       /* A = x_2 + z_2 */
        fe_mul(s.aa, s.a, s.a);        /* AA = A^2 */
        fe_sub(s.b, s.x2, s.z2);       /* B = x_2 - z_2 */
        fe_mul(s.bb, s.b, s.b);        /* BB = B^2 */
        fe_sub(s.e, s.aa, s.bb);       /* E = AA - BB */
        fe_add(s.c, s.x3, s.z3);       /* C = x_3 + z_3 */
        fe_sub(s.d, s.x3, s.z3);       /* D = x_3 - z_3 */
        fe_mul(s.da, s.d, s.a);        /* DA = D * A */
        fe_mul(s.cb, s.c, s.b);        /* CB = C * B */
        fe_add(s.t, s.da, s.cb);
        fe_mul(s.x3, s.t, s.t);        /* x_3 = (DA + CB)^2 */
        fe_sub(s.t, s.da, s.cb);
        fe_mul(s.t, s.t, s.t);
        fe_mul(s.z3, s.x1, s.t);       /* z_3 = x_1 * (DA - CB)^2 */
        fe_mul(s.x2, s.aa, s.bb);      /* x_2 = AA * BB */
        fe_mul_a24(s.t, s.e);
        fe_add(s.t, s.aa, s.t);
        fe_mul(s.z2, s.e, s.t);        /* z_2 = E * (AA + a24 * E) */
    }
    fe_cswap(s.x2, s.x3, swap);
    fe_cswap(s.z2, s.z3, swap);
    fe_invert(s.t, s.z2);
    fe_mul(s.x2, s.x2, s.t);
    fe_tobytes(out, s.x2);
    wipe(&s, sizeof(s));
    wipe(k, sizeof(k));
}

void x25519_public_key(uint8_t out[X25519_SIZE], const uint8_t private_key[X25519_SIZE])
{
    static const uint8_t base[32] = {9};
    x25519(out, private_key, base);
}
