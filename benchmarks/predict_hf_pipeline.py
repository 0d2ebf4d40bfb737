"""The baseline of ``bench_predict.py``: ``transformers.pipeline("zero-shot-image-classification")``
over a folder of photos, as a user would write it (run as its own process, so its load time
and memory show apart from the benchmark's).

    python benchmarks/predict_hf_pipeline.py --model DIR --inputs DIR --labels JSON
        --template T --batch-size B --threads N --out OUT.jsonl

``--labels`` is a JSON list of ``[class_name, phrase]`` pairs: the pipeline gets the phrases
as ``candidate_labels`` and ``--template`` as ``hypothesis_template``; OUT gets one JSON line
``{"path", "label"}`` per photo (``label`` the class name of the top phrase). Prints one JSON
line: images, load_s (imports + pipeline construction), run_s (the pipeline call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a save_pretrained CLIP directory")
    parser.add_argument("--inputs", type=Path, required=True, help="folder of photos")
    parser.add_argument("--labels", required=True, help="JSON list of [class_name, phrase]")
    parser.add_argument("--template", required=True, help="hypothesis_template, with {}")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch
    from transformers import pipeline

    torch.set_num_threads(args.threads)
    classify = pipeline("zero-shot-image-classification", model=args.model, device="cpu")
    pairs = json.loads(args.labels)
    by_phrase = {phrase: name for name, phrase in pairs}
    paths = sorted(p for p in args.inputs.iterdir() if p.is_file())
    loaded = time.perf_counter()
    answers = classify(
        [str(p) for p in paths],
        candidate_labels=list(by_phrase),
        hypothesis_template=args.template,
        batch_size=args.batch_size,
    )
    finished = time.perf_counter()
    with args.out.open("w") as out:
        for path, scores in zip(paths, answers, strict=True):
            top = max(scores, key=lambda s: s["score"])
            out.write(json.dumps({"path": path.name, "label": by_phrase[top["label"]]}) + "\n")
    print(
        json.dumps(
            {
                "images": len(paths),
                "load_s": round(loaded - STARTED, 3),
                "run_s": round(finished - loaded, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
