"""One step of mini-batch gradient descent: the whole algorithm in five lines.

trainer.py runs it on every batch of an epoch (trainer.PlainRunner); the speed wing runs the same function on each
chunk of a batch (lenet/fast/chunk.py). It imports nothing, so a worker process that runs it starts fast.
"""


def train_step(model, loss_fn, optimizer, x, y):
    """One step of mini-batch gradient descent on images x (N, 1, 28, 28) and labels y (N,).

    Returns (mean loss, number of correct predictions), both still on the device.
    """
    logits = model.forward(x)  # (N, 10)
    loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward())  # fills every parameter's .grad
    optimizer.step()
    return loss, (logits.argmax(axis=1) == y).sum()
