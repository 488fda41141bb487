/* SHA-256 (libcrypto) for identity, CRC32 (zlib's, computed by ISA-L) per tensor, and a hash
 * cache keyed by (path, size, mtime, inode). */
#ifndef FX_HASH_H
#define FX_HASH_H

#include "fx-err.h"

struct fx_sha256;
struct fx_sha256 *fx_sha256_new(void);
void fx_sha256_update(struct fx_sha256 *h, const void *data, size_t n);
void fx_sha256_final(struct fx_sha256 *h, char hex[65]);  /* frees h */
void fx_sha256_hex(char hex[65], const void *data, size_t n);

uint32_t fx_crc32(uint32_t crc, const void *data, size_t n);  /* zlib's CRC32; start with 0 */

/* Feeds h a digest of n bytes: their length, then the XXH3-128 of each
 * FX_DIGEST_CHUNK-byte chunk (hashed in parallel). For layer recipes, where
 * hashing every weight with SHA-256 was a third of a stage's time. */
#define FX_DIGEST_CHUNK ((size_t)4 << 20)
void fx_content_digest(struct fx_sha256 *h, const void *data, size_t n);

/* SHA-256 of a file's content. Uses the cache file FX_HASH_CACHE env var or,
 * when unset, <dir of path>/.fx-hash-cache; entries keyed by absolute path,
 * size, mtime (ns), inode. A cache that cannot be written is not an error. */
int fx_file_sha256(char hex[65], const char *path, struct fx_err *err);

#endif
