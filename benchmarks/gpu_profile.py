"""Where a training step's and a forward pass's GPU time goes, kernel by kernel: lenet's GPU twin beside PyTorch with
the whole step captured as a CUDA graph (needs an NVIDIA GPU, CuPy, and PyTorch built for CUDA).

    python benchmarks/gpu_profile.py [--batch-sizes 32,8192] [--steps 20]

CUPTI, through torch.profiler, records every kernel the process runs, CuPy's and cuBLAS's included. For each batch
size it profiles `--steps` calls (after five untimed ones) of: lenet's training step and forward pass as train.py
runs them (lenet.fast.FastRunner: the GPU twin, replayed as CUDA graphs), then PyTorch's (benchmarks/torch_lenet.py's
torch-graph reference). It prints the kernels per call, the GPU time per call (the kernels' own time, not the gaps
between them), and the kernels that take most of it. docs/gpu.md's kernel tables come from here.
"""

# ruff: noqa: E402  (lenet is imported after the checkout is put on the path)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout, installed or not

from environment import exit_for_missing_package

try:
    from common import ArgumentParser, describe_machine, positive_int, positive_ints, random_batch, run_main

    from lenet import LeNet5
    from lenet.backend import cupy_available, cupy_unavailable_reason
    from lenet.errors import LenetError
    from lenet.fast import FastRunner
    from lenet.optim import SGD
except ModuleNotFoundError as e:
    exit_for_missing_package(e)

LR, MOMENTUM = 0.01, 0.9


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=positive_ints, default="32,8192", help="comma-separated (default %(default)s)")
    p.add_argument("--steps", type=positive_int, default=20, help="calls profiled per row (default %(default)s)")
    return p.parse_args(argv)


def lenet_calls(x, y):
    """(train, forward) of lenet's GPU twin as train.py runs them, on CuPy copies of x and y."""
    model = LeNet5(backend="cupy", seed=0)
    runner = FastRunner(model, SGD(model.parameters(), lr=LR, momentum=MOMENTUM))
    x, y = model.xp.asarray(x), model.xp.asarray(y)
    return (lambda: runner.train_step(x, y)), (lambda: runner.forward(x))


def profile_calls(name, call, steps, torch, top=12):
    """Profile `steps` calls of `call` after five untimed ones; print the kernels per call and where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            call()
        torch.cuda.synchronize()
    kernels = [e for e in p.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    busy = sum(e.self_device_time_total for e in kernels) / steps
    print(f"--- {name}: {sum(e.count for e in kernels) / steps:.0f} kernels a call, {busy:.1f} us of GPU time a call")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"  {e.self_device_time_total / steps:9.1f} us  {e.count / steps:5.1f}x  {e.key[:100]}")
    sys.stdout.flush()


def main(argv=None):
    args = parse_args(argv)
    if not cupy_available():
        raise LenetError(f"this profiles a GPU: {cupy_unavailable_reason()}")
    try:
        import torch
        import torch_lenet
    except ImportError as e:
        raise LenetError(f"the PyTorch reference needs torch ({e})") from None
    if not torch.cuda.is_available():
        raise LenetError("the PyTorch reference needs torch built for CUDA (torch.cuda.is_available() is False)")
    print("\n".join(describe_machine(1)))
    state = LeNet5(seed=0).state_dict()
    for n in args.batch_sizes:
        x, y = random_batch(n)
        train, forward = lenet_calls(x, y)
        profile_calls(f"lenet training step, batch {n}", train, args.steps, torch)
        profile_calls(f"lenet forward pass, batch {n}", forward, args.steps, torch)
        reference = torch_lenet.torch_graph_steps(state, x, y, LR, MOMENTUM)
        profile_calls(f"torch-graph training step, batch {n}", reference["train"], args.steps, torch)
        profile_calls(f"torch-graph forward pass, batch {n}", reference["infer"], args.steps, torch)


if __name__ == "__main__":
    run_main(main)
