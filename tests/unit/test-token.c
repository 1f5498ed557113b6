/* test-token.c - unit tests for common/bs-token.[ch] */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bs-token.h"

#define KEY32 "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" /* 32 base32 characters */

static int parse(const char *s, BsToken *t) {
        return bs_token_parse(s, strlen(s), t);
}

Test(id, generate_charset_and_length) {
        int seen[256] = { 0 };
        for (int i = 0; i < 5000; i++) {
                char id[BS_ID_LEN + 1];
                memset(id, '#', sizeof(id));
                bs_id_generate(id);
                cr_assert_eq(strlen(id), BS_ID_LEN, "draw %d: \"%s\"", i, id);
                for (int k = 0; k < BS_ID_LEN; k++) {
                        char c = id[k];
                        cr_assert((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'),
                                  "draw %d: bad character 0x%02x", i, (unsigned char) c);
                        seen[(unsigned char) c]++;
                }
                cr_assert(bs_id_valid(id, BS_ID_LEN));
        }
        /* 20000 characters over 36 symbols: every one shows up. */
        for (const char *c = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"; *c; c++)
                cr_assert_gt(seen[(unsigned char) *c], 0, "'%c' never drawn", *c);
}

Test(id, generate_differs) {
        char a[BS_ID_LEN + 1], b[BS_ID_LEN + 1];
        int same = 0;
        for (int i = 0; i < 100; i++) {
                bs_id_generate(a);
                bs_id_generate(b);
                same += strcmp(a, b) == 0;
        }
        /* 36^4 = 1.7 M values: a repeat in 100 pairs is near impossible. */
        cr_assert_lt(same, 2);
}

Test(id, valid) {
        cr_assert(bs_id_valid("ABCD", 4));
        cr_assert(bs_id_valid("A1B2", 4));
        cr_assert(bs_id_valid("0000", 4));
        cr_assert(bs_id_valid("Z9Z9", 4));
        cr_assert_not(bs_id_valid("abcd", 4), "lower case is not canonical");
        cr_assert_not(bs_id_valid("ABC", 3));
        cr_assert_not(bs_id_valid("ABCDE", 5));
        cr_assert_not(bs_id_valid("", 0));
        cr_assert_not(bs_id_valid("AB-D", 4));
        cr_assert_not(bs_id_valid("AB D", 4));
        cr_assert_not(bs_id_valid("AB\0D", 4));
        cr_assert_not(bs_id_valid("AB\xc3\x84", 4));
        cr_assert_not(bs_id_valid("ABCD", 3), "length given, not strlen");
}

Test(key, generate_length_alphabet_unique) {
        enum { N = 200 };
        static char keys[N][BS_KEY_LEN + 1];
        for (int i = 0; i < N; i++) {
                memset(keys[i], '#', sizeof(keys[i]));
                cr_assert_eq(bs_key_generate(keys[i]), 0);
                cr_assert_eq(strlen(keys[i]), BS_KEY_LEN, "key \"%s\"", keys[i]);
                for (int k = 0; k < BS_KEY_LEN; k++) {
                        char c = keys[i][k];
                        cr_assert((c >= 'A' && c <= 'Z') || (c >= '2' && c <= '7'),
                                  "bad base32 character 0x%02x", (unsigned char) c);
                }
                for (int j = 0; j < i; j++)
                        cr_assert_str_neq(keys[i], keys[j], "duplicate key");
        }
        cr_assert_geq(BS_KEY_BYTES * 8, 128, "key has at least 128 bits");
}

Test(token, id_only) {
        BsToken t;
        memset(&t, 'x', sizeof(t));
        cr_assert_eq(parse("ABCD", &t), 0);
        cr_assert_str_eq(t.id, "ABCD");
        cr_assert_str_eq(t.key, "");
}

Test(token, lower_case) {
        BsToken t;
        cr_assert_eq(parse("ab1d", &t), 0);
        cr_assert_str_eq(t.id, "AB1D");
        cr_assert_eq(parse("abcd-abcdefghijklmnopqrstuvwxyz234567", &t), 0);
        cr_assert_str_eq(t.id, "ABCD");
        cr_assert_str_eq(t.key, KEY32);
}

Test(token, id_and_key) {
        BsToken t;
        cr_assert_eq(parse("K7Q2-" KEY32, &t), 0);
        cr_assert_str_eq(t.id, "K7Q2");
        cr_assert_str_eq(t.key, KEY32);
}

Test(token, whitespace_trimmed) {
        BsToken t;
        cr_assert_eq(parse("  ABCD\n", &t), 0);
        cr_assert_str_eq(t.id, "ABCD");
        cr_assert_eq(parse("\t ABCD-" KEY32 " \r\n", &t), 0);
        cr_assert_str_eq(t.id, "ABCD");
        cr_assert_str_eq(t.key, KEY32);
        cr_assert_eq(parse("AB CD", &t), -EINVAL, "inner space is not trimmed");
        cr_assert_eq(parse("   ", &t), -EINVAL);
}

Test(token, explicit_len) {
        BsToken t;
        /* Only the first n bytes are the token. */
        cr_assert_eq(bs_token_parse("ABCDEFG", 4, &t), 0);
        cr_assert_str_eq(t.id, "ABCD");
        cr_assert_eq(bs_token_parse("ABCD", 3, &t), -EINVAL);
}

Test(token, wrong_lengths) {
        static const char *const bad[] = {
                "",
                "A",
                "ABC",
                "ABCDE",
                "ABCD-",
                "ABCD-A",
                "ABCD-" "ABCDEFGHIJKLMNOPQRSTUVWXYZ23456",   /* 31 */
                "ABCD-" "ABCDEFGHIJKLMNOPQRSTUVWXYZ2345677", /* 33 */
                "ABCDE-" KEY32,
                "ABC-" KEY32,
        };
        BsToken t;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                cr_expect_eq(parse(bad[i], &t), -EINVAL, "should reject \"%s\"", bad[i]);
}

Test(token, bad_separators) {
        static const char *const bad[] = {
                "ABCD_" KEY32,
                "ABCD " KEY32,
                "ABCD:" KEY32,
                "ABCDA" KEY32,
                "ABCD." KEY32,
        };
        BsToken t;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                cr_expect_eq(parse(bad[i], &t), -EINVAL, "should reject \"%s\"", bad[i]);
}

Test(token, bad_characters) {
        static const char *const bad[] = {
                "AB-D",
                "AB?D",
                "\xc3\x84" "BC",
                "AB\x01" "D",
                "ABCD-ABCDEFGHIJKLMNOPQRSTUVWXYZ23456=",
                "ABCD-ABCDEFGHIJKLMNOPQRSTUVWXYZ23456-",
                "ABCD-ABCDEFGHIJKLMNOPQRSTUVWXYZ 34567",
                "AB_D-" KEY32,
        };
        BsToken t;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                cr_expect_eq(parse(bad[i], &t), -EINVAL, "should reject \"%s\"", bad[i]);

        /* NUL inside, with an explicit length. */
        static const char nul[] = "ABCD-ABCDEFGHIJKLMNOPQRSTUVWXYZ\0" "34567";
        cr_assert_eq(bs_token_parse(nul, sizeof(nul) - 1, &t), -EINVAL);
        static const char nulid[] = "AB\0D";
        cr_assert_eq(bs_token_parse(nulid, 4, &t), -EINVAL);
}

Test(token, digits_outside_base32) {
        /* 0, 1, 8 and 9 are valid in the ID but not in a base32 key. */
        BsToken t;
        const char digits[] = "0189";
        for (int i = 0; i < 4; i++) {
                char s[] = "ABCD-" KEY32;
                s[5 + 10] = digits[i];
                cr_expect_eq(parse(s, &t), -EINVAL, "should reject \"%s\"", s);
        }
        cr_assert_eq(parse("0189-" KEY32, &t), 0);
        cr_assert_str_eq(t.id, "0189");
}

Test(token, format_round_trip) {
        char key[BS_KEY_LEN + 1], id[BS_ID_LEN + 1];
        char s[BS_TOKEN_MAX + 1], s2[BS_TOKEN_MAX + 1];
        BsToken t, u;

        for (int i = 0; i < 50; i++) {
                bs_id_generate(id);
                cr_assert_eq(bs_key_generate(key), 0);
                snprintf(s, sizeof(s), "%s-%s", id, key);
                cr_assert_eq(parse(s, &t), 0, "\"%s\"", s);
                cr_assert_str_eq(t.id, id);
                cr_assert_str_eq(t.key, key);
                memset(s2, '#', sizeof(s2));
                bs_token_format(&t, s2);
                cr_assert_str_eq(s2, s);
                cr_assert_eq(strlen(s2), BS_TOKEN_MAX);
                cr_assert_eq(parse(s2, &u), 0);
                cr_assert_str_eq(u.id, t.id);
                cr_assert_str_eq(u.key, t.key);
        }

        cr_assert_eq(parse("wxyz", &t), 0);
        bs_token_format(&t, s2);
        cr_assert_str_eq(s2, "WXYZ");
}

Test(key_hash, hash_and_compare) {
        char h1[65], h2[65], h3[65];
        memset(h1, '#', sizeof(h1));
        cr_assert_eq(bs_key_hash(KEY32, h1), 0);
        cr_assert_eq(strlen(h1), 64);
        for (int i = 0; i < 64; i++)
                cr_assert(strchr("0123456789abcdef", h1[i]) && h1[i], "not lower-case hex");
        /* SHA-256("abc"), so the hash is plain SHA-256 of the key text. */
        cr_assert_eq(bs_key_hash("abc", h3), 0);
        cr_assert_str_eq(h3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

        cr_assert_eq(bs_key_hash(KEY32, h2), 0);
        cr_assert_str_eq(h1, h2, "hash is deterministic");
        cr_assert(bs_key_hash_equal(h1, h2));

        char other[] = KEY32;
        other[31] = '2';
        cr_assert_eq(bs_key_hash(other, h2), 0);
        cr_assert_str_neq(h1, h2);
        cr_assert_not(bs_key_hash_equal(h1, h2));

        cr_assert_not(bs_key_hash_equal(h1, ""));
        cr_assert_not(bs_key_hash_equal("", h1));
        char prefix[65];
        memcpy(prefix, h1, 63);
        prefix[63] = 0;
        cr_assert_not(bs_key_hash_equal(h1, prefix), "a prefix is not equal");
        cr_assert(bs_key_hash_equal("", ""));
}
