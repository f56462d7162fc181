/* SHA-256 (FIPS 180-4), enough to key models and inputs by content. */
#ifndef STANDIN_SHA256_H
#define STANDIN_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t length;    /* bytes hashed so far */
    uint8_t block[64];
    size_t used;        /* bytes waiting in block */
} sha256_ctx;

void sha256_init(sha256_ctx *ctx);
void sha256_update(sha256_ctx *ctx, const void *data, size_t size);
/* Writes 64 lowercase hex digits and a NUL to hex. */
void sha256_hex(sha256_ctx *ctx, char hex[65]);
#endif
