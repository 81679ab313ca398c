"""python visualize.py: pictures of what a trained LeNet-5 computes.

Writes filters.png, feature_maps.png, saliency.png, mistakes.png and embedding.png beside the
checkpoint (or in --out) and prints their paths; and, from the epoch records of the run the checkpoint is in
(its folder's epochs/), training.png and gradient_flow.png.
"""

from pathlib import Path

import numpy as np

from .. import visualize as vis
from ..backend import BACKENDS
from ..checkpoint import model_from_checkpoint
from ..cli import DEFAULT_CHECKPOINT, ArgumentParser, parse_then_run, program_name
from ..data import load_dataset
from ..errors import LenetError
from ..training_plots import PICTURES, draw_training


def parse_args(argv=None):
    p = ArgumentParser(
        prog=program_name("visualize"),
        description="Draw what a trained LeNet-5 computes: its filters, every layer's output for one image, "
        "saliency maps, the test set's most confident mistakes and a PCA picture of its F6 features; and, from "
        "the epoch records train.py keeps beside it, its filters learning and the gradient flow over the epochs.",
    )
    p.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        help="a best_model.npz from train.py (default: %(default)s)",
    )
    p.add_argument(
        "--index",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4, 5],
        metavar="N",
        help="test-set images for the saliency maps; the first one also for the feature maps (default: 0 1 2 3 4 5)",
    )
    p.add_argument(
        "--image",
        help="a PNG/JPEG/... file, made 28x28 grey like the data set's images, shown in the feature maps "
        "(instead of the first --index) and first in the saliency maps (default: none)",
    )
    p.add_argument(
        "--mistakes", type=int, default=18, metavar="K", help="how many mistakes to show (default: %(default)s)"
    )
    p.add_argument("--out", help="folder for the pictures (default: the checkpoint's folder)")
    p.add_argument("--data-dir", help="folder with the four IDX files (default: looked up, then downloaded)")
    p.add_argument("--backend", choices=BACKENDS, default="numpy", help="array backend (default: %(default)s)")
    return p.parse_args(argv)


def run(args):
    if args.mistakes < 0:
        raise LenetError(f"--mistakes must be >= 0, not {args.mistakes}")
    model, meta = model_from_checkpoint(args.checkpoint, backend=args.backend, input_grad=True)
    dataset = meta.get("dataset", "fashion-mnist")
    images, labels, class_names = load_dataset(dataset, "test", data_dir=args.data_dir)
    class_names = tuple(meta.get("class_names", class_names))
    bad = [i for i in args.index if not 0 <= i < len(images)]
    if bad:
        raise LenetError(f"--index {bad[0]} is out of range: the {dataset} test set has {len(images)} images")
    user_image = None
    if args.image:
        user_image = vis.to_dataset_image(vis.read_image(args.image), *vis.preprocessing_for(dataset))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    written = []

    def save(plot, name, *plot_args, **kwargs):
        path = out / name
        plot(*plot_args, path, **kwargs)
        written.append(path)

    save(vis.plot_filters, "filters.png", model.state_dict())

    if user_image is not None:
        one, source = user_image[None, None], f"{Path(args.image).name}, made 28x28"
    else:
        i = args.index[0]
        one, source = images[i : i + 1], f"test image #{i} ({class_names[labels[i]]})"
    save(vis.plot_feature_maps, "feature_maps.png", vis.layer_outputs(model, one), class_names, source=source)

    picked = images[args.index, 0]
    sal_labels, sources = list(labels[args.index]), [f"test image #{i}" for i in args.index]
    if user_image is not None:
        picked = np.concatenate([user_image[None], picked])
        sal_labels, sources = [None, *sal_labels], [Path(args.image).name, *sources]
    grads, logits = vis.saliency(model, picked)
    save(
        vis.plot_saliency,
        "saliency.png",
        picked,
        grads,
        vis.softmax(logits),
        class_names,
        labels=sal_labels,
        sources=sources,
    )

    probs, features = vis.predict(model, images)
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    worst = vis.most_confident_mistakes(probs, labels, args.mistakes)
    save(vis.plot_mistakes, "mistakes.png", images, probs, labels, worst, class_names)

    projected, ratio = vis.pca(features)
    save(vis.plot_embedding, "embedding.png", projected, ratio, labels, class_names)

    # The run over time, from the epoch records beside the checkpoint (lenet/training_plots.py)
    over_time, skipped = draw_training(Path(args.checkpoint).parent, one, source, out, args.backend)
    written += over_time

    print(f"checkpoint {args.checkpoint}: {dataset}, epoch {meta.get('epoch')}, test accuracy {accuracy:.4f}")
    for path in written:
        print(f"wrote {path}")
    if skipped:
        print(f"skipped {' and '.join(PICTURES)}: {skipped}")


def main(argv=None):
    """Parse argv and draw; returns the exit status (2 and one line for bad input)."""
    return parse_then_run(parse_args, run, argv, program_name("visualize"))
