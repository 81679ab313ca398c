"""The references: the same LeNet-5 in PyTorch (sigmoid, 2x2 average pooling, float32): eager, torch.compile'd, or
(on a GPU) captured whole as CUDA graphs, PyTorch's fastest form there.

Parameter names and layouts are lenet's (c1, c3, f5, f6, f7), so lenet's state_dict loads unchanged and
both start from identical weights. Imported only when torch is benchmarked, and by the tests (tests/helpers.py),
for which TorchLeNet5 also takes lenet's other activations and poolings.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn


class TorchLeNet5(nn.Module):
    """lenet's LeNet5 in PyTorch: the same layers, names and parameter layouts (docs/checkpoints.md shows it too)."""

    def __init__(self, activation="sigmoid", pool="avg"):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.f5, self.f6, self.f7 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)
        self.act = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu}[activation]
        self.pool = {"avg": F.avg_pool2d, "max": F.max_pool2d}[pool]

    def forward(self, x):
        x = self.pool(self.act(self.c1(x)), 2)  # (N, 6, 14, 14)
        x = self.pool(self.act(self.c3(x)), 2)  # (N, 16, 5, 5)
        x = self.act(self.f5(x.flatten(1)))
        return self.f7(self.act(self.f6(x)))  # (N, 10)


def compiled_graphs():
    """How many graphs torch.compile has made in this process (a step that recompiles adds one)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def torch_steps(state, x, y, device, lr, momentum, compile=False):
    """{train, infer, sync} closures for one batch, doing the work of lenet's FastRunner.train_step and forward.

    state: lenet's state_dict (NumPy arrays); x (N, 1, 28, 28) float32 and y (N,) int64 NumPy arrays.
    compile=True runs the module through torch.compile (a PyTorch user's way to speed up a CPU model): its
    forward and backward become Inductor's generated C++; the optimizer step stays eager, since compiling
    it as well made every step recompile. The shapes are fixed (dynamic=False), so each batch size makes
    two graphs, one for training and one for inference (grad mode is part of the guard), and the steps
    after them reuse those. Both are compiled here, before any timing, by two calls of each step; the
    dict then also has "compile_s", the seconds that took. A failure to compile (no C++ compiler, say)
    is raised from here.
    """
    net = TorchLeNet5().to(device)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    model = net
    if compile:
        # Every batch size adds two graphs to forward's cache, whose default bound (8) would quietly turn
        # a long list of batch sizes back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model = torch.compile(net, dynamic=False)

    def train():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        return loss.detach(), (logits.argmax(dim=1) == y).sum()  # what lenet's train_step returns

    def infer():
        with torch.inference_mode():
            return model(x)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    steps = {"train": train, "infer": infer, "sync": sync}
    if compile:
        start = time.perf_counter()
        for _ in range(2):
            train()
            infer()
        sync()
        steps["compile_s"] = time.perf_counter() - start
    return steps


def torch_graph_steps(state, x, y, lr, momentum):
    """{train, infer, sync} closures like torch_steps', on CUDA, each a replay of one CUDA graph.

    PyTorch's documented whole-network capture (torch.cuda.graphs, "Whole-network capture"): static input and
    label tensors, three warm-up steps on a side stream (they also create the optimizer's momentum buffers), then the
    whole training step, forward, loss, backward and SGD step, recorded as one graph, and the forward pass of
    inference as another; cuDNN picks its fastest algorithms (cudnn.benchmark). A call copies the batch into the
    static inputs and replays, as lenet's graphs do.
    """
    torch.backends.cudnn.benchmark = True
    net = TorchLeNet5().cuda()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    x, y = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    static_x, static_y = x.clone(), y.clone()

    def step():  # the gradients start as None: backward writes them, and in a graph that is a fixed write
        logits = net(static_x)
        loss = F.cross_entropy(logits, static_y)
        loss.backward()
        opt.step()
        return loss.detach(), (logits.argmax(dim=1) == static_y).sum()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
        with torch.no_grad():
            for _ in range(3):
                net(static_x)
    torch.cuda.current_stream().wait_stream(side)
    train_graph, infer_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(train_graph):
        static_loss, static_correct = step()
    with torch.no_grad(), torch.cuda.graph(infer_graph):
        static_logits = net(static_x)

    def train():
        static_x.copy_(x)
        static_y.copy_(y)
        train_graph.replay()
        return static_loss, static_correct

    def infer():
        static_x.copy_(x)
        infer_graph.replay()
        return static_logits

    return {"train": train, "infer": infer, "sync": torch.cuda.synchronize}
