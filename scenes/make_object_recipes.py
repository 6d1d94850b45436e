"""Write ``[reconstruct]`` recipes for the real captures in ../shared/data (NeRD's
MotherChild and Gnome) without copying their photos or masks: each recipe folder holds
an invpbr.toml and a transforms.json whose frames point at the data's photos (the masks
are found beside them), every 8th photo held out.

    python scenes/make_object_recipes.py [DATA_DIR] [OUT_DIR]
    invpbr run OUT_DIR/mother_child

DATA_DIR defaults to ../shared/data/multiview beside the repository, OUT_DIR to
out/recipes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import invpbr  # noqa: E402,F401  (sets up LLVM for Dr.Jit)
from invpbr.capture import cameras  # noqa: E402

#: Working resolution of each capture (about a quarter of the shared photos, square pixels kept).
RESOLUTION = {"mother_child": [160, 120], "gnome": [226, 151]}


def write_recipe(data: Path, name: str, out: Path) -> Path:
    folder = data / name
    meta = json.loads((folder / "cameras.json").read_text())
    rows = {f["row_in_poses_bounds"]: Path(f["file_path"]).name for f in meta["frames"]}
    cams = cameras.read_llff(folder, image_names=rows)
    cams = [replace(c, file_path=(folder / "images" / Path(c.file_path).name).resolve())
            for c in cams]
    recipe = out / name
    cameras.write_transforms(recipe / "transforms.json", cams)
    held = [c.id for i, c in enumerate(sorted(cams, key=lambda c: c.id)) if i % 8 == 0]
    (recipe / "invpbr.toml").write_text(
        f"# {name} from {folder} (not copied): photos, masks beside them, LLFF poses.\n"
        f"[cameras]\nfile = \"transforms.json\"\nresolution = {RESOLUTION[name]}\n\n"
        "[reconstruct]\n# fewer joint steps than the default: these photos are larger and the\n"
        "# machine is two CPU cores\niterations = 60\n\n"
        f"[evaluate]\nheld_out = {json.dumps(held)}\n")
    return recipe


def main(argv: list[str]) -> None:
    data = Path(argv[0]) if argv else ROOT.parent / "shared" / "data" / "multiview"
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "out" / "recipes"
    for name in RESOLUTION:
        print(f"wrote {write_recipe(data, name, out)}")


if __name__ == "__main__":
    main(sys.argv[1:])
