"""Template rendering time against template size: linear or not.

    python -m bench.render [--sizes 0.5,1,2,4]

Renders, with deployer.plan.template.render as it is now, one template per size
(in MB) made of lines `SetEnv K<<A>> <<B>>` (two tags every 20 bytes), once
each, and prints the seconds and, for each size that doubles the one before,
time(2n) / time(n): about 2 is linear, about 4 quadratic. chevron's own
tokenizer was quadratic here (1 MB took 37.6 s, 2 MB 148.7 s). A ratio
measured in one run holds on a noisy machine where absolute seconds do not.
"""

import argparse
import shlex
import sys
import time

from deployer.plan.template import render

LINE = "SetEnv K<<A>> <<B>>\n"


def timed(mb: float) -> tuple[int, float]:
    """Tags in a template of `mb` MB, and the seconds rendering it took."""
    template = LINE * round(mb * 1_000_000 / len(LINE))
    started = time.perf_counter()
    render(template, {"A": "a", "B": "b"}, "bench")
    return template.count("<<"), time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.5,1,2,4", help="template sizes in MB, comma-separated")
    args = p.parse_args()
    sizes = [float(mb) for mb in args.sizes.split(",")]
    print(f"{'MB':>5} {'tags':>9} {'seconds':>8} {'ratio':>6}")
    before: tuple[float, float] | None = None
    for mb in sizes:
        tags, seconds = timed(mb)
        ratio = f"{seconds / before[1]:.2f}" if before and mb == 2 * before[0] else "-"
        print(f"{mb:>5g} {tags:>9} {seconds:>8.2f} {ratio:>6}")
        before = (mb, seconds)
    print("ratio = time(2n) / time(n), one run each (about 2 is linear, about 4 quadratic)")
    print("command:", shlex.join(["python", "-m", "bench.render", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
