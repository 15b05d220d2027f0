"""An RGB image folder for the tokenizer comparison: the EmojiOne emoji, fetched offline from Debian.

    python benchmarks/rgb_data.py --out data/emoji [--deb ruby-gemojione_3.3.0-1_all.deb] [--heldout-every 10]

Debian's `ruby-gemojione` package carries EmojiOne 2's 1,795 emoji as 64x64 PNGs (assets: Copyright 2014
Ranks.com Inc., CC-BY-SA-4.0; the package's copyright file is copied beside the images). Without `--deb` the
package is fetched with `apt-get download` from the configured Debian mirror and unpacked with `dpkg-deb -x`.
Each emoji is composited on white and written as RGB: OUT/train/*.png and OUT/heldout/*.png, where every
`--heldout-every`-th emoji in name order is held out. The images are not part of the repository.
"""

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

PACKAGE = "ruby-gemojione"
ASSETS = "usr/share/rubygems-integration/all/gems/gemojione-*/assets/png"
COPYRIGHT = "usr/share/doc/ruby-gemojione/copyright"


def unpack(deb: Path | None, workdir: Path) -> Path:
    """The unpacked package's root; downloads the .deb first when none is given."""
    if deb is None:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True, capture_output=True)
        deb = next(workdir.glob(f"{PACKAGE}_*.deb"))
    root = workdir / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def on_white(path: Path) -> Image.Image:
    """An RGBA (or palette) PNG composited on a white background, as RGB."""
    image = Image.open(path).convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def write_folder(root: Path, out: Path, heldout_every: int) -> dict[str, int]:
    (pngs,) = list(root.glob(ASSETS)) or [None]
    if pngs is None:
        raise SystemExit(f"no emoji PNGs under {root}/{ASSETS}")
    counts = {"train": 0, "heldout": 0}
    for split in counts:
        (out / split).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted(pngs.glob("*.png"))):
        split = "heldout" if i % heldout_every == heldout_every - 1 else "train"
        on_white(path).save(out / split / path.name)
        counts[split] += 1
    shutil.copy(root / COPYRIGHT, out / "COPYRIGHT-emojione.txt")
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/emoji"))
    parser.add_argument("--deb", type=Path, default=None, help="a downloaded ruby-gemojione .deb")
    parser.add_argument("--heldout-every", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(args.deb.resolve() if args.deb else None, Path(tmp))
        counts = write_folder(root, args.out, args.heldout_every)
    print(
        f"wrote {counts['train']} training and {counts['heldout']} held-out emoji (64x64 RGB) to {args.out}"
    )
    return counts


if __name__ == "__main__":
    main()
