/* server-tls.c - the server's TLS identity
 *
 * Ed25519 for the server's own key: signatures are small, fast and need no
 * random nonce, and every client of this protocol is our own OpenSSL 3
 * code, so no P-256 fallback is needed for compatibility. The certificate
 * is valid for a century: the agents pin the key, not the certificate, and
 * no CA vouches for it, so an expiry date would only break them.
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bs-fs.h"
#include "bs-macro.h"
#include "server-tls.h"

static X509 *self_signed(EVP_PKEY *key) {
        X509 *x = X509_new();
        BIGNUM *serial = BN_new();
        bool ok = x && serial && X509_set_version(x, 2) && BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
                  BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) &&
                  /* An hour back: a client whose clock lags still sees it valid. */
                  X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
                  X509_time_adj_ex(X509_getm_notAfter(x), 100 * 365, 0, NULL) && X509_set_pubkey(x, key);
        BN_free(serial);
        if (ok) {
                X509_NAME *name = X509_get_subject_name(x);
                ok = X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *) "backupsyncd", -1, -1,
                                                0) &&
                     X509_set_issuer_name(x, name) && X509_sign(x, key, NULL) > 0;
        }
        if (!ok) {
                X509_free(x);
                return NULL;
        }
        return x;
}

static int write_pem(const char *path, EVP_PKEY *key, X509 *cert) {
        /* Secure memory: the private key's text is wiped when freed. */
        BIO *mem = BIO_new(BIO_s_secmem());
        char *p;
        int r = -ENOMEM;
        if (mem && PEM_write_bio_PrivateKey(mem, key, NULL, NULL, 0, NULL, NULL) && PEM_write_bio_X509(mem, cert)) {
                long n = BIO_get_mem_data(mem, &p);
                r = n > 0 ? bs_write_file_atomic(AT_FDCWD, path, p, (size_t) n) : -EIO;
        }
        BIO_free(mem);
        return r;
}

int server_tls_own(const char *storage, char path[PATH_MAX]) {
        if (snprintf(path, PATH_MAX, "%s/" SERVER_TLS_OWN, storage) >= PATH_MAX)
                return -ENAMETOOLONG;
        if (access(path, F_OK) == 0)
                return 0;
        if (errno != ENOENT)
                return -errno;
        EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        X509 *cert = key ? self_signed(key) : NULL;
        int r = cert ? write_pem(path, key, cert) : -ENOMEM;
        X509_free(cert);
        EVP_PKEY_free(key);
        if (r < 0)
                return r;
        /* The rename is durable only with its directory. */
        int dfd = open(storage, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
                (void) fsync(dfd);
                close(dfd);
        }
        return 1;
}

int server_tls_load(const char *cert_file, const char *key_file, SSL_CTX **ret, uint8_t fp[BS_FP_LEN]) {
        SSL_CTX *ctx;
        int r = bs_tls_server_ctx_new(cert_file, key_file, &ctx);
        if (r < 0)
                return r;
        X509 *cert = SSL_CTX_get0_certificate(ctx);
        r = cert ? bs_fp_of_cert(cert, fp) : -EBADMSG;
        if (r < 0) {
                SSL_CTX_free(ctx);
                return r;
        }
        *ret = ctx;
        return 0;
}
