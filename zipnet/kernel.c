/* The 1989 net's per-pattern training step and its evaluation, compiled for the CPU.
 *
 * One arithmetic, three layouts. A member's numbers follow one fixed sequence of IEEE float
 * operations (the canonical step below), written with explicit fused multiply-adds (fmaf)
 * and compiled with -ffp-contract=off, so they do not depend on which path ran the member,
 * how many members trained beside it, the thread count, or the vector width (AVX2 or
 * AVX-512). Three paths run that arithmetic:
 *   lanes: members in SIMD lanes, blocks of BLK = 8, 16 or 32 members (populations);
 *   one:   one member vectorised across its units and positions (a single run, and small
 *          populations with one member per thread; SGD on the paper's net);
 *   eval:  the forward pass with examples in SIMD lanes (train and test after every pass).
 *
 * Per-member layout (offsets in floats), as in net.py:
 *   H1w 12x25 | H1b 12x64 | H2w 12x12x25 | H2b 12x16 | H3w 30x192 | H3b 30 | outw 10x30 | outb 10
 * Input: 20x20 with the -1 border ("constant padding of -1"); H1 maps are kept 12x12 with
 * that border too. f(a) = A tanh(S a) or relu; f'(a) from x = f(a) is (S/A)(A^2 - x^2).
 *
 * The canonical step, per member (fma(a, b, c) = a b + c rounded once; every other
 * operation rounds on its own; sums start from the first named term):
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
#define ZN_ABI 2

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
enum { C_A, C_S, C_C, C_LR, C_NEG, C_POS, C_MU, C_DECAY, C_B1, C_B2, C_EPS, C_WD, C_DROP, N_CONSTS };
enum { OPT_SGD, OPT_SDLM, OPT_ADAMW };

/* What a whole population shares (one per call). */
typedef struct {
    int32_t relu;          /* hidden units: relu, else A tanh(S a) */
    int32_t linear_out;    /* outputs: a, else f(a) */
    int32_t cross_entropy; /* loss: softmax cross-entropy, else (c/2) sum (d - y)^2 */
    int32_t optim;         /* OPT_* */
    int32_t running;       /* sdlm: h as a running average, updated every pattern */
    int32_t step;          /* adamw: updates taken before this call */
} Setup;

const char *zn_build(void) { return ZN_BUILD_ID; }
int zn_abi(void) { return ZN_ABI; }
int zn_nparams(void) { return N_PARAMS; }
int zn_nconsts(void) { return N_CONSTS; }

/* tanh from e = exp(-2|x|) = 2^n p(r): tanh|x| = (1 - e) / (1 + e). Absolute error below 1e-7. */
static inline float ztanh(float x) {
    float ax = fabsf(x);
    ax = ax > 9.0f ? 9.0f : ax; /* NaN stays NaN, so a diverging member shows it */
    const float t = -2.0f * ax;
    const float n = rintf(t * 1.44269504088896341f);
    float r = fmaf(-n, 0.693145751953125f, t);
    r = fmaf(-n, 1.428606765330187e-06f, r);
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    const float e = p * scale;
    return copysignf((1.0f - e) / (1.0f + e), x);
}

/* exp(x) for x <= 0 (softmax after subtracting the maximum): 2^n p(r); 0 below -87. */
static inline float zexp(float x) {
    const float lo = -87.0f;
    const float xc = x < lo ? lo : x;
    const float n = rintf(xc * 1.44269504088896341f);
    float r = fmaf(-n, 0.693145751953125f, xc);
    r = fmaf(-n, 1.428606765330187e-06f, r);
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < lo ? 0.0f : p * scale;
}

/* The members' f and f' (canonical forms): f(a) = A tanh(S a), f'(a) = (S/A)(A^2 - x^2) from
 * x = f(a); or relu, with f' 1 where x > 0. Loops below branch on relu outside their lanes. */

static void *zalloc(size_t size) { return aligned_alloc(64, (size + 63) / 64 * 64); }

/* ---------------------------------------------------------------------------------------
 * The lanes path (members in lanes) and the evaluation forward (examples in lanes) are one
 * template, included below once per lane count. W(i): weight i of the lane's member.
 */
#define ZN_CAT2(a, b) a##_##b
#define ZN_CAT(a, b) ZN_CAT2(a, b)

#define ZN_PART 1
#define ZN_BLK 8
#include __FILE__
#undef ZN_BLK
#define ZN_BLK 16
#include __FILE__
#undef ZN_BLK
#define ZN_BLK 32
#include __FILE__
#undef ZN_BLK
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
#define L(name) ZN_CAT(name, ZN_BLK)
#define LANES for (int b = 0; b < BLK; b++)
typedef float L(lv)[BLK];
#define lv L(lv)

typedef struct {
    lv in[400];       /* this pattern per lane: 20x20 with the -1 border */
    lv x1[12 * 144];  /* H1 maps with the -1 border */
    lv x2[192], kp[192], z[192]; /* H2, its dropout factor, H3's input */
    lv x3[32], y[10];
    lv d4[10], d3[32], d2[192], e1[12 * 144]; /* deltas; e1: dE/dx1 (interior used) */
    lv SA, AA, t[10];
    int32_t label[BLK];
} L(Scratch);

/* x = f(a) and f'(x) for one vector of lanes */
static inline void L(act)(float *restrict x, const float *restrict a, const float *restrict A, const float *restrict S,
                          int relu) {
    if (relu)
        LANES x[b] = a[b] > 0.0f ? a[b] : 0.0f;
    else
        LANES x[b] = A[b] * ztanh(S[b] * a[b]);
}

static inline void L(fp)(float *restrict f, const float *restrict x, const L(Scratch) *restrict s, int relu) {
    if (relu)
        LANES f[b] = x[b] > 0.0f ? 1.0f : 0.0f;
    else
        LANES f[b] = s->SA[b] * (s->AA[b] - x[b] * x[b]);
}

/* dropout factor per H2 output: 0 where dropped, 1/(1-p) kept, from packed keep bits */
static void L(dropout)(L(Scratch) *restrict s, const lv *restrict k, const uint8_t *const *bits) {
    LANES {
        const float scale = 1.0f / (1.0f - k[C_DROP][b]);
        for (int q = 0; q < 192; q++) s->kp[q][b] = (bits[b][q >> 3] >> (q & 7)) & 1 ? scale : 0.0f;
    }
}

static void L(forward)(const lv *restrict w, const lv *restrict k, const Setup *st, const signed char *restrict table,
                       L(Scratch) *restrict s, int drop) {
    const int relu = st->relu;
    for (int m = 0; m < 12; m++)
        for (int oy = 0; oy < 8; oy++) {
            lv a[8];
            for (int ox = 0; ox < 8; ox++) LANES a[ox][b] = w[O_H1B + m * 64 + oy * 8 + ox][b];
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float *wk = w[O_H1W + m * 25 + ky * 5 + kx];
                    for (int ox = 0; ox < 8; ox++) {
                        const float *x = s->in[(2 * oy + ky) * 20 + 2 * ox + kx];
                        LANES a[ox][b] = fmaf(wk[b], x[b], a[ox][b]);
                    }
                }
            for (int ox = 0; ox < 8; ox++) L(act)(s->x1[m * 144 + (oy + 2) * 12 + ox + 2], a[ox], k[C_A], k[C_S], relu);
        }
    for (int o = 0; o < 12; o++) {
        lv a[16];
        for (int p = 0; p < 16; p++) LANES a[p][b] = w[O_H2B + o * 16 + p][b];
        for (int i = 0; i < 12; i++) {
            if (!table[o * 12 + i]) continue;
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float *wk = w[O_H2W + o * 300 + i * 25 + ky * 5 + kx];
                    for (int oy = 0; oy < 4; oy++)
                        for (int ox = 0; ox < 4; ox++) {
                            const float *x = s->x1[i * 144 + (2 * oy + ky) * 12 + 2 * ox + kx];
                            LANES a[oy * 4 + ox][b] = fmaf(wk[b], x[b], a[oy * 4 + ox][b]);
                        }
                }
        }
        for (int p = 0; p < 16; p++) {
            float *x = s->x2[o * 16 + p], *z = s->z[o * 16 + p];
            L(act)(x, a[p], k[C_A], k[C_S], relu);
            if (drop) {
                const float *f = s->kp[o * 16 + p];
                LANES z[b] = x[b] * f[b];
            } else
                LANES z[b] = x[b];
        }
    }
    for (int h0 = 0; h0 < 30; h0 += 3) {
        lv a[3][4];
        for (int t = 0; t < 3; t++)
            for (int r = 0; r < 4; r++) LANES a[t][r][b] = 0.0f;
        for (int q = 0; q < 192; q += 4)
            for (int r = 0; r < 4; r++) {
                const float *x = s->z[q + r];
                for (int t = 0; t < 3; t++) {
                    const float *wk = w[O_H3W + (h0 + t) * 192 + q + r];
                    LANES a[t][r][b] = fmaf(wk[b], x[b], a[t][r][b]);
                }
            }
        for (int t = 0; t < 3; t++) {
            lv sum;
            LANES sum[b] = w[O_H3B + h0 + t][b] + ((a[t][0][b] + a[t][1][b]) + (a[t][2][b] + a[t][3][b]));
            L(act)(s->x3[h0 + t], sum, k[C_A], k[C_S], relu);
        }
    }
    {
        lv a[10];
        for (int j = 0; j < 10; j++) LANES a[j][b] = w[O_OUTB + j][b];
        for (int h = 0; h < 30; h++) {
            const float *x = s->x3[h];
            for (int j = 0; j < 10; j++) {
                const float *wk = w[O_OUTW + j * 30 + h];
                LANES a[j][b] = fmaf(wk[b], x[b], a[j][b]);
            }
        }
        for (int j = 0; j < 10; j++) {
            float *y = s->y[j];
            if (st->linear_out)
                LANES y[b] = a[j][b];
            else
                LANES y[b] = k[C_A][b] * ztanh(k[C_S][b] * a[j][b]);
        }
    }
}

/* dE/da at the outputs (d4), and for SDLM the loss's curvature there (s4, may be NULL) */
static void L(output_delta)(const lv *restrict k, const Setup *st, L(Scratch) *restrict s, lv *restrict s4) {
    for (int j = 0; j < 10; j++) LANES s->t[j][b] = s->label[b] == j ? k[C_POS][b] : k[C_NEG][b];
    if (st->cross_entropy) {
        lv mx, sum, e[10];
        LANES mx[b] = s->y[0][b];
        for (int j = 1; j < 10; j++) LANES mx[b] = s->y[j][b] > mx[b] ? s->y[j][b] : mx[b];
        for (int j = 0; j < 10; j++) LANES e[j][b] = zexp(s->y[j][b] - mx[b]);
        LANES sum[b] = e[0][b];
        for (int j = 1; j < 10; j++) LANES sum[b] = sum[b] + e[j][b];
        for (int j = 0; j < 10; j++) LANES {
            const float p = e[j][b] / sum[b];
            const float fo = st->linear_out ? 1.0f : s->SA[b] * (s->AA[b] - s->y[j][b] * s->y[j][b]);
            s->d4[j][b] = (p - (s->label[b] == j ? 1.0f : 0.0f)) * fo;
            if (s4) s4[j][b] = (p * (1.0f - p)) * (fo * fo);
        }
        return;
    }
    for (int j = 0; j < 10; j++) LANES {
        const float y = s->y[j][b];
        const float fo = st->linear_out ? 1.0f : s->SA[b] * (s->AA[b] - y * y);
        s->d4[j][b] = (k[C_C][b] * (y - s->t[j][b])) * fo;
        if (s4) s4[j][b] = k[C_C][b] * (fo * fo);
    }
}

/* g[q] = sum_h W[h][q] v[h] over 30 rows (old H3 weights), then times the dropout factor and f'(x2) */
static void L(back_h3)(const lv *restrict w, const L(Scratch) *restrict s, const lv *restrict v, lv *restrict out,
                       int squared, int drop, int relu) {
    for (int q0 = 0; q0 < 192; q0 += 8) {
        lv g[8];
        for (int t = 0; t < 8; t++) LANES g[t][b] = 0.0f;
        for (int h = 0; h < 30; h++) {
            const float *d = v[h];
            for (int t = 0; t < 8; t++) {
                const float *wk = w[O_H3W + h * 192 + q0 + t];
                if (squared)
                    LANES g[t][b] = fmaf(wk[b] * wk[b], d[b], g[t][b]);
                else
                    LANES g[t][b] = fmaf(wk[b], d[b], g[t][b]);
            }
        }
        for (int t = 0; t < 8; t++) {
            const float *f = s->kp[q0 + t];
            lv fp;
            L(fp)(fp, s->x2[q0 + t], s, relu);
            if (squared) LANES fp[b] = fp[b] * fp[b];
            if (drop && squared)
                LANES out[q0 + t][b] = (g[t][b] * (f[b] * f[b])) * fp[b];
            else if (drop)
                LANES out[q0 + t][b] = (g[t][b] * f[b]) * fp[b];
            else
                LANES out[q0 + t][b] = g[t][b] * fp[b];
        }
    }
}

/* e1 at the 8x8 interior of each H1 map: sum over o linked, ky, kx of W2[o][i][ky,kx] v[o][position] */
static void L(back_h2)(const lv *restrict w, const signed char *restrict table, const lv *restrict v, lv *restrict e1,
                       int squared) {
    for (int i = 0; i < 12; i++) {
        lv *g = e1 + i * 144;
        memset(g, 0, 144 * sizeof *g);
        for (int o = 0; o < 12; o++) {
            if (!table[o * 12 + i]) continue;
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float *wk = w[O_H2W + o * 300 + i * 25 + ky * 5 + kx];
                    lv ww;
                    if (squared)
                        LANES ww[b] = wk[b] * wk[b];
                    else
                        LANES ww[b] = wk[b];
                    for (int oy = 0; oy < 4; oy++)
                        for (int ox = 0; ox < 4; ox++) {
                            const float *d = v[o * 16 + oy * 4 + ox];
                            float *gu = g[(2 * oy + ky) * 12 + 2 * ox + kx];
                            LANES gu[b] = fmaf(ww[b], d[b], gu[b]);
                        }
                }
        }
    }
}

/* The update of one weight from its gradient g (SDLM and AdamW; SGD folds lr into the deltas). */
static inline float L(rule)(int optim, float w, float g, float *restrict st1, float *restrict st2, const float *c,
                            float lr_b1, float bc2) {
    (void)c;
    if (optim == OPT_SDLM) return w - *st1 * g; /* st1: eta / (mu + h) */
    /* adamw: m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g g; w <- w (1 - lr wd) - (m lr / bc1) / (sqrt(v / bc2) + eps) */
    const float m = fmaf(1.0f - c[C_B1], g, *st1 * c[C_B1]);
    const float v = fmaf((1.0f - c[C_B2]) * g, g, *st2 * c[C_B2]);
    *st1 = m;
    *st2 = v;
    const float denom = sqrtf(v / bc2) + c[C_EPS];
    return w * (1.0f - c[C_LR] * c[C_WD]) - (m * lr_b1) / denom;
}

typedef struct {
    float *st1, *st2;                 /* optimiser state blocks ([N_PARAMS][BLK] each), or NULL */
    float lr_b1[BLK], bc2[BLK];       /* adamw: lr / (1 - b1^t), 1 - b2^t */
} L(Opt);

/* apply rule to weight index idx in all lanes, gradient g[b] */
#define APPLY(idx, G)                                                                                          \
    do {                                                                                                       \
        float *wv = w[idx];                                                                                    \
        float *s1 = op->st1 + (size_t)(idx) * BLK, *s2 = op->st2 ? op->st2 + (size_t)(idx) * BLK : s1;        \
        LANES {                                                                                                \
            float cc[N_CONSTS];                                                                                \
            for (int n = 0; n < N_CONSTS; n++) cc[n] = k[n][b];                                               \
            wv[b] = L(rule)(st->optim, wv[b], (G)[b], s1 + b, s2 + b, cc, op->lr_b1[b], op->bc2[b]);          \
        }                                                                                                      \
    } while (0)

/* Backprop and update. SGD folds lr into the deltas; SDLM and AdamW apply their rule to
 * the unfolded gradient. Each layer's delta uses its weights before they are updated. */
static void L(backward)(lv *restrict w, const lv *restrict k, const Setup *st, const signed char *restrict table,
                        L(Scratch) *restrict s, int drop, L(Opt) *op) {
    const int relu = st->relu, sgd = st->optim == OPT_SGD;
    L(output_delta)(k, st, s, NULL);
    for (int h = 0; h < 30; h++) {
        lv g;
        LANES g[b] = 0.0f;
        for (int j = 0; j < 10; j++) {
            const float *wk = w[O_OUTW + j * 30 + h];
            LANES g[b] = fmaf(wk[b], s->d4[j][b], g[b]);
        }
        lv fp;
        L(fp)(fp, s->x3[h], s, relu);
        LANES s->d3[h][b] = g[b] * fp[b];
    }
    for (int j = 0; j < 10; j++) {
        if (sgd) {
            lv nl;
            LANES nl[b] = -(k[C_LR][b] * s->d4[j][b]);
            for (int h = 0; h < 30; h++) {
                float *wk = w[O_OUTW + j * 30 + h];
                LANES wk[b] = fmaf(nl[b], s->x3[h][b], wk[b]);
            }
            LANES w[O_OUTB + j][b] = w[O_OUTB + j][b] + nl[b];
        } else {
            for (int h = 0; h < 30; h++) {
                lv g;
                LANES g[b] = s->d4[j][b] * s->x3[h][b];
                APPLY(O_OUTW + j * 30 + h, g);
            }
            APPLY(O_OUTB + j, s->d4[j]);
        }
    }
    L(back_h3)((const lv *)w, s, (const lv *)s->d3, s->d2, 0, drop, relu);
    for (int h = 0; h < 30; h++) {
        if (sgd) {
            lv nl;
            LANES nl[b] = -(k[C_LR][b] * s->d3[h][b]);
            for (int q = 0; q < 192; q++) {
                float *wk = w[O_H3W + h * 192 + q];
                LANES wk[b] = fmaf(nl[b], s->z[q][b], wk[b]);
            }
            LANES w[O_H3B + h][b] = w[O_H3B + h][b] + nl[b];
        } else {
            for (int q = 0; q < 192; q++) {
                lv g;
                LANES g[b] = s->d3[h][b] * s->z[q][b];
                APPLY(O_H3W + h * 192 + q, g);
            }
            APPLY(O_H3B + h, s->d3[h]);
        }
    }
    L(back_h2)((const lv *)w, table, (const lv *)s->d2, s->e1, 0);
    /* H2: gradients summed over the 16 positions */
    for (int o = 0; o < 12; o++) {
        lv l[16];
        for (int p = 0; p < 16; p++) {
            if (sgd) {
                LANES l[p][b] = k[C_LR][b] * s->d2[o * 16 + p][b];
                LANES w[O_H2B + o * 16 + p][b] = w[O_H2B + o * 16 + p][b] - l[p][b];
            } else {
                LANES l[p][b] = s->d2[o * 16 + p][b];
                APPLY(O_H2B + o * 16 + p, l[p]);
            }
        }
        for (int i = 0; i < 12; i++) {
            if (!table[o * 12 + i]) continue;
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    lv g;
                    LANES g[b] = 0.0f;
                    for (int oy = 0; oy < 4; oy++)
                        for (int ox = 0; ox < 4; ox++) {
                            const float *x = s->x1[i * 144 + (2 * oy + ky) * 12 + 2 * ox + kx];
                            LANES g[b] = fmaf(l[oy * 4 + ox][b], x[b], g[b]);
                        }
                    const int idx = O_H2W + o * 300 + i * 25 + ky * 5 + kx;
                    if (sgd)
                        LANES w[idx][b] = w[idx][b] - g[b];
                    else
                        APPLY(idx, g);
                }
        }
    }
    /* H1: deltas on the 8x8 interior, then the shared kernels and the per-unit biases */
    for (int m = 0; m < 12; m++) {
        lv l[64];
        for (int oy = 0; oy < 8; oy++)
            for (int ox = 0; ox < 8; ox++) {
                const int u = m * 144 + (oy + 2) * 12 + ox + 2;
                float *lu = l[oy * 8 + ox];
                lv fp;
                L(fp)(fp, s->x1[u], s, relu);
                LANES lu[b] = s->e1[u][b] * fp[b];
                if (sgd) {
                    LANES lu[b] = k[C_LR][b] * lu[b];
                    LANES w[O_H1B + m * 64 + oy * 8 + ox][b] = w[O_H1B + m * 64 + oy * 8 + ox][b] - lu[b];
                } else
                    APPLY(O_H1B + m * 64 + oy * 8 + ox, lu);
            }
        for (int ky = 0; ky < 5; ky++)
            for (int kx = 0; kx < 5; kx++) {
                lv g;
                LANES g[b] = 0.0f;
                for (int oy = 0; oy < 8; oy++)
                    for (int ox = 0; ox < 8; ox++) {
                        const float *x = s->in[(2 * oy + ky) * 20 + 2 * ox + kx];
                        LANES g[b] = fmaf(l[oy * 8 + ox][b], x[b], g[b]);
                    }
                const int idx = O_H1W + m * 25 + ky * 5 + kx;
                if (sgd)
                    LANES w[idx][b] = w[idx][b] - g[b];
                else
                    APPLY(idx, g);
            }
    }
}

/* The SDLM curvature of one pattern (REFERENCE.md §2): Gauss-Newton, "backprop with the weights
 * and f' squared". hp receives h for every parameter ([N_PARAMS][BLK]). Needs forward() first. */
static void L(curvature)(const lv *restrict w, const lv *restrict k, const Setup *st, const signed char *restrict table,
                         L(Scratch) *restrict s, int drop, lv *restrict hp) {
    const int relu = st->relu;
    lv s4[10], s3[32], s2[192];
    L(output_delta)(k, st, s, s4);
    for (int h = 0; h < 30; h++) {
        lv g;
        LANES g[b] = 0.0f;
        for (int j = 0; j < 10; j++) {
            const float *wk = w[O_OUTW + j * 30 + h];
            LANES g[b] = fmaf(wk[b] * wk[b], s4[j][b], g[b]);
        }
        lv fp;
        L(fp)(fp, s->x3[h], s, relu);
        LANES s3[h][b] = g[b] * (fp[b] * fp[b]);
    }
    L(back_h3)(w, s, (const lv *)s3, s2, 1, drop, relu);
    L(back_h2)(w, table, (const lv *)s2, s->e1, 1);
    for (int j = 0; j < 10; j++) {
        for (int h = 0; h < 30; h++) LANES hp[O_OUTW + j * 30 + h][b] = s4[j][b] * (s->x3[h][b] * s->x3[h][b]);
        LANES hp[O_OUTB + j][b] = s4[j][b];
    }
    for (int h = 0; h < 30; h++) {
        for (int q = 0; q < 192; q++) LANES hp[O_H3W + h * 192 + q][b] = s3[h][b] * (s->z[q][b] * s->z[q][b]);
        LANES hp[O_H3B + h][b] = s3[h][b];
    }
    for (int o = 0; o < 12; o++) {
        for (int p = 0; p < 16; p++) LANES hp[O_H2B + o * 16 + p][b] = s2[o * 16 + p][b];
        for (int i = 0; i < 12; i++)
            for (int r = 0; r < 25; r++) {
                const int idx = O_H2W + o * 300 + i * 25 + r;
                if (!table[o * 12 + i]) {
                    LANES hp[idx][b] = 0.0f;
                    continue;
                }
                const int ky = r / 5, kx = r % 5;
                lv g;
                LANES g[b] = 0.0f;
                for (int oy = 0; oy < 4; oy++)
                    for (int ox = 0; ox < 4; ox++) {
                        const float *x = s->x1[i * 144 + (2 * oy + ky) * 12 + 2 * ox + kx];
                        LANES g[b] = fmaf(s2[o * 16 + oy * 4 + ox][b], x[b] * x[b], g[b]);
                    }
                LANES hp[idx][b] = g[b];
            }
    }
    for (int m = 0; m < 12; m++) {
        lv s1[64];
        for (int u = 0; u < 64; u++) {
            const int unit = m * 144 + (u / 8 + 2) * 12 + u % 8 + 2;
            lv fp;
            L(fp)(fp, s->x1[unit], s, relu);
            LANES s1[u][b] = s->e1[unit][b] * (fp[b] * fp[b]);
            LANES hp[O_H1B + m * 64 + u][b] = s1[u][b];
        }
        for (int r = 0; r < 25; r++) {
            const int ky = r / 5, kx = r % 5;
            lv g;
            LANES g[b] = 0.0f;
            for (int u = 0; u < 64; u++) {
                const float *x = s->in[(2 * (u / 8) + ky) * 20 + 2 * (u % 8) + kx];
                LANES g[b] = fmaf(s1[u][b], x[b] * x[b], g[b]);
            }
            LANES hp[O_H1W + m * 25 + r][b] = g[b];
        }
    }
}

/* This pattern's input and label per lane: lane b reads its member's own stream (dataset). */
static void L(load)(L(Scratch) *restrict s, const float *inputs, const int32_t *labels, const int32_t *dataset,
                    int64_t n, int64_t i, int shared) {
    if (shared) { /* every lane reads the same dataset: broadcast */
        const float *src = inputs + ((int64_t)dataset[0] * n + i) * 400;
        for (int px = 0; px < 400; px++) LANES s->in[px][b] = src[px];
        LANES s->label[b] = labels[(int64_t)dataset[0] * n + i];
        return;
    }
    LANES {
        const float *src = inputs + ((int64_t)dataset[b] * n + i) * 400;
        for (int px = 0; px < 400; px++) s->in[px][b] = src[px];
        s->label[b] = labels[(int64_t)dataset[b] * n + i];
    }
}

static L(Scratch) *L(scratch)(const lv *k, const Setup *st) {
    L(Scratch) *s = zalloc(sizeof(L(Scratch)));
    if (!s) return NULL;
    memset(s, 0, sizeof *s);
    for (int u = 0; u < 12 * 144; u++) LANES s->x1[u][b] = -1.0f; /* "constant padding of -1" */
    LANES {
        s->SA[b] = st->relu ? 1.0f : k[C_S][b] / k[C_A][b];
        s->AA[b] = k[C_A][b] * k[C_A][b];
    }
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
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(| : failed)
    for (int blk = 0; blk < nblocks; blk++) {
        lv *w = (lv *)(params + (size_t)blk * N_PARAMS * BLK);
        const lv *k = (const lv *)(consts + (size_t)blk * N_CONSTS * BLK);
        const int32_t *ds = dataset + (size_t)blk * BLK;
        L(Scratch) *s = L(scratch)(k, st);
        lv *hp = st->optim == OPT_SDLM && st->running ? zalloc(sizeof(lv) * N_PARAMS) : NULL;
        if (!s || (st->optim == OPT_SDLM && st->running && !hp)) {
            failed = 1;
            free(s);
            free(hp);
            continue;
        }
        L(Opt) op;
        op.st1 = nstate ? state + (size_t)blk * nstate * N_PARAMS * BLK : NULL;
        op.st2 = nstate == 2 ? op.st1 + (size_t)N_PARAMS * BLK : NULL;
        const uint8_t *bits[BLK];
        const int drop = keep != NULL, shared = L(same)(ds);
        for (int64_t i = 0; i < n; i++) {
            L(load)(s, inputs, labels, ds, n, i, shared);
            if (drop) {
                LANES bits[b] = keep[(size_t)blk * BLK + b] + i * 24;
                L(dropout)(s, k, bits);
            }
            L(forward)((const lv *)w, k, st, table, s, drop);
            if (st->optim == OPT_SDLM && st->running) {
                /* h <- (1 - g) h + g h_pattern, then the step sizes eta / (mu + h) */
                L(curvature)((const lv *)w, k, st, table, s, drop, hp);
                lv *h = (lv *)op.st2, *eps = (lv *)op.st1;
                for (int idx = 0; idx < N_PARAMS; idx++) LANES {
                    const float g = k[C_DECAY][b];
                    h[idx][b] = h[idx][b] * (1.0f - g) + g * hp[idx][b];
                    eps[idx][b] = k[C_LR][b] / (k[C_MU][b] + h[idx][b]);
                }
            }
            if (st->optim == OPT_ADAMW) {
                const double t = (double)st->step + (double)i + 1.0;
                LANES {
                    op.lr_b1[b] = k[C_LR][b] / (1.0f - (float)pow((double)k[C_B1][b], t));
                    op.bc2[b] = 1.0f - (float)pow((double)k[C_B2][b], t);
                }
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
        const lv *w = (const lv *)(params + (size_t)blk * N_PARAMS * BLK);
        const lv *k = (const lv *)(consts + (size_t)blk * N_CONSTS * BLK);
        lv *sum = (lv *)(hsum + (size_t)blk * N_PARAMS * BLK);
        const int32_t *ds = dataset + (size_t)blk * BLK;
        L(Scratch) *s = L(scratch)(k, st);
        lv *hp = zalloc(sizeof(lv) * N_PARAMS);
        if (!s || !hp) {
            failed = 1;
            free(s);
            free(hp);
            continue;
        }
        const int shared = L(same)(ds);
        for (int idx = 0; idx < N_PARAMS; idx++) LANES sum[idx][b] = 0.0f;
        for (int j = 0; j < nsample; j++) {
            L(load)(s, inputs, labels, ds, n, sample[j], shared);
            L(forward)(w, k, st, table, s, 0);
            L(curvature)(w, k, st, table, s, 0, hp);
            for (int idx = 0; idx < N_PARAMS; idx++) LANES sum[idx][b] = sum[idx][b] + hp[idx][b];
        }
        free(hp);
        free(s);
    }
    return failed ? -1 : 0;
}

#undef APPLY
#undef lv
#undef LANES
#undef L
#undef BLK

#elif ZN_PART == 2
/* ===================== eval: examples in SIMD lanes ===================== */
/* Same forward arithmetic as the lanes path, per example (tests check both paths agree). */
#define ET 16
#define EX for (int e = 0; e < ET; e++)
typedef float ev[ET];

typedef struct {
    ev in[400];
    ev x1[12 * 144];
    ev x2[192];
    ev x3[32];
    ev y[10];
} ETile;

static inline void eact(float *restrict x, const float *restrict a, float A, float S, int relu) {
    if (relu)
        EX x[e] = a[e] > 0.0f ? a[e] : 0.0f;
    else
        EX x[e] = A * ztanh(S * a[e]);
}

static void eval_forward(const float *restrict w, const float *restrict k, const Setup *st,
                         const signed char *restrict table, ETile *restrict s) {
    const int relu = st->relu;
    const float A = k[C_A], S = k[C_S];
    for (int m = 0; m < 12; m++)
        for (int oy = 0; oy < 8; oy++) {
            ev a[8];
            for (int ox = 0; ox < 8; ox++) EX a[ox][e] = w[O_H1B + m * 64 + oy * 8 + ox];
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float wk = w[O_H1W + m * 25 + ky * 5 + kx];
                    for (int ox = 0; ox < 8; ox++) {
                        const float *x = s->in[(2 * oy + ky) * 20 + 2 * ox + kx];
                        EX a[ox][e] = fmaf(wk, x[e], a[ox][e]);
                    }
                }
            for (int ox = 0; ox < 8; ox++) eact(s->x1[m * 144 + (oy + 2) * 12 + ox + 2], a[ox], A, S, relu);
        }
    for (int o = 0; o < 12; o++) {
        ev a[16];
        for (int p = 0; p < 16; p++) EX a[p][e] = w[O_H2B + o * 16 + p];
        for (int i = 0; i < 12; i++) {
            if (!table[o * 12 + i]) continue;
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float wk = w[O_H2W + o * 300 + i * 25 + ky * 5 + kx];
                    for (int oy = 0; oy < 4; oy++)
                        for (int ox = 0; ox < 4; ox++) {
                            const float *x = s->x1[i * 144 + (2 * oy + ky) * 12 + 2 * ox + kx];
                            EX a[oy * 4 + ox][e] = fmaf(wk, x[e], a[oy * 4 + ox][e]);
                        }
                }
        }
        for (int p = 0; p < 16; p++) eact(s->x2[o * 16 + p], a[p], A, S, relu);
    }
    for (int h0 = 0; h0 < 30; h0 += 3) {
        ev a[3][4];
        for (int t = 0; t < 3; t++)
            for (int r = 0; r < 4; r++) EX a[t][r][e] = 0.0f;
        for (int q = 0; q < 192; q += 4)
            for (int r = 0; r < 4; r++) {
                const float *x = s->x2[q + r];
                for (int t = 0; t < 3; t++) {
                    const float wk = w[O_H3W + (h0 + t) * 192 + q + r];
                    EX a[t][r][e] = fmaf(wk, x[e], a[t][r][e]);
                }
            }
        for (int t = 0; t < 3; t++) {
            ev sum;
            EX sum[e] = w[O_H3B + h0 + t] + ((a[t][0][e] + a[t][1][e]) + (a[t][2][e] + a[t][3][e]));
            eact(s->x3[h0 + t], sum, A, S, relu);
        }
    }
    ev a[10];
    for (int j = 0; j < 10; j++) EX a[j][e] = w[O_OUTB + j];
    for (int h = 0; h < 30; h++)
        for (int j = 0; j < 10; j++) {
            const float wk = w[O_OUTW + j * 30 + h];
            EX a[j][e] = fmaf(wk, s->x3[h][e], a[j][e]);
        }
    for (int j = 0; j < 10; j++) {
        if (st->linear_out)
            EX s->y[j][e] = a[j][e];
        else
            EX s->y[j][e] = A * ztanh(S * a[j][e]);
    }
}

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
    const float *inputs;   /* (D, n, 400) with the -1 border */
    const int32_t *labels; /* (D, n) */
    int64_t n;
    double *loss_sum;      /* (K,) out: per-example loss terms summed in example order, in double */
    int32_t *misses;       /* (K,) out */
    float *outputs;        /* (K, n, 10) out, or NULL */
} Split;

/* The loss term and hit of tile example e (member constants k). */
static inline float eval_term(const ETile *restrict s, const float *restrict k, const Setup *st, int e, int label,
                              uint8_t *hit) {
    float best = s->y[0][e];
    int arg = 0;
    for (int j = 1; j < 10; j++) /* the first maximum, NaN counting as the largest (torch.argmax) */
        if (s->y[j][e] > best || (s->y[j][e] != s->y[j][e] && best == best)) {
            best = s->y[j][e];
            arg = j;
        }
    *hit = arg == label;
    if (st->cross_entropy) { /* -log softmax(y)[label] = log sum exp(y - max) - (y_label - max) */
        float sum = zexp(s->y[0][e] - best);
        for (int j = 1; j < 10; j++) sum = sum + zexp(s->y[j][e] - best);
        return zlog(sum) - (s->y[label][e] - best);
    }
    float term = 0.0f; /* sum over outputs of (y - t)^2; the mean divides by 10 n */
    for (int j = 0; j < 10; j++) {
        const float diff = s->y[j][e] - (j == label ? k[C_POS] : k[C_NEG]);
        term = fmaf(diff, diff, term);
    }
    return term;
}

/* Train and test (or any splits) in one call: every member on its own dataset. params (K, N_PARAMS),
 * consts (K, N_CONSTS), dataset (K,) index into each split's D datasets. Returns 0, or -1 if out of memory. */
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
        ETile *s = zalloc(sizeof(ETile));
        if (!s) failed = 1;
        if (s)
            for (int u = 0; u < 12 * 144; u++) EX s->x1[u][e] = -1.0f; /* "constant padding of -1" */
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
            const float *src = x->inputs + (d * x->n + lo) * 400;
            const int32_t *lab = x->labels + d * x->n + lo;
            for (int px = 0; px < 400; px++) EX s->in[px][e] = src[(e < cnt ? e : 0) * 400 + px];
            for (int km = 0; km < K; km++) {
                if (dataset[km] != d) continue;
                const float *k = consts + (size_t)km * N_CONSTS;
                eval_forward(params + (size_t)km * N_PARAMS, k, st, table, s);
                float *term = terms + (size_t)km * total + base + lo;
                uint8_t *hit = hits + (size_t)km * total + base + lo;
                for (int e = 0; e < cnt; e++) term[e] = eval_term(s, k, st, e, lab[e], hit + e);
                if (x->outputs)
                    for (int e = 0; e < cnt; e++)
                        for (int j = 0; j < 10; j++) x->outputs[((size_t)km * x->n + lo + e) * 10 + j] = s->y[j][e];
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
#undef EX
#undef ET

#elif ZN_PART == 3
/* ===================== one member, vectorised across its units ===================== */
/* The canonical step again, for one member (the paper's SGD, MSE and squashing units), with
 * each vector across outputs (units, positions, taps) so every sum keeps its canonical order.
 * Units of H1 are also kept by parity class: the interior unit (oy, ox) is lane
 * (oy/2)*4 + ox/2 of class (oy%2)*2 + ox%2, so each H2 tap (ky, kx) reaches one class. */
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));

typedef struct {
    float P[25][64];       /* input taps per H1 unit: P[k][u] */
    float PT[64][32];      /* the same per unit: PT[u][k] */
    float x1[12][144];     /* H1 maps with the -1 border */
    float x1c[12][4][16];  /* H1 interior by parity class */
    float f2[12][25][16];  /* H2 fields: f2[i][k][p] */
    float f2T[12][16][32]; /* the same per position: f2T[i][p][k] */
    float x2[192], x3[32], y[16];
    float W3T[192][32];    /* H3w transposed (h padded to 32), updated in step with H3w */
    float outT[32][16];    /* outw transposed (j padded to 16), likewise */
    float d4[16], d3[32], d2[192];
    v16 D[12][3][3];       /* d2 of map o moved onto the interior classes by tap (ky/2, kx/2); 0 outside */
    v16 e1c[12][4];
    float l1[12][64];
    float l2[12][16];
} One;

static i16v one_shift[3][3]; /* lane -> lane of the 4x4 d2 map, or 16 (a zero) */
static int one_unit_class[64], one_unit_lane[64];

static void one_tables(void) {
    for (int dy = 0; dy < 3; dy++)
        for (int dx = 0; dx < 3; dx++)
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++) {
                    const int oy = a + 1 - dy, ox = b + 1 - dx;
                    one_shift[dy][dx][a * 4 + b] = oy >= 0 && oy < 4 && ox >= 0 && ox < 4 ? oy * 4 + ox : 16;
                }
    for (int u = 0; u < 64; u++) {
        const int oy = u / 8, ox = u % 8;
        one_unit_class[u] = (oy & 1) * 2 + (ox & 1);
        one_unit_lane[u] = (oy >> 1) * 4 + (ox >> 1);
    }
}

static void one_begin(One *s, const float *w) {
    for (int u = 0; u < 12 * 144; u++) (&s->x1[0][0])[u] = -1.0f; /* "constant padding of -1" */
    memset(s->W3T, 0, sizeof s->W3T);
    memset(s->outT, 0, sizeof s->outT);
    for (int h = 0; h < 30; h++)
        for (int q = 0; q < 192; q++) s->W3T[q][h] = w[O_H3W + h * 192 + q];
    for (int j = 0; j < 10; j++)
        for (int h = 0; h < 30; h++) s->outT[h][j] = w[O_OUTW + j * 30 + h];
    memset(s->PT, 0, sizeof s->PT);
    memset(s->f2T, 0, sizeof s->f2T);
}

static void one_forward(const float *restrict w, float A, float S, const signed char *restrict table,
                        const float *restrict in, One *restrict s) {
    for (int k = 0; k < 25; k++)
        for (int u = 0; u < 64; u++) {
            const float v = in[(2 * (u / 8) + k / 5) * 20 + 2 * (u % 8) + k % 5];
            s->P[k][u] = v;
            s->PT[u][k] = v;
        }
    for (int m = 0; m < 12; m += 2) {
        float a[2][64];
        for (int t = 0; t < 2; t++)
            for (int u = 0; u < 64; u++) a[t][u] = w[O_H1B + (m + t) * 64 + u];
        for (int k = 0; k < 25; k++)
            for (int t = 0; t < 2; t++) {
                const float wk = w[O_H1W + (m + t) * 25 + k];
                for (int u = 0; u < 64; u++) a[t][u] = fmaf(wk, s->P[k][u], a[t][u]);
            }
        for (int t = 0; t < 2; t++)
            for (int u = 0; u < 64; u++) {
                const float x = A * ztanh(S * a[t][u]);
                s->x1[m + t][(u / 8 + 2) * 12 + u % 8 + 2] = x;
                s->x1c[m + t][one_unit_class[u]][one_unit_lane[u]] = x;
            }
    }
    for (int i = 0; i < 12; i++)
        for (int k = 0; k < 25; k++)
            for (int p = 0; p < 16; p++) {
                const float v = s->x1[i][(2 * (p / 4) + k / 5) * 12 + 2 * (p % 4) + k % 5];
                s->f2[i][k][p] = v;
                s->f2T[i][p][k] = v;
            }
    for (int o = 0; o < 12; o += 4) {
        float a[4][16];
        for (int t = 0; t < 4; t++)
            for (int p = 0; p < 16; p++) a[t][p] = w[O_H2B + (o + t) * 16 + p];
        for (int i = 0; i < 12; i++) {
            int any = 0;
            for (int t = 0; t < 4; t++) any |= table[(o + t) * 12 + i];
            if (!any) continue;
            /* unlinked pairs have zero weights: adding 0 x leaves every sum exactly as it was */
            for (int k = 0; k < 25; k++)
                for (int t = 0; t < 4; t++) {
                    const float wk = w[O_H2W + (o + t) * 300 + i * 25 + k];
                    for (int p = 0; p < 16; p++) a[t][p] = fmaf(wk, s->f2[i][k][p], a[t][p]);
                }
        }
        for (int t = 0; t < 4; t++)
            for (int p = 0; p < 16; p++) s->x2[(o + t) * 16 + p] = A * ztanh(S * a[t][p]);
    }
    {
        float a[4][32];
        memset(a, 0, sizeof a);
        for (int q = 0; q < 192; q++) {
            const float x = s->x2[q];
            for (int h = 0; h < 32; h++) a[q & 3][h] = fmaf(s->W3T[q][h], x, a[q & 3][h]);
        }
        for (int h = 0; h < 30; h++) s->x3[h] = A * ztanh(S * (w[O_H3B + h] + ((a[0][h] + a[1][h]) + (a[2][h] + a[3][h]))));
        s->x3[30] = s->x3[31] = 0.0f;
    }
    {
        float a[16];
        for (int j = 0; j < 16; j++) a[j] = j < 10 ? w[O_OUTB + j] : 0.0f;
        for (int h = 0; h < 30; h++) {
            const float x = s->x3[h];
            for (int j = 0; j < 16; j++) a[j] = fmaf(s->outT[h][j], x, a[j]);
        }
        for (int j = 0; j < 16; j++) s->y[j] = A * ztanh(S * a[j]);
    }
}

static void one_backward(float *restrict w, const float *restrict k, const signed char *restrict table,
                         int label, One *restrict s) {
    const float A = k[C_A], S = k[C_S], c = k[C_C], lr = k[C_LR];
    const float SA = S / A, AA = A * A;
    for (int j = 0; j < 16; j++) {
        const float y = s->y[j], t = j == label ? k[C_POS] : k[C_NEG];
        s->d4[j] = j < 10 ? (c * (y - t)) * (SA * (AA - y * y)) : 0.0f;
    }
    {
        float g[32];
        for (int h = 0; h < 32; h++) g[h] = 0.0f;
        for (int j = 0; j < 10; j++)
            for (int h = 0; h < 30; h++) g[h] = fmaf(w[O_OUTW + j * 30 + h], s->d4[j], g[h]);
        for (int h = 0; h < 32; h++) s->d3[h] = h < 30 ? g[h] * (SA * (AA - s->x3[h] * s->x3[h])) : 0.0f;
    }
    for (int j = 0; j < 10; j++) {
        const float nl = -(lr * s->d4[j]);
        for (int h = 0; h < 30; h++) w[O_OUTW + j * 30 + h] = fmaf(nl, s->x3[h], w[O_OUTW + j * 30 + h]);
        w[O_OUTB + j] = w[O_OUTB + j] + nl;
    }
    {
        float nl[16];
        for (int j = 0; j < 16; j++) nl[j] = -(lr * s->d4[j]);
        for (int h = 0; h < 30; h++)
            for (int j = 0; j < 16; j++) s->outT[h][j] = fmaf(nl[j], s->x3[h], s->outT[h][j]);
    }
    {
        float g[192];
        for (int q = 0; q < 192; q++) g[q] = 0.0f;
        for (int h = 0; h < 30; h++) {
            const float d = s->d3[h];
            for (int q = 0; q < 192; q++) g[q] = fmaf(w[O_H3W + h * 192 + q], d, g[q]);
        }
        for (int q = 0; q < 192; q++) s->d2[q] = g[q] * (SA * (AA - s->x2[q] * s->x2[q]));
    }
    {
        float nl[32];
        for (int h = 0; h < 32; h++) nl[h] = -(lr * s->d3[h]);
        for (int h = 0; h < 30; h++) {
            for (int q = 0; q < 192; q++) w[O_H3W + h * 192 + q] = fmaf(nl[h], s->x2[q], w[O_H3W + h * 192 + q]);
            w[O_H3B + h] = w[O_H3B + h] + nl[h];
        }
        for (int q = 0; q < 192; q++) {
            const float x = s->x2[q];
            for (int h = 0; h < 32; h++) s->W3T[q][h] = fmaf(nl[h], x, s->W3T[q][h]);
        }
    }
    /* e1 by parity class, with the old H2 weights */
    const v16 zero = {0};
    for (int o = 0; o < 12; o++) {
        v16 d;
        memcpy(&d, &s->d2[o * 16], sizeof d);
        for (int dy = 0; dy < 3; dy++)
            for (int dx = 0; dx < 3; dx++) s->D[o][dy][dx] = __builtin_shuffle(d, zero, one_shift[dy][dx]);
    }
    for (int i = 0; i < 12; i++) {
        v16 acc[4] = {zero, zero, zero, zero};
        for (int o = 0; o < 12; o++) {
            if (!table[o * 12 + i]) continue;
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float wk = w[O_H2W + o * 300 + i * 25 + ky * 5 + kx];
                    v16 *a = &acc[(ky & 1) * 2 + (kx & 1)];
                    const v16 dv = s->D[o][ky >> 1][kx >> 1];
                    for (int l = 0; l < 16; l++) (*a)[l] = fmaf(wk, dv[l], (*a)[l]);
                }
        }
        for (int c = 0; c < 4; c++) s->e1c[i][c] = acc[c];
    }
    /* H2: the update summed over positions, in position order */
    for (int o = 0; o < 12; o++)
        for (int p = 0; p < 16; p++) {
            s->l2[o][p] = lr * s->d2[o * 16 + p];
            w[O_H2B + o * 16 + p] = w[O_H2B + o * 16 + p] - s->l2[o][p];
        }
    for (int i = 0; i < 12; i++)
        for (int o = 0; o < 12; o++) {
            if (!table[o * 12 + i]) continue;
            float g[32];
            for (int r = 0; r < 32; r++) g[r] = 0.0f;
            for (int p = 0; p < 16; p++) {
                const float l = s->l2[o][p];
                for (int r = 0; r < 32; r++) g[r] = fmaf(l, s->f2T[i][p][r], g[r]);
            }
            float *wk = w + O_H2W + o * 300 + i * 25;
            for (int r = 0; r < 25; r++) wk[r] = wk[r] - g[r];
        }
    /* H1 */
    for (int m = 0; m < 12; m++)
        for (int u = 0; u < 64; u++) {
            const float x = s->x1c[m][one_unit_class[u]][one_unit_lane[u]];
            const float d = s->e1c[m][one_unit_class[u]][one_unit_lane[u]] * (SA * (AA - x * x));
            s->l1[m][u] = lr * d;
            w[O_H1B + m * 64 + u] = w[O_H1B + m * 64 + u] - s->l1[m][u];
        }
    for (int m = 0; m < 12; m += 4) {
        float g[4][32];
        memset(g, 0, sizeof g);
        for (int u = 0; u < 64; u++)
            for (int t = 0; t < 4; t++) {
                const float l = s->l1[m + t][u];
                for (int r = 0; r < 32; r++) g[t][r] = fmaf(l, s->PT[u][r], g[t][r]);
            }
        for (int t = 0; t < 4; t++)
            for (int r = 0; r < 25; r++) w[O_H1W + (m + t) * 25 + r] = w[O_H1W + (m + t) * 25 + r] - g[t][r];
    }
}

/* A pass for each of K members on its own: params (K, N_PARAMS), consts (K, N_CONSTS),
 * members spread over threads. The paper's net with SGD and the MSE only. */
int zn_train_one(float *params, const float *consts, int K, const signed char *table, const float *inputs,
                 const int32_t *labels, const int32_t *dataset, int64_t n, int nthreads) {
    static int ready = 0;
    if (!ready) {
#pragma omp critical(zn_one_tables)
        {
            if (!ready) one_tables();
            ready = 1;
        }
    }
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
        one_begin(s, w);
        for (int64_t i = 0; i < n; i++) {
            const int64_t at = (int64_t)dataset[km] * n + i;
            one_forward(w, k[C_A], k[C_S], table, inputs + at * 400, s);
            one_backward(w, k, table, labels[at], s);
        }
        free(s);
    }
    return failed ? -1 : 0;
}


/* ===================== exported entry points ===================== */
int zn_lanes(int blk) { return blk == 8 || blk == 16 || blk == 32; }

int zn_train_lanes(int blk, float *params, const float *consts, float *state, int nblocks, const Setup *st,
                   const signed char *table, const float *inputs, const int32_t *labels, const int32_t *dataset,
                   int64_t n, const uint8_t *const *keep, int nthreads) {
    switch (blk) {
    case 8: return train_8(params, consts, state, nblocks, st, table, inputs, labels, dataset, n, keep, nthreads);
    case 16: return train_16(params, consts, state, nblocks, st, table, inputs, labels, dataset, n, keep, nthreads);
    case 32: return train_32(params, consts, state, nblocks, st, table, inputs, labels, dataset, n, keep, nthreads);
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
    case 32:
        return curvature_sum_32(params, consts, hsum, nblocks, st, table, inputs, labels, dataset, n, sample, nsample,
                                nthreads);
    }
    return -2;
}
#endif /* ZN_PART == 3 */
#endif /* ZN_PART */
