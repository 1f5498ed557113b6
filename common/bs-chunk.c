/* bs-chunk.c - FastCDC with normalized chunking and the two-byte step */
#include <errno.h>

#include "bs-chunk.h"
#include "bs-macro.h"

/*
 * The gear table: 256 values of SplitMix64 seeded with 0x636b757073796e63
 * ("ckupsync"), as test-chunk.c recomputes. Part of the protocol.
 */
static const uint64_t gear[256] = {
        0xf67d0ea89b3094ffULL, 0x469217f71eb823c5ULL, 0xf3e6e1ad2771ce1eULL, 0x5646dee209f85812ULL,
        0xa76dc9923fdd45e6ULL, 0x4aeee45313763887ULL, 0x8520c7d831c3ed3dULL, 0xa254ad6300bc0f07ULL,
        0xfb5e4eae4c90e49eULL, 0xd31db6ee132361fbULL, 0x4a175bdffe283934ULL, 0xe4f92d4272cdffd0ULL,
        0x3d9d79576ff1ae79ULL, 0x53f466eb6fec349bULL, 0xc34a05f15588f1e4ULL, 0xfe665f7eb857c091ULL,
        0x33c825caebaadbdaULL, 0xd67bb682c26b16fcULL, 0x5c8ace9b5768a7f3ULL, 0x11ac83cb51966821ULL,
        0xecc2a3a7e94a31bfULL, 0x0a5e563113c811a2ULL, 0x9165bd26d92719d8ULL, 0xf806e338a039c1d9ULL,
        0xc50f9c829431bdf2ULL, 0x20f2e3013524e9b4ULL, 0x09814547d7c8042fULL, 0x7f92d9134e77775dULL,
        0xba9d9ad74a0beb4cULL, 0x1ef37687c1af0baeULL, 0x33c47c22894b6385ULL, 0x069dc1dab843c013ULL,
        0xf09dd68a7ddd43ccULL, 0x9ac154e87b6b770cULL, 0x123f794a7ed4ad6fULL, 0xac4f226cb8c146deULL,
        0x0e917b05ddcfd457ULL, 0x911278610ee90c70ULL, 0xd6aff678394fde9fULL, 0x9d2c9537eb0c1e6eULL,
        0x10a1564951d5d817ULL, 0x25b246ca6840e0e7ULL, 0x4d3aed3fe393dba0ULL, 0x234975f3c99f27f9ULL,
        0x22ddd94c45477499ULL, 0xce4ea7eb955ec574ULL, 0xce950e1fb2179390ULL, 0x08e235ec9b458176ULL,
        0xdda7356af752b213ULL, 0xf8f7d2ec5172377aULL, 0xdb165769d7a6799eULL, 0x0e779bf07519a6f7ULL,
        0x36b302ef925be0edULL, 0x5388e748dc50dc4eULL, 0xeb0282fb6fdacb84ULL, 0xa04dd44699652703ULL,
        0xdbd4884bdaa4869aULL, 0x5c0ecfb9ddb759e1ULL, 0x4df83aa8fd472d4cULL, 0xa806100e32156453ULL,
        0xee3d260e5a6a40a9ULL, 0x32c19d026fbb1dc3ULL, 0xdc98424052e4389bULL, 0x9fdab8ca65ba4010ULL,
        0xbf8d9163e47c24b7ULL, 0xfc5c145b950ca48aULL, 0xf63cd7350d5ba381ULL, 0xb55a52cdd7015a96ULL,
        0xefba0deb39bec539ULL, 0x740023ff606fa205ULL, 0x53ed79deac33ad98ULL, 0x315ed7cad8c24c32ULL,
        0x531b51f4105b0202ULL, 0x46410f9f7d3d2e7bULL, 0xe5b4812180421d20ULL, 0xe18ad1af9160f3ebULL,
        0x18527d28d84b8289ULL, 0xa1e93129dbc4b2c6ULL, 0x138f905ba62db214ULL, 0x07caaa09440111b6ULL,
        0x4f78d7faa8188f96ULL, 0x2909f42bdccbf3ffULL, 0xd400b0187e91ce75ULL, 0xe94e40b9baf6f461ULL,
        0x86966bb629395cf4ULL, 0x315d0d824500a9d8ULL, 0x494764f0f15cbaabULL, 0x920da48454a56b88ULL,
        0x4c9b4272aebdcdf9ULL, 0xfd9f055d47e33facULL, 0xf5d8bd5a881efe74ULL, 0x4db778e5318b0117ULL,
        0xd71c960656d21eb5ULL, 0x24d3b8cd414369c2ULL, 0xa43ecdc0643ee384ULL, 0x5ef41d721e9a4ce8ULL,
        0xa6cadd2abddd7292ULL, 0x216df00f69ef48b4ULL, 0xf06d6e3d3aae64c3ULL, 0x0d2737b98daf649bULL,
        0xb73465cb4b2f674aULL, 0x88b6c6fb6412595fULL, 0xf04bc2a9e3234e65ULL, 0x90e15bbe4b159a27ULL,
        0x727e93a95bd79828ULL, 0xfb0f613b65a8eba3ULL, 0xcf2e91f33375f4caULL, 0xcfc89e8751777a63ULL,
        0xb61cff80047bd0bfULL, 0x7597bd1a0bfcaa1fULL, 0x60062737fee3cb6dULL, 0x42882ec601299876ULL,
        0x31758d56ebf61eeeULL, 0xd2e98c97ccbd73f1ULL, 0xabce698533f48594ULL, 0x5de3d1db2e7cefe0ULL,
        0x898bb07692ec5cc3ULL, 0x34038cfe6c13ac82ULL, 0x25ba50f10442a660ULL, 0xe78bf7cc0557b511ULL,
        0xcd2d980164cb4c5bULL, 0x4b68bb47686ec6bbULL, 0xed8c1648f1d139efULL, 0xb70dab0f47186fd6ULL,
        0x765d3ff325725ba7ULL, 0x201d0948ffeb300bULL, 0xfaacb640d1ee241cULL, 0xc5e01d37395c78a0ULL,
        0x9101f23406c83cf8ULL, 0x28480b6d725521ecULL, 0x050c8dd57e0baf64ULL, 0x42d328d4e33a0e8fULL,
        0xc1f2ba36d0baafcaULL, 0x54ce16ed621aa733ULL, 0x919b1e1dbffc8532ULL, 0xfec2575cfe58b7e3ULL,
        0x573b19d202b30e28ULL, 0x21107958196922e9ULL, 0xc27a537adcacd3cbULL, 0x14d12256dd7a1ef9ULL,
        0x01d4537b290ec3a3ULL, 0xdc3fb01a82cd82acULL, 0xabcf205404f5ff3bULL, 0xc1e86c1f01e35961ULL,
        0x8733aa72497e43b1ULL, 0xddcc6bc755122c60ULL, 0xeb249532e8ead49eULL, 0x656651311391153dULL,
        0x0014d8fb9f0b54b8ULL, 0xcdc427346c2c1993ULL, 0x25c623aa6b64dcb5ULL, 0xc877f7edeb61ea4bULL,
        0x4ac360b5c8f97458ULL, 0x5c8e0e615b6f4245ULL, 0xbd3293a98bfbdb16ULL, 0x90ec92cd2964a68fULL,
        0x812c8d09a7de67e7ULL, 0x244e413689d06fbbULL, 0x24b4c85b1f9d4ec8ULL, 0x749bc4f5a5303af9ULL,
        0xfe92097c1e0f5aa1ULL, 0x91dc024366f44a7fULL, 0x0286fb9f100024eeULL, 0xd69677763b67a41eULL,
        0x473f5a150031848bULL, 0x9a013799cae6feb6ULL, 0xab95f424d0d694a5ULL, 0xfa835c97c21b53e8ULL,
        0x30966ed79df706d4ULL, 0xe253259e8e59f8bcULL, 0x614fed324fdadf84ULL, 0x9e321d82d17abe0bULL,
        0x920395c6006a4f68ULL, 0x4b7918265223868aULL, 0xb3eef2dccc92bc9fULL, 0x2aaf26a5c562aca5ULL,
        0x069bccb7399a854dULL, 0x31451bea99ae48a0ULL, 0x00815b55e8a81f44ULL, 0x4a5c821106b87c0aULL,
        0xf732403505858062ULL, 0xa58f0a2e131bd678ULL, 0x23c29daf8a592fc2ULL, 0x4c64cc493d7e383fULL,
        0xab6bfd4857703066ULL, 0x9585e419dff48733ULL, 0x2d860eafcc91b155ULL, 0xe2c3c22ca679eb97ULL,
        0x5e42c37e8cb4b948ULL, 0x61e8c233cdb7589dULL, 0xf98b19fe1f72ae7aULL, 0x8dcb633bd7aea109ULL,
        0xd5cf62c114402a94ULL, 0x2ebfb31191c1ba30ULL, 0x5ae5ae50133fd084ULL, 0xf03a4db9f7c4c3f8ULL,
        0x399984f513e9facaULL, 0xc35d7541cf797df6ULL, 0xe1b3e4d78f17baafULL, 0xf5c30a2b2439a800ULL,
        0x354a5247bae3d086ULL, 0x770a085bd770e1a0ULL, 0xa82a82dbbd883b5fULL, 0x57d564a1870d0e71ULL,
        0x136b06eab39cd7a6ULL, 0x9156951b7ec92789ULL, 0x70d6ae9b094f6b83ULL, 0x51ea40a3eec8eaffULL,
        0xbcb98403b4f31c2eULL, 0x79aef9a98f3fbf43ULL, 0x4c7dc9b6298c6e40ULL, 0x5af5c44eafd2ffe6ULL,
        0x9ce9cccd74cccd8bULL, 0x160017caf3e6ed85ULL, 0x3b8d90b8969e9444ULL, 0xf9ad9903842184cbULL,
        0x28927dead74241c4ULL, 0xc892c0011d4aaac9ULL, 0x8a5cd078ac4de94fULL, 0x2818591b88e7039bULL,
        0x8403321f6ea55af7ULL, 0xbcab79a968b0a2f7ULL, 0x805becad847636f6ULL, 0xc17b7aa79caf95afULL,
        0x338867498209ddd5ULL, 0xbfaaf81c28a59077ULL, 0x18d8dd509722ddc6ULL, 0x958058b82a2a2dadULL,
        0xf8806151c7c2a038ULL, 0x5de72f7921285fe7ULL, 0x9576909c09bce13aULL, 0xbda935451acabdecULL,
        0xaaa905cc0e67b538ULL, 0xe1b41e7b4dc9cba4ULL, 0x2324fefafcafbcbbULL, 0xd57f75b40807866cULL,
        0x6d8f8efef4398dd2ULL, 0x80db1b96a7bc8d67ULL, 0x1677d6f04ed01bc2ULL, 0xf212fe0cfe451702ULL,
        0xd029abf6df4968dfULL, 0xa68c4c06aec3ea77ULL, 0x9496b1bbfc53e6f6ULL, 0x21be11f5c21806c0ULL,
        0xbcd329c50b0ab09aULL, 0x960d44ff95272d43ULL, 0xd82783f849c01e6cULL, 0x820e880c852fac3eULL,
        0xee5f7037edb05c2aULL, 0xbbe7dd93c6dc0060ULL, 0x11656bb26e1884f0ULL, 0xd1d185b71d68f819ULL,
        0xb49a5bad64943d85ULL, 0x5bf3007fc238812dULL, 0x4fbab07e8300b631ULL, 0x4370851d043d2c1aULL,
};

/* The gear table shifted by one, for the first byte of each pair. */
static uint64_t gear_ls[256];

/* k bits spread over bits 62..15: the cut then depends on the last 48
 * bytes or so (the hash shifts left a bit per byte), and a shift by one
 * more for the two-byte step loses none of them. */
static uint64_t spread_mask(unsigned k) {
        uint64_t m = 0;
        for (unsigned i = 0; i < k; i++)
                m |= 1ULL << (62 - (k > 1 ? i * 47 / (k - 1) : 0));
        return m;
}

int bs_chunker_init(BsChunker *c, uint32_t min, uint32_t avg, uint32_t max) {
        unsigned bits = 0;

        if (avg < 256 || (avg & (avg - 1)) || min < 64 || min > avg || avg > max)
                return -EINVAL;
        while ((1u << bits) < avg)
                bits++;
        /* Normalized chunking, level 2: four times as hard to cut before
         * the average as plain, four times as easy after it. */
        *c = (BsChunker) { .min = min, .avg = avg, .max = max,
                           .mask_s = spread_mask(bits + 2), .mask_l = spread_mask(bits - 2) };
        c->mask_s_ls = c->mask_s << 1;
        c->mask_l_ls = c->mask_l << 1;
        if (!gear_ls[0])
                for (size_t i = 0; i < 256; i++)
                        gear_ls[i] = gear[i] << 1;
        return 0;
}

void bs_chunker_init_default(BsChunker *c) {
        (void) bs_chunker_init(c, BS_CHUNK_MIN, BS_CHUNK_AVG, BS_CHUNK_MAX);
}

size_t bs_chunk_next(const BsChunker *c, const uint8_t *p, size_t n) {
        uint64_t fp = 0;
        size_t i, barrier;

        if (n <= c->min)
                return n;
        if (n > c->max)
                n = c->max;
        barrier = MIN((size_t) c->avg, n);
        /* Two bytes a step, the hash as if rolled one byte at a time: the
         * first byte's gear shifted by one more, checked against the mask
         * shifted alike. i starts at min, past which nothing is cut. */
        for (i = c->min; i + 2 <= barrier; i += 2) {
                fp = (fp << 2) + gear_ls[p[i]];
                if (!(fp & c->mask_s_ls))
                        return i + 1;
                fp += gear[p[i + 1]];
                if (!(fp & c->mask_s))
                        return i + 2;
        }
        for (; i + 2 <= n; i += 2) {
                fp = (fp << 2) + gear_ls[p[i]];
                if (!(fp & c->mask_l_ls))
                        return i + 1;
                fp += gear[p[i + 1]];
                if (!(fp & c->mask_l))
                        return i + 2;
        }
        return n;
}
