"""How good are the pseudo-labels? Self-training on ACDC, each labelling pass scored against the truth.

ACDC's "unlabelled" patients have expert labels, which the training never sees; this benchmark reads them to
score what the teacher handed the student at every pass: Dice of the pseudo-labels per class (all pixels,
and over the kept pixels only), the share of pixels kept, and what flip averaging changes (an extra,
untimed-in-spirit plain pass is scored beside a TTA pass; it runs inside the budgeted run, so such a run
makes slightly fewer steps than the command would). The model is then scored on the 10 evaluation
patients as ``acdc_defaults.py`` scores the command's models, and the entry goes into the same results file.

    python benchmarks/pseudo_label_quality.py --m 4 --draw 1 --name unlabelled --work /tmp/plq
    python benchmarks/pseudo_label_quality.py --m 4 --draw 1 --name one-pass --passes 0.5 --no-tta --no-agreement

Results: the pass scores in results/pseudo_labels_<device>.json; the model's scores in
results/acdc_defaults_<device>.json (arm ``--name``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any, Dict, List, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from acdc_defaults import EVAL, machine, run_arm, unlabelled_patients  # noqa: E402
from acdc_subset import DEFAULT_ACDC, make_subset, patients  # noqa: E402
from common import bf16_flags, cpu_model  # noqa: E402
from study import draws  # noqa: E402


def dice_per_class(pred: Any, truth: Any, volumes: Any, classes: int, keep: Any = None) -> List[float]:
    """Mean over volumes of each foreground class's Dice (only ``keep`` pixels count when given); a class
    absent from both counts as 1."""
    import numpy as np

    scores = []
    for volume in np.unique(volumes):
        rows = volumes == volume
        p, t = pred[rows], truth[rows]
        k = keep[rows] if keep is not None else np.ones_like(p, dtype=bool)
        per = []
        for c in range(1, classes):
            a, b = (p == c) & k, (t == c) & k
            total = a.sum() + b.sum()
            per.append(1.0 if total == 0 else 2.0 * (a & b).sum() / total)
        scores.append(per)
    return [float(x) for x in np.mean(scores, 0)]


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, required=True)
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--name", default="unlabelled", help="the arm's name in the results")
    parser.add_argument("--with-unlabelled", type=int, default=30, metavar="N")
    parser.add_argument("--passes", type=float, nargs="+", help="shares of the run at which to (re)label")
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--no-agreement", action="store_true")
    parser.add_argument("--share", type=float)
    parser.add_argument("--init", help="a pretrained model to start from")
    parser.add_argument("--data", default=DEFAULT_ACDC)
    parser.add_argument("--work", required=True)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from maclcore.data.dataset import SliceData, load_cases
    from maclcore.io.pairing import find_images, pair_cases
    from maclcore.labels import CARDIAC
    from maclcore.training import finetune as finetune_module
    from maclcore.training.finetune import FinetuneConfig, finetune
    from maclcore.training.unlabelled import IGNORE, PseudoLabels
    from maclcore.inference.predict import predict_slices

    pool = [p for p in patients(args.data) if p not in set(EVAL)]
    chosen = draws(pool, [args.m], args.draw + 1, 0)[args.m][args.draw]
    others = unlabelled_patients(pool, args.draw, args.with_unlabelled, args.m)
    os.makedirs(args.work, exist_ok=True)
    train = make_subset(os.path.join(args.work, f"train_{'_'.join(map(str, chosen))}"), chosen, args.data)
    folder = make_subset(os.path.join(args.work, f"unlabelled_truth_{args.with_unlabelled}_d{args.draw}"), others,
                         args.data)
    config = FinetuneConfig()
    terms = config.unlabelled_loss
    terms = replace(terms, **{k: v for k, v in {"passes": tuple(args.passes) if args.passes else None,
                                                "tta": False if args.no_tta else None,
                                                "agreement": False if args.no_agreement else None,
                                                "share": args.share}.items() if v is not None})
    config = replace(config, unlabelled_loss=terms)

    scored: List[Dict[str, Any]] = []
    truth: Dict[str, Any] = {}
    real_pseudo = finetune_module._pseudo_labels
    real_label = PseudoLabels.label

    def capture(unlabelled, plan, *rest, **kwargs):  # the plan, to preprocess the truth the same way
        truth["plan"] = plan
        return real_pseudo(unlabelled, plan, *rest, **kwargs)

    def label_and_score(self, teacher, batch_size, amp, progress=1.0):
        summary = real_label(self, teacher, batch_size, amp, progress)
        if "slices" not in truth:
            cases = pair_cases(os.path.join(folder, "imagesTr"), os.path.join(folder, "labelsTr"))
            by_name = {c.name: c for c in cases}
            volumes = load_cases([by_name[n] for n in self.data.names], truth["plan"], CARDIAC)
            truth["slices"] = SliceData.from_volumes(volumes, self.data.size, with_labels=True)
        reference = truth["slices"].labels.numpy()
        volumes = self.data.volumes.cpu().numpy()
        labels = self.labels.cpu().numpy()
        kept = labels != IGNORE
        plain = predict_slices(teacher, self.data.images, batch_size, amp).argmax(1).cpu().numpy()
        teacher.train()
        entry = {"step_share": round(progress, 3), **summary,
                 "dice_kept": dice_per_class(labels, reference, volumes, 4, kept),
                 "dice_pseudo_all": dice_per_class(np.where(kept, labels, self._previous.numpy()), reference,
                                                   volumes, 4),
                 "dice_plain_argmax": dice_per_class(plain, reference, volumes, 4),
                 "kept_share_of_truth_fg": float(((reference > 0) & kept).sum() / max(1, (reference > 0).sum()))}
        print("pass", json.dumps(entry), flush=True)
        scored.append(entry)
        return summary

    finetune_module._pseudo_labels = capture
    PseudoLabels.label = label_and_score
    model = os.path.join(args.work, f"{args.name}_m{args.m}.pt")
    started = time.perf_counter()
    finetune(pair_cases(os.path.join(train, "imagesTr"), os.path.join(train, "labelsTr")), model, config,
             init=args.init, unlabelled=find_images([os.path.join(folder, "imagesTr")]))
    with open(model + ".seconds", "w") as handle:
        handle.write(str(time.perf_counter() - started))
    entry = run_arm(args.name, [f"(in-process: {json.dumps({k: v for k, v in vars(args).items() if k != 'work'})})"],
                    chosen, args.work, args.data, os.path.join(args.work, "log.txt"))
    entry.update(device="cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0), cpu=cpu_model(),
                 cpu_flags=bf16_flags(), threads=torch.get_num_threads(), torch=torch.__version__,
                 date=time.strftime("%Y-%m-%d %H:%M"), unlabelled_patients=others, passes_scored=scored)
    print(json.dumps({k: entry[k] for k in ("arm", "m", "patients", "mean_dice", "dice", "steps", "finetune_minutes")}))
    from maclcore.io.atomic import write_json

    kind = "cpu" if entry["device"] == "cpu" else "cuda"
    out = os.path.join(HERE, "results", f"acdc_defaults_{kind}.json")
    results = json.load(open(out)) if os.path.exists(out) else {"runs": []}
    results["runs"] = [r for r in results["runs"] if (r["arm"], r["m"], r.get("patients"), machine(r)) !=
                       (entry["arm"], entry["m"], chosen, machine(entry))] + [entry]
    write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
