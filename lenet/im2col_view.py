"""im2col, seen: what the demo's page shows of a convolution as one matrix product, for C1 or C3.

Every index and number comes from lenet's own im2col and col2im (lenet/im2col.py), never from a copy of their
geometry: which input cell each entry of the im2col matrix reads is im2col applied to an array that holds each
cell's number; how many windows cover a cell is col2im applied to a matrix of ones. The page only looks these up.

Forward: cols = im2col(x), W (F, C*KH*KW) @ cols (C*KH*KW, OH*OW*N) -> (F, OH*OW*N), the conv output.
Backward: dcols = W^T @ dout, then col2im adds each column back onto the window it came from: a cell covered by
k windows gets the sum of k entries of dcols.
"""

import functools

import numpy as np

from .backend import matmul, to_numpy
from .im2col import batch_last, col2im, im2col, output_size
from .wire import pack, scale, value_range

# The input of each convolution: the image for C1, S2's pooled maps for C3 (layer names of LeNet5.layers).
CONV_INPUTS = {"c1": "input", "c3": "s2"}


@functools.lru_cache(maxsize=8)
def index_maps(channels, height, width, kh, kw, pad):
    """Where each entry of the im2col matrix of one (C, H, W) input comes from: (cells, source), int32 (K, L).

    cells: the flat index into the zero-padded input (C, H+2p, W+2p), as the page draws it;
    source: the flat index into the input itself (C, H, W), -1 where the entry reads the zero padding.
    K = C*KH*KW rows, L = OH*OW columns (N = 1).
    """
    padded_shape = (1, channels, height + 2 * pad, width + 2 * pad)
    numbered = np.arange(1, np.prod(padded_shape) + 1, dtype=np.float64).reshape(padded_shape)
    cells = im2col(numbered, kh, kw) - 1  # the padded grid, windows without further padding
    numbered = np.arange(1, channels * height * width + 1, dtype=np.float64).reshape(1, channels, height, width)
    source = im2col(numbered, kh, kw, pad=pad) - 1  # the padding reads 0: -1
    return cells.astype(np.int32), source.astype(np.int32)


def im2col_view(model, layer_name, result, batch):
    """The JSON answer of /api/im2col: `result` is backward_pass(model, x, target) of the image on the page."""
    conv = getattr(model, layer_name)
    x = result["outputs"][CONV_INPUTS[layer_name]]  # (1, C, H, W)
    _, c, h, w = x.shape
    f, _, kh, kw = conv.weight.shape
    pad, stride = conv.padding, conv.stride
    oh, ow = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    weight = to_numpy(conv.weight.data).reshape(f, -1)  # (F, C*KH*KW)
    cols = im2col(x, kh, kw, stride, pad)  # (C*KH*KW, OH*OW)
    dout = result["output_grads"][layer_name][0].reshape(f, -1)  # (F, OH*OW): N = 1, so Conv2d.backward's layout
    dcols = matmul(weight.T, dout)  # (C*KH*KW, OH*OW), as Conv2d.backward computes it
    dx = col2im(dcols, x.shape, kh, kw, stride, pad)[0]  # (C, H, W)
    coverage = col2im(np.ones_like(dcols), x.shape, kh, kw, stride, pad)[0]  # windows over each cell
    cells, source = index_maps(c, h, w, kh, kw, pad)
    padded = batch_last(x, pad)[..., 0]  # (C, H+2p, W+2p): the input as the windows see it
    out = result["outputs"][layer_name][0]  # (F, OH, OW), before the activation
    column = np.arange(oh * ow).reshape(oh, ow, 1)[..., 0]  # Conv2d.forward: (F, OH*OW*N) read as (F, OH, OW, N)
    k, n = c * kh * kw, batch
    return {
        "layer": layer_name,
        "kernel": [kh, kw],
        "padding": pad,
        "input": pack(padded),
        "input_range": value_range(padded),
        "cells": pack(cells),
        "source": pack(source),
        "cols": pack(cols),
        "weight": pack(weight),
        "weight_scale": scale(weight),
        "column": pack(column),
        "output": pack(out),
        "output_scale": scale(out),
        "dout": pack(dout),
        "dout_scale": scale(dout),
        "dcols": pack(dcols),
        "dcols_scale": scale(dcols),
        "dx": pack(dx),
        "dx_scale": scale(dx),
        "coverage": pack(coverage.astype(np.int32)),
        "coverage_range": value_range(coverage),
        "batch": n,
        "shapes": {
            "x": [n, c, h, w],
            "cols": [k, oh * ow * n],
            "weight": [f, k],
            "product": [f, oh * ow * n],
            "out": [n, f, oh, ow],
        },
    }
