"""Magnitude pruning of an ONNX model the way a user would script it with onnx + numpy.

The baseline `pare prune` is benchmarked against (benches/prune.rs, via scripts/bench.sh):
the same weights (constant inputs of Conv, ConvTranspose, Gemm and MatMul with at least 128
elements, float types), the same rule (exactly round(sparsity * n) smallest |w| set to zero,
per tensor or over all of them), written back with onnx.save. Straightforward, not
deliberately slow: vectorized numpy throughout, np.partition instead of a sort.

    python scripts/prune_numpy.py IN.onnx OUT.onnx --sparsity 0.5 [--scope layer|global]

Models over protobuf's 2 GiB limit are written with their weights in OUT.onnx.data.
"""

import argparse
import os

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
MIN_PARAMS = 128
PROTOBUF_LIMIT = 2**31 - 1


def weights(graph):
    """Initializers read as the weight input of a Conv/Gemm/MatMul-like node."""
    inits = {t.name: t for t in graph.initializer}
    names = []
    for node in graph.node:
        i = WEIGHT_INPUT.get(node.op_type)
        if i is None or len(node.input) <= i:
            continue
        t = inits.get(node.input[i])
        if t is None or t.data_type not in FLOATS or t.name in names:
            continue
        if int(np.prod(t.dims)) >= MIN_PARAMS:
            names.append(t.name)
    return [inits[n] for n in names]


def prune_layer(arrays, sparsity):
    for w in arrays:
        flat = w.reshape(-1)
        k = int(round(sparsity * flat.size))
        if k:
            flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0


def prune_global(arrays, sparsity):
    mags = np.concatenate([np.abs(w).reshape(-1) for w in arrays])
    k = int(round(sparsity * mags.size))
    if not k:
        return
    threshold = np.partition(mags, k - 1)[k - 1]
    del mags
    for w in arrays:
        w[np.abs(w) <= threshold] = 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--sparsity", type=float, required=True)
    ap.add_argument("--scope", choices=["layer", "global"], default="layer")
    args = ap.parse_args()

    model = onnx.load(args.input)  # external data included
    tensors = weights(model.graph)
    arrays = [numpy_helper.to_array(t).copy() for t in tensors]
    (prune_layer if args.scope == "layer" else prune_global)(arrays, args.sparsity)
    for t, w in zip(tensors, arrays):
        t.CopyFrom(numpy_helper.from_array(w, t.name))
    del arrays

    # ModelProto.ByteSize() itself fails past 2 GiB: sum the tensors instead.
    big = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT - (64 << 20)
    if big:
        onnx.save(model, args.output, save_as_external_data=True,
                  location=os.path.basename(args.output) + ".data")
    else:
        onnx.save(model, args.output)


if __name__ == "__main__":
    main()
