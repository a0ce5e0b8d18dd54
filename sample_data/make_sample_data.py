"""Regenerate sample_data/: real activations of a small MLP trained on scikit-learn's digits.

A 64-128-128-64-10 ReLU network is trained with plain-numpy full-batch gradient descent
(momentum 0.9, weight decay 5e-4, learning rate 0.1 annealed to 0 on a cosine, cross-entropy) on
all 1 797 digit images from a fixed seed, past zero training error (reached by epoch 300) into
the terminal phase. At the listed epochs every training row's post-ReLU activations
of the three hidden layers, the labels, the network's predictions and the classifier (W, b) are
written as an actgeom dump v1 (float16, the usual storage of real dumps), one file per
checkpoint.

Deterministic: same seed, same numpy and BLAS → the same files. Needs scikit-learn only for the
data set:  pip install '.[sample-data]' && python sample_data/make_sample_data.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from actgeom.core.dump import DumpWriter

WIDTHS = (64, 128, 128, 64, 10)
LAYERS = ("hidden1", "hidden2", "hidden3")
CHECKPOINT_EPOCHS = (0, 30, 100, 300, 1500)
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def init_params(rng: np.random.Generator) -> list[list[np.ndarray]]:
    """He-initialised weights, zero biases."""
    return [[rng.normal(0, np.sqrt(2 / d_in), (d_in, d_out)), np.zeros(d_out)]
            for d_in, d_out in zip(WIDTHS[:-1], WIDTHS[1:])]


def forward(params, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Hidden activations (post-ReLU) and logits."""
    hidden = []
    h = x
    for w, b in params[:-1]:
        h = np.maximum(h @ w + b, 0.0)
        hidden.append(h)
    w, b = params[-1]
    return hidden, h @ w + b


def gradient_step(params, velocity, x, y, lr: float) -> None:
    """One full-batch step of momentum gradient descent on cross-entropy + weight decay."""
    hidden, logits = forward(params, x)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(x)), y] -= 1.0
    grad = p / len(x)  # d loss / d logits
    inputs = [x] + hidden
    for k in range(len(params) - 1, -1, -1):
        w, b = params[k]
        gw = inputs[k].T @ grad + WEIGHT_DECAY * w
        gb = grad.sum(axis=0)
        if k:
            grad = (grad @ w.T) * (inputs[k] > 0)
        for j, g in enumerate((gw, gb)):
            velocity[k][j] = MOMENTUM * velocity[k][j] - lr * g
            params[k][j] += velocity[k][j]


def write_checkpoint(path: Path, params, x, y, epoch: int, steps: int) -> float:
    hidden, logits = forward(params, x)
    prediction = logits.argmax(axis=1)
    with DumpWriter(path, layers={name: h.shape[1] for name, h in zip(LAYERS, hidden)}, dtype="float16",
                    model="mlp-64-128-128-64-10 relu, sklearn digits", checkpoint=f"epoch{epoch}", step=steps,
                    label_names=[str(d) for d in range(10)], expected_rows=len(x)) as writer:
        writer.append(dict(zip(LAYERS, hidden)), labels=y, sample_id=np.arange(len(x)), prediction=prediction)
        for name in LAYERS:
            writer.set_layer_attrs(name, activation="relu", hook="post-activation")
        writer.set_classifier(params[-1][0].T, params[-1][1], layer=LAYERS[-1])
    return float((prediction != y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    x, y = digits.data / 16.0, digits.target.astype(np.int64)
    rng = np.random.default_rng(args.seed)
    params = init_params(rng)
    velocity = [[np.zeros_like(w), np.zeros_like(b)] for w, b in params]
    epochs = CHECKPOINT_EPOCHS[-1]
    for epoch in range(epochs + 1):
        if epoch in CHECKPOINT_EPOCHS:
            path = args.out / f"digits_mlp_epoch{epoch:04d}.h5"
            error = write_checkpoint(path, params, x, y, epoch, epoch)  # one step per epoch
            print(f"{path}: epoch {epoch}, training error {error:.4f}")
        gradient_step(params, velocity, x, y, LR * 0.5 * (1 + np.cos(np.pi * epoch / epochs)))


if __name__ == "__main__":
    main()
