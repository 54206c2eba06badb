"""Full-depth forward time of a wrapped timm ResNet-50 against the unwrapped model.

Three sides, timed interleaved (A B C A B C ...; the first round dropped as warm-up), median
per side and the median per-round ratio to the unwrapped model:

* ``unwrapped``: the user's ``model(x)``;
* ``forward_final``: the wrapped model's full-depth deployment path (the user's own forward);
* ``forward_until_last``: stem, every unit through the wrapper's segment loop and the last
  head, as the early-exit engine runs a sample that never stops (no intermediate heads);
* ``all_exits``: the multi-exit forward with every exit head, as training and tracing run it.

Random initialisation (nothing can be downloaded), eval mode, no grad. Run from the repository
root with nothing else busy::

    python benchmarks/wrapped_forward.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import set_threads, write_result

import optdepth


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/wrapped_forward.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--exits", default="stages", help="stages (4 exits) or all (16)")
    args = parser.parse_args(argv)
    if min(args.threads, args.rounds, args.batch_size, args.image_size) < 1 or args.rounds < 2:
        parser.error("--threads, --batch-size, --image-size must be >= 1 and --rounds >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    import timm

    args = parse_args(argv)
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    net = timm.create_model("resnet50", pretrained=False, num_classes=1000).eval()
    model = optdepth.wrap(net, exits=args.exits,
                          input_shape=(3, args.image_size, args.image_size)).eval()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    last = model.num_exits - 1
    sides = {"unwrapped": lambda: net(x), "forward_final": lambda: model.forward_final(x),
             "forward_until_last": lambda: model.exit_logits(_segments(model, x), last),
             "all_exits": lambda: model(x)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    with torch.no_grad():
        torch.testing.assert_close(sides["forward_until_last"](), sides["unwrapped"]())
        for _ in range(args.rounds):
            for name, run in sides.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    times = {name: values[1:] for name, values in times.items()}  # round 1: warm-up
    result = {"threads": threads, "rounds": args.rounds - 1, "batch_size": args.batch_size,
              "image_size": args.image_size, "exits": model.num_exits, "sides": {}}
    for name, values in times.items():
        ratio = statistics.median(t / u for t, u in zip(values, times["unwrapped"], strict=True))
        result["sides"][name] = {"median_s": statistics.median(values), "ratio_to_unwrapped": ratio}
        print(f"{name:20s} {1e3 * statistics.median(values):8.1f} ms   x{ratio:.3f} of unwrapped"
              f"  (batch {args.batch_size}, {args.image_size} px, {threads} threads)")
    write_result(args.out, result, argv)
    return 0


def _segments(model: optdepth.MultiExitModel, x: torch.Tensor) -> torch.Tensor:
    """The state after the last unit, through the wrapper's own segment loop (no exit heads)."""
    state = model.stem(x)
    for t in range(model.num_exits):
        for unit in model._family.units[(0 if t == 0 else model.exit_blocks[t - 1] + 1):
                                        model.exit_blocks[t] + 1]:
            state = model._run(unit, state)[0]
    return state


if __name__ == "__main__":
    raise SystemExit(main())
