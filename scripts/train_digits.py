"""Train the bundled demo model: a 64-256-128-10 MLP on scikit-learn's digits data.

Writes ``python/weightpress/data/digits_mlp.safetensors`` (PyTorch layout: ``fcN.weight`` is
``[out, in]``, the layer computes ``relu(x Wᵀ + b)``) and ``digits_test.npz`` (the held-out
test split: ``x`` uint8 pixels 0..16, ``y`` labels) and ``digits_calib.npz`` (512 training
images, the calibration inputs of data-aware compression). Deterministic: same seed, same weights
(for one scikit-learn/NumPy version). Needs scikit-learn; the runtime does not.

Run: ``python scripts/train_digits.py``
"""

from __future__ import annotations

import os
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from weightpress.io.safetensors import write_safetensors  # noqa: E402

SEED = 0
CALIB = 512
OUT = os.path.join(os.path.dirname(__file__), "..", "python", "weightpress", "data")


def main() -> None:
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=SEED, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), alpha=1e-3, max_iter=400,
                        random_state=SEED, tol=1e-6, n_iter_no_change=30)
    clf.fit(X_tr / 16.0, y_tr)
    acc = clf.score(X_te / 16.0, y_te)
    tensors = {}
    for i, (W, b) in enumerate(zip(clf.coefs_, clf.intercepts_), start=1):
        tensors[f"fc{i}.weight"] = np.ascontiguousarray(W.T, dtype=np.float32)  # [out, in]
        tensors[f"fc{i}.bias"] = b.astype(np.float32)
    meta = {"model": "digits MLP 64-256-128-10, relu, inputs = pixels / 16",
            "layout": "out_in", "test_accuracy": f"{acc:.4f}", "seed": str(SEED)}
    os.makedirs(OUT, exist_ok=True)
    write_safetensors(os.path.join(OUT, "digits_mlp.safetensors"), tensors, meta)
    np.savez_compressed(os.path.join(OUT, "digits_test.npz"), x=X_te.astype(np.uint8),
                        y=y_te.astype(np.uint8))
    # calibration inputs for data-aware compression: 512 *training* images (never test ones)
    np.savez_compressed(os.path.join(OUT, "digits_calib.npz"), x=X_tr[:CALIB].astype(np.uint8))
    print(f"test accuracy {acc:.4f} on {len(y_te)} held-out digits; wrote {OUT}")


if __name__ == "__main__":
    main()
