// Just enough of CUDA to run lenet/fast/kernels.cu on the CPU, for tests/cuda_on_cpu.py.
//
// A launch runs the blocks one after another. The threads of a block are fibers (ucontext) of one OS thread:
// each runs until it reaches __syncthreads() or returns, then the next one runs; when all have, the round starts
// again, until every thread has returned. So a block's threads meet at each barrier as on a GPU, and shared memory
// (a `static` array here, one for all the block's threads) behaves as it does there. Deterministic, and slow:
// for tests on a few images.
#pragma once
#include <math.h>
#include <ucontext.h>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

using std::max;
using std::min;

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

namespace emu {

struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    dim3 index;
    bool done = false;
};

inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline Fiber* current = nullptr;
inline std::function<void()> body;

inline void run_fiber() {
    body();
    current->done = true;  // uc_link returns to the scheduler
}

}  // namespace emu

inline void __syncthreads() { swapcontext(&emu::current->context, &emu::scheduler); }

namespace emu {

template <typename... A, std::size_t... I>
void call(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

// cuLaunchKernel's contract: params[i] points to the value of the kernel's i-th argument.
template <typename... A>
void launch(void (*kernel)(A...), dim3 grid, dim3 block, void** params) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z;
    if (fibers.size() < threads) fibers.resize(threads);
    body = [&] { call(kernel, params, std::index_sequence_for<A...>{}); };
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3(bx, by, bz);
                for (unsigned t = 0; t < threads; ++t) {
                    Fiber& f = fibers[t];
                    f.stack.resize(1 << 16);
                    f.done = false;
                    f.index = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack.data();
                    f.context.uc_stack.ss_size = f.stack.size();
                    f.context.uc_link = &scheduler;
                    makecontext(&f.context, run_fiber, 0);
                }
                for (bool running = true; running;) {  // one round: every unfinished thread to its next barrier
                    running = false;
                    for (unsigned t = 0; t < threads; ++t) {
                        Fiber& f = fibers[t];
                        if (f.done) continue;
                        current = &f;
                        threadIdx = f.index;
                        swapcontext(&scheduler, &f.context);
                        running = running || !f.done;
                    }
                }
            }
}

}  // namespace emu
