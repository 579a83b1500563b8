"""``dpbr reconstruct``: invert shared gradients (DLG, iDLG, Inverting Gradients) and plot.

Subcommands, each writing figures (PNG), a results table (CSV) and a summary (JSON) to --out:

- ``single-batch``: one image or batch;
- ``from-batch``: one selected image out of a batch of a chosen size;
- ``batch100``: 100 images, one per class (ResNet32-10 on ``paper``, a ConvNet on ``quick``);
- ``defenses``: PSNR/SSIM against ε, σ and keep-ratio, with the failure levels;
- ``krum``: Krum forwarding one worker's gradient vs averaging.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dpbr_lib.inversion import experiments as ex
from dpbr_lib.inversion import plots
from dpbr_lib.inversion.attacks import ATTACKS, DivergenceError
from dpbr_lib.inversion.defenses import Defense
from dpbr_lib.inversion.images import SOURCES
from dpbr_lib.inversion.models import MODELS


def _defense(args: argparse.Namespace) -> Defense:
    return Defense(
        clip=args.clip, epsilon=args.epsilon, sigma=args.sigma, keep_ratio=args.keep_ratio,
        sparsify_mode=args.sparsify_mode,
    )


def _save(fig, out: Path, name: str) -> str:  # fig: matplotlib Figure
    path = out / f"{name}.png"
    fig.savefig(path, dpi=130)
    return str(path)


def _write(out: Path, name: str, args: argparse.Namespace, seconds: float, files: list[str],
           caption: str, extra: dict | None = None) -> None:
    summary = {
        "command": f"dpbr reconstruct {args.experiment}",
        "profile": args.profile,
        "seed": getattr(args, "seed", None),
        "wall_seconds": round(seconds, 2),
        "caption": caption,
        "files": files,
    } | (extra or {})
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"{name}: {caption}")
    print(f"wall time {seconds:.1f} s; wrote {', '.join(files)}")


def _experiment_run(args: argparse.Namespace) -> ex.Experiment:
    defense = _defense(args) if args.experiment != "batch100" else None
    common = dict(
        profile=args.profile, source=args.source, data_dir=args.data_dir,
        image_size=args.image_size, start=args.start, seed=args.seed, progress=not args.quiet,
        model=args.model, device=args.device,
    )
    if args.experiment == "single-batch":
        result = ex.single_batch(
            attack=args.attack, batch_size=args.batch_size, known_labels=args.known_labels,
            defense=defense, **common,
        )
    elif args.experiment == "from-batch":
        result = ex.from_batch(
            attack=args.attack, batch_size=args.batch_size, index=args.index,
            known_labels=args.known_labels, defense=defense, **common,
        )
    else:
        result = ex.batch100(num_images=args.num_images, **common)
    return result


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"The '--threads' option must be >= 1. Got {args.threads} instead.")
        torch.set_num_threads(args.threads)  # this process only
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.experiment
    start = time.perf_counter()
    try:
        if name in ("single-batch", "from-batch", "batch100"):
            result = _experiment_run(args)
            seconds = time.perf_counter() - start
            result.table.to_csv(out / f"{name}.csv", index=False)
            files = [
                str(out / f"{name}.csv"),
                _save(plots.plot_reconstruction(result), out, name),
                _save(plots.plot_loss(result.reconstruction, title=(
                    f"{name}: {result.reconstruction.attack} on {result.model}, "
                    f"{result.profile} profile, seed {args.seed}")), out, f"{name}-loss"),
            ]
            table = result.table
            shown = table[table["selected"]] if "selected" in table else table
            print(shown[["image", "label", "recovered_label", "psnr", "ssim", "failed"]]
                  .to_string(index=False))
            extra = {"psnr_mean": float(table["psnr"].mean()),
                     "ssim_mean": float(table["ssim"].mean())}
            _write(out, name, args, seconds, files, result.caption, extra)
        elif name == "defenses":
            curves = ex.defense_curves(
                attacks=tuple(args.attacks), profile=args.profile,
                seeds=tuple(args.seeds) if args.seeds else None, source=args.source,
                data_dir=args.data_dir, progress=not args.quiet, device=args.device,
            )
            seconds = time.perf_counter() - start
            failures = ex.failure_levels(curves)
            curves.to_csv(out / "defense-curves.csv", index=False)
            failures.to_csv(out / "defense-failures.csv", index=False)
            files = [
                str(out / "defense-curves.csv"), str(out / "defense-failures.csv"),
                _save(plots.plot_defense_curves(curves, metric="psnr"), out, "defense-psnr"),
                _save(plots.plot_defense_curves(curves, metric="ssim"), out, "defense-ssim"),
            ]
            print(failures.to_string(index=False))
            _write(out, "defenses", args, seconds, files,
                   f"defense curves, {args.profile} profile, attacks {', '.join(args.attacks)}")
        else:  # krum
            summary, exps = ex.krum_vs_average(
                workers=args.workers, byzantine=args.byzantine, attack=args.attack,
                profile=args.profile, source=args.source, data_dir=args.data_dir,
                start=args.start, seed=args.seed, progress=not args.quiet, device=args.device,
            )
            seconds = time.perf_counter() - start
            summary.to_csv(out / "krum.csv", index=False)
            files = [str(out / "krum.csv"), _save(plots.plot_krum(summary, exps), out, "krum")]
            print(summary.to_string(index=False))
            _write(out, "krum", args, seconds, files,
                   f"Krum vs average, {args.workers} workers, {args.attack}")
    except DivergenceError as error:
        print(f"dpbr reconstruct {name}: {error}", file=sys.stderr)
        return 1
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", choices=ex.PROFILES.names(),
                        help="run lengths: smoke (seconds), quick (CPU, minutes) or paper "
                        "(the papers' counts)")
    parser.add_argument("--out", required=True, help="folder for figures and tables")
    parser.add_argument("--seed", type=int, default=0, help="model weights, dummy draws, noise")
    parser.add_argument("--source", default="auto", choices=SOURCES,
                        help="images: CIFAR-100 from --data-dir, else offline photos/digits")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-100-python/")
    parser.add_argument("--start", type=int, default=0, help="index of the first image")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", default=None,
                        help="where the model and the attack run: cpu (default), cuda, auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is fastest on a shared machine)")


def _image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--model", default=None, choices=MODELS.names(),
                        help="network (default: lenet for DLG/iDLG, convnet for IG)")


def _attack_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--attack", default=default, choices=ATTACKS.names())
    parser.add_argument("--known-labels", action="store_true",
                        help="give the attack the true labels (default: DLG learns them, "
                        "iDLG/IG read them from the last layer)")
    parser.add_argument("--clip", type=float, default=None, help="per-sample clipping norm C")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="(ε, 1e-6)-DP Gaussian noise calibrated to 2C/b (needs --clip)")
    parser.add_argument("--sigma", type=float, default=None, help="fixed Gaussian noise std")
    parser.add_argument("--keep-ratio", type=float, default=None, help="sparsify, keep (0, 1]")
    parser.add_argument("--sparsify-mode", default="topk", choices=("topk", "randk"))


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "reconstruct", help="invert shared gradients (DLG, iDLG, Inverting Gradients)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")

    single = kinds.add_parser("single-batch", help="invert one image or batch")
    _common(single)
    _image_options(single)
    _attack_options(single, "dlg")
    single.add_argument("--batch-size", type=int, default=1)

    selected = kinds.add_parser("from-batch", help="one selected image out of a batch")
    _common(selected)
    _image_options(selected)
    _attack_options(selected, "ig")
    selected.add_argument("--batch-size", type=int, default=4)
    selected.add_argument("--index", type=int, default=0, help="the selected image, < batch size")

    hundred = kinds.add_parser("batch100", help="100 images, one per class (IG)")
    _common(hundred)
    _image_options(hundred)
    hundred.add_argument("--num-images", type=int, default=100)

    curves = kinds.add_parser("defenses", help="PSNR/SSIM against ε, σ and keep-ratio")
    _common(curves)
    curves.add_argument("--attacks", nargs="+", default=["dlg", "idlg", "ig"],
                        choices=ATTACKS.names())
    curves.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds (default: the profile's)")

    krum = kinds.add_parser("krum", help="Krum forwards one worker's gradient vs averaging")
    _common(krum)
    krum.add_argument("--attack", default="ig", choices=ATTACKS.names())
    krum.add_argument("--workers", type=int, default=8)
    krum.add_argument("--byzantine", type=int, default=2, help="f, Krum's assumed Byzantine count")

    for sub in (single, selected, hundred, curves, krum):
        sub.set_defaults(handler=run)
