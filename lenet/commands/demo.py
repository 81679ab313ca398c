"""python demo.py: a local web page where you draw and watch every layer of a trained LeNet-5 answer."""

import sys

from ..backend import BACKENDS
from ..checkpoint import model_from_checkpoint
from ..cli import DEFAULT_CHECKPOINT, ArgumentParser, program_name, run_main
from ..data import load_dataset
from ..demo import DemoServer, Inspector
from ..errors import LenetError


def parse_args(argv=None):
    p = ArgumentParser(
        prog=program_name("demo"),
        description="Serve a page on which you draw (or pick a test image, or upload a picture) and see "
        "the network's input, class probabilities, C1 and C3 feature maps and saliency, live.",
    )
    p.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        help="a best_model.npz from train.py (default: %(default)s)",
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
    model, meta = model_from_checkpoint(args.checkpoint, backend=args.backend, input_grad=True)
    images, labels, _ = load_dataset(meta.get("dataset", "fashion-mnist"), "test", data_dir=args.data_dir)
    inspector = Inspector(model, meta, str(args.checkpoint), images[:, 0], labels)
    server = DemoServer((args.host, args.port), inspector, verbose=args.verbose)
    with server:
        print(f"serving {args.checkpoint} on {server.url}  (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)


def main(argv=None):
    """Parse argv and serve until Ctrl-C; returns the exit status (2 and one line for bad input)."""
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (already reported in one line)
        return e.code or 0
    return run_main(lambda: run(args), program_name("demo"))
