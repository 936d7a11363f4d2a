/* Channel attention's small matrix products, one window at a time (built and loaded by channel_attention_cpu.py).
 *
 * Shapes: n windows, t tokens (channels), h heads of e dims; d = h * e. qkv is (n, t, 3d) with [q | k | v], heads
 * contiguous within each; probabilities and scores are kept transposed per head, (h, n, key, query), as the torch
 * path keeps them. Every output element is a sum in the order written here (build without -ffast-math and with
 * -ffp-contract=off: no reassociation, no fused multiply-add), so the result does not depend on the thread count,
 * the vector width or the machine. Windows are independent: OpenMP splits them across torch's threads.
 *
 * Built once per element type: REAL is float or double.
 */

typedef REAL real;

#define INLINE static inline __attribute__((always_inline))

/* Each kernel is a loop over windows around a per-window body; the body is inlined twice, once with the primary
 * config's shape (6 tokens, 16 dims per head: fixed trip counts, every output of a head in registers) and once for
 * any shape. Loops put the summed index outermost, so each output's sum runs in the written order while the
 * independent outputs fill the vector lanes and the pipeline. */
#define OVER_WINDOWS(body_call_fixed, body_call_any)                                                                \
    _Pragma("omp parallel for num_threads(threads) schedule(static)") for (long b = 0; b < n; b++) {               \
        if (t == 6 && e == 16)                                                                                      \
            body_call_fixed;                                                                                        \
        else                                                                                                        \
            body_call_any;                                                                                          \
    }

/* sum_c x[c] y[c] over 16 dims as a fixed tree: the halves' products added lane by lane (c and c + 8), then the
 * lanes pairwise. The first level fills one vector; no transposed copy of y is needed. */
INLINE real dot16(const real *x, const real *y) {
    real v[8];
    for (long c = 0; c < 8; c++) v[c] = x[c] * y[c] + x[c + 8] * y[c + 8];
    for (long c = 0; c < 4; c++) v[c] = v[c] + v[c + 4];
    return (v[0] + v[2]) + (v[1] + v[3]);
}

/* out[j][i] = scale * sum_c a[j][c] bm[i][c] for one head of one window: a's rows at stride ra, bm's at rb. */
INLINE void dots(const real *a, long ra, const real *bm, long rb, real *out, long t, long e, real scale) {
    if (e == 16) {
        for (long j = 0; j < t; j++)
            for (long i = 0; i < t; i++) out[j * t + i] = dot16(a + j * ra, bm + i * rb) * scale;
        return;
    }
    for (long j = 0; j < t; j++)
        for (long i = 0; i < t; i++) {
            real acc = 0;
            for (long c = 0; c < e; c++) acc += a[j * ra + c] * bm[i * rb + c];
            out[j * t + i] = acc * scale;
        }
}

/* out[i][c] = sum_j w[j][i] x[j][c] (w transposed: (key, query)) for one head of one window; rows at stride rx, ro */
INLINE void combine(const real *w, const real *x, long rx, real *out, long ro, long t, long e) {
    real acc[e];
    for (long i = 0; i < t; i++) {
        for (long c = 0; c < e; c++) acc[c] = 0;
        for (long j = 0; j < t; j++)
            for (long c = 0; c < e; c++) acc[c] += w[j * t + i] * x[j * rx + c];
        for (long c = 0; c < e; c++) out[i * ro + c] = acc[c];
    }
}

/* out[j][c] = sum_i w[j][i] x[i][c] for one head of one window */
INLINE void combine_t(const real *w, const real *x, long rx, real *out, long ro, long t, long e) {
    real acc[e];
    for (long j = 0; j < t; j++) {
        for (long c = 0; c < e; c++) acc[c] = 0;
        for (long i = 0; i < t; i++)
            for (long c = 0; c < e; c++) acc[c] += w[j * t + i] * x[i * rx + c];
        for (long c = 0; c < e; c++) out[j * ro + c] = acc[c];
    }
}

/* s[h][b][j][i] = scale * sum_c k[b][j][c] q[b][i][c], c over head h's dims */
INLINE void scores_window(const real *qkv, real *s, long b, long n, long t, long h, long e, real scale) {
    long d = h * e;
    const real *w = qkv + b * t * 3 * d;
    for (long hh = 0; hh < h; hh++) dots(w + d + hh * e, 3 * d, w + hh * e, 3 * d, s + (hh * n + b) * t * t, t, e, scale);
}

void scores(const real *qkv, real *s, long n, long t, long h, long e, real scale, int threads) {
    OVER_WINDOWS(scores_window(qkv, s, b, n, 6, h, 16, scale), scores_window(qkv, s, b, n, t, h, e, scale))
}

/* out[b][i][h e + c] = sum_j p[h][b][j][i] v[b][j][h e + c] */
INLINE void attend_window(const real *p, const real *qkv, real *out, long b, long n, long t, long h, long e) {
    long d = h * e;
    for (long hh = 0; hh < h; hh++)
        combine(p + (hh * n + b) * t * t, qkv + b * t * 3 * d + 2 * d + hh * e, 3 * d, out + b * t * d + hh * e, d, t, e);
}

void attend(const real *p, const real *qkv, real *out, long n, long t, long h, long e, int threads) {
    OVER_WINDOWS(attend_window(p, qkv, out, b, n, 6, h, 16), attend_window(p, qkv, out, b, n, t, h, e))
}

/* The scores' gradient gs[h][b][j][i] = scale * p[j][i] (gp[j][i] - sum_k gp[k][i] p[k][i]) (softmax backward along
 * the keys), from the probabilities' gradient gp[j][i] = sum_c v[b][j][h e + c] g[b][i][h e + c]. */
INLINE void grad_scores_window(const real *qkv, const real *g, const real *p, real *gs, long b, long n, long t, long h,
                               long e, real scale) {
    long d = h * e;
    const real *w = qkv + b * t * 3 * d;
    for (long hh = 0; hh < h; hh++) {
        const real *pb = p + (hh * n + b) * t * t;
        real *out = gs + (hh * n + b) * t * t;
        dots(w + 2 * d + hh * e, 3 * d, g + b * t * d + hh * e, d, out, t, e, 1);
        for (long i = 0; i < t; i++) {
            real dot = 0;
            for (long j = 0; j < t; j++) dot += out[j * t + i] * pb[j * t + i];
            for (long j = 0; j < t; j++) out[j * t + i] = (out[j * t + i] - dot) * pb[j * t + i] * scale;
        }
    }
}

void grad_scores(const real *qkv, const real *g, const real *p, real *gs, long n, long t, long h, long e, real scale,
                 int threads) {
    OVER_WINDOWS(grad_scores_window(qkv, g, p, gs, b, n, 6, h, 16, scale),
                 grad_scores_window(qkv, g, p, gs, b, n, t, h, e, scale))
}

/* The (n, t, 3d) gradient of qkv from the scores' gradient gs (scale included), p and the output's gradient g:
 * dq_i = sum_j gs[j][i] k_j,  dk_j = sum_i gs[j][i] q_i,  dv_j = sum_i p[j][i] g_i. */
INLINE void grad_qkv_window(const real *qkv, const real *p, const real *gs, const real *g, real *gqkv, long b, long n,
                            long t, long h, long e) {
    long d = h * e;
    const real *w = qkv + b * t * 3 * d;
    real *gw = gqkv + b * t * 3 * d;
    for (long hh = 0; hh < h; hh++) {
        const real *pb = p + (hh * n + b) * t * t, *sb = gs + (hh * n + b) * t * t;
        combine(sb, w + d + hh * e, 3 * d, gw + hh * e, 3 * d, t, e);
        combine_t(sb, w + hh * e, 3 * d, gw + d + hh * e, 3 * d, t, e);
        combine_t(pb, g + b * t * d + hh * e, d, gw + 2 * d + hh * e, 3 * d, t, e);
    }
}

void grad_qkv(const real *qkv, const real *p, const real *gs, const real *g, real *gqkv, long n, long t, long h,
              long e, int threads) {
    OVER_WINDOWS(grad_qkv_window(qkv, p, gs, g, gqkv, b, n, 6, h, 16),
                 grad_qkv_window(qkv, p, gs, g, gqkv, b, n, t, h, e))
}
