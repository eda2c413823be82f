"""Convert ICDAR/SROIE per-image box files (x1,y1,...,x4,y4,text) to the annotation JSON.

    python tools/convert_icdar.py ../shared/data/sroie-dev/box data/sroie.json \\
        --images ../shared/data/sroie-dev/img
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ocr.data.annotations import AnnotationError, convert_icdar_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("boxes", type=Path, help="folder of NAME.csv / NAME.txt files")
    parser.add_argument("output", type=Path, help="annotation JSON to write")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="image folder, to take each image's real file name (default NAME.jpg)",
    )
    args = parser.parse_args(argv)
    try:
        doc = convert_icdar_folder(args.boxes, args.images)
    except (AnnotationError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, ensure_ascii=False))
    words = sum(len(v["words"]) for v in doc["images"].values())
    print(f"wrote {len(doc['images'])} images, {words} words to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
