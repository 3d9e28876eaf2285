"""Builds the TFLite corpus the validation tests run: Keras application families with random
weights, converted by TensorFlow's own TFLiteConverter in three variants each.

    python scripts/keras_corpus.py OUT_DIR [FAMILY ...]

- `NAME_f32.tflite`: plain float32.
- `NAME_f16.tflite`: float16 weights widened by DEQUANTIZE (Optimize.DEFAULT + float16).
- `NAME_int8.tflite`: full-integer int8 (representative dataset of 4 random images, int8 in/out).

Weights are random (`weights=None`: nothing is downloaded); inputs are 96x96x3 to keep
conversion and inference quick. The files are generated, never committed (ResNet50V2 float32
is about 90 MB). scripts/tflite-corpus.sh runs this in its own virtual environment.
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

FAMILIES = {
    "MobileNetV2": tf.keras.applications.MobileNetV2,
    "MobileNetV3Small": tf.keras.applications.MobileNetV3Small,
    "EfficientNetB0": tf.keras.applications.EfficientNetB0,
    "DenseNet121": tf.keras.applications.DenseNet121,
    "NASNetMobile": tf.keras.applications.NASNetMobile,
    "ResNet50V2": tf.keras.applications.ResNet50V2,
}
SIZE = 96


def build(name):
    tf.keras.utils.set_random_seed(0)
    ctor = FAMILIES[name]
    try:
        return ctor(weights=None, input_shape=(SIZE, SIZE, 3), classes=10)
    except ValueError:
        # NASNetMobile only accepts other input shapes without its classification top.
        return ctor(weights=None, input_shape=(SIZE, SIZE, 3), include_top=False, pooling="avg")


def convert(model, variant):
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "f16":
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        rng = np.random.default_rng(0)
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)] for _ in range(4))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = tf.int8
        c.inference_output_type = tf.int8
    return c.convert()


def main():
    out = sys.argv[1]
    names = sys.argv[2:] or list(FAMILIES)
    os.makedirs(out, exist_ok=True)
    for name in names:
        model = build(name)
        for variant in ["f32", "f16", "int8"]:
            t = time.time()
            data = convert(model, variant)
            path = os.path.join(out, f"{name}_{variant}.tflite")
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
            print(f"{name}_{variant}.tflite {len(data)} bytes {time.time() - t:.1f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
