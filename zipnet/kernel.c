/* The population step of the 1989 net for the CPU, members in SIMD lanes.
 *
 * Members are packed in blocks of BLK (a compile-time constant). Inside a block every
 * array is laid out [index][BLK], so each inner loop runs across members: the same
 * arithmetic for every lane, vectorised by the compiler, and a member's numbers never
 * depend on which other members share its block. Blocks run on separate threads; one
 * call trains a whole pass ("the weights were updated after each pattern presentation").
 *
 * Parameter block layout (offsets in units of BLK floats), as in net.py:
 *   H1w 12x25 | H1b 12x64 | H2w 12x12x25 | H2b 12x16 | H3w 30x192 | H3b 30 | outw 10x30 | outb 10
 * Per-member constants: A, S, c, lr, target_negative, target_positive (f(a) = A tanh(S a)).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef BLK
#define BLK 16
#endif

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
enum { C_A, C_S, C_C, C_LR, C_NEG, C_POS, N_CONSTS };

int zn_blk(void) { return BLK; }
int zn_nparams(void) { return N_PARAMS; }

/* tanh from exp(-2|x|) = 2^n p(r): a branch-free form the compiler vectorises.
 * Absolute error below 1e-7 over the whole range. */
static inline float ztanh(float x) {
    float ax = fabsf(x);
    ax = ax > 9.0f ? 9.0f : ax; /* NaN stays NaN, so a diverging member shows it */
    float t = -2.0f * ax;
    float n = rintf(t * 1.44269504088896341f);
    float r = t - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float e = p * scale;
    float th = (1.0f - e) / (1.0f + e);
    return copysignf(th, x);
}

typedef struct {
    float x1[12 * 144][BLK]; /* H1 maps with the -1 border, 12x12 each */
    float x2[192][BLK];
    float x3[30][BLK];
    float y[10][BLK];
    float d1[12 * 144][BLK]; /* dE/dx at H1 (border included, never used) */
    float d2[192][BLK];
    float d3[30][BLK];
    float d4[10][BLK];
} Scratch;

#define LANES for (int b = 0; b < BLK; b++)

/* The loops below keep several independent accumulators ("register tiles") so that the
 * vector FMAs do not wait on each other; each tile is a few [BLK] vectors. */
static void forward(const float (*restrict w)[BLK], const float (*restrict k)[BLK], const signed char *restrict table,
                    const float *restrict in /* 20x20, border -1 */, Scratch *restrict s) {
    const float *A = k[C_A], *S = k[C_S];
    for (int m = 0; m < 12; m++)
        for (int oy = 0; oy < 8; oy++) {
            float a[8][BLK];
            for (int ox = 0; ox < 8; ox++) LANES a[ox][b] = w[O_H1B + m * 64 + oy * 8 + ox][b];
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float *wk = w[O_H1W + m * 25 + ky * 5 + kx];
                    const float *row = in + (2 * oy + ky) * 20 + kx;
                    for (int ox = 0; ox < 8; ox++) {
                        const float v = row[2 * ox];
                        LANES a[ox][b] += wk[b] * v;
                    }
                }
            for (int ox = 0; ox < 8; ox++) {
                float *x = s->x1[m * 144 + (oy + 2) * 12 + ox + 2];
                LANES x[b] = A[b] * ztanh(S[b] * a[ox][b]);
            }
        }
    for (int o = 0; o < 12; o++) {
        float a[16][BLK];
        for (int p = 0; p < 16; p++) LANES a[p][b] = w[O_H2B + o * 16 + p][b];
        for (int i = 0; i < 12; i++) {
            if (!table[o * 12 + i]) continue;
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float *wk = w[O_H2W + (o * 12 + i) * 25 + ky * 5 + kx];
                    for (int oy = 0; oy < 4; oy++)
                        for (int ox = 0; ox < 4; ox++) {
                            const float *x = s->x1[i * 144 + (2 * oy + ky) * 12 + 2 * ox + kx];
                            LANES a[oy * 4 + ox][b] += wk[b] * x[b];
                        }
                }
        }
        for (int p = 0; p < 16; p++) LANES s->x2[o * 16 + p][b] = A[b] * ztanh(S[b] * a[p][b]);
    }
    for (int h0 = 0; h0 < 30; h0 += 6) {
        float a[6][BLK];
        for (int t = 0; t < 6; t++) LANES a[t][b] = w[O_H3B + h0 + t][b];
        for (int q = 0; q < 192; q++) {
            const float *x = s->x2[q];
            for (int t = 0; t < 6; t++) {
                const float *wk = w[O_H3W + (h0 + t) * 192 + q];
                LANES a[t][b] += wk[b] * x[b];
            }
        }
        for (int t = 0; t < 6; t++) LANES s->x3[h0 + t][b] = A[b] * ztanh(S[b] * a[t][b]);
    }
    {
        float a[10][BLK];
        for (int j = 0; j < 10; j++) LANES a[j][b] = w[O_OUTB + j][b];
        for (int h = 0; h < 30; h++) {
            const float *x = s->x3[h];
            for (int j = 0; j < 10; j++) {
                const float *wk = w[O_OUTW + j * 30 + h];
                LANES a[j][b] += wk[b] * x[b];
            }
        }
        for (int j = 0; j < 10; j++) LANES s->y[j][b] = A[b] * ztanh(S[b] * a[j][b]);
    }
}

/* f'(a) from x = f(a): (S/A)(A^2 - x^2) */
#define FPRIME(x) ((S[b] / A[b]) * (A[b] * A[b] - (x) * (x)))

/* Backprop for E = (c/2) sum (d - y)^2, then w <- w - lr dE/dw; each layer's weights are
 * used for backprop before they are updated. Nothing flows into the -1 border. */
static void backward_update(float (*restrict w)[BLK], const float (*restrict k)[BLK], const signed char *restrict table,
                            const float *restrict in, int label, Scratch *restrict s) {
    const float *A = k[C_A], *S = k[C_S], *c = k[C_C], *lr = k[C_LR], *neg = k[C_NEG], *pos = k[C_POS];
    for (int j = 0; j < 10; j++) {
        const float *y = s->y[j];
        float *d = s->d4[j];
        LANES {
            const float t = j == label ? pos[b] : neg[b];
            d[b] = c[b] * (y[b] - t) * FPRIME(y[b]);
        }
    }
    for (int h0 = 0; h0 < 30; h0 += 10) {
        float g[10][BLK];
        for (int t = 0; t < 10; t++) LANES g[t][b] = 0.0f;
        for (int j = 0; j < 10; j++) {
            const float *d = s->d4[j];
            for (int t = 0; t < 10; t++) {
                const float *wk = w[O_OUTW + j * 30 + h0 + t];
                LANES g[t][b] += wk[b] * d[b];
            }
        }
        for (int t = 0; t < 10; t++) LANES s->d3[h0 + t][b] = g[t][b] * FPRIME(s->x3[h0 + t][b]);
    }
    for (int j = 0; j < 10; j++) {
        float ld[BLK];
        LANES ld[b] = lr[b] * s->d4[j][b];
        for (int h = 0; h < 30; h++) {
            float *wk = w[O_OUTW + j * 30 + h];
            LANES wk[b] -= ld[b] * s->x3[h][b];
        }
        LANES w[O_OUTB + j][b] -= ld[b];
    }
    for (int q0 = 0; q0 < 192; q0 += 8) {
        float g[8][BLK];
        for (int t = 0; t < 8; t++) LANES g[t][b] = 0.0f;
        for (int h = 0; h < 30; h++) {
            const float *d = s->d3[h];
            for (int t = 0; t < 8; t++) {
                const float *wk = w[O_H3W + h * 192 + q0 + t];
                LANES g[t][b] += wk[b] * d[b];
            }
        }
        for (int t = 0; t < 8; t++) LANES s->d2[q0 + t][b] = g[t][b] * FPRIME(s->x2[q0 + t][b]);
    }
    for (int h = 0; h < 30; h++) {
        float ld[BLK];
        LANES ld[b] = lr[b] * s->d3[h][b];
        for (int q = 0; q < 192; q++) {
            float *wk = w[O_H3W + h * 192 + q];
            LANES wk[b] -= ld[b] * s->x2[q][b];
        }
        LANES w[O_H3B + h][b] -= ld[b];
    }
    /* H2: dE/dx1 with the old weights, one H1 map at a time, then the update */
    for (int i = 0; i < 12; i++) {
        float (*g)[BLK] = s->d1 + i * 144;
        memset(g, 0, 144 * sizeof *g);
        for (int o = 0; o < 12; o++) {
            if (!table[o * 12 + i]) continue;
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) {
                    const float *wk = w[O_H2W + (o * 12 + i) * 25 + ky * 5 + kx];
                    for (int oy = 0; oy < 4; oy++)
                        for (int ox = 0; ox < 4; ox++) {
                            const float *d = s->d2[o * 16 + oy * 4 + ox];
                            float *gu = g[(2 * oy + ky) * 12 + 2 * ox + kx];
                            LANES gu[b] += wk[b] * d[b];
                        }
                }
        }
    }
    for (int o = 0; o < 12; o++) {
        float ld[16][BLK];
        for (int p = 0; p < 16; p++) {
            LANES ld[p][b] = lr[b] * s->d2[o * 16 + p][b];
            LANES w[O_H2B + o * 16 + p][b] -= ld[p][b];
        }
        for (int i = 0; i < 12; i++) {
            if (!table[o * 12 + i]) continue;
            for (int ky = 0; ky < 5; ky++) {
                float g[5][BLK];
                for (int kx = 0; kx < 5; kx++) LANES g[kx][b] = 0.0f;
                for (int oy = 0; oy < 4; oy++)
                    for (int ox = 0; ox < 4; ox++) {
                        const float *l = ld[oy * 4 + ox];
                        for (int kx = 0; kx < 5; kx++) {
                            const float *x = s->x1[i * 144 + (2 * oy + ky) * 12 + 2 * ox + kx];
                            LANES g[kx][b] += l[b] * x[b];
                        }
                    }
                for (int kx = 0; kx < 5; kx++) {
                    float *wk = w[O_H2W + (o * 12 + i) * 25 + ky * 5 + kx];
                    LANES wk[b] -= g[kx][b];
                }
            }
        }
    }
    /* H1: deltas on the 8x8 interior, then the shared kernels and the per-unit biases */
    for (int m = 0; m < 12; m++) {
        float ld[64][BLK];
        for (int oy = 0; oy < 8; oy++)
            for (int ox = 0; ox < 8; ox++) {
                const int u = m * 144 + (oy + 2) * 12 + ox + 2;
                const float *x = s->x1[u];
                const float *g = s->d1[u];
                float *l = ld[oy * 8 + ox];
                LANES l[b] = lr[b] * g[b] * FPRIME(x[b]);
                LANES w[O_H1B + m * 64 + oy * 8 + ox][b] -= l[b];
            }
        for (int ky = 0; ky < 5; ky++) {
            float g[5][BLK];
            for (int kx = 0; kx < 5; kx++) LANES g[kx][b] = 0.0f;
            for (int oy = 0; oy < 8; oy++)
                for (int ox = 0; ox < 8; ox++) {
                    const float *l = ld[oy * 8 + ox];
                    const float *row = in + (2 * oy + ky) * 20 + 2 * ox;
                    for (int kx = 0; kx < 5; kx++) {
                        const float v = row[kx];
                        LANES g[kx][b] += l[b] * v;
                    }
                }
            for (int kx = 0; kx < 5; kx++) {
                float *wk = w[O_H1W + m * 25 + ky * 5 + kx];
                LANES wk[b] -= g[kx][b];
            }
        }
    }
}

static Scratch *new_scratch(void) {
    Scratch *s = aligned_alloc(64, (sizeof(Scratch) + 63) / 64 * 64);
    if (s)
        for (int u = 0; u < 12 * 144; u++) LANES s->x1[u][b] = -1.0f; /* "constant padding of -1" */
    return s;
}

/* One pass over n examples in the given order for every block of members. Returns 0, or -1 if out of memory. */
int zn_train_pass(float *params, const float *consts, int nblocks, const signed char *table, const float *inputs,
                  const int32_t *labels, int n, int nthreads) {
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        Scratch *s = new_scratch();
        failed = s == NULL;
#pragma omp for schedule(static)
        for (int blk = 0; blk < nblocks; blk++) {
            if (!s) continue;
            float (*w)[BLK] = (float (*)[BLK])(params + (size_t)blk * N_PARAMS * BLK);
            const float (*k)[BLK] = (const float (*)[BLK])(consts + (size_t)blk * N_CONSTS * BLK);
            for (int i = 0; i < n; i++) {
                forward((const float (*)[BLK])w, k, table, inputs + (size_t)i * 400, s);
                backward_update(w, k, table, inputs + (size_t)i * 400, labels[i], s);
            }
        }
        free(s);
    }
    return failed ? -1 : 0;
}

/* Outputs of every member for n examples: out is [nblocks][n][10][BLK]. Returns 0, or -1 if out of memory. */
int zn_forward(const float *params, const float *consts, int nblocks, const signed char *table, const float *inputs,
               int n, float *out, int nthreads) {
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        Scratch *s = new_scratch();
        failed = s == NULL;
#pragma omp for collapse(2) schedule(static)
        for (int blk = 0; blk < nblocks; blk++)
            for (int i = 0; i < n; i++) {
                if (!s) continue;
                const float (*w)[BLK] = (const float (*)[BLK])(params + (size_t)blk * N_PARAMS * BLK);
                const float (*k)[BLK] = (const float (*)[BLK])(consts + (size_t)blk * N_CONSTS * BLK);
                forward(w, k, table, inputs + (size_t)i * 400, s);
                memcpy(out + ((size_t)blk * n + i) * 10 * BLK, s->y, sizeof s->y);
            }
        free(s);
    }
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------
 * One member (a population of one): the same step, vectorised across units and positions
 * instead of members. Parameters in the block layout with BLK = 1 (plain per-member order).
 * Reductions keep 16 partial sums, so the sums (and the results) do not depend on the
 * compiler's vector width.
 */
#define PS 16

static inline float dot(const float *restrict a, const float *restrict b, int n) {
    float acc[PS] = {0};
    int i = 0;
    for (; i + PS <= n; i += PS)
        for (int j = 0; j < PS; j++) acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i + j < n; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (int j = 0; j < PS; j++) s += acc[j];
    return s;
}

typedef struct {
    float patch[25][64];  /* H1 receptive fields, [kernel offset][unit] */
    float x1[12][64];
    float x1pad[12][144]; /* H1 maps with the -1 border */
    float f2[16][300];    /* H2 receptive fields, [position][H1 map x 25] */
    float x2[12][16];
    float x3[32];
    float y[10];
    float d4[10], d3[32], d2[12][16], d1[12][64];
    float df2[16][300];   /* dE/d(field value), summed back onto H1 units */
    float g1pad[12][144];
    float mask[12][300];  /* 1 where the table links the H1 map */
} One;

static void one_fields(One *restrict s, const float *restrict in) {
    for (int ky = 0; ky < 5; ky++)
        for (int kx = 0; kx < 5; kx++)
            for (int oy = 0; oy < 8; oy++)
                for (int ox = 0; ox < 8; ox++) s->patch[ky * 5 + kx][oy * 8 + ox] = in[(2 * oy + ky) * 20 + 2 * ox + kx];
}

static void one_forward(const float *restrict w, float A, float S, One *restrict s) {
    for (int m = 0; m < 12; m++) {
        float a[64];
        for (int u = 0; u < 64; u++) a[u] = w[O_H1B + m * 64 + u];
        for (int k = 0; k < 25; k++) {
            const float wk = w[O_H1W + m * 25 + k];
            for (int u = 0; u < 64; u++) a[u] += wk * s->patch[k][u];
        }
        for (int u = 0; u < 64; u++) s->x1[m][u] = A * ztanh(S * a[u]);
        for (int oy = 0; oy < 8; oy++)
            for (int ox = 0; ox < 8; ox++) s->x1pad[m][(oy + 2) * 12 + ox + 2] = s->x1[m][oy * 8 + ox];
    }
    for (int p = 0; p < 16; p++) {
        const int oy = p / 4, ox = p % 4;
        for (int i = 0; i < 12; i++)
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) s->f2[p][i * 25 + ky * 5 + kx] = s->x1pad[i][(2 * oy + ky) * 12 + 2 * ox + kx];
    }
    for (int o = 0; o < 12; o++)
        for (int p = 0; p < 16; p++)
            s->x2[o][p] = A * ztanh(S * (w[O_H2B + o * 16 + p] + dot(w + O_H2W + o * 300, s->f2[p], 300)));
    for (int h = 0; h < 30; h++) s->x3[h] = A * ztanh(S * (w[O_H3B + h] + dot(w + O_H3W + h * 192, &s->x2[0][0], 192)));
    for (int j = 0; j < 10; j++) s->y[j] = A * ztanh(S * (w[O_OUTB + j] + dot(w + O_OUTW + j * 30, s->x3, 30)));
}

#define FP1(x) ((S / A) * (A * A - (x) * (x)))

static void one_backward_update(float *restrict w, const float *restrict k, int label, One *restrict s) {
    const float A = k[C_A], S = k[C_S], c = k[C_C], lr = k[C_LR];
    for (int j = 0; j < 10; j++) {
        const float t = j == label ? k[C_POS] : k[C_NEG];
        s->d4[j] = c * (s->y[j] - t) * FP1(s->y[j]);
    }
    float g3[32] = {0};
    for (int j = 0; j < 10; j++)
        for (int h = 0; h < 30; h++) g3[h] += w[O_OUTW + j * 30 + h] * s->d4[j];
    for (int h = 0; h < 30; h++) s->d3[h] = g3[h] * FP1(s->x3[h]);
    for (int j = 0; j < 10; j++) {
        const float l = lr * s->d4[j];
        for (int h = 0; h < 30; h++) w[O_OUTW + j * 30 + h] -= l * s->x3[h];
        w[O_OUTB + j] -= l;
    }
    float *d2 = &s->d2[0][0];
    const float *x2 = &s->x2[0][0];
    float g2[192] = {0};
    for (int h = 0; h < 30; h++)
        for (int q = 0; q < 192; q++) g2[q] += w[O_H3W + h * 192 + q] * s->d3[h];
    for (int q = 0; q < 192; q++) d2[q] = g2[q] * FP1(x2[q]);
    for (int h = 0; h < 30; h++) {
        const float l = lr * s->d3[h];
        for (int q = 0; q < 192; q++) w[O_H3W + h * 192 + q] -= l * x2[q];
        w[O_H3B + h] -= l;
    }
    /* H2: dE/d(fields) with the old weights, then the update (masked to the table) */
    memset(s->df2, 0, sizeof s->df2);
    for (int p = 0; p < 16; p++)
        for (int o = 0; o < 12; o++) {
            const float d = s->d2[o][p];
            for (int r = 0; r < 300; r++) s->df2[p][r] += w[O_H2W + o * 300 + r] * d;
        }
    for (int o = 0; o < 12; o++) {
        float g[300] = {0};
        for (int p = 0; p < 16; p++) {
            const float d = lr * s->d2[o][p];
            for (int r = 0; r < 300; r++) g[r] += d * s->f2[p][r];
            w[O_H2B + o * 16 + p] -= d;
        }
        for (int r = 0; r < 300; r++) w[O_H2W + o * 300 + r] -= g[r] * s->mask[o][r];
    }
    /* the fields back onto H1 units; nothing flows into the -1 border */
    memset(s->g1pad, 0, sizeof s->g1pad);
    for (int p = 0; p < 16; p++) {
        const int oy = p / 4, ox = p % 4;
        for (int i = 0; i < 12; i++)
            for (int ky = 0; ky < 5; ky++)
                for (int kx = 0; kx < 5; kx++) s->g1pad[i][(2 * oy + ky) * 12 + 2 * ox + kx] += s->df2[p][i * 25 + ky * 5 + kx];
    }
    for (int m = 0; m < 12; m++) {
        float l[64];
        for (int oy = 0; oy < 8; oy++)
            for (int ox = 0; ox < 8; ox++) {
                const int u = oy * 8 + ox;
                l[u] = lr * s->g1pad[m][(oy + 2) * 12 + ox + 2] * FP1(s->x1[m][u]);
            }
        for (int u = 0; u < 64; u++) w[O_H1B + m * 64 + u] -= l[u];
        for (int kk = 0; kk < 25; kk++) w[O_H1W + m * 25 + kk] -= dot(l, s->patch[kk], 64);
    }
}

/* One member, one pass over n examples in the given order. Returns 0, or -1 if out of memory. */
int zn_train_pass_one(float *params, const float *consts, const signed char *table, const float *inputs,
                      const int32_t *labels, int n) {
    One *s = aligned_alloc(64, (sizeof(One) + 63) / 64 * 64);
    if (!s) return -1;
    for (int i = 0; i < 12 * 144; i++) (&s->x1pad[0][0])[i] = -1.0f; /* "constant padding of -1" */
    for (int o = 0; o < 12; o++)
        for (int r = 0; r < 300; r++) s->mask[o][r] = table[o * 12 + r / 25] ? 1.0f : 0.0f;
    for (int i = 0; i < n; i++) {
        one_fields(s, inputs + (size_t)i * 400);
        one_forward(params, consts[C_A], consts[C_S], s);
        one_backward_update(params, consts, labels[i], s);
    }
    free(s);
    return 0;
}
