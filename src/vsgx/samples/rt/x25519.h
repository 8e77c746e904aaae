/* X25519 (RFC 7748) for enclaves: Diffie-Hellman on Curve25519, in
   constant time. Plain C with no library, so the same file is built into
   enclaves and, for its tests, into a host library. */
#ifndef VSGX_X25519_H
#define VSGX_X25519_H
#include <stdint.h>

#define X25519_SIZE 32

/* out = X25519(scalar, u): the scalar is clamped and the u-coordinate's top
   bit ignored, as RFC 7748 section 5 says. out may alias either input. */
void x25519(uint8_t out[X25519_SIZE], const uint8_t scalar[X25519_SIZE],
            const uint8_t u[X25519_SIZE]);
/* The public key of a private key: X25519(private_key, 9). */
void x25519_public_key(uint8_t out[X25519_SIZE], const uint8_t private_key[X25519_SIZE]);

#endif
