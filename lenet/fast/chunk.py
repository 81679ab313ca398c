"""One chunk of a data-parallel training step: the core's train_step (lenet/step.py) on part of a batch.

What it must equal: a share of train_step on the whole batch, which it runs on a chunk of m of the batch's n images
with two stand-ins:
- the loss is the chunk's share of the batch's mean: its own mean times m / n, and its gradient likewise, so that the
  chunks' losses and gradients add up to the whole batch's;
- the optimizer keeps the gradients instead of stepping: the caller adds every chunk's, in chunk order, then takes
  the one real optimizer step (parallel.DataParallel.train_step).
"""

from ..step import train_step


class ShareOfMean:
    """loss_fn's mean over a chunk, as its share (`share` = m / n) of the mean over the whole batch."""

    def __init__(self, loss_fn, share):
        self.loss_fn, self.share = loss_fn, share

    def forward(self, logits, y):
        loss = self.loss_fn.forward(logits, y)
        return loss if self.share == 1 else loss * self.share

    def backward(self):
        d = self.loss_fn.backward()
        if self.share != 1:
            d *= d.dtype.type(self.share)
        return d


class KeepGradients:
    """The optimizer's place in train_step on a chunk: step() keeps the gradients the backward pass gave."""

    def __init__(self, params):
        self.params, self.grads = params, None

    def step(self):
        # Each backward pass gives its layers new gradient arrays, so keeping these references is safe.
        self.grads = [p.grad for p in self.params]


def chunk_step(model, loss_fn, x, y, n):
    """train_step on the chunk (x, y) of a batch of n images: (its share of the mean loss, its hits, its gradients).
    What every worker, thread or process, runs on each of its chunks."""
    kept = KeepGradients(model.parameters())
    loss, hits = train_step(model, ShareOfMean(loss_fn, x.shape[0] / n), kept, x, y)
    return loss, hits, kept.grads
