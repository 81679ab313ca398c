"""The GPU twin (lenet/fast/gpu.py) and its kernels (kernels.cu) against the textbook model, on the CPU.

cuda_on_cpu.py compiles the CUDA kernels with the C++ compiler and runs each CUDA thread as a fiber, so these tests
run in CI, where no GPU is: every kernel's indexing, barriers and sums are checked here; tests/test_cuda.py repeats
the comparison on a real GPU, with cuBLAS and CUDA graphs.
"""

import numpy as np
import pytest
from cuda_on_cpu import CpuDevice, compiler

from lenet.fast import cublas
from lenet.fast.gpu import GpuTwin
from lenet.layers import SoftmaxCrossEntropy
from lenet.model import LeNet5
from lenet.optim import SGD, Adam
from lenet.step import train_step

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler (g++) to run the kernels on the CPU")

OPTIMIZERS = {
    "sgd": lambda params: SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov": lambda params: SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "sgd-plain": lambda params: SGD(params, lr=0.1),
    "adam": lambda params: Adam(params, lr=1e-2, weight_decay=1e-3),
}


def pair(activation="sigmoid", pool="avg", dtype="float64", optimizer="adam", seed=1):
    """(textbook model, its optimizer, twin) from the same weights."""
    ref = LeNet5(activation=activation, pool=pool, dtype=dtype, seed=seed)
    model = LeNet5(activation=activation, pool=pool, dtype=dtype, seed=seed)
    return (
        ref,
        OPTIMIZERS[optimizer](ref.parameters()),
        GpuTwin(model, OPTIMIZERS[optimizer](model.parameters()), CpuDevice()),
    )


def assert_close(got, want, tol, what):
    """max |got - want| <= tol * max |want|: tight where the array is large, without dividing by small entries."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def batch(rng, n, dtype="float64"):
    return rng.random((n, 1, 28, 28)).astype(dtype), rng.integers(0, 10, n)


def compare_steps(ref, ref_opt, twin, batches, tol, lrs=None):
    """Train both on the same batches; after every step compare losses, hits, gradients, weights and state."""
    for i, (x, y) in enumerate(batches):
        if lrs is not None:
            ref_opt.lr = twin.optimizer.lr = lrs[i]
        loss, correct = train_step(ref, SoftmaxCrossEntropy(), ref_opt, x, y)
        twin_loss, twin_correct = twin.train_step(x, y)
        assert_close(twin_loss, loss, tol, f"loss of step {i}")
        assert int(twin_correct) == int(correct), f"hits of step {i}"
        grads = twin.gradients()
        for name, p in ref.named_parameters():
            assert_close(grads[name], p.grad, tol, f"gradient of {name}, step {i}")
        twin_weights = twin.model.state_dict()
        for name, w in ref.state_dict().items():
            assert_close(twin_weights[name], w, tol, f"{name} after step {i}")
        twin_state, ref_state = twin.optimizer.state_dict(), ref_opt.state_dict()
        assert twin_state.keys() == ref_state.keys()
        for key, value in ref_state.items():
            assert_close(twin_state[key], value, tol, f"optimizer {key} after step {i}")


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_training_steps_equal_the_textbook_steps(activation, pool, rng):
    ref, ref_opt, twin = pair(activation, pool)
    compare_steps(ref, ref_opt, twin, [batch(rng, n) for n in (5, 3, 5)], 1e-11, lrs=[1e-2, 1e-2, 3e-3])


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-nesterov", "sgd-plain"])
def test_sgd_variants_equal_the_textbook_steps(optimizer, rng):
    ref, ref_opt, twin = pair(optimizer=optimizer)
    compare_steps(ref, ref_opt, twin, [batch(rng, 4) for _ in range(3)], 1e-11)
    if optimizer == "sgd-plain":
        assert twin.optimizer.state["velocity"] is None  # SGD without momentum keeps no state, as the textbook's


def test_float32_steps_equal_the_textbook_steps_to_float32_rounding(rng):
    ref, ref_opt, twin = pair(activation="sigmoid", pool="max", dtype="float32")
    compare_steps(ref, ref_opt, twin, [batch(rng, 6, "float32") for _ in range(2)], 2e-5)


def test_a_batch_shared_among_blocks_equals_the_textbook_step(rng):
    """300 images: each block of the weight-gradient kernels sums two images (kernels.cu's per_block)."""
    ref, ref_opt, twin = pair()
    compare_steps(ref, ref_opt, twin, [batch(rng, 300)], 1e-11)
    assert twin.buffers(300).per_block == 2


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_forward_equals_the_model(pool, rng):
    ref, _, twin = pair(activation="relu", pool=pool)
    x, _ = batch(rng, 7)
    assert_close(twin.forward(x), ref.forward(x), 1e-13, "logits")
    x2, _ = batch(rng, 2)  # another batch size: other buffers
    assert_close(twin.forward(x2), ref.forward(x2), 1e-13, "logits of the second batch size")


def test_resumed_optimizer_state_and_new_weights_are_taken_up(rng):
    """load_state_dict (the optimizer's and the model's) between steps, as --resume does: the twin adopts both."""
    ref, ref_opt, twin = pair(optimizer="adam")
    compare_steps(ref, ref_opt, twin, [batch(rng, 3)], 1e-11)
    other, other_opt, _ = pair(optimizer="adam", seed=7)
    train_step(other, SoftmaxCrossEntropy(), other_opt, *batch(rng, 4))
    for model, opt in ((ref, ref_opt), (twin.model, twin.optimizer)):
        model.load_state_dict(other.state_dict())
        opt.load_state_dict(other_opt.state_dict())
    assert twin.optimizer.steps == 1
    compare_steps(ref, ref_opt, twin, [batch(rng, 3) for _ in range(2)], 1e-11)
    assert twin.optimizer.steps == ref_opt.steps == 3


def test_the_model_sees_every_step_and_checks_its_input(rng):
    ref, ref_opt, twin = pair()
    x, y = batch(rng, 3)
    twin.train_step(x, y)
    params = dict(twin.model.named_parameters())
    assert np.shares_memory(params["c1.weight"].data, twin.flat)  # the optimizer kernel updates the model in place
    with pytest.raises(ValueError, match="shape"):
        twin.forward(np.zeros((2, 1, 27, 28)))
    with pytest.raises(ValueError, match="labels"):
        twin.train_step(x, y[:2])


def test_an_optimizer_it_does_not_know_is_refused():
    model = LeNet5(dtype="float64")

    class Custom(SGD):
        pass

    with pytest.raises(TypeError, match="SGD and Adam"):
        GpuTwin(model, Custom(model.parameters()), CpuDevice())


def column_major_gemm(op_a, op_b, m, n, k, a, lda, b, ldb, ldc):
    """BLAS's gemm as its reference defines it: C (m, n) = op(A) op(B), every matrix column-major in a flat buffer."""

    def matrix(flat, rows, cols, ld):
        return np.array([[flat[j * ld + i] for j in range(cols)] for i in range(rows)])

    a_mat = matrix(a, *((k, m) if op_a == cublas.OP_T else (m, k)), lda)
    b_mat = matrix(b, *((n, k) if op_b == cublas.OP_T else (k, n)), ldb)
    c = (a_mat.T if op_a == cublas.OP_T else a_mat) @ (b_mat.T if op_b == cublas.OP_T else b_mat)
    out = np.full(ldc * n, np.nan)
    for j in range(n):
        out[j * ldc : j * ldc + m] = c[:, j]
    return out


def flat_from(view):
    """The buffer a view starts in, from its first element (what a data pointer gives cuBLAS)."""
    base = view.base if view.base is not None else view
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // view.itemsize
    return base.reshape(-1)[offset:]


@pytest.mark.parametrize(
    "case",
    ["rows @ transposed", "transposed @ rows", "rows with a bias column @ rows", "one row", "one column"],
)
def test_gemm_arguments_give_the_row_major_product(case, rng):
    """The twin's products, translated to cuBLAS's column-major arguments, computed as BLAS defines them."""
    if case == "rows @ transposed":  # F5 forward: s4[:, :400] @ W5^T, the input with its bias column
        s4, w = rng.random((6, 9)), rng.random((4, 8))
        a, b = s4[:, :8], w.T
    elif case == "transposed @ rows":  # a weight gradient: dz^T @ a
        dz, x = rng.random((6, 4)), rng.random((6, 9))
        a, b = dz.T, x
    elif case == "rows with a bias column @ rows":
        a, b = rng.random((5, 7))[:, :6], rng.random((6, 3))
    elif case == "one row":
        a, b = rng.random((1, 5)), rng.random((3, 5)).T
    else:
        a, b = rng.random((1, 4)).T, rng.random((1, 3))
    out = np.zeros((a.shape[0], b.shape[1]))
    op_b, op_a, m, n, k, b_arr, ldb, a_arr, lda, ldc = cublas.gemm_arguments(a, b, out)
    # cuBLAS computes C^T = op(B') op(A') in column-major terms: its "A" is our b and its "B" our a
    c = column_major_gemm(op_b, op_a, m, n, k, flat_from(b_arr), ldb, flat_from(a_arr), lda, ldc)
    got = np.array([[c[i * ldc + j] for j in range(out.shape[1])] for i in range(out.shape[0])])
    np.testing.assert_allclose(got, a @ b, rtol=1e-12)


def test_gemm_arguments_refuse_what_cublas_cannot_read(rng):
    with pytest.raises(ValueError, match="neither layout"):
        cublas.gemm_arguments(rng.random((4, 6))[:, ::2], rng.random((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="output"):
        cublas.gemm_arguments(rng.random((4, 3)), rng.random((3, 2)), np.zeros((2, 4)).T)


def test_a_twin_without_an_optimizer_runs_forward_passes_only(rng):
    """test.py's twin on a GPU (FastRunner(model, None)): forward passes equal the model's; a step is refused."""
    model = LeNet5(dtype="float64", seed=4)
    twin = GpuTwin(model, None, CpuDevice())
    x, y = batch(rng, 6)
    assert_close(twin.forward(x), LeNet5(dtype="float64", seed=4).forward(x), 1e-13, "logits")
    with pytest.raises(ValueError, match="forward passes only"):
        twin.train_step(x, y)
