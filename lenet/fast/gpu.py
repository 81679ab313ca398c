"""The GPU twin of LeNet-5 and its optimizer: a whole training step in 21 kernel launches.

What it speeds up: the textbook model on CuPy launches about 150 small kernels a step (each sigmoid alone is four),
and im2col moves far more bytes than LeNet-5's tiny convolutions multiply. Here lenet/fast/kernels.cu computes each
convolution stage (convolution, activation, 2x2 pooling) in one kernel per direction, the fully connected layers are
cuBLAS products (lenet/fast/cublas.py) with one element-wise kernel each, the loss is one kernel and the optimizer
step one more, over all parameters at once. graphs.py records the launches as a CUDA graph.

What it must equal: lenet.step.train_step on the textbook model (model.forward, SoftmaxCrossEntropy, model.backward,
optimizer.step) and model.forward, up to float rounding (other summation orders). tests/test_cuda.py holds it to
that on a GPU for every activation, pooling, optimizer and dtype; tests/test_gpu_emulated.py runs the same kernels
on the CPU (each CUDA thread a fiber), so CI checks them without a GPU.

It wraps the model and the optimizer from outside and changes neither's meaning: the model's parameters become views
of one flat array (the optimizer kernel updates it in place, so model.state_dict() and checkpoints see every step),
and the optimizer's state arrays (velocity, Adam's moments) are the twin's own flat arrays, in the optimizer's own
layout, so optimizer.state_dict() and --resume work as with the textbook step. docs/gpu.md tells the whole story.
"""

from pathlib import Path

import numpy as np

from ..optim import SGD, Adam

KERNELS_SOURCE = Path(__file__).with_name("kernels.cu")
ACTIVATIONS = {"sigmoid": 0, "tanh": 1, "relu": 2}  # kernels.cu's ACT_*
POOLS = {"avg": 0, "max": 1}  # kernels.cu's POOL_*
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# LeNet-5's geometry (model.py), as template arguments of the kernels: C1 takes (1, 28, 28) with padding 2 to
# (6, 28, 28), pooled to (6, 14, 14); C3 takes that to (16, 10, 10), pooled to (16, 5, 5) = F5's 400 inputs.
C1 = dict(C=1, H=28, W=28, F=6, K=5, PAD=2)
C3 = dict(C=6, H=14, W=14, F=16, K=5, PAD=0)
FC = (("f5", 400, 120), ("f6", 120, 84), ("f7", 84, 10))  # (layer, inputs, outputs)
THREADS = 256  # the element-wise kernels' blocks, and the weight-gradient kernels' (C3: 496 items in 2 rounds)
FORWARD_THREADS = 416  # 13 warps: C3's 400 pooled outputs in one round, C1's 1176 in three
BACKWARD_THREADS = 320  # stage2_backward: its 6 x 7 x 7 = 294 blocks of ds1 in one round
LOSS_THREADS = 512
C1_PARTS = 7  # C1's weight gradient: its 28 output rows in 7 parts of 4, so that 252 threads have work (kernels.cu)


def _conv(name, s, *extra):
    return f"{name}<T, {s['C']}, {s['H']}, {s['W']}, {s['F']}, {s['K']}, {', '.join(map(str, extra))}>"


def kernel_names(dtype, activation, pool):
    """{role: template instantiation} of kernels.cu for one dtype, activation and pooling."""
    t, a, p = C_TYPES[np.dtype(dtype)], ACTIVATIONS[activation], POOLS[pool]
    names = {
        "c1_train": f"conv_pool_forward<T, {a}, {p}, 1, 28, 28, 6, 5, 2, {FORWARD_THREADS}, true>",
        "c3_train": f"conv_pool_forward<T, {a}, {p}, 6, 14, 14, 16, 5, 0, {FORWARD_THREADS}, true>",
        "c1_infer": f"conv_pool_forward<T, {a}, {p}, 1, 28, 28, 6, 5, 2, {FORWARD_THREADS}, false>",
        "c3_infer": f"conv_pool_forward<T, {a}, {p}, 6, 14, 14, 16, 5, 0, {FORWARD_THREADS}, false>",
        "stage2_backward": f"stage2_backward<T, {a}, {p}, 6, 14, 14, 16, 5, {BACKWARD_THREADS}>",
        "c1_weight_grad": _conv("conv_weight_grad", C1, C1["PAD"], C1_PARTS, THREADS),
        "c3_weight_grad": _conv("conv_weight_grad", C3, C3["PAD"], 1, THREADS),
        "sum_partials": "sum_partials<T>",
        "bias_activation": f"bias_activation<T, {a}>",
        "bias": "bias_activation<T, 3>",
        "activation_backward": f"activation_backward<T, {a}>",
        "loss": f"softmax_cross_entropy<T, {LOSS_THREADS}>",
        "sgd": "optimizer_step<T, 0, 0>",
        "sgd_nesterov": "optimizer_step<T, 0, 1>",
        "adam": "optimizer_step<T, 1, 0>",
    }
    return {role: name.replace("<T,", f"<{t},").replace("<T>", f"<{t}>") for role, name in names.items()}


def all_kernel_names():
    """Every instantiation the twin can ask for (what CI compiles, tests/test_kernels.py)."""
    return sorted(
        {
            name
            for dtype in C_TYPES
            for activation in ACTIVATIONS
            for pool in POOLS
            for name in kernel_names(dtype, activation, pool).values()
        }
    )


class CudaDevice:
    """Where the twin's work runs: CuPy arrays, kernels.cu compiled by CuPy (NVRTC), cuBLAS products."""

    def __init__(self):
        import cupy

        from .cublas import Blas

        self.xp, self.blas = cupy, Blas()

    def compile(self, names):
        """{role: function(grid, block, args)} for kernel_names()."""
        module = self.xp.RawModule(
            code=KERNELS_SOURCE.read_text(), options=("-std=c++17",), name_expressions=list(names.values())
        )
        return {role: module.get_function(name) for role, name in names.items()}

    def gemm(self, a, b, out):
        """out = a @ b on the current stream (a CUDA graph being recorded, or the one the caller runs on)."""
        self.blas.gemm(a, b, out, self.xp.cuda.get_current_stream().ptr)

    def copy(self, dst, src):
        """dst[...] = src, one device-to-device copy when the layouts allow it."""
        if src.dtype == dst.dtype and src.flags.c_contiguous and src.shape == dst.shape:
            runtime = self.xp.cuda.runtime
            stream = self.xp.cuda.get_current_stream().ptr
            runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, runtime.memcpyDeviceToDevice, stream)
        else:
            dst[...] = src


class _Buffers:
    """Every array one batch size needs, made once: a CUDA graph replays fixed addresses.

    Fully connected inputs carry the bias column (s4 (N, 401), a5 (N, 121), a6 (N, 85), last column 1).
    """

    def __init__(self, xp, dtype, n):
        def empty(*shape):
            return xp.empty(shape, dtype=dtype)

        self.n = n
        self.x, self.y = empty(n, 1, 28, 28), xp.empty(n, dtype=np.int64)
        self.s2, self.s4 = empty(n, 6, 14, 14), empty(n, 401)
        self.z5, self.a5, self.z6, self.a6, self.z7 = (
            empty(n, 120),
            empty(n, 121),
            empty(n, 84),
            empty(n, 85),
            empty(n, 10),
        )
        self.logits = empty(n, 10)
        self.trains = False

    def for_training(self, xp, dtype):
        """The arrays only a training step needs (activations kept for backward, gradients), made on first use."""
        if self.trains:
            return self

        def empty(*shape):
            return xp.empty(shape, dtype=dtype)

        n = self.n
        self.a1, self.a3 = empty(n, 6, 28, 28), empty(n, 16, 10, 10)
        self.dlogits, self.d6, self.d5, self.ds4 = empty(n, 10), empty(n, 84), empty(n, 120), empty(n, 400)
        self.dz3, self.dz1 = empty(n, 16, 10, 10), empty(n, 6, 28, 28)
        # The weight gradients of the convolutions, summed over images in blocks of per_block: a function of the
        # batch size alone, so the sums (and their rounding) are the same on any GPU.
        self.per_block = -(-n // 256)
        self.blocks = -(-n // self.per_block)
        self.part1 = empty(self.blocks * C1_PARTS, 6 * 25 + 6)
        self.part3 = empty(self.blocks, 16 * 150 + 16)
        self.loss, self.correct = xp.empty((), dtype=dtype), xp.empty((), dtype=np.int64)
        self.trains = True
        return self


class GpuTwin:
    """LeNet-5 `model` and its `optimizer` (lenet.optim.SGD or Adam; None for forward passes only), run by
    lenet/fast/kernels.cu.

    twin = GpuTwin(model, optimizer)
    loss, correct = twin.train_step(x, y)   # lenet.step.train_step(model, SoftmaxCrossEntropy(), optimizer, x, y)
    logits = twin.forward(x)                # model.forward(x)

    Results are arrays of the twin's own, overwritten by its next call of the same batch size: read or copy them
    before that (trainer.train_epoch and evaluate do). run_forward and run_train launch the kernels alone, on fixed
    buffers, so that graphs.py can record them.
    """

    OPTIMIZERS = (SGD, Adam)

    def __init__(self, model, optimizer=None, device=None):
        params = model.parameters()
        if optimizer is not None:  # None: forward passes only (test.py, evaluation)
            if type(optimizer) not in self.OPTIMIZERS:
                raise TypeError(f"the GPU twin runs lenet.optim.SGD and Adam, not {type(optimizer).__name__}")
            if len(optimizer.params) != len(params) or any(
                a is not b for a, b in zip(optimizer.params, params, strict=True)
            ):
                raise ValueError("the optimizer must hold the model's parameters, in the model's order")
        self.model, self.optimizer = model, optimizer
        self.dev = device or CudaDevice()
        self.xp, self.dtype = self.dev.xp, model.dtype
        self.k = self.dev.compile(kernel_names(self.dtype, model.activation, model.pool))
        self.names = [name for name, _ in model.named_parameters()]
        self.params = params
        sizes = [int(np.prod(p.shape)) for p in params]
        self.offsets = dict(zip(self.names, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
        self.size = sum(sizes)
        self.flat = self.xp.empty(self.size, dtype=self.dtype)  # every parameter, in the model's order
        self.views = [None] * len(params)
        self.w = {}  # name -> the parameter's view of self.flat, as the kernels read it
        self._adopt_parameters()
        # Gradients: the convolutions' in model order; each fully connected layer's as one (out, in + 1) product.
        self.gconv = self.xp.empty(self.offsets["f5.weight"], dtype=self.dtype)
        self.gfc = {name: self.xp.empty((outs, ins + 1), dtype=self.dtype) for name, ins, outs in FC}
        self.uses_state = isinstance(optimizer, Adam) or getattr(optimizer, "momentum", 0) != 0
        names = optimizer.state_names if optimizer is not None else ()
        self.state = {name: self.xp.zeros(self.size, dtype=self.dtype) for name in names}
        self.hyper = self.xp.zeros(6, dtype=np.float64)  # lr, momentum, weight_decay, beta1, beta2, eps
        self.steps = self.xp.zeros((), dtype=np.int64)
        self._hyper = self._steps = None  # what the device holds (None: not written yet)
        self._buffers = {}

    # -- what stays outside the kernels: the model's and the optimizer's arrays, read before each call --------
    def _adopt_parameters(self):
        """Make every parameter a view of self.flat (its values copied in)."""
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            start = self.offsets[name]
            view = self.flat[start : start + p.data.size].reshape(p.shape)
            view[...] = p.data
            p.data = self.views[i] = self.w[name] = view

    def _adopt_optimizer(self):
        """The optimizer's state arrays become the twin's, and the device gets its step count and coefficients."""
        opt = self.optimizer
        if any(p.data is not v for p, v in zip(self.params, self.views, strict=True)):
            self._adopt_parameters()  # someone gave a parameter a new array
        if self.uses_state:
            for name, own in self.state.items():
                current = opt.state[name]
                if current is None:  # before the first step, or a state dict without it: zero, as the optimizer
                    own[...] = 0
                elif current is not own:  # load_state_dict made new arrays
                    own[...] = current
                opt.state[name] = own
        hyper = (
            opt.lr,
            getattr(opt, "momentum", 0.0),
            opt.weight_decay,
            getattr(opt, "beta1", 0.0),
            getattr(opt, "beta2", 0.0),
            getattr(opt, "eps", 0.0),
        )
        if hyper != self._hyper:
            self.hyper[...] = self.xp.asarray(hyper, dtype=np.float64)
            self._hyper = hyper
        if opt.steps != self._steps:
            self.steps[...] = opt.steps
            self._steps = opt.steps

    def buffers(self, n, train=False):
        b = self._buffers.get(n)
        if b is None:
            b = self._buffers[n] = _Buffers(self.xp, self.dtype, n)
        return b.for_training(self.xp, self.dtype) if train else b

    def stage_forward(self, x):
        """The batch copied into its buffers; returns them."""
        self.model.check_input(x)
        b = self.buffers(x.shape[0])
        self.dev.copy(b.x, x)
        if any(p.data is not v for p, v in zip(self.params, self.views, strict=True)):
            self._adopt_parameters()
        return b

    def stage_train(self, x, y):
        """The batch and labels copied into their buffers, the optimizer's state adopted; returns the buffers."""
        if self.optimizer is None:
            raise ValueError("this GPU twin was made without an optimizer: it runs forward passes only")
        self.model.check_input(x)
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels of shape {tuple(y.shape)} for {x.shape[0]} images")
        b = self.buffers(x.shape[0], train=True)
        self.dev.copy(b.x, x)
        self.dev.copy(b.y, y)
        self._adopt_optimizer()
        return b

    def finish_train(self):
        """After a step's kernels: the host's step count follows the device's."""
        self.optimizer.steps += 1
        self._steps = self.optimizer.steps

    # -- the calls ---------------------------------------------------------------------------------------------
    def forward(self, x):
        """Logits (N, 10) of images x (N, 1, 28, 28): model.forward(x)."""
        b = self.stage_forward(x)
        self.run_forward(b)
        return b.logits

    def train_step(self, x, y):
        """One step of forward, loss, backward and optimizer on images x and labels y; (loss, correct) on the device."""
        b = self.stage_train(x, y)
        self.run_train(b)
        self.finish_train()
        return b.loss, b.correct

    # -- the kernels, in order: what a CUDA graph records -------------------------------------------------------
    def _launch(self, role, blocks, args, block=(THREADS,)):
        self.k[role]((blocks,), block, args)

    def _elementwise(self, role, count, args):
        self._launch(role, -(-count // THREADS), args)

    def run_forward(self, b):
        """model.forward, inference only (no activations kept): 8 launches."""
        n, w, i32 = b.n, self.w, np.int32
        conv = (FORWARD_THREADS,)
        self._launch("c1_infer", n, (b.x, w["c1.weight"], w["c1.bias"], b.s2, b.s2, i32(6 * 14 * 14), i32(0)), conv)
        self._launch("c3_infer", n, (b.s2, w["c3.weight"], w["c3.bias"], b.s4, b.s4, i32(401), i32(1)), conv)
        self._dense_forward(b)
        self.dev.gemm(b.a6[:, :84], w["f7.weight"].T, b.z7)
        self._elementwise("bias", n * 10, (b.z7, w["f7.bias"], b.logits, i32(n), i32(10), i32(10)))

    def _dense_forward(self, b):
        """F5 and F6: products, then bias and activation (writing the next layer's bias column)."""
        n, w, i32 = b.n, self.w, np.int32
        self.dev.gemm(b.s4[:, :400], w["f5.weight"].T, b.z5)  # (N, 120)
        self._elementwise("bias_activation", n * 121, (b.z5, w["f5.bias"], b.a5, i32(n), i32(120), i32(121)))
        self.dev.gemm(b.a5[:, :120], w["f6.weight"].T, b.z6)  # (N, 84)
        self._elementwise("bias_activation", n * 85, (b.z6, w["f6.bias"], b.a6, i32(n), i32(84), i32(85)))

    def run_train(self, b):
        """lenet.step.train_step: forward keeping activations, loss, backward, optimizer step: 21 launches."""
        n, w, g, i32 = b.n, self.w, self.gfc, np.int32
        # forward
        conv = (FORWARD_THREADS,)
        self._launch("c1_train", n, (b.x, w["c1.weight"], w["c1.bias"], b.a1, b.s2, i32(6 * 14 * 14), i32(0)), conv)
        self._launch("c3_train", n, (b.s2, w["c3.weight"], w["c3.bias"], b.a3, b.s4, i32(401), i32(1)), conv)
        self._dense_forward(b)
        self.dev.gemm(b.a6[:, :84], w["f7.weight"].T, b.z7)  # (N, 10); F7's bias is added in the loss kernel
        loss_args = (b.z7, w["f7.bias"], b.y, i32(n), b.dlogits, b.loss, b.correct, self.steps)
        self._launch("loss", 1, loss_args, block=(LOSS_THREADS,))
        # backward through F7, F6, F5: each weight gradient with its bias gradient in one product (the bias column)
        self.dev.gemm(b.dlogits.T, b.a6, g["f7"])  # (10, 85)
        self.dev.gemm(b.dlogits, w["f7.weight"], b.d6)  # (N, 84)
        self._elementwise("activation_backward", n * 84, (b.d6, b.a6, i32(85), b.d6, i32(n), i32(84)))
        self.dev.gemm(b.d6.T, b.a5, g["f6"])  # (84, 121)
        self.dev.gemm(b.d6, w["f6.weight"], b.d5)  # (N, 120)
        self._elementwise("activation_backward", n * 120, (b.d5, b.a5, i32(121), b.d5, i32(n), i32(120)))
        self.dev.gemm(b.d5.T, b.s4, g["f5"])  # (120, 401)
        self.dev.gemm(b.d5, w["f5.weight"], b.ds4)  # (N, 400)
        # backward through the convolution stages
        backward = (b.ds4, i32(400), b.a3, w["c3.weight"], b.a1, b.dz3, b.dz1)
        self._launch("stage2_backward", n, backward, (BACKWARD_THREADS,))
        self._launch("c3_weight_grad", b.blocks, (b.s2, b.dz3, b.part3, i32(n), i32(b.per_block)))
        self._launch("c1_weight_grad", b.blocks, (b.x, b.dz1, b.part1, i32(n), i32(b.per_block)))
        c1_size = self.offsets["c3.weight"]  # c1.weight and c1.bias
        sums = (b.part1, i32(b.part1.shape[0]), i32(c1_size), self.gconv[:c1_size])
        sums += (b.part3, i32(b.part3.shape[0]), i32(self.gconv.size - c1_size), self.gconv[c1_size:])
        self._launch("sum_partials", -(-self.gconv.size // 32), sums, block=(32, 8))
        # the optimizer step over all parameters
        opt = self.optimizer
        role = "adam" if isinstance(opt, Adam) else "sgd_nesterov" if opt.nesterov else "sgd"
        state = list(self.state.values()) if self.uses_state else [self.flat]  # SGD without momentum keeps none
        s1, s2 = state[0], state[-1]
        fc = [a for name, ins, outs in FC for a in (g[name], i32(outs), i32(ins))]
        args = (self.flat, s1, s2, i32(self.size), self.gconv, i32(self.gconv.size), *fc, self.hyper, self.steps)
        self._elementwise(role, self.size, args)

    # -- for tests and teaching ---------------------------------------------------------------------------------
    def gradients(self):
        """{parameter name: its gradient from the last training step}, as model.backward would fill param.grad."""
        out = {}
        for name, p in zip(self.names, self.params, strict=True):
            layer, kind = name.split(".")
            if layer in self.gfc:
                g = self.gfc[layer]
                out[name] = g[:, :-1] if kind == "weight" else g[:, -1]
            else:
                start = self.offsets[name]
                out[name] = self.gconv[start : start + p.data.size].reshape(p.shape)
        return out
