/* The 1989 net's per-pattern training step and its evaluation, compiled for the CPU.
 *
 * One arithmetic, three layouts. A member's numbers follow one fixed sequence of IEEE float
 * operations (the canonical step below), written with explicit fused multiply-adds and
 * compiled with -ffp-contract=off, so they do not depend on which path ran the member, how
 * many members trained beside it, its place among them, the thread count, or the vector
 * width (AVX2 or AVX-512). Three paths run that arithmetic:
 *   lanes: members in SIMD lanes, blocks of BLK = 8 or 16 members (populations; any rule);
 *   one:   one member vectorised across its units, positions and maps (a single run, and
 *          small populations with one member per thread; the paper's net with SGD);
 *   eval:  the forward pass with examples in SIMD lanes (train and test after every pass).
 * Each hot loop keeps a tile of sums in registers; loads of the next operand are shared
 * across the tile (see the T* tile sizes, set from the register count).
 *
 * Per-member layout (offsets in floats), as in net.py:
 *   H1w 12x25 | H1b 12x64 | H2w 12x12x25 | H2b 12x16 | H3w 30x192 | H3b 30 | outw 10x30 | outb 10
 * Input: 20x20 with the -1 border ("constant padding of -1"); H1 maps are kept 12x12 with
 * that border too. f(a) = A tanh(S a) or relu; f'(a) from x = f(a) is (S/A)(A^2 - x^2).
 *
 * The canonical step, per member (fma(a, b, c) = a b + c rounded once; every other
 * operation rounds on its own; sums start from the first named term):
 *   f    A tanh(S a) with tanh from exp(-2|x|) = 2^n p(r) (tanh_v16 below), or relu
 *   H1   a = H1b[m][u]; for ky, kx: a = fma(H1w[m][ky,kx], in[2oy+ky][2ox+kx], a); x1 = f(a)
 *   H2   a = H2b[o][p]; for i linked to o, ky, kx: a = fma(H2w[o][i,ky,kx], x1[i][2oy+ky][2ox+kx], a)
 *   H3   z = x2 (times the dropout factor 0 or 1/(1-p)); four partial sums r = q mod 4,
 *        s_r = 0; for q: s_r = fma(H3w[h][q], z[q], s_r); a = H3b[h] + ((s0 + s1) + (s2 + s3))
 *   out  a = outb[j]; for h: a = fma(outw[j][h], x3[h], a); y = f(a), or a for linear outputs
 *   deltas (old weights): d4 = (c (y - t)) f'(y) for the MSE, (softmax(y) - onehot) f'(y) for
 *        cross-entropy; d3[h] = g f'(x3), g = 0; for j: g = fma(outw[j][h], d4[j], g);
 *        d2[q] = (g k) f'(x2), g over h likewise (k: the dropout factor, if any);
 *        e1 at each interior H1 unit: e = 0; for o linked, ky, kx reaching it: e = fma(H2w, d2, e);
 *        d1 = e f'(x1)
 *   SGD  l = lr d per layer; unshared w = fma(-l_i, x_j, w); shared w = w - g with
 *        g = 0; for each position in order: g = fma(l, x, g); biases b = b - l
 *   SDLM, AdamW: the same gradients unfolded (g = d x, or the position sums of d x), then
 *        the rule's update (optim.py).
 */
#ifndef ZN_PART
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef ZN_BUILD_ID
#define ZN_BUILD_ID "unversioned"
#endif
#define ZN_ABI 3

enum {
    O_H1W = 0,
    O_H1B = O_H1W + 12 * 25,
    O_H2W = O_H1B + 12 * 64,
    O_H2B = O_H2W + 12 * 12 * 25,
    O_H3W = O_H2B + 12 * 16,
    O_H3B = O_H3W + 30 * 192,
    O_OUTW = O_H3B + 30,
    O_OUTB = O_OUTW + 10 * 30,
    N_PARAMS = O_OUTB + 10,
};
/* per-member constants */
enum { C_A, C_S, C_C, C_LR, C_NEG, C_POS, C_MU, C_DECAY, C_B1, C_B2, C_EPS, C_WD, C_DROP, C_STEP, N_CONSTS };
/* C_STEP: adamw, the updates a member took before this call (members may be at different passes) */
enum { OPT_SGD, OPT_SDLM, OPT_ADAMW };

/* What a whole population shares (one per call). */
typedef struct {
    int32_t relu;          /* hidden units: relu, else A tanh(S a) */
    int32_t linear_out;    /* outputs: a, else f(a) */
    int32_t cross_entropy; /* loss: softmax cross-entropy, else (c/2) sum (d - y)^2 */
    int32_t optim;         /* OPT_* */
    int32_t running;       /* sdlm: h as a running average, updated every pattern */
} Setup;

const char *zn_build(void) { return ZN_BUILD_ID; }
int zn_abi(void) { return ZN_ABI; }
int zn_nparams(void) { return N_PARAMS; }
int zn_nconsts(void) { return N_CONSTS; }

/* ---------------------------------------------------------------------------------------
 * Vectors. GCC's generic vectors of 8 and 16 floats (one or more SIMD registers, as the
 * target has them); elementwise +, -, *, / are single IEEE operations per lane. The fused
 * multiply-add is an intrinsic where the CPU has one and fmaf per lane otherwise: the same
 * rounding either way.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef int32_t i16 __attribute__((vector_size(64)));

#if defined(__AVX512F__)
#define ZN_REGS 32 /* SIMD registers, each of ZN_WIDTH floats */
#define ZN_WIDTH 16
#elif defined(__AVX__)
#define ZN_REGS 16
#define ZN_WIDTH 8
#else
#define ZN_REGS 16
#define ZN_WIDTH 4
#endif

int zn_simd_bits(void) { return ZN_WIDTH * 32; } /* the vector width this build runs with */

static inline v8 fma8(v8 a, v8 b, v8 c) {
#if defined(__FMA__)
    return (v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    v8 r;
    for (int i = 0; i < 8; i++) r[i] = fmaf(a[i], b[i], c[i]);
    return r;
#endif
}

static inline v16 fma16(v16 a, v16 b, v16 c) {
#if defined(__AVX512F__)
    return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
    v8 h[3][2], r[2];
    memcpy(h[0], &a, sizeof a);
    memcpy(h[1], &b, sizeof b);
    memcpy(h[2], &c, sizeof c);
    r[0] = fma8(h[0][0], h[1][0], h[2][0]);
    r[1] = fma8(h[0][1], h[1][1], h[2][1]);
    v16 out;
    memcpy(&out, r, sizeof out);
    return out;
#endif
}

static inline v8 sqrt8(v8 a) {
#if defined(__AVX__)
    return (v8)_mm256_sqrt_ps((__m256)a);
#else
    for (int i = 0; i < 8; i++) a[i] = sqrtf(a[i]);
    return a;
#endif
}

static inline v16 sqrt16(v16 a) {
#if defined(__AVX512F__)
    return (v16)_mm512_sqrt_ps((__m512)a);
#else
    v8 h[2];
    memcpy(h, &a, sizeof a);
    h[0] = sqrt8(h[0]);
    h[1] = sqrt8(h[1]);
    memcpy(&a, h, sizeof a);
    return a;
#endif
}

/* f(a) = A tanh(S a) and exp, scalar and vector, the same operations lane by lane.
 * tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|) = 2^n p(r), n = round(-2|x| / ln 2) (by adding
 * and subtracting 1.5 2^23), p a degree-7 Taylor polynomial: absolute error below 1e-7. */
#define ZN_RND 12582912.0f /* 1.5 * 2^23 */
#define ZN_L2E 1.44269504088896341f
#define ZN_LN2A 0.693145751953125f
#define ZN_LN2B 1.428606765330187e-06f

/* exp(t) = 2^n p(r) for -87 <= t <= 0 */
static inline float zexp_in_range(float t) {
    const float n = (t * ZN_L2E + ZN_RND) - ZN_RND;
    float r = fmaf(-n, ZN_LN2A, t);
    r = fmaf(-n, ZN_LN2B, r);
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const uint32_t sbits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &sbits, sizeof scale);
    return p * scale;
}

static inline float ztanh(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float ax = fabsf(x);
    ax = ax > 9.0f ? 9.0f : ax; /* NaN stays NaN, so a diverging member shows it */
    const float e = zexp_in_range(-2.0f * ax);
    float th = (1.0f - e) / (1.0f + e);
    uint32_t tb;
    memcpy(&tb, &th, sizeof tb);
    tb = (tb & 0x7fffffffu) | (bits & 0x80000000u);
    memcpy(&th, &tb, sizeof th);
    return th;
}

/* exp(x) for x <= 0 (softmax after subtracting the maximum); 0 below -87 */
static inline float zexp(float x) {
    const float e = zexp_in_range(x < -87.0f ? -87.0f : x);
    return x < -87.0f ? 0.0f : e;
}

#define ZN_VTANH(V, I, FMA)                                                                              \
    static inline V tanh_##V(V x) {                                                                      \
        const I bits = (I)x;                                                                             \
        V ax = (V)(bits & 0x7fffffff);                                                                   \
        const I big = ax > (V){} + 9.0f;                                                                       \
        ax = (V)(((I)ax & ~big) | ((I)((V){} + 9.0f) & big));                                            \
        const V t = -2.0f * ax;                                                                          \
        const V n = (t * ZN_L2E + ZN_RND) - ZN_RND;                                                      \
        V r = FMA(-n, (V){} + ZN_LN2A, t);                                                               \
        r = FMA(-n, (V){} + ZN_LN2B, r);                                                                 \
        V p = (V){} + 1.0f / 5040.0f;                                                                    \
        p = FMA(p, r, (V){} + 1.0f / 720.0f);                                                            \
        p = FMA(p, r, (V){} + 1.0f / 120.0f);                                                            \
        p = FMA(p, r, (V){} + 1.0f / 24.0f);                                                             \
        p = FMA(p, r, (V){} + 1.0f / 6.0f);                                                              \
        p = FMA(p, r, (V){} + 0.5f);                                                                     \
        p = FMA(p, r, (V){} + 1.0f);                                                                     \
        p = FMA(p, r, (V){} + 1.0f);                                                                     \
        const V e = p * (V)((__builtin_convertvector(n, I) + 127) << 23);                                \
        const V th = (1.0f - e) / (1.0f + e);                                                            \
        return (V)(((I)th & 0x7fffffff) | (bits & ((I){} + (int32_t)0x80000000)));                       \
    }
ZN_VTANH(v8, i8, fma8)
ZN_VTANH(v16, i16, fma16)

static void *zalloc(size_t size) { return aligned_alloc(128, (size + 127) / 128 * 128); }

/* ---------------------------------------------------------------------------------------
 * The lanes path, included once per lane count (members per block), and the rest.
 */
#define ZN_CAT2(a, b) a##_##b
#define ZN_CAT(a, b) ZN_CAT2(a, b)

#define ZN_PART 1
#define ZN_BLK 8
#define ZN_TAG 8
#include __FILE__
#undef ZN_TAG
#undef ZN_BLK
#define ZN_BLK 16
#define ZN_TAG 16
#include __FILE__
#undef ZN_TAG
#undef ZN_BLK
#define ZN_EVAL
#if ZN_WIDTH >= 16
#define ZN_BLK 16
#else
#define ZN_BLK 8
#endif
#define ZN_TAG eval
#include __FILE__
#undef ZN_TAG
#undef ZN_BLK
#undef ZN_EVAL
#undef ZN_PART

#define ZN_PART 2
#include __FILE__
#undef ZN_PART

#define ZN_PART 3
#include __FILE__
#undef ZN_PART

#else /* ZN_PART */
#if ZN_PART == 1
/* ===================== lanes: BLK members in SIMD lanes ===================== */
#define BLK ZN_BLK
#define L(name) ZN_CAT(name, ZN_TAG)
#if ZN_BLK == 8
#define LB v8
#define LI i8
#define LFMA fma8
#define LTANH tanh_v8
#define LSQRT sqrt8
#else
#define LB v16
#define LI i16
#define LFMA fma16
#define LTANH tanh_v16
#define LSQRT sqrt16
#endif
/* registers per lane vector, and how many lane vectors a tile may keep in registers */
#define NV ((BLK + ZN_WIDTH - 1) / ZN_WIDTH)
#define ACC (ZN_REGS * 2 / 3 / NV)
#define LANES for (int b = 0; b < BLK; b++)
#ifdef ZN_EVAL /* examples in lanes: one member's weights and constants, broadcast */
#define WT float
#define W(i) L(bc)(w[i])
#define KV(c) L(bc)(k[c])
#else /* members in lanes */
#define WT LB
#define W(i) w[i]
#define KV(c) k[c]
#endif

typedef struct {
    LB in[400];      /* this pattern per lane: 20x20 with the -1 border */
    LB x1[12 * 144]; /* H1 maps with the -1 border */
    LB x2[192], kp[192], z[192]; /* H2, its dropout factor, H3's input */
    LB x3[32], y[10];
    LB d4[10], d3[32], d2[192], e1[12 * 144]; /* deltas; e1: dE/dx1 at the interior */
    LB l[192];       /* one layer's deltas as the update uses them */
    LB SA, AA, t[10];
    int32_t label[BLK];
} L(Scratch);

#ifndef ZN_EVAL
/* per-step constants of the update rule */
typedef struct {
    int sgd, sdlm;
    LB *st1, *st2;                   /* state ([N_PARAMS] lane vectors each), or NULL */
    LB b1, omb1, b2, omb2, eps, decay; /* adamw */
    LB lr_b1, bc2;                   /* adamw: lr / (1 - b1^t), 1 - b2^t */
} L(Opt);

#endif

#if ZN_BLK == 8
static inline LB L(bc)(float v) { return (LB){v, v, v, v, v, v, v, v}; }
#else
static inline LB L(bc)(float v) { return (LB){v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v}; }
#endif

static inline LB L(act)(LB a, LB A, LB S, int relu) {
    if (relu) return (LB)((LI)a & (a > L(bc)(0.0f)));
    return A * LTANH(S * a);
}

static inline LB L(fpv)(LB x, const L(Scratch) *restrict s, int relu) {
    if (relu) return (LB)((LI)L(bc)(1.0f) & (x > L(bc)(0.0f)));
    return s->SA * (s->AA - x * x);
}

#ifndef ZN_EVAL
/* The update of one weight from its gradient g: SDLM (st1 holds eta / (mu + h)) or AdamW. */
static inline LB L(rule)(const L(Opt) *restrict op, LB w, LB g, int idx) {
    LB *s1 = op->st1 + idx;
    if (op->sdlm) return w - *s1 * g;
    LB *s2 = op->st2 + idx;
    const LB m = LFMA(op->omb1, g, *s1 * op->b1);
    const LB v = LFMA(op->omb2 * g, g, *s2 * op->b2);
    *s1 = m;
    *s2 = v;
    return w * op->decay - (m * op->lr_b1) / (LSQRT(v / op->bc2) + op->eps);
}

/* w at idx after the step: SGD adds -lr d x (nl = -lr d), the rules take the gradient d x */
#define UPDATE(idx, wv, nl, d, x) ((op->sgd) ? LFMA((nl), (x), (wv)) : L(rule)(op, (wv), (d) * (x), (idx)))

/* dropout factor per H2 output: 0 where dropped, 1/(1-p) kept, from packed keep bits */
static void L(dropout)(L(Scratch) *restrict s, const LB *restrict k, const uint8_t *const *bits) {
    float (*kp)[BLK] = (float (*)[BLK])s->kp;
    const float *p = (const float *)&k[C_DROP];
    LANES {
        const float scale = 1.0f / (1.0f - p[b]);
        for (int q = 0; q < 192; q++) kp[q][b] = (bits[b][q >> 3] >> (q & 7)) & 1 ? scale : 0.0f;
    }
}

#endif

#define TM (ACC >= 16 ? 2 : 1) /* H1 tile: maps x units of a row */
#define TX (ACC >= 8 ? 8 : 4)
#define TO (ACC >= 16 ? 2 : 1) /* H2 tile: maps x positions */
#define TP (ACC >= 8 ? 8 : 4)
#define TH (ACC >= 20 ? 5 : ACC >= 8 ? 2 : 1) /* H3 tile: units (x 4 partial sums) */
#define TJ (ACC >= 10 ? 10 : 5)                /* output tile */

/* H2 outputs o0..o0+n-1 (n = TO, or 1 where only one of them links map i) at positions p0.. */
static inline __attribute__((always_inline)) void L(h2_taps)(const WT *restrict w, const L(Scratch) *restrict s,
                                                             LB a[TO][TP], int o0, int n, int i, int p0) {
    for (int ky = 0; ky < 5; ky++)
        for (int kx = 0; kx < 5; kx++) {
            LB wk[TO];
#pragma GCC unroll 2
            for (int t = 0; t < n; t++) wk[t] = W(O_H2W + (o0 + t) * 300 + i * 25 + ky * 5 + kx);
#pragma GCC unroll 8
            for (int x = 0; x < TP; x++) {
                const int p = p0 + x;
                const LB v = s->x1[i * 144 + (2 * (p >> 2) + ky) * 12 + 2 * (p & 3) + kx];
#pragma GCC unroll 2
                for (int t = 0; t < n; t++) a[t][x] = LFMA(wk[t], v, a[t][x]);
            }
        }
}

static void L(forward)(const WT *restrict w, const WT *restrict k, const Setup *st, const signed char *restrict table,
                       L(Scratch) *restrict s, int drop) {
    const int relu = st->relu;
    const LB A = KV(C_A), S = KV(C_S);
    for (int m = 0; m < 12; m += TM)
        for (int oy = 0; oy < 8; oy++)
            for (int ox0 = 0; ox0 < 8; ox0 += TX) {
                LB a[TM][TX];
#pragma GCC unroll 2
                for (int t = 0; t < TM; t++)
#pragma GCC unroll 8
                    for (int x = 0; x < TX; x++) a[t][x] = W(O_H1B + (m + t) * 64 + oy * 8 + ox0 + x);
                for (int ky = 0; ky < 5; ky++)
                    for (int kx = 0; kx < 5; kx++) {
                        const LB *row = s->in + (2 * oy + ky) * 20 + 2 * ox0 + kx;
#pragma GCC unroll 2
                        for (int t = 0; t < TM; t++) {
                            const LB wk = W(O_H1W + (m + t) * 25 + ky * 5 + kx);
#pragma GCC unroll 8
                            for (int x = 0; x < TX; x++) a[t][x] = LFMA(wk, row[2 * x], a[t][x]);
                        }
                    }
#pragma GCC unroll 2
                for (int t = 0; t < TM; t++)
#pragma GCC unroll 8
                    for (int x = 0; x < TX; x++)
                        s->x1[(m + t) * 144 + (oy + 2) * 12 + ox0 + x + 2] = L(act)(a[t][x], A, S, relu);
            }
    for (int o = 0; o < 12; o += TO)
        for (int p0 = 0; p0 < 16; p0 += TP) {
            LB a[TO][TP];
#pragma GCC unroll 2
            for (int t = 0; t < TO; t++)
#pragma GCC unroll 8
                for (int x = 0; x < TP; x++) a[t][x] = W(O_H2B + (o + t) * 16 + p0 + x);
            for (int i = 0; i < 12; i++) {
                int all = 1;
                for (int t = 0; t < TO; t++) all &= table[(o + t) * 12 + i] != 0;
                if (all) {
                    L(h2_taps)(w, s, a, o, TO, i, p0);
                    continue;
                }
                LB one[TO][TP];
                for (int t = 0; t < TO; t++) {
                    if (!table[(o + t) * 12 + i]) continue;
#pragma GCC unroll 8
                    for (int x = 0; x < TP; x++) one[0][x] = a[t][x];
                    L(h2_taps)(w, s, one, o + t, 1, i, p0);
#pragma GCC unroll 8
                    for (int x = 0; x < TP; x++) a[t][x] = one[0][x];
                }
            }
#pragma GCC unroll 2
            for (int t = 0; t < TO; t++)
#pragma GCC unroll 8
                for (int x = 0; x < TP; x++) {
                    const int q = (o + t) * 16 + p0 + x;
                    s->x2[q] = L(act)(a[t][x], A, S, relu);
                    s->z[q] = drop ? s->x2[q] * s->kp[q] : s->x2[q];
                }
        }
    for (int h0 = 0; h0 < 30; h0 += TH) {
        LB a[TH][4];
#pragma GCC unroll 5
        for (int t = 0; t < TH; t++)
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) a[t][r] = L(bc)(0.0f);
        for (int q = 0; q < 192; q += 4)
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                const LB x = s->z[q + r];
#pragma GCC unroll 5
                for (int t = 0; t < TH; t++) a[t][r] = LFMA(W(O_H3W + (h0 + t) * 192 + q + r), x, a[t][r]);
            }
#pragma GCC unroll 5
        for (int t = 0; t < TH; t++) {
            const LB sum = W(O_H3B + h0 + t) + ((a[t][0] + a[t][1]) + (a[t][2] + a[t][3]));
            s->x3[h0 + t] = L(act)(sum, A, S, relu);
        }
    }
    for (int j0 = 0; j0 < 10; j0 += TJ) {
        LB a[TJ];
#pragma GCC unroll 10
        for (int t = 0; t < TJ; t++) a[t] = W(O_OUTB + j0 + t);
        for (int h = 0; h < 30; h++) {
            const LB x = s->x3[h];
#pragma GCC unroll 10
            for (int t = 0; t < TJ; t++) a[t] = LFMA(W(O_OUTW + (j0 + t) * 30 + h), x, a[t]);
        }
#pragma GCC unroll 10
        for (int t = 0; t < TJ; t++) s->y[j0 + t] = st->linear_out ? a[t] : A * LTANH(S * a[t]);
    }
}

#ifndef ZN_EVAL
/* dE/da at the outputs (d4), and for SDLM the loss's curvature there (s4, may be NULL) */
static void L(output_delta)(const LB *restrict k, const Setup *st, L(Scratch) *restrict s, LB *restrict s4) {
    float (*t)[BLK] = (float (*)[BLK])s->t;
    const float *neg = (const float *)&k[C_NEG], *pos = (const float *)&k[C_POS];
    for (int j = 0; j < 10; j++) LANES t[j][b] = s->label[b] == j ? pos[b] : neg[b];
    if (st->cross_entropy) { /* per lane: softmax(y) - onehot */
        const float (*y)[BLK] = (const float (*)[BLK])s->y;
        const float *SA = (const float *)&s->SA, *AA = (const float *)&s->AA;
        float (*d4)[BLK] = (float (*)[BLK])s->d4, (*c4)[BLK] = (float (*)[BLK])s4;
        LANES {
            float mx = y[0][b], e[10], sum;
            for (int j = 1; j < 10; j++) mx = y[j][b] > mx ? y[j][b] : mx;
            for (int j = 0; j < 10; j++) e[j] = zexp(y[j][b] - mx);
            sum = e[0];
            for (int j = 1; j < 10; j++) sum = sum + e[j];
            for (int j = 0; j < 10; j++) {
                const float p = e[j] / sum;
                const float fo = st->linear_out ? 1.0f : SA[b] * (AA[b] - y[j][b] * y[j][b]);
                d4[j][b] = (p - (s->label[b] == j ? 1.0f : 0.0f)) * fo;
                if (s4) c4[j][b] = (p * (1.0f - p)) * (fo * fo);
            }
        }
        return;
    }
    for (int j = 0; j < 10; j++) {
        const LB y = s->y[j];
        const LB fo = st->linear_out ? L(bc)(1.0f) : s->SA * (s->AA - y * y);
        s->d4[j] = (k[C_C] * (y - s->t[j])) * fo;
        if (s4) s4[j] = k[C_C] * (fo * fo);
    }
}

/* out[q] = (sum_h W3[h][q] v[h]) (times the dropout factor) f'(x2[q]), all squared for the curvature */
static void L(back_h3)(const LB *restrict w, const L(Scratch) *restrict s, const LB *restrict v, LB *restrict out,
                       int squared, int drop, int relu) {
#define TQ (ACC >= 16 ? 8 : 4)
    for (int q0 = 0; q0 < 192; q0 += TQ) {
        LB g[TQ];
#pragma GCC unroll 8
        for (int t = 0; t < TQ; t++) g[t] = L(bc)(0.0f);
        for (int h = 0; h < 30; h++) {
            const LB d = v[h];
#pragma GCC unroll 8
            for (int t = 0; t < TQ; t++) {
                LB wk = w[O_H3W + h * 192 + q0 + t];
                if (squared) wk = wk * wk;
                g[t] = LFMA(wk, d, g[t]);
            }
        }
#pragma GCC unroll 8
        for (int t = 0; t < TQ; t++) {
            LB fp = L(fpv)(s->x2[q0 + t], s, relu), f = s->kp[q0 + t];
            if (squared) {
                fp = fp * fp;
                f = f * f;
            }
            out[q0 + t] = drop ? (g[t] * f) * fp : g[t] * fp;
        }
    }
}

/* e1 at the interior H1 units of one parity class: the unit (2a + 2 + py, 2b + 2 + px), a, b in
 * 0..3, is reached by tap (2dy + py, 2dx + px) of the H2 position (a + 1 - dy, b + 1 - dx). Rows
 * a0..a0+TA-1 of the class; per unit the terms come in the canonical order (o, ky, kx). */
#define TA (ACC >= 16 ? 2 : 1)
static inline __attribute__((always_inline)) void L(e1_class)(const LB *restrict w, const signed char *restrict table,
                                                              const LB *restrict v, LB *restrict e1, int squared,
                                                              int i, int py, int px, int a0) {
    LB acc[TA][4];
#pragma GCC unroll 2
    for (int ta = 0; ta < TA; ta++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) acc[ta][b] = L(bc)(0.0f);
    for (int o = 0; o < 12; o++) {
        if (!table[o * 12 + i]) continue;
        const LB *d = v + o * 16;
#pragma GCC unroll 3
        for (int dy = 0; dy < 3; dy++)
#pragma GCC unroll 3
            for (int dx = 0; dx < 3; dx++) {
                const int ky = 2 * dy + py, kx = 2 * dx + px;
                if (ky > 4 || kx > 4) continue;
                LB wk = w[O_H2W + o * 300 + i * 25 + ky * 5 + kx];
                if (squared) wk = wk * wk;
#pragma GCC unroll 2
                for (int ta = 0; ta < TA; ta++)
#pragma GCC unroll 4
                    for (int b = 0; b < 4; b++) {
                        const int oy = a0 + ta + 1 - dy, ox = b + 1 - dx;
                        if (oy >= 0 && oy <= 3 && ox >= 0 && ox <= 3) acc[ta][b] = LFMA(wk, d[oy * 4 + ox], acc[ta][b]);
                    }
            }
    }
#pragma GCC unroll 2
    for (int ta = 0; ta < TA; ta++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) e1[i * 144 + (2 * (a0 + ta) + 2 + py) * 12 + 2 * b + 2 + px] = acc[ta][b];
}

static void L(back_h2)(const LB *restrict w, const signed char *restrict table, const LB *restrict v, LB *restrict e1,
                       int squared) {
    for (int i = 0; i < 12; i++)
        for (int a0 = 0; a0 < 4; a0 += TA) {
            L(e1_class)(w, table, v, e1, squared, i, 0, 0, a0);
            L(e1_class)(w, table, v, e1, squared, i, 0, 1, a0);
            L(e1_class)(w, table, v, e1, squared, i, 1, 0, a0);
            L(e1_class)(w, table, v, e1, squared, i, 1, 1, a0);
        }
}

/* H2 weights (o, i) of one tap parity class: g = sum over the 16 positions, in order, of l x1; then the update */
static inline __attribute__((always_inline)) void L(h2_update_class)(LB *restrict w, const L(Scratch) *restrict s,
                                                                     const L(Opt) *restrict op, int o, int i, int py,
                                                                     int px) {
    LB g[3][3];
#pragma GCC unroll 3
    for (int dy = 0; dy < 3; dy++)
#pragma GCC unroll 3
        for (int dx = 0; dx < 3; dx++) g[dy][dx] = L(bc)(0.0f);
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++) {
        const LB l = s->l[p];
        const LB *x = s->x1 + i * 144 + (2 * (p >> 2) + py) * 12 + 2 * (p & 3) + px;
#pragma GCC unroll 3
        for (int dy = 0; dy < 3; dy++)
#pragma GCC unroll 3
            for (int dx = 0; dx < 3; dx++)
                if (2 * dy + py <= 4 && 2 * dx + px <= 4) g[dy][dx] = LFMA(l, x[2 * dy * 12 + 2 * dx], g[dy][dx]);
    }
#pragma GCC unroll 3
    for (int dy = 0; dy < 3; dy++)
#pragma GCC unroll 3
        for (int dx = 0; dx < 3; dx++) {
            if (2 * dy + py > 4 || 2 * dx + px > 4) continue;
            const int idx = O_H2W + o * 300 + i * 25 + (2 * dy + py) * 5 + 2 * dx + px;
            w[idx] = op->sgd ? w[idx] - g[dy][dx] : L(rule)(op, w[idx], g[dy][dx], idx);
        }
}

/* Backprop and update. SGD folds lr into the deltas; SDLM and AdamW apply their rule to the
 * unfolded gradient. Each layer's delta uses its weights before they are updated (in the same
 * sweep over them, for the output layer and H3). */
static void L(backward)(LB *restrict w, const LB *restrict k, const Setup *st, const signed char *restrict table,
                        L(Scratch) *restrict s, int drop, const L(Opt) *restrict op) {
    const int relu = st->relu, sgd = op->sgd;
    const LB lr = k[C_LR];
    L(output_delta)(k, st, s, NULL);
    /* output layer: d3 with the old weights, the update in the same sweep */
#define TH2 (ACC >= 10 ? 10 : 5)
    LB nl[32];
    for (int j = 0; j < 10; j++) nl[j] = -(lr * s->d4[j]);
    for (int h0 = 0; h0 < 30; h0 += TH2) {
        LB g[TH2];
#pragma GCC unroll 10
        for (int t = 0; t < TH2; t++) g[t] = L(bc)(0.0f);
        for (int j = 0; j < 10; j++) {
            const LB d = s->d4[j], n = nl[j];
#pragma GCC unroll 10
            for (int t = 0; t < TH2; t++) {
                const int idx = O_OUTW + j * 30 + h0 + t;
                const LB wv = w[idx];
                g[t] = LFMA(wv, d, g[t]);
                w[idx] = UPDATE(idx, wv, n, d, s->x3[h0 + t]);
            }
        }
#pragma GCC unroll 10
        for (int t = 0; t < TH2; t++) s->d3[h0 + t] = g[t] * L(fpv)(s->x3[h0 + t], s, relu);
    }
    for (int j = 0; j < 10; j++)
        w[O_OUTB + j] = sgd ? w[O_OUTB + j] + nl[j] : L(rule)(op, w[O_OUTB + j], s->d4[j], O_OUTB + j);
    /* H3: d2 with the old weights, the update in the same sweep */
    for (int h = 0; h < 30; h++) nl[h] = -(lr * s->d3[h]);
    for (int q0 = 0; q0 < 192; q0 += TQ) {
        LB g[TQ], z[TQ];
#pragma GCC unroll 8
        for (int t = 0; t < TQ; t++) {
            g[t] = L(bc)(0.0f);
            z[t] = s->z[q0 + t];
        }
        for (int h = 0; h < 30; h++) {
            const LB d = s->d3[h], n = nl[h];
#pragma GCC unroll 8
            for (int t = 0; t < TQ; t++) {
                const int idx = O_H3W + h * 192 + q0 + t;
                const LB wv = w[idx];
                g[t] = LFMA(wv, d, g[t]);
                w[idx] = UPDATE(idx, wv, n, d, z[t]);
            }
        }
#pragma GCC unroll 8
        for (int t = 0; t < TQ; t++) {
            const LB fp = L(fpv)(s->x2[q0 + t], s, relu);
            s->d2[q0 + t] = drop ? (g[t] * s->kp[q0 + t]) * fp : g[t] * fp;
        }
    }
    for (int h = 0; h < 30; h++)
        w[O_H3B + h] = sgd ? w[O_H3B + h] + nl[h] : L(rule)(op, w[O_H3B + h], s->d3[h], O_H3B + h);
    L(back_h2)((const LB *)w, table, (const LB *)s->d2, s->e1, 0);
    /* H2: gradients summed over the 16 positions */
    for (int o = 0; o < 12; o++) {
        for (int p = 0; p < 16; p++) {
            const int idx = O_H2B + o * 16 + p;
            s->l[p] = sgd ? lr * s->d2[o * 16 + p] : s->d2[o * 16 + p];
            w[idx] = sgd ? w[idx] - s->l[p] : L(rule)(op, w[idx], s->l[p], idx);
        }
        for (int i = 0; i < 12; i++) {
            if (!table[o * 12 + i]) continue;
            L(h2_update_class)(w, s, op, o, i, 0, 0);
            L(h2_update_class)(w, s, op, o, i, 0, 1);
            L(h2_update_class)(w, s, op, o, i, 1, 0);
            L(h2_update_class)(w, s, op, o, i, 1, 1);
        }
    }
    /* H1: deltas on the 8x8 interior, then the shared kernels and the per-unit biases */
#define TKY (ZN_REGS / NV >= 32 ? 5 : 1)
    for (int m = 0; m < 12; m++) {
        LB *l = s->l;
        for (int u = 0; u < 64; u++) {
            const int unit = m * 144 + (u / 8 + 2) * 12 + u % 8 + 2, idx = O_H1B + m * 64 + u;
            LB lu = s->e1[unit] * L(fpv)(s->x1[unit], s, relu);
            if (sgd) lu = lr * lu;
            l[u] = lu;
            w[idx] = sgd ? w[idx] - lu : L(rule)(op, w[idx], lu, idx);
        }
        for (int ky0 = 0; ky0 < 5; ky0 += TKY) {
            LB g[TKY][5];
#pragma GCC unroll 5
            for (int r = 0; r < TKY; r++)
#pragma GCC unroll 5
                for (int kx = 0; kx < 5; kx++) g[r][kx] = L(bc)(0.0f);
            for (int u = 0; u < 64; u++) {
                const LB lu = l[u];
                const LB *row = s->in + (2 * (u / 8) + ky0) * 20 + 2 * (u % 8);
#pragma GCC unroll 5
                for (int r = 0; r < TKY; r++)
#pragma GCC unroll 5
                    for (int kx = 0; kx < 5; kx++) g[r][kx] = LFMA(lu, row[r * 20 + kx], g[r][kx]);
            }
#pragma GCC unroll 5
            for (int r = 0; r < TKY; r++)
#pragma GCC unroll 5
                for (int kx = 0; kx < 5; kx++) {
                    const int idx = O_H1W + m * 25 + (ky0 + r) * 5 + kx;
                    w[idx] = sgd ? w[idx] - g[r][kx] : L(rule)(op, w[idx], g[r][kx], idx);
                }
        }
    }
}

/* The SDLM curvature of one pattern (LeCun et al. 1998, appendix C): Gauss-Newton, "backprop with the weights
 * and f' squared". hp receives h for every parameter ([N_PARAMS] lane vectors). Needs forward() first. */
static void L(curvature)(const LB *restrict w, const LB *restrict k, const Setup *st, const signed char *restrict table,
                         L(Scratch) *restrict s, int drop, LB *restrict hp) {
    const int relu = st->relu;
    LB s4[10], s3[32], s2[192];
    L(output_delta)(k, st, s, s4);
    for (int h = 0; h < 30; h++) {
        LB g = L(bc)(0.0f);
        for (int j = 0; j < 10; j++) {
            const LB wk = w[O_OUTW + j * 30 + h];
            g = LFMA(wk * wk, s4[j], g);
        }
        const LB fp = L(fpv)(s->x3[h], s, relu);
        s3[h] = g * (fp * fp);
    }
    L(back_h3)(w, s, s3, s2, 1, drop, relu);
    L(back_h2)(w, table, s2, s->e1, 1);
    for (int j = 0; j < 10; j++) {
        for (int h = 0; h < 30; h++) hp[O_OUTW + j * 30 + h] = s4[j] * (s->x3[h] * s->x3[h]);
        hp[O_OUTB + j] = s4[j];
    }
    for (int h = 0; h < 30; h++) {
        for (int q = 0; q < 192; q++) hp[O_H3W + h * 192 + q] = s3[h] * (s->z[q] * s->z[q]);
        hp[O_H3B + h] = s3[h];
    }
    for (int o = 0; o < 12; o++) {
        for (int p = 0; p < 16; p++) hp[O_H2B + o * 16 + p] = s2[o * 16 + p];
        for (int i = 0; i < 12; i++)
            for (int r = 0; r < 25; r++) {
                const int idx = O_H2W + o * 300 + i * 25 + r;
                if (!table[o * 12 + i]) {
                    hp[idx] = L(bc)(0.0f);
                    continue;
                }
                const int ky = r / 5, kx = r % 5;
                LB g = L(bc)(0.0f);
                for (int p = 0; p < 16; p++) {
                    const LB x = s->x1[i * 144 + (2 * (p >> 2) + ky) * 12 + 2 * (p & 3) + kx];
                    g = LFMA(s2[o * 16 + p], x * x, g);
                }
                hp[idx] = g;
            }
    }
    for (int m = 0; m < 12; m++) {
        LB s1[64];
        for (int u = 0; u < 64; u++) {
            const int unit = m * 144 + (u / 8 + 2) * 12 + u % 8 + 2;
            const LB fp = L(fpv)(s->x1[unit], s, relu);
            s1[u] = s->e1[unit] * (fp * fp);
            hp[O_H1B + m * 64 + u] = s1[u];
        }
        for (int r = 0; r < 25; r++) {
            const int ky = r / 5, kx = r % 5;
            LB g = L(bc)(0.0f);
            for (int u = 0; u < 64; u++) {
                const LB x = s->in[(2 * (u / 8) + ky) * 20 + 2 * (u % 8) + kx];
                g = LFMA(s1[u], x * x, g);
            }
            hp[O_H1W + m * 25 + r] = g;
        }
    }
}

/* This pattern's input and label per lane: lane b reads its member's own stream (dataset). */
static void L(load)(L(Scratch) *restrict s, const float *inputs, const int32_t *labels, const int32_t *dataset,
                    int64_t n, int64_t i, int shared) {
    if (shared) { /* every lane reads the same dataset: broadcast */
        const float *src = inputs + ((int64_t)dataset[0] * n + i) * 400;
        for (int px = 0; px < 400; px++) s->in[px] = L(bc)(src[px]);
        LANES s->label[b] = labels[(int64_t)dataset[0] * n + i];
        return;
    }
    float (*in)[BLK] = (float (*)[BLK])s->in;
    LANES {
        const float *src = inputs + ((int64_t)dataset[b] * n + i) * 400;
        for (int px = 0; px < 400; px++) in[px][b] = src[px];
        s->label[b] = labels[(int64_t)dataset[b] * n + i];
    }
}

static L(Scratch) *L(scratch)(const LB *k, const Setup *st) {
    L(Scratch) *s = zalloc(sizeof(L(Scratch)));
    if (!s) return NULL;
    memset(s, 0, sizeof *s);
    for (int u = 0; u < 12 * 144; u++) s->x1[u] = L(bc)(-1.0f); /* "constant padding of -1" */
    s->SA = st->relu ? L(bc)(1.0f) : k[C_S] / k[C_A];
    s->AA = k[C_A] * k[C_A];
    return s;
}

static int L(same)(const int32_t *dataset) {
    for (int b = 1; b < BLK; b++)
        if (dataset[b] != dataset[0]) return 0;
    return 1;
}

/* One pass of n patterns for every block. keep: per lane, n x 24 bytes of dropout keep bits, or NULL. */
static int L(train)(float *params, const float *consts, float *state, int nblocks, const Setup *st,
                    const signed char *table, const float *inputs, const int32_t *labels, const int32_t *dataset,
                    int64_t n, const uint8_t *const *keep, int nthreads) {
    int failed = 0;
    const int nstate = st->optim == OPT_ADAMW ? 2 : st->optim == OPT_SDLM ? (st->running ? 2 : 1) : 0;
    const int running = st->optim == OPT_SDLM && st->running;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(| : failed)
    for (int blk = 0; blk < nblocks; blk++) {
        LB *w = (LB *)(params + (size_t)blk * N_PARAMS * BLK);
        const LB *k = (const LB *)(consts + (size_t)blk * N_CONSTS * BLK);
        const int32_t *ds = dataset + (size_t)blk * BLK;
        L(Scratch) *s = L(scratch)(k, st);
        LB *hp = running ? zalloc(sizeof(LB) * N_PARAMS) : NULL;
        if (!s || (running && !hp)) {
            failed = 1;
            free(s);
            free(hp);
            continue;
        }
        L(Opt) op = {.sgd = st->optim == OPT_SGD, .sdlm = st->optim == OPT_SDLM};
        op.st1 = nstate ? (LB *)(state + (size_t)blk * nstate * N_PARAMS * BLK) : NULL;
        op.st2 = nstate == 2 ? op.st1 + N_PARAMS : NULL;
        if (st->optim == OPT_ADAMW) {
            op.b1 = k[C_B1];
            op.omb1 = 1.0f - k[C_B1];
            op.b2 = k[C_B2];
            op.omb2 = 1.0f - k[C_B2];
            op.eps = k[C_EPS];
            op.decay = 1.0f - k[C_LR] * k[C_WD];
        }
        const uint8_t *bits[BLK];
        const int drop = keep != NULL, shared = L(same)(ds);
        for (int64_t i = 0; i < n; i++) {
            L(load)(s, inputs, labels, ds, n, i, shared);
            if (drop) {
                LANES bits[b] = keep[(size_t)blk * BLK + b] + i * 24;
                L(dropout)(s, k, bits);
            }
            L(forward)((const LB *)w, k, st, table, s, drop);
            if (running) {
                /* h <- (1 - g) h + g h_pattern, then the step sizes eta / (mu + h) */
                L(curvature)((const LB *)w, k, st, table, s, drop, hp);
                LB *h = op.st2, *eps = op.st1;
                const LB g = k[C_DECAY], keep_h = 1.0f - k[C_DECAY];
                for (int idx = 0; idx < N_PARAMS; idx++) {
                    h[idx] = h[idx] * keep_h + g * hp[idx];
                    eps[idx] = k[C_LR] / (k[C_MU] + h[idx]);
                }
            }
            if (st->optim == OPT_ADAMW) {
                float lr_b1[BLK], bc2[BLK];
                const float *lr = (const float *)&k[C_LR], *b1 = (const float *)&k[C_B1], *b2 = (const float *)&k[C_B2];
                const float *done = (const float *)&k[C_STEP];
                LANES {
                    const double t = (double)done[b] + (double)i + 1.0;
                    lr_b1[b] = lr[b] / (1.0f - (float)pow((double)b1[b], t));
                    bc2[b] = 1.0f - (float)pow((double)b2[b], t);
                }
                memcpy(&op.lr_b1, lr_b1, sizeof lr_b1);
                memcpy(&op.bc2, bc2, sizeof bc2);
            }
            L(backward)(w, k, st, table, s, drop, &op);
        }
        free(hp);
        free(s);
    }
    return failed ? -1 : 0;
}

/* SDLM "pass" mode: the sum of h over the given patterns (no dropout: h of the plain net). */
static int L(curvature_sum)(const float *params, const float *consts, float *hsum, int nblocks, const Setup *st,
                            const signed char *table, const float *inputs, const int32_t *labels,
                            const int32_t *dataset, int64_t n, const int32_t *sample, int nsample, int nthreads) {
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(| : failed)
    for (int blk = 0; blk < nblocks; blk++) {
        const LB *w = (const LB *)(params + (size_t)blk * N_PARAMS * BLK);
        const LB *k = (const LB *)(consts + (size_t)blk * N_CONSTS * BLK);
        LB *sum = (LB *)(hsum + (size_t)blk * N_PARAMS * BLK);
        const int32_t *ds = dataset + (size_t)blk * BLK;
        L(Scratch) *s = L(scratch)(k, st);
        LB *hp = zalloc(sizeof(LB) * N_PARAMS);
        if (!s || !hp) {
            failed = 1;
            free(s);
            free(hp);
            continue;
        }
        const int shared = L(same)(ds);
        for (int idx = 0; idx < N_PARAMS; idx++) sum[idx] = L(bc)(0.0f);
        for (int j = 0; j < nsample; j++) {
            L(load)(s, inputs, labels, ds, n, sample[j], shared);
            L(forward)(w, k, st, table, s, 0);
            L(curvature)(w, k, st, table, s, 0, hp);
            for (int idx = 0; idx < N_PARAMS; idx++) sum[idx] = sum[idx] + hp[idx];
        }
        free(hp);
        free(s);
    }
    return failed ? -1 : 0;
}

#endif /* ZN_EVAL */

#undef WT
#undef W
#undef KV
#undef TM
#undef TX
#undef TO
#undef TP
#undef TH
#undef TJ
#undef TQ
#undef TA
#undef TH2
#undef TKY
#undef UPDATE
#undef LANES
#undef ACC
#undef NV
#undef LB
#undef LI
#undef LFMA
#undef LTANH
#undef LSQRT
#undef L
#undef BLK

#elif ZN_PART == 2
/* ===================== eval: examples in SIMD lanes ===================== */
/* The training forward (forward_eval is the lanes template with one member's weights broadcast
 * and ET examples in the lanes: the SIMD width), then the loss terms and hits per example. */
#if ZN_WIDTH >= 16
#define ET 16
typedef v16 ev;
#else
#define ET 8
typedef v8 ev;
#endif

/* log(x) for x >= 1 (the softmax's sum after subtracting the maximum): x = 2^n m, m in [1, 2) */
static inline float zlog(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const int n = ((bits >> 23) & 0xff) - 127;
    bits = (bits & 0x007fffff) | 0x3f800000;
    float m;
    memcpy(&m, &bits, sizeof m);
    /* log(m) = 2 atanh(u), u = (m - 1) / (m + 1) in [0, 1/3) */
    const float u = (m - 1.0f) / (m + 1.0f), u2 = u * u;
    float p = 1.0f / 15.0f;
    p = fmaf(p, u2, 1.0f / 13.0f);
    p = fmaf(p, u2, 1.0f / 11.0f);
    p = fmaf(p, u2, 1.0f / 9.0f);
    p = fmaf(p, u2, 1.0f / 7.0f);
    p = fmaf(p, u2, 1.0f / 5.0f);
    p = fmaf(p, u2, 1.0f / 3.0f);
    p = fmaf(p, u2, 1.0f);
    return fmaf((float)n, 0.693147180559945309f, 2.0f * u * p);
}

/* One split for zn_evaluate: every member's dataset, n examples each. */
typedef struct {
    const float *inputs;   /* (D, tiles, 400, ET): the patterns with the -1 border, ET to a tile, in lanes */
    const int32_t *labels; /* (D, n) */
    int64_t n;
    double *loss_sum;      /* (K,) out: per-example loss terms summed in example order, in double */
    int32_t *misses;       /* (K,) out */
    float *outputs;        /* (K, n, 10) out, or NULL */
} Split;

/* The loss term and hit of tile example e (member constants k). */
static inline float eval_term(const float (*restrict y)[ET], const float *restrict k, const Setup *st, int e,
                              int label, uint8_t *hit) {
    float best = y[0][e];
    int arg = 0;
    for (int j = 1; j < 10; j++) /* the first maximum, NaN counting as the largest (torch.argmax) */
        if (y[j][e] > best || (y[j][e] != y[j][e] && best == best)) {
            best = y[j][e];
            arg = j;
        }
    *hit = arg == label;
    if (st->cross_entropy) { /* -log softmax(y)[label] = log sum exp(y - max) - (y_label - max) */
        float sum = zexp(y[0][e] - best);
        for (int j = 1; j < 10; j++) sum = sum + zexp(y[j][e] - best);
        return zlog(sum) - (y[label][e] - best);
    }
    float term = 0.0f; /* sum over outputs of (y - t)^2; the mean divides by 10 n */
    for (int j = 0; j < 10; j++) {
        const float diff = y[j][e] - (j == label ? k[C_POS] : k[C_NEG]);
        term = fmaf(diff, diff, term);
    }
    return term;
}

/* Train and test (or any splits) in one call: every member on its own dataset. params (K, N_PARAMS),
 * consts (K, N_CONSTS), dataset (K,) index into each split's D datasets. Returns 0, or -1 if out of memory. */
int zn_eval_lanes(void) { return ET; }

int zn_evaluate(const float *params, const float *consts, int K, const Setup *st, const signed char *table,
                const int32_t *dataset, int D, Split *splits, int nsplits, int nthreads) {
    int64_t items = 0, total = 0;
    for (int sp = 0; sp < nsplits; sp++) {
        items += (int64_t)D * ((splits[sp].n + ET - 1) / ET);
        total += splits[sp].n;
    }
    float *terms = malloc(sizeof(float) * (size_t)K * (size_t)total);
    uint8_t *hits = malloc((size_t)K * (size_t)total);
    if (!terms || !hits) {
        free(terms);
        free(hits);
        return -1;
    }
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        Scratch_eval *s = zalloc(sizeof(Scratch_eval));
        if (!s) failed = 1;
        if (s)
            for (int u = 0; u < 12 * 144; u++) s->x1[u] = (ev){} - 1.0f; /* "constant padding of -1" */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; item++) {
            if (!s) continue;
            int sp = 0;
            int64_t at = item, base = 0; /* which split, dataset and tile */
            while (at >= (int64_t)D * ((splits[sp].n + ET - 1) / ET)) {
                at -= (int64_t)D * ((splits[sp].n + ET - 1) / ET);
                base += splits[sp].n;
                sp++;
            }
            const Split *x = &splits[sp];
            const int64_t tiles = (x->n + ET - 1) / ET, d = at / tiles, lo = (at % tiles) * ET;
            const int cnt = x->n - lo < ET ? (int)(x->n - lo) : ET;
            const int32_t *lab = x->labels + d * x->n + lo;
            memcpy(s->in, x->inputs + (d * tiles + lo / ET) * 400 * ET, sizeof s->in);
            for (int km = 0; km < K; km++) {
                if (dataset[km] != d) continue;
                const float *k = consts + (size_t)km * N_CONSTS;
                forward_eval(params + (size_t)km * N_PARAMS, k, st, table, s, 0);
                const float (*y)[ET] = (const float (*)[ET])s->y;
                float *term = terms + (size_t)km * total + base + lo;
                uint8_t *hit = hits + (size_t)km * total + base + lo;
                for (int e = 0; e < cnt; e++) term[e] = eval_term(y, k, st, e, lab[e], hit + e);
                if (x->outputs)
                    for (int e = 0; e < cnt; e++)
                        for (int j = 0; j < 10; j++) x->outputs[((size_t)km * x->n + lo + e) * 10 + j] = y[j][e];
            }
        }
        free(s);
    }
    if (!failed)
        for (int km = 0; km < K; km++) {
            int64_t base = 0;
            for (int sp = 0; sp < nsplits; sp++) {
                double sum = 0.0;
                int32_t miss = 0;
                for (int64_t e = 0; e < splits[sp].n; e++) {
                    sum += (double)terms[(size_t)km * total + base + e];
                    miss += !hits[(size_t)km * total + base + e];
                }
                splits[sp].loss_sum[km] = sum;
                splits[sp].misses[km] = miss;
                base += splits[sp].n;
            }
        }
    free(terms);
    free(hits);
    return failed ? -1 : 0;
}
#undef ET

#elif ZN_PART == 3
/* ===================== one member, vectorised across its units ===================== */
/* The canonical step again, for one member (the paper's SGD, MSE and squashing units), each
 * vector across outputs (units, positions, maps), so every sum keeps its canonical order. The
 * member's weights live in this path's own layouts (in the first-level cache) for a pass.
 * H1 units are kept by parity class: the unit (oy, ox) is lane (oy/2)*4 + ox/2 of class
 * (oy%2)*2 + ox%2; an H2 tap (ky, kx) reads one class, moved by (ky/2 - 1, kx/2 - 1).
 * A vector here is 16 lanes: one AVX-512 register or two AVX2 ones. */
#if ZN_WIDTH >= 16
typedef v16 W;
typedef i16 WI;
#define WFMA fma16
#define WTANH tanh_v16
#define WBC(x) ((W){(x), (x), (x), (x), (x), (x), (x), (x), (x), (x), (x), (x), (x), (x), (x), (x)})
#define NH 1
#else
typedef v8 W;
typedef i8 WI;
#define WFMA fma8
#define WTANH tanh_v8
#define WBC(x) ((W){(x), (x), (x), (x), (x), (x), (x), (x)})
#define NH 2
#endif
typedef struct {
    W h[NH];
} V;
#define EACH for (int h = 0; h < NH; h++)

static inline V vbc(float x) {
    V r;
    EACH r.h[h] = WBC(x);
    return r;
}
static inline V vfma(V a, V b, V c) {
    EACH c.h[h] = WFMA(a.h[h], b.h[h], c.h[h]);
    return c;
}
static inline V vadd(V a, V b) {
    EACH a.h[h] = a.h[h] + b.h[h];
    return a;
}
static inline V vsub(V a, V b) {
    EACH a.h[h] = a.h[h] - b.h[h];
    return a;
}
static inline V vmul(V a, V b) {
    EACH a.h[h] = a.h[h] * b.h[h];
    return a;
}
static inline V vneg(V a) {
    EACH a.h[h] = -a.h[h];
    return a;
}
static inline V vand(V a, V mask) {
    EACH a.h[h] = (W)((WI)a.h[h] & (WI)mask.h[h]);
    return a;
}
static inline float vlane(const V *v, int i) { return ((const float *)v)[i]; }
/* f(a) = A tanh(S a) and f'(x) = (S/A)(A^2 - x^2), per lane as in the lanes path */
static inline V vact(V a, float A, float S) {
    EACH a.h[h] = WBC(A) * WTANH(WBC(S) * a.h[h]);
    return a;
}
static inline V vfp(V x, V SA, V AA) { return vmul(SA, vsub(AA, vmul(x, x))); }

/* 4 rows of 4 floats, `stride` apart: a 4x4 window as one vector (lane r * 4 + c), and back */
static inline V rows4(const float *p, int stride) {
    V v;
#if ZN_WIDTH >= 16
    __m512 z = _mm512_castps128_ps512(_mm_loadu_ps(p));
    z = _mm512_insertf32x4(z, _mm_loadu_ps(p + stride), 1);
    z = _mm512_insertf32x4(z, _mm_loadu_ps(p + 2 * stride), 2);
    v.h[0] = (W)_mm512_insertf32x4(z, _mm_loadu_ps(p + 3 * stride), 3);
#elif defined(__AVX__)
    v.h[0] = (W)_mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)), _mm_loadu_ps(p + stride), 1);
    v.h[1] = (W)_mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + 2 * stride)), _mm_loadu_ps(p + 3 * stride), 1);
#else
    for (int r = 0; r < 4; r++) memcpy((float *)&v + 4 * r, p + r * stride, 16);
#endif
    return v;
}
static inline void unrows4(float *p, int stride, V v) {
    for (int r = 0; r < 4; r++) memcpy(p + r * stride, (const float *)&v + 4 * r, 16);
}

typedef struct {
    /* weights */
    V W1T[25];            /* H1w by tap, lanes = maps */
    V b1c[12][4];         /* H1b by class */
    V W2T[12][25];        /* H2w by (H1 map, tap), lanes = H2 maps; 0 where unlinked */
    V link[12];           /* per H1 map: all-ones bits in the lanes of the H2 maps it feeds, else 0 */
    V b2[12];             /* H2b, lanes = positions */
    V W3[30][12];         /* H3w rows, lanes = H2 units */
    V W3T[192][2];        /* H3w by H2 unit, lanes = H3 units (30 of 32) */
    V b3[2];
    V outP[10][2];        /* outw rows, lanes = H3 units */
    V outT[30];           /* outw by H3 unit, lanes = outputs (10 of 16) */
    V bo;
    /* one pattern */
    V P[25][4];           /* input at each H1 unit's tap, by class */
    V x1c[12][4];
    float x1p[12][144];   /* H1 with the -1 border, for the H2 update */
    float x1g[12][4][36]; /* each class as a 6x6 grid with the -1 border around it (H2's windows) */
    float d2g[12][36];    /* each H2 map's d2 as a 6x6 grid with zeros around it (e1's shifts) */
    V x2[12], x3[2], y;
    V d3[2], d2[12], D[12][3][3]; /* D: d2 of map o moved onto the interior classes, 0 outside */
    V e1c[12][4];
    V l1T[64];            /* H1 deltas, [unit], lanes = maps */
    V l2T[16];            /* H2 deltas, [position], lanes = maps */
    float d4f[16], nl4f[16], d3f[32], nl3f[32];
} One;

#define UCLASS(u) (((u) / 8 % 2) * 2 + (u) % 8 % 2)
#define ULANE(u) (((u) / 16) * 4 + (u) % 8 / 2)

static void one_begin(One *s, const float *w, const signed char *table) {
    memset(s, 0, sizeof *s);
    for (int m = 0; m < 12; m++) {
        for (int k = 0; k < 25; k++) ((float *)&s->W1T[k])[m] = w[O_H1W + m * 25 + k];
        for (int u = 0; u < 64; u++) ((float *)&s->b1c[m][UCLASS(u)])[ULANE(u)] = w[O_H1B + m * 64 + u];
    }
    for (int o = 0; o < 12; o++) {
        for (int i = 0; i < 12; i++) {
            for (int k = 0; k < 25; k++) ((float *)&s->W2T[i][k])[o] = w[O_H2W + o * 300 + i * 25 + k];
            ((int32_t *)&s->link[i])[o] = table[o * 12 + i] ? -1 : 0;
        }
        for (int p = 0; p < 16; p++) ((float *)&s->b2[o])[p] = w[O_H2B + o * 16 + p];
    }
    for (int h = 0; h < 30; h++) {
        for (int q = 0; q < 192; q++) {
            ((float *)s->W3[h])[q] = w[O_H3W + h * 192 + q];
            ((float *)s->W3T[q])[h] = w[O_H3W + h * 192 + q];
        }
        ((float *)s->b3)[h] = w[O_H3B + h];
    }
    for (int j = 0; j < 10; j++) {
        for (int h = 0; h < 30; h++) ((float *)s->outP[j])[h] = ((float *)&s->outT[h])[j] = w[O_OUTW + j * 30 + h];
        ((float *)&s->bo)[j] = w[O_OUTB + j];
    }
    for (int m = 0; m < 12; m++) {
        for (int u = 0; u < 144; u++) s->x1p[m][u] = -1.0f; /* "constant padding of -1" */
        for (int u = 0; u < 144; u++) (&s->x1g[m][0][0])[u] = -1.0f;
    }
}

static void one_end(const One *s, float *w) {
    for (int m = 0; m < 12; m++) {
        for (int k = 0; k < 25; k++) w[O_H1W + m * 25 + k] = vlane(&s->W1T[k], m);
        for (int u = 0; u < 64; u++) w[O_H1B + m * 64 + u] = vlane(&s->b1c[m][UCLASS(u)], ULANE(u));
    }
    for (int o = 0; o < 12; o++) {
        for (int i = 0; i < 12; i++)
            for (int k = 0; k < 25; k++) w[O_H2W + o * 300 + i * 25 + k] = vlane(&s->W2T[i][k], o);
        for (int p = 0; p < 16; p++) w[O_H2B + o * 16 + p] = vlane(&s->b2[o], p);
    }
    for (int h = 0; h < 30; h++) {
        for (int q = 0; q < 192; q++) w[O_H3W + h * 192 + q] = ((const float *)s->W3[h])[q];
        w[O_H3B + h] = ((const float *)s->b3)[h];
    }
    for (int j = 0; j < 10; j++) {
        for (int h = 0; h < 30; h++) w[O_OUTW + j * 30 + h] = ((const float *)s->outP[j])[h];
        w[O_OUTB + j] = vlane(&s->bo, j);
    }
}

/* in4: the pattern as 16 grids of 5x5 (pixel (4gy + ry, 4gx + rx) at grid ry*4 + rx, place gy*5 + gx) */
static void one_forward(One *restrict s, const float *restrict in4, float A, float S, const signed char *restrict table) {
    /* the taps of the class (cy, cx) read pixel (4a + 2cy + ky, 4b + 2cx + kx) for lane (a, b) */
    for (int c = 0; c < 4; c++)
        for (int k = 0; k < 25; k++) {
            const int ry = 2 * (c >> 1) + k / 5, rx = 2 * (c & 1) + k % 5;
            s->P[k][c] = rows4(in4 + ((ry & 3) * 4 + (rx & 3)) * 25 + (ry >> 2) * 5 + (rx >> 2), 5);
        }
#define TM1 (NH == 1 ? 3 : 1)
    for (int m = 0; m < 12; m += TM1) {
        V a[TM1][4];
#pragma GCC unroll 3
        for (int t = 0; t < TM1; t++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) a[t][c] = s->b1c[m + t][c];
        for (int k = 0; k < 25; k++)
#pragma GCC unroll 3
            for (int t = 0; t < TM1; t++) {
                const V w = vbc(vlane(&s->W1T[k], m + t));
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) a[t][c] = vfma(w, s->P[k][c], a[t][c]);
            }
#pragma GCC unroll 3
        for (int t = 0; t < TM1; t++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                s->x1c[m + t][c] = vact(a[t][c], A, S);
                unrows4(s->x1g[m + t][c] + 7, 6, s->x1c[m + t][c]);
            }
    }
#define TO1 (NH == 1 ? 12 : 6)
    for (int o0 = 0; o0 < 12; o0 += TO1) {
        V a[TO1];
#pragma GCC unroll 12
        for (int o = 0; o < TO1; o++) a[o] = s->b2[o0 + o];
        for (int i = 0; i < 12; i++)
            for (int k = 0; k < 25; k++) {
                const int ky = k / 5, kx = k % 5;
                /* position (oy, ox) reads class lane (oy + ky/2 - 1, ox + kx/2 - 1): grid place (oy + ky/2, ox + kx/2) */
                const V win = rows4(s->x1g[i][(ky & 1) * 2 + (kx & 1)] + (ky >> 1) * 6 + (kx >> 1), 6);
#pragma GCC unroll 12
                for (int o = 0; o < TO1; o++)
                    if (table[(o0 + o) * 12 + i]) a[o] = vfma(vbc(vlane(&s->W2T[i][k], o0 + o)), win, a[o]);
            }
#pragma GCC unroll 12
        for (int o = 0; o < TO1; o++) s->x2[o0 + o] = vact(a[o], A, S);
    }
    {
        V a[4][2];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = vbc(0.0f);
        const float *x2 = (const float *)s->x2;
        for (int q = 0; q < 192; q += 4)
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                const V x = vbc(x2[q + r]);
                a[r][0] = vfma(s->W3T[q + r][0], x, a[r][0]);
                a[r][1] = vfma(s->W3T[q + r][1], x, a[r][1]);
            }
        for (int v = 0; v < 2; v++)
            s->x3[v] = vact(vadd(s->b3[v], vadd(vadd(a[0][v], a[1][v]), vadd(a[2][v], a[3][v]))), A, S);
    }
    {
        V a = s->bo;
        const float *x3 = (const float *)s->x3;
        for (int h = 0; h < 30; h++) a = vfma(s->outT[h], vbc(x3[h]), a);
        s->y = vact(a, A, S);
    }
}

static void one_backward(One *restrict s, const float *restrict k, const float *restrict in, int label,
                         const signed char *restrict table) {
    const float A = k[C_A], S = k[C_S], lr = k[C_LR];
    const V SA = vbc(S / A), AA = vbc(A * A), LR = vbc(lr), zero = vbc(0.0f);
    {
        V t = vbc(k[C_NEG]);
        ((float *)&t)[label] = k[C_POS];
        V d4 = vmul(vmul(vbc(k[C_C]), vsub(s->y, t)), vfp(s->y, SA, AA));
        for (int j = 10; j < 16; j++) ((float *)&d4)[j] = 0.0f;
        const V nl4 = vneg(vmul(LR, d4));
        memcpy(s->d4f, &d4, sizeof d4);
        memcpy(s->nl4f, &nl4, sizeof nl4);
    }
    /* output layer: d3 with the old weights, then the update (both layouts) */
    for (int v = 0; v < 2; v++) {
        V g = zero;
        for (int j = 0; j < 10; j++) g = vfma(s->outP[j][v], vbc(s->d4f[j]), g);
        s->d3[v] = vmul(g, vfp(s->x3[v], SA, AA));
    }
    for (int j = 0; j < 10; j++) {
        const V nl = vbc(s->nl4f[j]);
        s->outP[j][0] = vfma(nl, s->x3[0], s->outP[j][0]);
        s->outP[j][1] = vfma(nl, s->x3[1], s->outP[j][1]);
    }
    {
        V nl4;
        memcpy(&nl4, s->nl4f, sizeof nl4);
        const float *x3 = (const float *)s->x3;
        for (int h = 0; h < 30; h++) s->outT[h] = vfma(nl4, vbc(x3[h]), s->outT[h]);
        s->bo = vadd(s->bo, nl4);
    }
    /* H3: d2 with the old weights, then the update (both layouts) */
    {
        memcpy(s->d3f, s->d3, sizeof s->d3f);
        s->d3f[30] = s->d3f[31] = 0.0f;
        V g[12];
#pragma GCC unroll 12
        for (int v = 0; v < 12; v++) g[v] = zero;
        for (int h = 0; h < 30; h++) {
            const V d = vbc(s->d3f[h]);
#pragma GCC unroll 12
            for (int v = 0; v < 12; v++) g[v] = vfma(s->W3[h][v], d, g[v]);
        }
#pragma GCC unroll 12
        for (int v = 0; v < 12; v++) s->d2[v] = vmul(g[v], vfp(s->x2[v], SA, AA));
    }
    {
        V nl3[2];
        nl3[0] = vneg(vmul(LR, s->d3[0]));
        nl3[1] = vneg(vmul(LR, s->d3[1]));
        memcpy(s->nl3f, nl3, sizeof nl3);
        for (int h = 0; h < 30; h++) {
            const V nl = vbc(s->nl3f[h]);
#pragma GCC unroll 12
            for (int v = 0; v < 12; v++) s->W3[h][v] = vfma(nl, s->x2[v], s->W3[h][v]);
        }
        const float *x2 = (const float *)s->x2;
        for (int q = 0; q < 192; q++) {
            const V x = vbc(x2[q]);
            s->W3T[q][0] = vfma(nl3[0], x, s->W3T[q][0]);
            s->W3T[q][1] = vfma(nl3[1], x, s->W3T[q][1]);
        }
        s->b3[0] = vadd(s->b3[0], nl3[0]);
        s->b3[1] = vadd(s->b3[1], nl3[1]);
    }
    /* e1 by class, with the old H2 weights: per unit, o ascending, then its taps ascending.
     * Interior lane (a, b) is reached from position (a + 1 - dy, b + 1 - dx): grid place (a + 2 - dy, b + 2 - dx). */
    for (int o = 0; o < 12; o++) {
        unrows4(s->d2g[o] + 7, 6, s->d2[o]);
        for (int dy = 0; dy < 3; dy++)
            for (int dx = 0; dx < 3; dx++) s->D[o][dy][dx] = rows4(s->d2g[o] + (2 - dy) * 6 + 2 - dx, 6);
    }
#define TI1 (NH == 1 ? 3 : 1)
    for (int i0 = 0; i0 < 12; i0 += TI1) {
        V acc[TI1][4];
#pragma GCC unroll 3
        for (int t = 0; t < TI1; t++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) acc[t][c] = zero;
        for (int o = 0; o < 12; o++) {
            int link[TI1], any = 0;
            for (int t = 0; t < TI1; t++) any |= link[t] = table[o * 12 + i0 + t];
            if (!any) continue;
#pragma GCC unroll 25
            for (int kk = 0; kk < 25; kk++) {
                const int ky = kk / 5, kx = kk % 5, c = (ky & 1) * 2 + (kx & 1);
                const V d = s->D[o][ky >> 1][kx >> 1];
#pragma GCC unroll 3
                for (int t = 0; t < TI1; t++)
                    if (link[t]) acc[t][c] = vfma(vbc(vlane(&s->W2T[i0 + t][kk], o)), d, acc[t][c]);
            }
        }
#pragma GCC unroll 3
        for (int t = 0; t < TI1; t++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) s->e1c[i0 + t][c] = acc[t][c];
    }
    /* H2: biases, then the weights: per weight the sum over positions in order, lanes = H2 maps */
    for (int o = 0; o < 12; o++) {
        const V l = vmul(LR, s->d2[o]);
        s->b2[o] = vsub(s->b2[o], l);
        for (int p = 0; p < 16; p++) ((float *)&s->l2T[p])[o] = vlane(&l, p);
    }
    for (int p = 0; p < 16; p++)
        for (int o = 12; o < 16; o++) ((float *)&s->l2T[p])[o] = 0.0f;
    for (int m = 0; m < 12; m++)
#pragma GCC unroll 64
        for (int u = 0; u < 64; u++) s->x1p[m][(u / 8 + 2) * 12 + u % 8 + 2] = vlane(&s->x1c[m][UCLASS(u)], ULANE(u));
#define TK2 (NH == 1 ? 25 : 5)
    for (int i = 0; i < 12; i++)
        for (int k0 = 0; k0 < 25; k0 += TK2) {
            V g[TK2];
#pragma GCC unroll 25
            for (int t = 0; t < TK2; t++) g[t] = zero;
            const float *x = s->x1p[i];
            for (int p = 0; p < 16; p++) {
                const V l = s->l2T[p];
                const float *xp = x + 2 * (p / 4) * 12 + 2 * (p % 4);
#pragma GCC unroll 25
                for (int t = 0; t < TK2; t++) g[t] = vfma(l, vbc(xp[(k0 + t) / 5 * 12 + (k0 + t) % 5]), g[t]);
            }
#pragma GCC unroll 25
            for (int t = 0; t < TK2; t++) s->W2T[i][k0 + t] = vsub(s->W2T[i][k0 + t], vand(g[t], s->link[i]));
        }
    /* H1: deltas by class, then the kernels: per weight the sum over units in order, lanes = maps */
    for (int m = 0; m < 12; m++)
        for (int c = 0; c < 4; c++) {
            const V l = vmul(LR, vmul(s->e1c[m][c], vfp(s->x1c[m][c], SA, AA)));
            s->b1c[m][c] = vsub(s->b1c[m][c], l);
            s->e1c[m][c] = l;
        }
#pragma GCC unroll 64
    for (int u = 0; u < 64; u++) {
        for (int m = 0; m < 12; m++) ((float *)&s->l1T[u])[m] = vlane(&s->e1c[m][UCLASS(u)], ULANE(u));
        for (int m = 12; m < 16; m++) ((float *)&s->l1T[u])[m] = 0.0f;
    }
    for (int k0 = 0; k0 < 25; k0 += TK2) {
        V g[TK2];
#pragma GCC unroll 25
        for (int t = 0; t < TK2; t++) g[t] = zero;
        for (int u = 0; u < 64; u++) {
            const V l = s->l1T[u];
            const float *px = in + (2 * (u / 8)) * 20 + 2 * (u % 8);
#pragma GCC unroll 25
            for (int t = 0; t < TK2; t++) g[t] = vfma(l, vbc(px[(k0 + t) / 5 * 20 + (k0 + t) % 5]), g[t]);
        }
#pragma GCC unroll 25
        for (int t = 0; t < TK2; t++) s->W1T[k0 + t] = vsub(s->W1T[k0 + t], g[t]);
    }
}

/* A pass for each of K members on its own: params (K, N_PARAMS), consts (K, N_CONSTS), inputs (D, n, 400)
 * and the same patterns as 5x5 grids (in4, see one_forward); members spread over threads. */
int zn_train_one(float *params, const float *consts, int K, const signed char *table, const float *inputs,
                 const float *inputs4, const int32_t *labels, const int32_t *dataset, int64_t n, int nthreads) {
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : failed)
    for (int km = 0; km < K; km++) {
        One *s = zalloc(sizeof(One));
        if (!s) {
            failed = 1;
            continue;
        }
        float *w = params + (size_t)km * N_PARAMS;
        const float *k = consts + (size_t)km * N_CONSTS;
        one_begin(s, w, table);
        for (int64_t i = 0; i < n; i++) {
            const int64_t at = (int64_t)dataset[km] * n + i;
            one_forward(s, inputs4 + at * 400, k[C_A], k[C_S], table);
            one_backward(s, k, inputs + at * 400, labels[at], table);
        }
        one_end(s, w);
        free(s);
    }
    return failed ? -1 : 0;
}
#undef EACH
#undef NH
#undef WBC
#undef WTANH
#undef WFMA
#undef TM1
#undef TO1
#undef TI1
#undef TK2
#undef UCLASS
#undef ULANE

/* ===================== exported entry points ===================== */
int zn_lanes(int blk) { return blk == 8 || blk == 16; }

int zn_train_lanes(int blk, float *params, const float *consts, float *state, int nblocks, const Setup *st,
                   const signed char *table, const float *inputs, const int32_t *labels, const int32_t *dataset,
                   int64_t n, const uint8_t *const *keep, int nthreads) {
    switch (blk) {
    case 8: return train_8(params, consts, state, nblocks, st, table, inputs, labels, dataset, n, keep, nthreads);
    case 16: return train_16(params, consts, state, nblocks, st, table, inputs, labels, dataset, n, keep, nthreads);
    }
    return -2;
}

int zn_curvature_lanes(int blk, const float *params, const float *consts, float *hsum, int nblocks, const Setup *st,
                       const signed char *table, const float *inputs, const int32_t *labels, const int32_t *dataset,
                       int64_t n, const int32_t *sample, int nsample, int nthreads) {
    switch (blk) {
    case 8:
        return curvature_sum_8(params, consts, hsum, nblocks, st, table, inputs, labels, dataset, n, sample, nsample,
                               nthreads);
    case 16:
        return curvature_sum_16(params, consts, hsum, nblocks, st, table, inputs, labels, dataset, n, sample, nsample,
                                nthreads);
    }
    return -2;
}
#endif /* ZN_PART == 3 */
#endif /* ZN_PART */
