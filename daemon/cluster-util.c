/* cluster-util.c - what the cluster backend's files share: the names of
 * objects, lists of SHA-256s as parameters, PostgreSQL's columns
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bs-hash.h"
#include "cluster-internal.h"

ssize_t cluster_column_bytes(const PGresult *res, int row, int col, void *out, size_t max) {
        if (PQgetisnull(res, row, col))
                return 0;
        size_t n;
        unsigned char *p = PQunescapeBytea((const unsigned char *) PQgetvalue(res, row, col), &n);
        if (!p)
                return -ENOMEM;
        if (n > max) {
                PQfreemem(p);
                return -EBADMSG;
        }
        memcpy(out, p, n);
        PQfreemem(p);
        return (ssize_t) n;
}

int64_t cluster_column_int(const PGresult *res, int row, int col) {
        if (PQgetisnull(res, row, col))
                return 0;
        return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

void cluster_hex_append(char *list, size_t *len, const uint8_t sha[BS_SHA_LEN]) {
        if (*len)
                list[(*len)++] = ',';
        bs_hex(sha, BS_SHA_LEN, list + *len); /* and the NUL */
        *len += 2 * BS_SHA_LEN;
}

void cluster_object_key(const char *id, const uint8_t sha[BS_SHA_LEN], char *key) {
        char hex[2 * BS_SHA_LEN + 1];
        bs_hex(sha, BS_SHA_LEN, hex);
        snprintf(key, S3_KEY_MAX, "accounts/%s/c/%s", id, hex);
}

void cluster_chunk_key(const char *id, const uint8_t sha[BS_SHA_LEN], char *key) {
        char hex[2 * BS_SHA_LEN + 1];
        bs_hex(sha, BS_SHA_LEN, hex);
        snprintf(key, S3_KEY_MAX, "accounts/%s/k/%s", id, hex);
}
