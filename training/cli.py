"""`python -m training`: train a CNN on an image folder (or `digits`), export, register, promote.

python -m training --data DIR [--register NAME [--promote [ALIAS]]] [options]
python -m training --dataset digits --epochs 5 --register digits --promote production
python -m training data digits DIR        # write the built-in dataset as an image folder
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from core.cli import ArgumentParser
from training.errors import TrainingError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter


MAX_IMAGE_SIZE = 1024


def _train_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m training",
        description="Train the CNN on an image folder (one subfolder per class), export it to ONNX, "
        "check ONNX Runtime against Keras, and optionally register and promote it.",
        epilog="Also: `python -m training data digits DIR` writes the built-in digits dataset as PNG folders.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="image folder: class subfolders, or training_set/ [+ test_set/]")
    source.add_argument("--dataset", choices=["digits"], help="a built-in dataset")
    p.add_argument(
        "--test-data",
        type=Path,
        help="held-out folder (default: test_set/ beside training_set/, else a seeded split)",
    )
    p.add_argument("--epochs", type=int, default=25, help="default: 25, as the legacy training job")
    p.add_argument("--batch-size", type=int, help="default: 32 as the legacy training job; 16 for digits")
    p.add_argument(
        "--image-size", type=int, default=64, help=f"square input size in pixels, 8 to {MAX_IMAGE_SIZE} (default 64)"
    )
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--validation-split", type=float, default=0.2, help="held-out fraction without a test folder")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="shear/zoom/flip in the input pipeline (default: on for folders, off for digits)",
    )
    p.add_argument("--early-stopping", action="store_true", help="stop when held-out loss stops improving")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--max-per-class", type=int, help="use at most this many training images per class")
    p.add_argument("--runs-dir", type=Path, default=Path("var/runs"), help="where run directories go")
    p.add_argument("--register", metavar="NAME", help="register the model under NAME")
    p.add_argument(
        "--promote",
        nargs="?",
        const="production",
        metavar="ALIAS",
        help="promote the registered version (default alias: production)",
    )
    p.add_argument("--min-accuracy", type=float, default=0.0, help="promote only at or above this accuracy (0 to 1)")
    p.add_argument("--actor", help="who registers (default: the OS user)")
    p.add_argument("--description")
    return p


def _data_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m training data", description="Write a built-in dataset.")
    p.add_argument("dataset", choices=["digits"])
    p.add_argument("directory", type=Path)
    return p


def _invalid(args: argparse.Namespace) -> str | None:
    """What is wrong with the options before anything runs, or None. Each of these used to train
    anyway: for minutes on a negative learning rate, or until the memory ran out."""
    if args.promote and not args.register:
        return "--promote needs --register NAME"
    if args.epochs < 1:
        return f"--epochs {args.epochs}: at least 1"
    if args.batch_size is not None and args.batch_size < 1:
        return f"--batch-size {args.batch_size}: at least 1"
    if not 8 <= args.image_size <= MAX_IMAGE_SIZE:
        return f"--image-size {args.image_size}: from 8 to {MAX_IMAGE_SIZE} pixels"
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        return f"--learning-rate {args.learning_rate}: a positive number"
    if not 0 <= args.seed < 2**32:
        return f"--seed {args.seed}: from 0 to {2**32 - 1}"
    if not 0 < args.validation_split < 1:
        return f"--validation-split {args.validation_split}: between 0 and 1"
    if args.patience < 0:
        return f"--patience {args.patience}: 0 or more"
    if args.max_per_class is not None and args.max_per_class < 1:
        return f"--max-per-class {args.max_per_class}: at least 1"
    if not 0 <= args.min_accuracy <= 1:
        return f"--min-accuracy {args.min_accuracy}: from 0 to 1"
    return None


def main(argv: list[str] | None = None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    try:
        if args_list[:1] == ["data"]:
            from training.data import write_digits

            args = _data_parser().parse_args(args_list[1:])
            n_train, n_test = write_digits(args.directory)
            print(f"wrote {n_train} training and {n_test} held-out images to {args.directory}")
            return
        parser = _train_parser()
        args = parser.parse_args(args_list)
        problem = _invalid(args)
        if problem:
            parser.error(problem)
        from training.job import TrainConfig, run

        config = TrainConfig(
            data=args.data,
            dataset=args.dataset,
            test_data=args.test_data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            image_size=args.image_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            validation_split=args.validation_split,
            augment=args.augment,
            early_stopping=args.early_stopping,
            patience=args.patience,
            max_per_class=args.max_per_class,
            runs_dir=args.runs_dir,
            register=args.register,
            promote=args.promote,
            min_accuracy=args.min_accuracy,
            actor=args.actor,
            description=args.description,
        )
        run(config)
    except TrainingError as exc:
        print(f"training: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("training: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # a disk that filled up, a folder that cannot be written
        print(f"training: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        from registry import RegistryError

        if isinstance(exc, RegistryError):
            print(f"training: registry error: {exc.message}", file=sys.stderr)
            sys.exit(6)
        raise
