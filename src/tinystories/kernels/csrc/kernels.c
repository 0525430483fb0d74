/* Causal and sliding-window attention for small heads on a CPU, forward and backward.

   Why: with GPT-Neo's 16 heads of size 4 or 16, attention is a few FLOPs per score and one
   exp; library kernels spend their time on tiny matrix products and on moving the scores
   through memory. Here each query row's scores live in L1, keys and values are packed per
   head as [D][T] so every inner loop runs over keys and vectorizes, masked keys are never
   touched (a local layer reads only its window), and the backward pass recomputes the
   probabilities from the saved log-sum-exp (as flash attention does).

   Layout: qkv is [B, T, 3C] as the fused projection writes it (q, k, v, each C = H*D wide);
   y is [B, T, C]; lse is [B, H, T]; dqkv is [B, T, 3C]. Each call handles heads
   [bh_begin, bh_end) of the B*H, so that callers may split the work across threads. qkv, y, dy
   and dqkv are all fp32 or all bf16 (`bf`); lse and every sum are fp32.
   Build: cc -O3 -march=native -fno-math-errno -fno-trapping-math -fassociative-math
          -fno-signed-zeros -ffp-contract=fast -shared -fPIC
*/
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* exp(x) for x <= 0 (scores minus their row maximum): Cody-Waite reduction and a degree-6
   polynomial (Cephes' expf), written as straight-line arithmetic so that loops over it
   vectorize. Relative error about 1e-7; inputs below -87 give about 1e-38. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}



/* Activations arrive as fp32 or bf16 (`bf` set: bf16 autocast). bf16 is converted to fp32 in
   registers where a row is read (packing keys and values, loading queries) and rounded back where
   a result is written, so every product and sum below runs in fp32. A bf16 number is the top half
   of an fp32 one; the store rounds to nearest even and keeps NaN a NaN. */
static inline float ld(const void *p, size_t i, int bf) {
    if (!bf) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline void st(void *p, size_t i, float v, int bf) {
    if (!bf) { ((float *)p)[i] = v; return; }
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    u = (u & 0x7fffffffu) > 0x7f800000u ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);
    ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
}

static inline int first_key(int i, int window) {
    return (window > 0 && i - window + 1 > 0) ? i - window + 1 : 0;
}

/* Four query rows at a time: every key and value loaded serves four rows. A head's keys and
   values are packed [DP][TP] (DP = D rounded up to even, TP = T rounded up to VW, plus VW), zero-
   padded, so that loops run in whole vectors of VW keys; score rows hold zeros outside each row's
   keys, so the padding contributes nothing. */
#define R 4

/* VW floats in a vector register (GCC/clang vector extension). VW is 16 where the compiler targets
   AVX-512 (one zmm register), else 8 (one AVX ymm register; pairs of NEON/SSE registers elsewhere).
   Why 16: on a Zen 5 (full-width AVX-512) a 512-bit multiply-add does twice the work of a 256-bit
   one, and GCC already vectorizes the plain loops here (the exps) at 512 bits with -march=native;
   the block products, written with these types, were held at 256. Measured: README, "Attention at
   512 bits". */
#ifdef __AVX512F__
#define VW 16
#else
#define VW 8
#endif
typedef float vf __attribute__((vector_size(4 * VW)));
typedef int32_t vi __attribute__((vector_size(4 * VW)));
typedef uint32_t vu __attribute__((vector_size(4 * VW)));
typedef uint16_t vh __attribute__((vector_size(2 * VW)));
static inline int roundv(int n) { return (n + VW - 1) & ~(VW - 1); }
static inline vf ldv(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void stv(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* the lanes' sum: halves folded onto each other down to four, then (h0 + h1) + (h2 + h3) */
static inline float hsum(vf v) {
    float h[VW];
    memcpy(h, &v, sizeof h);
    for (int w = VW / 2; w >= 4; w /= 2)
        for (int k = 0; k < w; k++) h[k] += h[k + w];
    return (h[0] + h[1]) + (h[2] + h[3]);
}

/* VW consecutive activations (fp32 or bf16) as fp32 */
static inline vf ldvx(const void *p, size_t i, int bf) {
    if (!bf) return ldv((const float *)p + i);
    vh h;
    memcpy(&h, (const uint16_t *)p + i, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}

/* max(p[off], ..., p[off + n - 1]), n >= 1. A running maximum in a scalar loop is a chain of dependent
   compares, and GCC leaves it scalar unless told there are no NaNs (-ffinite-math-only, which we do not
   pass; -fopt-info-vec reports the loop not vectorized). Here: eight running maxima, one vector compare
   and blend. Measured on the 8M preset in bf16 (Zen 4, 2 threads): the attention forward went from
   21.6 to 18.8 ms a layer. */
static inline float max_run(const void *p, size_t off, int n, int bf) {
    vf mx;
    for (int k = 0; k < VW; k++) mx[k] = -INFINITY;
    int j = 0;
    for (; j + VW <= n; j += VW) {
        const vf v = ldvx(p, off + j, bf);
        const vi gt = v > mx;
        mx = (vf)(((vi)v & gt) | ((vi)mx & ~gt));
    }
    float m = mx[0];
    for (int k = 1; k < VW; k++) m = mx[k] > m ? mx[k] : m;
    for (; j < n; j++) {
        const float v = ld(p, off + j, bf);
        m = v > m ? v : m;
    }
    return m;
}

/* The three block products below are kept out of line (noinline): inlined into the OpenMP body of
   the forward and backward, GCC 12 ran out of registers there and kept the broadcast factors and the
   loaded rows of P on the stack (perf annotate), reloading them for every multiply-add. Out of line
   each gets the registers to itself: forward and backward 1.3-1.5x faster (batch 8 x 512, 16 heads of
   16 and of 48, bf16, Zen 4), the same results to the bit. */

/* S[r][j] = sum_d A[r][d] * M[d][j] for r < R, j < n (rounded up to VW); M offset to the first key */
static __attribute__((noinline))
void block_dot(float *restrict S, int ls, const float *restrict A, const float *restrict M, int D,
               int TP, int n) {
    for (int j = 0; j < n; j += VW) {
        vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int d = 0; d < D; d++) {
            const vf m = ldv(M + (size_t)d * TP + j);
            a0 += A[d] * m; a1 += A[D + d] * m; a2 += A[2 * D + d] * m; a3 += A[3 * D + d] * m;
        }
        stv(S + j, a0); stv(S + ls + j, a1); stv(S + 2 * ls + j, a2); stv(S + 3 * ls + j, a3);
    }
}

/* O[r][d] = sum_j P[r][j] * M[d][j] for r < R, d < D (even), j < n (rounded up to VW) */
static __attribute__((noinline))
void block_reduce(float *restrict O, const float *restrict P, int lp, const float *restrict M, int D,
                  int TP, int n) {
    for (int d = 0; d < D; d += 2) {
        const float *m0 = M + (size_t)d * TP, *m1 = m0 + TP;
        vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        for (int j = 0; j < n; j += VW) {
            const vf p0 = ldv(P + j), p1 = ldv(P + lp + j), p2 = ldv(P + 2 * lp + j), p3 = ldv(P + 3 * lp + j);
            const vf x = ldv(m0 + j), z = ldv(m1 + j);
            a0 += p0 * x; a1 += p1 * x; a2 += p2 * x; a3 += p3 * x;
            b0 += p0 * z; b1 += p1 * z; b2 += p2 * z; b3 += p3 * z;
        }
        O[d] = hsum(a0); O[D + d] = hsum(a1); O[2 * D + d] = hsum(a2); O[3 * D + d] = hsum(a3);
        O[d + 1] = hsum(b0); O[D + d + 1] = hsum(b1); O[2 * D + d + 1] = hsum(b2); O[3 * D + d + 1] = hsum(b3);
    }
}

/* M[d][j] += sum_r A[r][d] * P[r][j] for d < D (even), j < n (rounded up to VW) */
static __attribute__((noinline))
void block_outer(float *restrict M, int TP, const float *restrict A, const float *restrict P, int lp,
                 int D, int n) {
    for (int d = 0; d < D; d += 2) {
        float *m0 = M + (size_t)d * TP, *m1 = m0 + TP;
        const float x0 = A[d], x1 = A[D + d], x2 = A[2 * D + d], x3 = A[3 * D + d];
        const float z0 = A[d + 1], z1 = A[D + d + 1], z2 = A[2 * D + d + 1], z3 = A[3 * D + d + 1];
        for (int j = 0; j < n; j += VW) {
            const vf p0 = ldv(P + j), p1 = ldv(P + lp + j), p2 = ldv(P + 2 * lp + j), p3 = ldv(P + 3 * lp + j);
            stv(m0 + j, ldv(m0 + j) + x0 * p0 + x1 * p1 + x2 * p2 + x3 * p3);
            stv(m1 + j, ldv(m1 + j) + z0 * p0 + z1 * p1 + z2 * p2 + z3 * p3);
        }
    }
}


/* Rows of qkv (and of y, dy) lie 3C (C) elements apart, so every row a head reads is a new cache
   line, and the loads that read them waited on memory (perf: most of pack_kv's time sat on them).
   Ask for the rows AHEAD rows on: `count` rows of `len` elements, `stride` apart, from element
   `first` (a hint: no effect on the results). Measured on batch 8 x 512, 16 heads, bf16, Zen 4: the
   forward 1.25x faster at head size 16 and 48, the backward 1.13-1.19x. */
#define AHEAD 16
static inline void prefetch_rows(const void *p, size_t first, size_t stride, int count, int len, int bf) {
    const size_t es = bf ? 2 : 4, bytes = (size_t)len * es;
    for (int r = 0; r < count; r++) {
        const char *a = (const char *)p + (first + (size_t)r * stride) * es;
        for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(a + o);
        __builtin_prefetch(a + bytes - 1);
    }
}

/* pack this head's keys and values as [D][TP], zero-padded */
static void pack_kv(const void *qkv, size_t base, size_t rs, int C, int h, int D, int DP, int T, int TP, float *KT,
                    float *VT, int bf) {
    memset(KT, 0, sizeof(float) * (size_t)DP * TP);
    memset(VT, 0, sizeof(float) * (size_t)DP * TP);
    for (int t = 0; t < T; t++) {
        const size_t row = base + t * rs;
        if (t + AHEAD < T) {
            prefetch_rows(qkv, row + AHEAD * rs + C + h * D, rs, 1, D, bf);      /* its key */
            prefetch_rows(qkv, row + AHEAD * rs + 2 * C + h * D, rs, 1, D, bf);  /* its value */
        }
        for (int d = 0; d < D; d++) {
            KT[(size_t)d * TP + t] = ld(qkv, row + C + h * D + d, bf);
            VT[(size_t)d * TP + t] = ld(qkv, row + 2 * C + h * D + d, bf);
        }
    }
}

static int forward_range(const void *qkv, void *y, float *lse, int T, int H, int D, int window, float scale,
                         int bh_begin, int bh_end, int bf) {
    const int C = H * D, DP = D + (D & 1), TP = roundv(T) + VW;
    const size_t rs = (size_t)3 * C;
    float *buf = calloc((size_t)2 * DP * TP + (size_t)R * TP + 2 * R * DP, sizeof(float));
    if (!buf) return -1;
    float *KT = buf, *VT = KT + (size_t)DP * TP, *S = VT + (size_t)DP * TP, *Q = S + (size_t)R * TP, *O = Q + R * DP;
    for (int bh = bh_begin; bh < bh_end; bh++) {
        const int b = bh / H, h = bh % H;
        const size_t base = (size_t)b * T * rs;
        pack_kv(qkv, base, rs, C, h, D, DP, T, TP, KT, VT, bf);
        for (int i0 = 0; i0 < T; i0 += R) {
            const int rows = T - i0 < R ? T - i0 : R;
            const int lo = first_key(i0, window), n = roundv(i0 + rows - lo);
            if (i0 + AHEAD + R <= T) {
                prefetch_rows(qkv, base + (size_t)(i0 + AHEAD) * rs + h * D, rs, R, D, bf);
                prefetch_rows(y, ((size_t)b * T + i0 + AHEAD) * C + h * D, C, R, D, bf);
            }
            for (int r = 0; r < R; r++) {  /* rows past T repeat the last one; their results are dropped */
                const size_t qi = base + (size_t)(i0 + (r < rows ? r : rows - 1)) * rs + h * D;
                for (int d = 0; d < D; d++) Q[r * DP + d] = ld(qkv, qi + d, bf) * scale;
            }
            block_dot(S, TP, Q, KT + lo, DP, TP, n);
            float inv[R];
            for (int r = 0; r < R; r++) {
                float *s = S + (size_t)r * TP;
                if (r >= rows) { memset(s, 0, sizeof(float) * n); inv[r] = 0; continue; }
                const int i = i0 + r, a = first_key(i, window) - lo, e = i - lo;  /* this row's keys: a..e */
                const float m = max_run(s, (size_t)a, e - a + 1, 0);
                float l = 0.0f;
                for (int j = 0; j < n; j++) {
                    s[j] = (j >= a && j <= e) ? exp_neg(s[j] - m) : 0.0f;
                    l += s[j];
                }
                inv[r] = 1.0f / l;
                lse[(size_t)bh * T + i] = m + logf(l);
            }
            block_reduce(O, S, TP, VT + lo, DP, TP, n);
            for (int r = 0; r < rows; r++) {
                const size_t yi = ((size_t)b * T + i0 + r) * C + h * D;
                for (int d = 0; d < D; d++) st(y, yi + d, O[r * DP + d] * inv[r], bf);
            }
        }
    }
    free(buf);
    return 0;
}

/* Flash-attention style: probabilities recomputed from the saved log-sum-exp; dS = P (dP - delta)
   with delta = dy . y; dQ = dS K, dK = dS^T Q, dV = P^T dy (dK and dV accumulated per head). */
static int backward_range(const void *qkv, const void *y, const void *dy, const float *lse, void *dqkv, int T,
                          int H, int D, int window, float scale, int bh_begin, int bh_end, int bf) {
    const int C = H * D, DP = D + (D & 1), TP = roundv(T) + VW;
    const size_t rs = (size_t)3 * C;
    float *buf = calloc((size_t)4 * DP * TP + (size_t)2 * R * TP + 3 * R * DP, sizeof(float));
    if (!buf) return -1;
    float *KT = buf, *VT = KT + (size_t)DP * TP, *dKT = VT + (size_t)DP * TP, *dVT = dKT + (size_t)DP * TP;
    float *P = dVT + (size_t)DP * TP, *dS = P + (size_t)R * TP, *Q = dS + (size_t)R * TP, *G = Q + R * DP;
    float *O = G + R * DP;
    for (int bh = bh_begin; bh < bh_end; bh++) {
        const int b = bh / H, h = bh % H;
        const size_t base = (size_t)b * T * rs;
        pack_kv(qkv, base, rs, C, h, D, DP, T, TP, KT, VT, bf);
        memset(dKT, 0, sizeof(float) * (size_t)2 * DP * TP);
        for (int i0 = 0; i0 < T; i0 += R) {
            const int rows = T - i0 < R ? T - i0 : R;
            const int lo = first_key(i0, window), n = roundv(i0 + rows - lo);
            float delta[R];
            if (i0 + AHEAD + R <= T) {
                const size_t ahead = (size_t)b * T + i0 + AHEAD;
                prefetch_rows(qkv, base + (size_t)(i0 + AHEAD) * rs + h * D, rs, R, D, bf);
                prefetch_rows(dy, ahead * C + h * D, C, R, D, bf);
                prefetch_rows(y, ahead * C + h * D, C, R, D, bf);
                prefetch_rows(dqkv, base + (size_t)(i0 + AHEAD) * rs + h * D, rs, R, D, bf);
            }
            for (int r = 0; r < R; r++) {
                const int i = i0 + (r < rows ? r : rows - 1);
                const size_t qi = base + (size_t)i * rs + h * D, yi = ((size_t)b * T + i) * C + h * D;
                delta[r] = 0.0f;
                for (int d = 0; d < D; d++) {
                    Q[r * DP + d] = ld(qkv, qi + d, bf) * scale;
                    G[r * DP + d] = ld(dy, yi + d, bf);
                    delta[r] += G[r * DP + d] * ld(y, yi + d, bf);
                }
            }
            block_dot(P, TP, Q, KT + lo, DP, TP, n);
            block_dot(dS, TP, G, VT + lo, DP, TP, n);
            for (int r = 0; r < R; r++) {
                float *p = P + (size_t)r * TP, *ds = dS + (size_t)r * TP;
                if (r >= rows) { memset(p, 0, sizeof(float) * n); memset(ds, 0, sizeof(float) * n); continue; }
                const int i = i0 + r, a = first_key(i, window) - lo, e = i - lo;
                const float li = lse[(size_t)bh * T + i];
                for (int j = 0; j < n; j++) {
                    p[j] = (j >= a && j <= e) ? exp_neg(p[j] - li) : 0.0f;
                    ds[j] = p[j] * (ds[j] - delta[r]);
                }
            }
            block_reduce(O, dS, TP, KT + lo, DP, TP, n);  /* dQ */
            for (int r = 0; r < rows; r++) {
                const size_t dqi = base + (size_t)(i0 + r) * rs + h * D;
                for (int d = 0; d < D; d++) st(dqkv, dqi + d, O[r * DP + d] * scale, bf);
            }
            block_outer(dKT + lo, TP, Q, dS, TP, DP, n);
            block_outer(dVT + lo, TP, G, P, TP, DP, n);
        }
        for (int t = 0; t < T; t++) {
            const size_t row = base + t * rs;
            if (t + AHEAD < T) {
                prefetch_rows(dqkv, row + AHEAD * rs + C + h * D, rs, 1, D, bf);
                prefetch_rows(dqkv, row + AHEAD * rs + 2 * C + h * D, rs, 1, D, bf);
            }
            for (int d = 0; d < D; d++) {
                st(dqkv, row + C + h * D + d, dKT[(size_t)d * TP + t], bf);
                st(dqkv, row + 2 * C + h * D + d, dVT[(size_t)d * TP + t], bf);
            }
        }
    }
    free(buf);
    return 0;
}
#undef R

/* Entry points: heads split evenly over `threads` OpenMP threads. The library is linked without
   an OpenMP runtime of its own, so these use the one torch already loaded (same thread pool);
   built without OpenMP, they run on the calling thread. Return 0, or -1 if out of memory. */
int attention_forward(const void *qkv, void *y, float *lse, int B, int T, int H, int D, int window,
                      float scale, int threads, int bf) {
    int err = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(| : err)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads(), BH = B * H;
        err |= forward_range(qkv, y, lse, T, H, D, window, scale, BH * t / n, BH * (t + 1) / n, bf);
    }
#else
    (void)threads;
    err = forward_range(qkv, y, lse, T, H, D, window, scale, 0, B * H, bf);
#endif
    return err;
}

int attention_backward(const void *qkv, const void *y, const void *dy, const float *lse, void *dqkv,
                       int B, int T, int H, int D, int window, float scale, int threads, int bf) {
    int err = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(| : err)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads(), BH = B * H;
        err |= backward_range(qkv, y, dy, lse, dqkv, T, H, D, window, scale, BH * t / n, BH * (t + 1) / n, bf);
    }
#else
    (void)threads;
    err = backward_range(qkv, y, dy, lse, dqkv, T, H, D, window, scale, 0, B * H, bf);
#endif
    return err;
}

/* ------------------------------------------------------------------ skinny matrix products

   y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]) for a few rows x (generation: one token, or a
   token and its drafts). Library GEMMs run such shapes on one core at a fraction of the memory
   bandwidth, and their cost grows with the rows; this reads each weight row once, from all
   threads, whatever the number of rows. Each output is the same dot product in the same order
   whatever M is (odd rows are computed as a duplicated pair), so verifying drafts in one pass
   gives exactly the logits of one-token passes. x: [M, K] rows ldx apart; y: [M, N] rows ldy apart. */

/* a bf16 weight (its bits) as fp32: exact, a shift that vectorizes */
static inline float bf16_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
#define AS_FLOAT(v) ((float)(v))
#define BF16_FLOAT(v) bf16_f32(v)

/* Two rows of x against four weight rows: eight dot products in one pass over k. WT is the
   weight type: float; int8_t for the quantized copy that drafts tokens (scaled per row later); or
   uint16_t, the bits of bf16 weights (generate --dtype bf16: half the bytes to stream, and fp32
   products and sums of the weights' exact values, as fp32 weights holding those values give up to
   the summation order). CVT turns one weight into fp32. */
#define DOT_PAIR4(NAME, WT, CVT)                                                                                \
    static inline void NAME(const float *restrict x0, const float *restrict x1, const WT *restrict w0,          \
                            const WT *restrict w1, const WT *restrict w2, const WT *restrict w3, int K,         \
                            float out[8]) {                                                                     \
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;                                  \
        for (int k = 0; k < K; k++) {                                                                           \
            const float v0 = CVT(w0[k]), v1 = CVT(w1[k]), v2 = CVT(w2[k]), v3 = CVT(w3[k]);                     \
            a0 += x0[k] * v0; a1 += x0[k] * v1; a2 += x0[k] * v2; a3 += x0[k] * v3;                             \
            b0 += x1[k] * v0; b1 += x1[k] * v1; b2 += x1[k] * v2; b3 += x1[k] * v3;                             \
        }                                                                                                       \
        out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;                                                     \
        out[4] = b0; out[5] = b1; out[6] = b2; out[7] = b3;                                                     \
    }
DOT_PAIR4(dot_pair4_f32, float, AS_FLOAT)
DOT_PAIR4(dot_pair4_i8, int8_t, AS_FLOAT)
DOT_PAIR4(dot_pair4_bf16, uint16_t, BF16_FLOAT)

/* Output rows [n0, n1) (n1 - n0 >= 4) of y = x W^T * scale + bias; scale may be NULL (= 1). */
#define SKINNY_RANGE(NAME, WT, DOT)                                                                             \
    static void NAME(const float *x, int ldx, const WT *W, const float *scale, const float *bias, float *y,      \
                     int ldy, int M, int K, int n0, int n1) {                                                   \
        float out[8];                                                                                           \
        for (int n = n0; n < n1; n += 4) {                                                                      \
            /* the last block re-reads rows below n1 rather than running a different loop */                   \
            const int nb = n + 4 <= n1 ? n : n1 - 4;                                                            \
            const WT *w0 = W + (size_t)nb * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;                        \
            for (int m = 0; m < M; m += 2) {                                                                    \
                const int m1 = m + 1 < M ? m + 1 : m;                                                           \
                DOT(x + (size_t)m * ldx, x + (size_t)m1 * ldx, w0, w1, w2, w3, K, out);                          \
                for (int r = 0; r < 4; r++) {                                                                   \
                    const float s = scale ? scale[nb + r] : 1.0f, b = bias ? bias[nb + r] : 0.0f;               \
                    y[(size_t)m * ldy + nb + r] = out[r] * s + b;                                               \
                    y[(size_t)m1 * ldy + nb + r] = out[4 + r] * s + b;                                          \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }
SKINNY_RANGE(skinny_range_f32, float, dot_pair4_f32)
SKINNY_RANGE(skinny_range_i8, int8_t, dot_pair4_i8)
SKINNY_RANGE(skinny_range_bf16, uint16_t, dot_pair4_bf16)

/* Whole blocks of 4 rows per thread; the N % 4 last rows go with the last thread's blocks. */
#ifdef _OPENMP
#define SKINNY_RUN(RANGE, W, SCALE)                                                                             \
    const int blocks = N / 4;                                                                                   \
    const int nt = threads < blocks ? (threads > 0 ? threads : 1) : blocks;                                     \
    if (nt > 1) {                                                                                               \
        _Pragma("omp parallel num_threads(nt)") {                                                               \
            const int t = omp_get_thread_num(), n = omp_get_num_threads();                                     \
            const int n0 = 4 * (blocks * t / n), n1 = t == n - 1 ? N : 4 * (blocks * (t + 1) / n);             \
            RANGE(x, ldx, W, SCALE, bias, y, ldy, M, K, n0, n1);                                                \
        }                                                                                                       \
        return 0;                                                                                               \
    }                                                                                                           \
    RANGE(x, ldx, W, SCALE, bias, y, ldy, M, K, 0, N);                                                          \
    return 0;
#else
#define SKINNY_RUN(RANGE, W, SCALE)                                                                             \
    (void)threads;                                                                                              \
    RANGE(x, ldx, W, SCALE, bias, y, ldy, M, K, 0, N);                                                          \
    return 0;
#endif

/* y = x W^T + bias (bias may be NULL). Needs N >= 4. Returns 0. */
int skinny_linear(const float *x, int ldx, const float *W, const float *bias, float *y, int ldy, int M, int K, int N,
                  int threads) {
    SKINNY_RUN(skinny_range_f32, W, (const float *)0)
}

/* y = (x Wq^T) * scale + bias with int8 weights and one fp32 scale per output row. */
int skinny_linear_i8(const float *x, int ldx, const int8_t *Wq, const float *scale, const float *bias, float *y, int ldy,
                     int M, int K, int N, int threads) {
    SKINNY_RUN(skinny_range_i8, Wq, scale)
}

/* y = x W^T + bias with bf16 weights (their bits) and fp32 x, y, bias. */
int skinny_linear_bf16(const float *x, int ldx, const uint16_t *W, const float *bias, float *y, int ldy, int M, int K,
                       int N, int threads) {
    SKINNY_RUN(skinny_range_bf16, W, (const float *)0)
}

/* ------------------------------------------------------------------ one GPT-Neo block for decoding

   The whole block for a few rows (one token per sequence, or a token and its drafts) in one
   call: LayerNorm, q/k/v, the new keys and values into the cache, attention over the cache,
   output projection, LayerNorm, GELU MLP, both residual adds. Per-op dispatch from Python
   costs more than the arithmetic for the small models; this is the same arithmetic as
   model.py's `forward`, in one pass over the block's weights. */

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const void *w_qkv, *w_out, *w_fc, *w_proj;          /* [3C, C], [C, C], [F, C], [C, F] */
    const float *s_qkv, *s_out, *s_fc, *s_proj;         /* int8 row scales, or NULL for fp32 weights */
    const float *b_out, *b_fc, *b_proj;
    int bf16;                                           /* the four matrices are bf16 (no scales) */
} Block;

static void layer_norm_rows(const float *x, float *y, int M, int C, const float *w, const float *b, float eps) {
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * C;
        float *ym = y + (size_t)m * C;
        float mean = 0.0f, var = 0.0f;
        for (int c = 0; c < C; c++) mean += xm[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += (xm[c] - mean) * (xm[c] - mean);
        const float r = 1.0f / sqrtf(var / C + eps);
        for (int c = 0; c < C; c++) ym[c] = (xm[c] - mean) * r * w[c] + b[c];
    }
}

/* HF's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
static inline float gelu_tanh(float x) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    const float t = exp_neg(-2.0f * fabsf(u));
    const float th = (1.0f - t) / (1.0f + t);
    return 0.5f * x * (1.0f + (u < 0 ? -th : th));
}

/* this thread's share of y = x W^T (* scale) (+ bias): rows in blocks of 4, as skinny_linear splits them */
static void linear_part(const float *x, int M, int K, const void *W, const float *scale, const float *bias, float *y,
                        int N, int t, int nt, int bf16) {
    const int blocks = N / 4, n = nt < blocks ? nt : (blocks > 0 ? blocks : 1);
    if (t >= n) return;
    const int n0 = 4 * (blocks * t / n), n1 = t == n - 1 ? N : 4 * (blocks * (t + 1) / n);
    if (bf16) skinny_range_bf16(x, K, (const uint16_t *)W, NULL, bias, y, N, M, K, n0, n1);
    else if (scale) skinny_range_i8(x, K, (const int8_t *)W, scale, bias, y, N, M, K, n0, n1);
    else skinny_range_f32(x, K, (const float *)W, NULL, bias, y, N, M, K, n0, n1);
}

/* x: [B*T, C] residual rows, updated in place. kc, vc: this layer's cache [B, H, S, D]; the T new
   tokens of row b go to slots start..start+T-1. pad: NULL, or [B] left-padding slots per row. window: 0 =
   global. work: floats for 3C + C + F + C per row plus S per thread (see decode_block_work). */
int decode_block(float *x, int B, int T, int C, int H, int F, const Block *blk, float *kc, float *vc, int S,
                 int start, int window, float scale, const int64_t *pad, float eps, float *work, int threads) {
    const int M = B * T, D = C / H;
    float *h = work, *qkv = h + (size_t)M * C, *att = qkv + (size_t)M * 3 * C, *f = att + (size_t)M * C;
    float *scores = f + (size_t)M * F;
    if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int t = 0, nt = 1;
#endif
        float *s = scores + (size_t)t * S;
        if (t == 0) layer_norm_rows(x, h, M, C, blk->ln1_w, blk->ln1_b, eps);
#ifdef _OPENMP
#pragma omp barrier
#endif
        linear_part(h, M, C, blk->w_qkv, blk->s_qkv, NULL, qkv, 3 * C, t, nt, blk->bf16);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp for schedule(static)
#endif
        for (int r = 0; r < M; r++) {  /* new keys and values into the cache */
            const int b = r / T, slot = start + r % T;
            for (int hh = 0; hh < H; hh++) {
                memcpy(kc + (((size_t)b * H + hh) * S + slot) * D, qkv + (size_t)r * 3 * C + C + hh * D, sizeof(float) * D);
                memcpy(vc + (((size_t)b * H + hh) * S + slot) * D, qkv + (size_t)r * 3 * C + 2 * C + hh * D, sizeof(float) * D);
            }
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int job = 0; job < M * H; job++) {  /* attention: one (row, head) per job */
            const int r = job / H, hh = job % H, b = r / T, i = start + r % T;
            const int lo = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
            const int p = pad ? (int)pad[b] : 0;
            const float *q = qkv + (size_t)r * 3 * C + hh * D;
            const float *K = kc + ((size_t)b * H + hh) * S * D, *V = vc + ((size_t)b * H + hh) * S * D;
            float m = -INFINITY;
            for (int j = lo; j <= i; j++) {
                float acc = 0.0f;
                for (int d = 0; d < D; d++) acc += q[d] * K[(size_t)j * D + d];
                /* a real token never sees padding; a padding query sees only itself */
                s[j - lo] = (j < p && j != i) ? -INFINITY : acc * scale;
                m = s[j - lo] > m ? s[j - lo] : m;
            }
            float l = 0.0f;
            for (int j = 0; j <= i - lo; j++) {
                s[j] = s[j] == -INFINITY ? 0.0f : exp_neg(s[j] - m);
                l += s[j];
            }
            float *o = att + (size_t)r * C + hh * D;
            for (int d = 0; d < D; d++) o[d] = 0.0f;
            for (int j = lo; j <= i; j++) {
                const float w = s[j - lo] / l;
                for (int d = 0; d < D; d++) o[d] += w * V[(size_t)j * D + d];
            }
        }
        /* the implicit barrier of `omp for` orders each stage after the previous one */
        linear_part(att, M, C, blk->w_out, blk->s_out, blk->b_out, h, C, t, nt, blk->bf16);
#ifdef _OPENMP
#pragma omp barrier
#endif
        if (t == 0) {
            for (size_t k = 0; k < (size_t)M * C; k++) x[k] += h[k];
            layer_norm_rows(x, h, M, C, blk->ln2_w, blk->ln2_b, eps);
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
        linear_part(h, M, C, blk->w_fc, blk->s_fc, blk->b_fc, f, F, t, nt, blk->bf16);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp for schedule(static)
#endif
        for (size_t k = 0; k < (size_t)M * F; k++) f[k] = gelu_tanh(f[k]);
        linear_part(f, M, F, blk->w_proj, blk->s_proj, blk->b_proj, h, C, t, nt, blk->bf16);
#ifdef _OPENMP
#pragma omp barrier
#endif
        if (t == 0)
            for (size_t k = 0; k < (size_t)M * C; k++) x[k] += h[k];
    }
    return 0;
}

/* floats of `work` that decode_block needs */
long decode_block_work(int M, int C, int F, int S, int threads) {
    return (long)M * (6 * C + F) + (long)S * (threads > 0 ? threads : 1);
}

/* ------------------------------------------------------------------ softmax cross-entropy of a slice

   For the chunked lm_head loss: logits [rows, V] (fp32 or bf16, `bf_in`) and targets (-1 =
   ignored) -> the sum over kept rows of lse - logit[target], and, if grad is not NULL, grad =
   (softmax - onehot) * gscale (fp32 or bf16, `bf_out`; zero rows for ignored targets). One row
   (40 KB at V = 10K) stays in L2 across its three passes, where the library path reads and
   writes the whole slice about ten times. */
static double xent_row(const void *logits, size_t off, int V, int64_t t, void *grad, float gscale, int bf_in,
                       int bf_out) {
    const float m = max_run(logits, off, V, bf_in);
    float s = 0.0f;
    for (int j = 0; j < V; j++) s += exp_neg(ld(logits, off + j, bf_in) - m);
    const float lse = m + logf(s);
    if (grad) {
        for (int j = 0; j < V; j++) st(grad, off + j, exp_neg(ld(logits, off + j, bf_in) - lse) * gscale, bf_out);
        st(grad, off + t, (exp_neg(ld(logits, off + t, bf_in) - lse) - 1.0f) * gscale, bf_out);
    }
    return (double)lse - (double)ld(logits, off + t, bf_in);
}

int softmax_xent(const void *logits, const int64_t *targets, void *grad, int rows, int V, float gscale,
                 double *loss_sum, int threads, int bf_in, int bf_out) {
    double total = 0.0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static) reduction(+ : total)
#else
    (void)threads;
#endif
    for (int r = 0; r < rows; r++) {
        const size_t off = (size_t)r * V;
        const int64_t t = targets[r];
        if (t < 0) {
            if (grad) for (int j = 0; j < V; j++) st(grad, off + j, 0.0f, bf_out);
            continue;
        }
        total += xent_row(logits, off, V, t, grad, gscale, bf_in, bf_out);
    }
    *loss_sum = total;
    return 0;
}

/* ------------------------------------------------------------------ GELU (tanh) for training

   y = gelu(x) and dx = dy * gelu'(x), elementwise, for the MLP under training (fp32 or bf16, `bf`;
   the arithmetic is fp32). Why: the library's gelu and gelu_backward ran at about 1 G elements/s on
   two cores in either precision (12.8 and 10 ms a call at the 33M preset's [4096 x 3072], bf16, Zen
   5), where this is bound by reading and writing the activations. With t = exp(-2|u|) and q = 1 / (1 + t),
   0.5 (1 + tanh u) is q for u >= 0 and t q for u < 0, and 1 - tanh(u)^2 = 4 t q^2: no 1 + tanh u
   that cancels in the left tail (the decoder's gelu_tanh above does cancel there, by about 1e-6). So
   gelu(x) = x h and gelu'(x) = h + 2 x t q^2 sqrt(2/pi) (1 + 3 0.044715 x^2), h = 0.5 (1 + tanh u). */
static inline float gelu_train(float x) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    const float t = exp_neg(-2.0f * fabsf(u)), q = 1.0f / (1.0f + t);
    return x * (u < 0 ? t * q : q);
}

static inline float gelu_train_grad(float x) {
    const float k = 0.7978845608028654f, u = k * (x + 0.044715f * x * x * x);
    const float t = exp_neg(-2.0f * fabsf(u)), q = 1.0f / (1.0f + t);
    return (u < 0 ? t * q : q) + 2.0f * x * t * q * q * k * (1.0f + 0.134145f * x * x);
}

/* chunks of 4096 elements, so that the bf16 conversions run over short fp32 buffers on the stack */
#define GELU_CHUNK 4096
int gelu_forward(const void *x, void *y, long n, int threads, int bf) {
    const long chunks = (n + GELU_CHUNK - 1) / GELU_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static)
#else
    (void)threads;
#endif
    for (long c = 0; c < chunks; c++) {
        const long i0 = c * GELU_CHUNK, m = n - i0 < GELU_CHUNK ? n - i0 : GELU_CHUNK;
        float buf[GELU_CHUNK];
        for (long i = 0; i < m; i++) buf[i] = ld(x, i0 + i, bf);
        for (long i = 0; i < m; i++) buf[i] = gelu_train(buf[i]);
        for (long i = 0; i < m; i++) st(y, i0 + i, buf[i], bf);
    }
    return 0;
}

int gelu_backward(const void *x, const void *dy, void *dx, long n, int threads, int bf) {
    const long chunks = (n + GELU_CHUNK - 1) / GELU_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static)
#else
    (void)threads;
#endif
    for (long c = 0; c < chunks; c++) {
        const long i0 = c * GELU_CHUNK, m = n - i0 < GELU_CHUNK ? n - i0 : GELU_CHUNK;
        float buf[GELU_CHUNK];
        for (long i = 0; i < m; i++) buf[i] = ld(x, i0 + i, bf);
        for (long i = 0; i < m; i++) buf[i] = gelu_train_grad(buf[i]) * ld(dy, i0 + i, bf);
        for (long i = 0; i < m; i++) st(dx, i0 + i, buf[i], bf);
    }
    return 0;
}
#undef GELU_CHUNK
