"""python demo.py: a local web page where you draw and watch every layer of a trained LeNet-5 answer."""

import sys
from pathlib import Path

from ..backend import BACKENDS
from ..checkpoint import model_from_checkpoint
from ..cli import DEFAULT_CHECKPOINT, ArgumentParser, parse_then_run, program_name
from ..data import load_dataset
from ..demo import DemoServer
from ..errors import LenetError
from ..fast.tuning import tune_process
from ..inspector import Inspector


def parse_args(argv=None):
    p = ArgumentParser(
        prog=program_name("demo"),
        description="Serve a page on which you draw (or pick a test image, or upload a picture) and see "
        "the network's input, class probabilities, C1 and C3 feature maps and saliency, live; the backward pass "
        "layer by layer, with an SGD step on a private copy of the weights; im2col; and, where the run folder keeps "
        "epoch records, the network at any epoch of its training.",
    )
    p.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        help="a best_model.npz from train.py (default: %(default)s)",
    )
    p.add_argument(
        "--run",
        help="the run folder whose epoch records the epoch slider shows; a train.py run still writing there shows "
        "its new epochs as they come (default: the checkpoint's folder)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; another one exposes the page to the network (default: %(default)s)",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port to listen on, 0 for any free one (default: %(default)s)"
    )
    p.add_argument("--data-dir", help="folder with the four IDX files (default: looked up, then downloaded)")
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help="array backend (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr (default: off)")
    return p.parse_args(argv)


def run(args):
    if not 0 <= args.port <= 65535:
        raise LenetError(f"--port must lie in 0..65535, not {args.port}")
    # The settings lenet computes best with, as train.py and test.py make them: above all BLAS at one thread per
    # call, whose spinning threads made a one-image backward pass many times slower on a busy machine.
    tune_process(args.backend)
    run_dir = Path(args.run if args.run is not None else Path(args.checkpoint).parent)
    if run_dir.exists() and not run_dir.is_dir():
        raise LenetError(f"--run {run_dir}: not a folder")
    model, meta = model_from_checkpoint(args.checkpoint, backend=args.backend, input_grad=True)
    images, labels, _ = load_dataset(meta.get("dataset", "fashion-mnist"), "test", data_dir=args.data_dir)
    inspector = Inspector(model, meta, str(args.checkpoint), images[:, 0], labels, run_dir=run_dir)
    server = DemoServer((args.host, args.port), inspector, verbose=args.verbose)
    with server:
        print(f"serving {args.checkpoint} on {server.url}  (Ctrl-C stops)", flush=True)
        status = inspector.epoch_status()
        print(f"epoch records: {run_dir}" if status["available"] else status["reason"], flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)


def main(argv=None):
    """Parse argv and serve until Ctrl-C; returns the exit status (2 and one line for bad input)."""
    return parse_then_run(parse_args, run, argv, program_name("demo"))
