"""Checks of DEPICT against the authors' released MNIST-test checkpoint (issue 11, checks a-c).

    python docs/depict_authors.py a   # the port: reconstruction MSE and k-means on the embedding
    python docs/depict_authors.py b   # ACPIC on the authors' embedding
    python docs/depict_authors.py c   # the clustering stage from their weights and their labels

``--data DIR`` is the folder with ``mnist_test.npz`` and ``depict_mnist_test_authors.npz``
(default ``../shared/data``); ``--log FILE`` appends one JSON line per epoch (check c).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nbclust import DEPICT
from nbclust.methods.metrics import cluster_acc, nmi


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=["a", "b", "c"])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--log", default=None)
    p.add_argument("--epochs", type=int, default=4000, help="check c: cap of clustering epochs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = Path(args.data)
    mnist = np.load(data / "mnist_test.npz")
    X, y = mnist["x"], mnist["y"]
    ckpt = str(data / "depict_mnist_test_authors.npz")
    authors = np.load(ckpt)
    t0 = time.perf_counter()
    if args.check == "c":
        def log(est, record):
            print(json.dumps(record), flush=True)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(json.dumps(record) + "\n")

        est = DEPICT(10, weights=ckpt, init=authors["acpic_labels"], epochs=args.epochs,
                     random_state=args.seed, verbose=0)
        est.fit(X, y, callback=log)
        labels = est.labels_
    else:
        est = DEPICT(10, weights=ckpt, init="kmeans", pretrain_epochs=0, warmup_epochs=0, epochs=0,
                     random_state=args.seed)
        est.fit(X, y)  # no training: the network is the checkpoint
        Z = est.transform(X)
        if args.check == "a":
            rec = est.reconstruct(X)
            print(f"clean reconstruction MSE on [-1, 1]: {np.mean((2 * rec - 2 * (X[:, None] / 255.0)) ** 2):.4f}")
            from sklearn.cluster import KMeans

            labels = KMeans(10, n_init=20, random_state=args.seed).fit_predict(Z)
        else:
            from nbclust.methods.acpic import ACPIC

            labels = ACPIC(10).fit_predict(Z)
            print(f"agreement with the authors' AC-PIC labels (ACC): {cluster_acc(authors['acpic_labels'], labels):.4f}")
    print(f"check {args.check}: ACC {cluster_acc(y, labels):.4f} NMI {nmi(y, labels):.4f} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
