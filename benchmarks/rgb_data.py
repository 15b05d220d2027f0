"""RGB image folders for the tokenizer and prior measurements: emoji artwork, fetched offline from Debian.

    python -m benchmarks.rgb_data --out data/emoji [--deb ruby-gemojione_3.3.0-1_all.deb] [--heldout-every 10]
    python -m benchmarks.rgb_data --source emojify --out data/emojify

Debian's `ruby-gemojione` package carries EmojiOne 2's 1,794 emoji as 64x64 PNGs (assets: Copyright 2014
Ranks.com Inc., CC-BY-SA-4.0; the package's copyright file is copied beside the images), with an index that
gives each its category. Without `--deb` the package is fetched with `apt-get download` from the configured
Debian mirror and unpacked with `dpkg-deb -x`. Each emoji is composited on white and written as RGB into a
folder per category, the classes (people, symbols, flags, objects, nature, activity, travel, food; the five
skin-tone swatches and the one extra count as symbols): OUT/train/CATEGORY/*.png and OUT/test/CATEGORY/*.png,
where every `--heldout-every`-th emoji in name order is held out. `--dataset OUT` then reads test/ as the
held-out split. The images are not part of the repository.

`--source emojify`: a second, smaller set in another artist's style. Debian's `libjs-emojify` carries emojify.js's
881 emoji as 64x64 PNGs (Copyright 2014 Hassan Khan, Expat; its copyright file is copied beside the images), named
by short name (`smile.png`) and without categories; each takes the category of the EmojiOne emoji of the same
name or alias (from `ruby-gemojione`'s index, fetched too; 850 of the 881 have one), the rest count as symbols.
The same composite on white, the same folders and split.
"""

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

PACKAGE = "ruby-gemojione"
ASSETS = "usr/share/rubygems-integration/all/gems/gemojione-*/assets/png"
INDEX = "usr/share/rubygems-integration/all/gems/gemojione-*/config/index.json"
COPYRIGHT = "usr/share/doc/ruby-gemojione/copyright"
EMOJIFY = "libjs-emojify"
EMOJIFY_ASSETS = "usr/share/javascript/emojify.js/images/emoji"
EMOJIFY_COPYRIGHT = "usr/share/doc/libjs-emojify/copyright"
MERGED = {"modifier": "symbols", "extras": "symbols"}  # too few to be classes of their own (5 and 1)


def unpack(deb: Path | None, workdir: Path, package: str = PACKAGE) -> Path:
    """The unpacked package's root; downloads the .deb first when none is given."""
    if deb is None:
        subprocess.run(["apt-get", "download", package], cwd=workdir, check=True, capture_output=True)
        deb = next(workdir.glob(f"{package}_*.deb"))
    root = workdir / f"root-{package}"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def emojione_categories(root: Path) -> dict[str, str]:
    """EmojiOne's index: {lower-case unicode, short name or alias: category}."""
    (index,) = list(root.glob(INDEX))
    category = {}
    for entry in json.loads(index.read_text()).values():
        names = [entry["unicode"], entry.get("shortname", ""), *entry.get("aliases", [])]
        for name in names:
            if name.strip(":"):
                category[name.strip(":").lower()] = entry["category"]
    return category


def on_white(path: Path) -> Image.Image:
    """An RGBA (or palette) PNG composited on a white background, as RGB."""
    image = Image.open(path).convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def write_folder(
    pngs: Path, category: dict[str, str], out: Path, heldout_every: int, copyright: Path
) -> dict[str, int]:
    """Every PNG of `pngs` on white, into OUT/{train,test}/CATEGORY/ (category by file stem, else symbols)."""
    if not any(pngs.glob("*.png")):
        raise SystemExit(f"no emoji PNGs under {pngs}")
    counts = {"train": 0, "test": 0}
    for i, path in enumerate(sorted(pngs.glob("*.png"))):
        split = "test" if i % heldout_every == heldout_every - 1 else "train"
        name = category.get(path.stem.lower(), "symbols")
        folder = out / split / MERGED.get(name, name)
        folder.mkdir(parents=True, exist_ok=True)
        on_white(path).save(folder / path.name)
        counts[split] += 1
    shutil.copy(copyright, out / f"COPYRIGHT-{copyright.parent.name}.txt")
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/emoji"))
    parser.add_argument("--source", choices=["emojione", "emojify"], default="emojione")
    parser.add_argument("--deb", type=Path, default=None, help="a downloaded ruby-gemojione .deb")
    parser.add_argument("--emojify-deb", type=Path, default=None, help="a downloaded libjs-emojify .deb")
    parser.add_argument("--heldout-every", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(args.deb.resolve() if args.deb else None, Path(tmp))
        category = emojione_categories(root)
        if args.source == "emojione":
            (pngs,) = list(root.glob(ASSETS)) or [root / ASSETS]
            counts = write_folder(pngs, category, args.out, args.heldout_every, root / COPYRIGHT)
        else:
            deb = args.emojify_deb.resolve() if args.emojify_deb else None
            other = unpack(deb, Path(tmp), EMOJIFY)
            pngs, copyright = other / EMOJIFY_ASSETS, other / EMOJIFY_COPYRIGHT
            counts = write_folder(pngs, category, args.out, args.heldout_every, copyright)
    print(
        f"wrote {counts['train']} training and {counts['test']} held-out {args.source} emoji (64x64 RGB, a folder "
        f"per category) to {args.out}"
    )
    return counts


if __name__ == "__main__":
    main()
