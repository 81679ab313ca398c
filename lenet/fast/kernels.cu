// lenet's CUDA kernels: the training step of the textbook LeNet-5 (lenet/layers.py, lenet/model.py) in a few fused
// kernels, for lenet/fast/gpu.py. docs/gpu.md explains each one and what textbook code it equals; tests/test_cuda.py
// holds them to that on a GPU, tests/test_gpu_emulated.py on the CPU.
//
// Why hand-written kernels: LeNet-5's convolutions have 1 and 6 input channels and 5x5 filters, shapes for which
// im2col and a library matrix product move far more bytes than they multiply. Each convolution stage
// (convolution -> activation -> 2x2 pooling) is one kernel here, one thread block per image, the image and the
// filters in shared memory; each thread computes the four convolution outputs under one pooling window, so the
// pooled value never leaves registers. The fully connected layers stay cuBLAS products (lenet/fast/cublas.py).
//
// Compiled at run time by NVRTC (through CuPy) for one element type T (float or double), one activation ACT and one
// pooling POOL: the template arguments below. Sizes are template arguments too, so every loop over a filter or a
// window is unrolled into registers.
//
// Layouts: row-major, batch first, as lenet's NumPy arrays: images (N, C, H, W), weights (F, C, K, K) in PyTorch's
// layout. A row of a fully connected layer's input has one more column than its features, always 1: the bias
// column, so one product gives a weight gradient and its bias gradient together (docs/gpu.md).

#define ACT_SIGMOID 0
#define ACT_TANH 1
#define ACT_RELU 2
#define ACT_IDENTITY 3
#define POOL_AVG 0
#define POOL_MAX 1
#define SHARED_BYTES 49152  // the shared memory a block may declare statically

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float log_(float v) { return logf(v); }
__device__ __forceinline__ double log_(double v) { return log(v); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }
__device__ __forceinline__ float sqrt_(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_(double v) { return sqrt(v); }

// y = activation(z): layers.Sigmoid (1 / (1 + exp(-z)); exp overflows to inf and y is exactly 0), Tanh, ReLU.
template <int ACT, typename T>
__device__ __forceinline__ T activation(T z) {
    if (ACT == ACT_SIGMOID) return T(1) / (T(1) + exp_(-z));
    if (ACT == ACT_TANH) return tanh_(z);
    if (ACT == ACT_RELU) return z > T(0) ? z : T(0);
    return z;
}

// dL/dz from dL/dy and the activation's output y, as the layers' backward passes compute it from their cache:
// sigmoid dy * y(1 - y), tanh dy * (1 - y^2), ReLU dy where z > 0 (the same as y > 0).
template <int ACT, typename T>
__device__ __forceinline__ T activation_grad(T dy, T y) {
    if (ACT == ACT_SIGMOID) return dy * (y * (T(1) - y));
    if (ACT == ACT_TANH) return dy * (T(1) - y * y);
    if (ACT == ACT_RELU) return y > T(0) ? dy : T(0);
    return dy;
}

// 2x2 pooling of a00 a01 / a10 a11. Average: layers.AvgPool2d's order of additions (the window's rows first).
// Maximum: the first maximum in row-major order wins, as in layers.MaxPool2d and PyTorch.
template <int POOL, typename T>
__device__ __forceinline__ T pool4(T a00, T a01, T a10, T a11) {
    if (POOL == POOL_AVG) return ((a00 + a10) + (a01 + a11)) * T(0.25);
    T m = a00;
    if (a01 > m) m = a01;
    if (a10 > m) m = a10;
    if (a11 > m) m = a11;
    return m;
}

// The pooling's backward: each input of the window gets a quarter of g (average), or all of g if it is the window's
// first maximum and nothing otherwise (maximum).
template <int POOL, typename T>
__device__ __forceinline__ void pool4_backward(T g, T a00, T a01, T a10, T a11, T& g00, T& g01, T& g10, T& g11) {
    if (POOL == POOL_AVG) {
        g00 = g01 = g10 = g11 = g * T(0.25);
        return;
    }
    int w = 0;
    T m = a00;
    if (a01 > m) { m = a01; w = 1; }
    if (a10 > m) { m = a10; w = 2; }
    if (a11 > m) { w = 3; }
    g00 = w == 0 ? g : T(0);
    g01 = w == 1 ? g : T(0);
    g10 = w == 2 ? g : T(0);
    g11 = w == 3 ? g : T(0);
}

// ---------------------------------------------------------------------------------------------------------------
// Forward through one convolution stage: Conv2d(C -> F, KxK, padding PAD) -> activation -> 2x2 pooling.
// The GPU twin of lenet/fast/convpool.py's ConvPool, and like it equal to the textbook chain
// Conv2d -> Sigmoid/Tanh/ReLU -> AvgPool2d(2)/MaxPool2d(2).
//
// One block per image. Thread o computes pooled output o = (f, py, px): the four convolution outputs of its window,
// from the (K+1)x(K+1) input patch under it, read row by row into registers.
//   x    (N, C, H, W)                 the stage's input
//   act  (N, F, OH, OW)               the activations, kept for the backward pass (KEEP; inference skips them)
//   out  (N, out_stride)              each image's pooled (F, OH/2, OW/2), then `ones` columns of 1 (the bias
//                                     column of the next layer's input when that is a fully connected layer)
template <typename T, int ACT, int POOL, int C, int H, int W, int F, int K, int PAD, int THREADS, bool KEEP>
__global__ void __launch_bounds__(THREADS)
conv_pool_forward(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                  T* __restrict__ act, T* __restrict__ out, int out_stride, int ones) {
    constexpr int HP = H + 2 * PAD, WP = W + 2 * PAD;  // the padded input
    constexpr int OH = HP - K + 1, OW = WP - K + 1;    // the convolution's output
    constexpr int PH = OH / 2, PW = OW / 2;            // after pooling
    __shared__ T xs[C * HP * WP];
    __shared__ T ws[F * C * K * K];
    __shared__ T bs[F];
    static_assert(sizeof(xs) + sizeof(ws) + sizeof(bs) <= SHARED_BYTES, "shared memory");
    const long long img = blockIdx.x;
    const T* xi = x + img * (C * H * W);
    for (int i = threadIdx.x; i < C * HP * WP; i += THREADS) {
        const int c = i / (HP * WP), r = (i / WP) % HP - PAD, q = i % WP - PAD;
        xs[i] = (r >= 0 && r < H && q >= 0 && q < W) ? xi[(c * H + r) * W + q] : T(0);
    }
    for (int i = threadIdx.x; i < F * C * K * K; i += THREADS) ws[i] = weight[i];
    for (int i = threadIdx.x; i < F; i += THREADS) bs[i] = bias[i];
    __syncthreads();
    for (int o = threadIdx.x; o < F * PH * PW; o += THREADS) {
        const int f = o / (PH * PW), py = (o / PW) % PH, px = o % PW;
        T z00 = 0, z01 = 0, z10 = 0, z11 = 0;
        for (int c = 0; c < C; ++c) {
            const T* xc = xs + (c * HP + 2 * py) * WP + 2 * px;  // the patch's top left corner
            const T* wc = ws + (f * C + c) * K * K;
#pragma unroll
            for (int r = 0; r <= K; ++r) {  // patch row r: kernel row r for output row 0, row r - 1 for output row 1
                T row[K + 1];
#pragma unroll
                for (int j = 0; j <= K; ++j) row[j] = xc[r * WP + j];
                if (r < K) {
#pragma unroll
                    for (int kx = 0; kx < K; ++kx) {
                        const T w = wc[r * K + kx];
                        z00 += w * row[kx];
                        z01 += w * row[kx + 1];
                    }
                }
                if (r > 0) {
#pragma unroll
                    for (int kx = 0; kx < K; ++kx) {
                        const T w = wc[(r - 1) * K + kx];
                        z10 += w * row[kx];
                        z11 += w * row[kx + 1];
                    }
                }
            }
        }
        const T b = bs[f];
        const T y00 = activation<ACT>(z00 + b), y01 = activation<ACT>(z01 + b);
        const T y10 = activation<ACT>(z10 + b), y11 = activation<ACT>(z11 + b);
        if (KEEP) {
            T* a = act + ((img * F + f) * OH + 2 * py) * OW + 2 * px;
            a[0] = y00;
            a[1] = y01;
            a[OW] = y10;
            a[OW + 1] = y11;
        }
        out[img * out_stride + o] = pool4<POOL>(y00, y01, y10, y11);
    }
    for (int i = threadIdx.x; i < ones; i += THREADS) out[img * out_stride + F * PH * PW + i] = T(1);
}

// ---------------------------------------------------------------------------------------------------------------
// Backward through stage 2 (its pooling, activation and convolution's input) and on through stage 1's pooling and
// activation: from dL/d(stage 2's pooled output) to dL/d(stage 2's convolution output), dz2, and dL/d(stage 1's
// convolution output), dz1. The textbook chain's AvgPool2d/MaxPool2d.backward, Sigmoid/Tanh/ReLU.backward,
// Conv2d.backward's dx (col2im of W^T dz), then stage 1's pooling and activation backward.
//
// One block per image. dz2 goes to shared memory with a zero border of K-1, so the convolution's input gradient,
//   ds1[c, y, x] = sum over f, ky, kx of W[f, c, ky, kx] * dz2[f, y - ky, x - kx],
// needs no bounds checks; each thread computes a 2x2 block of ds1 from (K+1)x(K+1) values of dz2, as the forward
// kernel computes a pooling window, and takes it on through stage 1's pooling to 4x4 values of dz1.
//   dout (N, dout_stride)  dL/d(stage 2's pooled output) (F, OH/2, OW/2) of each image
//   act2 (N, F, OH, OW)    stage 2's activations        act1 (N, C, 2H, 2W) stage 1's activations
//   dz2  (N, F, OH, OW)    out                          dz1  (N, C, 2H, 2W) out
template <typename T, int ACT, int POOL, int C, int H, int W, int F, int K, int THREADS>
__global__ void __launch_bounds__(THREADS)
stage2_backward(const T* __restrict__ dout, int dout_stride, const T* __restrict__ act2,
                const T* __restrict__ weight, const T* __restrict__ act1, T* __restrict__ dz2,
                T* __restrict__ dz1) {
    constexpr int OH = H - K + 1, OW = W - K + 1, PH = OH / 2, PW = OW / 2;
    constexpr int ZH = OH + 2 * (K - 1), ZW = OW + 2 * (K - 1);  // dz2 inside a zero border
    static_assert(H % 2 == 0 && W % 2 == 0, "2x2 blocks of ds1 per thread");
    // The filters go to shared memory too where they fit beside dz2 (float); else they are read through the cache.
    constexpr bool SHARED_WEIGHTS = (F * ZH * ZW + F * C * K * K) * sizeof(T) <= SHARED_BYTES;
    __shared__ T zs[F * ZH * ZW];
    __shared__ T shared_weights[SHARED_WEIGHTS ? F * C * K * K : 1];
    static_assert(sizeof(zs) + sizeof(shared_weights) <= SHARED_BYTES, "shared memory");
    const T* ws = SHARED_WEIGHTS ? shared_weights : weight;
    const long long img = blockIdx.x;
    for (int i = threadIdx.x; i < F * ZH * ZW; i += THREADS) zs[i] = T(0);
    if (SHARED_WEIGHTS)
        for (int i = threadIdx.x; i < F * C * K * K; i += THREADS) shared_weights[i] = weight[i];
    __syncthreads();
    for (int i = threadIdx.x; i < F * PH * PW; i += THREADS) {  // 1. pooling and activation of stage 2
        const int f = i / (PH * PW), py = (i / PW) % PH, px = i % PW;
        const long long at = ((img * F + f) * OH + 2 * py) * OW + 2 * px;
        const T a00 = act2[at], a01 = act2[at + 1], a10 = act2[at + OW], a11 = act2[at + OW + 1];
        T g00, g01, g10, g11;
        pool4_backward<POOL>(dout[img * dout_stride + i], a00, a01, a10, a11, g00, g01, g10, g11);
        const T d00 = activation_grad<ACT>(g00, a00), d01 = activation_grad<ACT>(g01, a01);
        const T d10 = activation_grad<ACT>(g10, a10), d11 = activation_grad<ACT>(g11, a11);
        dz2[at] = d00;
        dz2[at + 1] = d01;
        dz2[at + OW] = d10;
        dz2[at + OW + 1] = d11;
        T* z = zs + (f * ZH + 2 * py + K - 1) * ZW + 2 * px + K - 1;
        z[0] = d00;
        z[1] = d01;
        z[ZW] = d10;
        z[ZW + 1] = d11;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < C * (H / 2) * (W / 2); i += THREADS) {  // 2. the convolution's input gradient
        // ds1 at the 2x2 block (c, 2py + dy, 2px + dx): zs rows 2py .. 2py + K and columns 2px .. 2px + K hold
        // every dz2 value it needs. Row r of them meets kernel row K - 1 - r for dy = 0 and K - r for dy = 1.
        const int c = i / ((H / 2) * (W / 2)), py = (i / (W / 2)) % (H / 2), px = i % (W / 2);
        T s00 = 0, s01 = 0, s10 = 0, s11 = 0;
        for (int f = 0; f < F; ++f) {
            const T* wf = ws + (f * C + c) * K * K;
            const T* zf = zs + (f * ZH + 2 * py) * ZW + 2 * px;
#pragma unroll
            for (int r = 0; r <= K; ++r) {
                T row[K + 1];
#pragma unroll
                for (int j = 0; j <= K; ++j) row[j] = zf[r * ZW + j];
                if (r < K) {
#pragma unroll
                    for (int kx = 0; kx < K; ++kx) {
                        const T w = wf[(K - 1 - r) * K + kx];
                        s00 += w * row[K - 1 - kx];  // dz2[f, 2py - ky, 2px - kx], ky = K - 1 - r
                        s01 += w * row[K - kx];      // dz2[f, 2py - ky, 2px + 1 - kx]
                    }
                }
                if (r > 0) {
#pragma unroll
                    for (int kx = 0; kx < K; ++kx) {
                        const T w = wf[(K - r) * K + kx];
                        s10 += w * row[K - 1 - kx];  // dz2[f, 2py + 1 - ky, 2px - kx], ky = K - r
                        s11 += w * row[K - kx];
                    }
                }
            }
        }
        // 3. ds1 is dL/d(stage 1's pooled output): back through stage 1's pooling and activation.
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const T s = q == 0 ? s00 : q == 1 ? s01 : q == 2 ? s10 : s11;
            const int y = 2 * py + q / 2, x = 2 * px + q % 2;
            const long long at = ((img * C + c) * (2 * H) + 2 * y) * (2 * W) + 2 * x;
            const T a00 = act1[at], a01 = act1[at + 1], a10 = act1[at + 2 * W], a11 = act1[at + 2 * W + 1];
            T g00, g01, g10, g11;
            pool4_backward<POOL>(s, a00, a01, a10, a11, g00, g01, g10, g11);
            dz1[at] = activation_grad<ACT>(g00, a00);
            dz1[at + 1] = activation_grad<ACT>(g01, a01);
            dz1[at + 2 * W] = activation_grad<ACT>(g10, a10);
            dz1[at + 2 * W + 1] = activation_grad<ACT>(g11, a11);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A convolution's weight and bias gradients, summed over a range of images: Conv2d.backward's
//   dW[f, c, ky, kx] = sum over images, y, x of dz[f, y, x] * x_padded[c, y + ky, x + kx],  db[f] = sum of dz[f].
// Block b takes images b*per_block .. (b+1)*per_block - 1, one at a time through shared memory, and writes its sums
// to partial[b]; sum_partials adds the blocks' sums. The output rows are cut into PARTS parts (each part's sums
// are separate), so that a stage with few filters still gives every thread work. Thread item (part, f, c, ky) keeps
// the K sums of one kernel row in registers; items past those sum the bias (part, f).
//   x  (N, C, H, W)   dz (N, F, OH, OW)   partial (blocks, PARTS, F*C*K*K + F)
template <typename T, int C, int H, int W, int F, int K, int PAD, int PARTS, int THREADS>
__global__ void __launch_bounds__(THREADS)
conv_weight_grad(const T* __restrict__ x, const T* __restrict__ dz, T* __restrict__ partial, int n, int per_block) {
    constexpr int HP = H + 2 * PAD, WP = W + 2 * PAD, OH = HP - K + 1, OW = WP - K + 1;
    constexpr int ROWS = (OH + PARTS - 1) / PARTS;  // output rows per part
    constexpr int WITEMS = PARTS * F * C * K, ITEMS = WITEMS + PARTS * F;
    constexpr int ROUNDS = (ITEMS + THREADS - 1) / THREADS;
    constexpr int SIZE = F * C * K * K + F;
    __shared__ T xs[C * HP * WP];
    __shared__ T zs[F * OH * OW];
    static_assert(sizeof(xs) + sizeof(zs) <= SHARED_BYTES, "shared memory");
    T acc[ROUNDS][K];
#pragma unroll
    for (int r = 0; r < ROUNDS; ++r)
#pragma unroll
        for (int k = 0; k < K; ++k) acc[r][k] = T(0);
    const int first = blockIdx.x * per_block, last = min(n, first + per_block);
    for (int img = first; img < last; ++img) {
        __syncthreads();  // every thread is done with the previous image
        const T* xi = x + (long long)img * (C * H * W);
        for (int i = threadIdx.x; i < C * HP * WP; i += THREADS) {
            const int c = i / (HP * WP), r = (i / WP) % HP - PAD, q = i % WP - PAD;
            xs[i] = (r >= 0 && r < H && q >= 0 && q < W) ? xi[(c * H + r) * W + q] : T(0);
        }
        const T* zi = dz + (long long)img * (F * OH * OW);
        for (int i = threadIdx.x; i < F * OH * OW; i += THREADS) zs[i] = zi[i];
        __syncthreads();
#pragma unroll
        for (int r = 0; r < ROUNDS; ++r) {
            const int item = threadIdx.x + r * THREADS;
            if (item < WITEMS) {
                const int part = item / (F * C * K), f = (item / (C * K)) % F, c = (item / K) % C, ky = item % K;
                const int y_end = min(OH, (part + 1) * ROWS);
                for (int y = part * ROWS; y < y_end; ++y) {
                    const T* zr = zs + (f * OH + y) * OW;
                    const T* xr = xs + (c * HP + y + ky) * WP;
#pragma unroll
                    for (int xx = 0; xx < OW; ++xx) {
                        const T d = zr[xx];
#pragma unroll
                        for (int kx = 0; kx < K; ++kx) acc[r][kx] += d * xr[xx + kx];
                    }
                }
            } else if (item < ITEMS) {
                const int part = (item - WITEMS) / F, f = (item - WITEMS) % F;
                const int y_end = min(OH, (part + 1) * ROWS);
                for (int y = part * ROWS; y < y_end; ++y)
#pragma unroll
                    for (int xx = 0; xx < OW; ++xx) acc[r][0] += zs[(f * OH + y) * OW + xx];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROUNDS; ++r) {
        const int item = threadIdx.x + r * THREADS;
        if (item < WITEMS) {
            const int part = item / (F * C * K), rest = item % (F * C * K);  // rest = (f, c, ky)
            T* p = partial + ((long long)blockIdx.x * PARTS + part) * SIZE + rest * K;
#pragma unroll
            for (int kx = 0; kx < K; ++kx) p[kx] = acc[r][kx];
        } else if (item < ITEMS) {
            const int part = (item - WITEMS) / F, f = (item - WITEMS) % F;
            partial[((long long)blockIdx.x * PARTS + part) * SIZE + F * C * K * K + f] = acc[r][0];
        }
    }
}

// g[i] = the sum over rows r of p[r, i], the same sums in the same order on any device: 8 threads per column each
// add every 8th row, then the 8 sums are added in a fixed order. Two arrays in one launch (C1's and C3's).
// blockDim (32, 8): threadIdx.x picks the column, threadIdx.y the rows.
template <typename T>
__global__ void __launch_bounds__(256)
sum_partials(const T* __restrict__ p1, int rows1, int size1, T* __restrict__ g1,
             const T* __restrict__ p2, int rows2, int size2, T* __restrict__ g2) {
    __shared__ T sums[8][32];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const bool first = col < size1;
    const T* p = first ? p1 : p2;
    const int rows = first ? rows1 : rows2, size = first ? size1 : size2, i = first ? col : col - size1;
    T s = 0;
    if (i < size)
        for (int r = threadIdx.y; r < rows; r += 8) s += p[(long long)r * size + i];
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && i < size) {
        T total = sums[0][threadIdx.x];
        for (int k = 1; k < 8; ++k) total += sums[k][threadIdx.x];
        (first ? g1 : g2)[i] = total;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fully connected layers: the products are cuBLAS's; these are the element-wise steps around them.

// y[r, c] = activation(z[r, c] + bias[c]) for c < cols, and y[r, c] = 1 for cols <= c < y_stride (the bias column).
// Linear's `+ b` and the activation layer after it.
template <typename T, int ACT>
__global__ void bias_activation(const T* __restrict__ z, const T* __restrict__ bias, T* __restrict__ y, int rows,
                                int cols, int y_stride) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * y_stride) return;
    const long long r = i / y_stride;
    const int c = i % y_stride;
    y[i] = c < cols ? activation<ACT>(z[r * cols + c] + bias[c]) : T(1);
}

// dz = activation_grad(dy, y) for the (rows, cols) of dy and dz, y's rows y_stride apart. dz may be dy.
template <typename T, int ACT>
__global__ void activation_backward(const T* dy, const T* __restrict__ y, int y_stride, T* dz, int rows, int cols) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    dz[i] = activation_grad<ACT>(dy[i], y[(i / cols) * y_stride + i % cols]);
}

// Softmax cross-entropy of logits z + bias (N, 10) against labels: layers.SoftmaxCrossEntropy's forward and backward,
// and the step's number of correct predictions. One block: each thread takes every THREADS-th row, then the
// block adds the rows' losses and hits in a fixed order.
//   dlogits (N, 10) = (softmax - onehot) / N;  loss = the mean loss;  correct = how many argmaxes equal the label.
// `steps` is the optimizer's step counter on the device: one more step has begun (optimizer_step
// below reads it for Adam's bias corrections, after this kernel has finished).
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
softmax_cross_entropy(const T* __restrict__ z, const T* __restrict__ bias, const long long* __restrict__ labels,
                      int n, T* __restrict__ dlogits, T* __restrict__ loss, long long* __restrict__ correct,
                      long long* __restrict__ steps) {
    constexpr int K = 10;
    __shared__ double losses[THREADS];
    __shared__ long long hits[THREADS];
    double my_loss = 0;
    long long my_hits = 0;
    const T scale = T(1.0 / n);
    for (int r = threadIdx.x; r < n; r += THREADS) {
        T logit[K];
        int best = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) logit[k] = z[(long long)r * K + k] + bias[k];
        T m = logit[0];
#pragma unroll
        for (int k = 1; k < K; ++k)
            if (logit[k] > m) { m = logit[k]; best = k; }
        T e[K], s = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            e[k] = exp_(logit[k] - m);
            s += e[k];
        }
        const long long label = labels[r];
        T picked = 0;
#pragma unroll
        for (int k = 0; k < K; ++k)
            if (k == label) picked = logit[k] - m;
        my_loss += double(log_(s) - picked);
        my_hits += best == label;
#pragma unroll
        for (int k = 0; k < K; ++k) dlogits[(long long)r * K + k] = (e[k] / s - (k == label ? T(1) : T(0))) * scale;
    }
    losses[threadIdx.x] = my_loss;
    hits[threadIdx.x] = my_hits;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            losses[threadIdx.x] += losses[threadIdx.x + half];
            hits[threadIdx.x] += hits[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        *loss = T(losses[0] / n);
        *correct = hits[0];
        *steps += 1;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// One optimizer step over all parameters: lenet.optim's SGD (momentum, Nesterov) or Adam, with L2 weight decay.
// param and the state arrays are flat, in the order of model.parameters() (c1.weight, c1.bias, ..., f7.bias); they
// are the model's and the optimizer's own arrays. The gradients come from where the step left them: the
// convolutions' in gconv (same order), each fully connected layer's in its (out, in + 1) product with the bias
// gradient as the last column. hyper = (lr, momentum, weight_decay, beta1, beta2, eps), read from the device so that
// a recorded step takes each epoch's learning rate; steps is the step counter (already counting this step).
template <typename T, int ADAM, int NESTEROV>
__global__ void optimizer_step(T* __restrict__ param, T* __restrict__ state1, T* __restrict__ state2, int size,
                               const T* __restrict__ gconv, int nconv,
                               const T* __restrict__ g5, int out5, int in5,
                               const T* __restrict__ g6, int out6, int in6,
                               const T* __restrict__ g7, int out7, int in7,
                               const double* __restrict__ hyper, const long long* __restrict__ steps) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    T g;
    if (i < nconv) {
        g = gconv[i];
    } else {  // a fully connected layer's parameters are its weight (outs, ins), then its bias (outs,)
        int j = i - nconv, outs = out5, ins = in5;
        const T* gl = g5;
        if (j >= out5 * (in5 + 1)) {
            j -= out5 * (in5 + 1);
            gl = g6, outs = out6, ins = in6;
            if (j >= out6 * (in6 + 1)) {
                j -= out6 * (in6 + 1);
                gl = g7, outs = out7, ins = in7;
            }
        }
        g = j < outs * ins ? gl[(j / ins) * (ins + 1) + j % ins] : gl[(j - outs * ins) * (ins + 1) + ins];
    }
    const double lr = hyper[0], momentum = hyper[1], weight_decay = hyper[2];
    T p = param[i];
    if (weight_decay != 0) g += T(weight_decay) * p;
    if (ADAM) {
        const double beta1 = hyper[3], beta2 = hyper[4], eps = hyper[5], t = double(*steps);
        const T step_size = T(lr / (1 - pow(beta1, t))), v_scale = T(sqrt(1 - pow(beta2, t)));
        const T m = state1[i] * T(beta1) + T(1 - beta1) * g;
        const T v = state2[i] * T(beta2) + T(1 - beta2) * (g * g);
        state1[i] = m;
        state2[i] = v;
        p -= m / (sqrt_(v) / v_scale + T(eps)) * step_size;
    } else {
        if (momentum != 0) {
            const T v = state1[i] * T(momentum) + g;  // the state starts at zero: the first step's v is g
            state1[i] = v;
            g = NESTEROV ? g + T(momentum) * v : v;
        }
        p -= T(lr) * g;
    }
    param[i] = p;
}
