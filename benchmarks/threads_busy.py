"""`dalle gen` on a quiet and on a busy machine, by thread count: what `--threads` should default to.

    python benchmarks/threads_busy.py [--model shapes] [--prompt "a red circle"] [--hogs 0 1 2] [--threads 1 2 0]
        [--kind spin|torch]

For each number of hogs (processes that each keep one core busy for the whole measurement, as other work on the machine
would: `spin`, a Python loop, or `torch`, matrix products on as many torch threads as there are cores, which is another
torch program's kind of load) and each thread count (0: the default, `--threads` not given), times one `dalle gen -m
MODEL PROMPT` as a new process, start-up included, and prints a table of seconds, with the thread count the default
picks, computed as the CLI computes it (`devices.idle_cores`) just before the runs. The hogs start a second before the
first run, so that the machine is busy when the default looks.
"""

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def spin() -> None:
    """Keep one core busy until killed."""
    while True:
        pass


def products() -> None:
    """Keep torch's threads (one per core) busy with matrix products until killed."""
    import torch

    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a)


def timed_gen(model: str, prompt: str, threads: int, out: Path) -> float:
    """Seconds one `dalle gen` process takes, from its start to its exit."""
    command = [sys.executable, "-m", "dalle_cli", "gen", prompt, "-m", model, "--seed", "1", "-o", str(out), "-q"]
    if threads:
        command += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("DALLE_THREADS", "OMP_NUM_THREADS")}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--prompt", default="a red circle")
    parser.add_argument("--hogs", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 0], help="0: the default")
    parser.add_argument("--kind", choices=["spin", "torch"], default="spin", help="what a hog runs")
    args = parser.parse_args()
    from dalle_cli.devices import idle_cores

    print(f"{os.cpu_count()} cores; dalle gen -m {args.model} {args.prompt!r}, seconds with process start; "
          f"hogs: {args.kind}")
    print(f"{'hogs':>4}  " + "  ".join(f"{'default' if t == 0 else f'{t} threads':>10}" for t in args.threads)
          + "  default chose")
    with tempfile.TemporaryDirectory() as work:
        for hogs in args.hogs:
            target = spin if args.kind == "spin" else products
            workers = [multiprocessing.Process(target=target, daemon=True) for _ in range(hogs)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)
            chose = idle_cores()
            seconds = [timed_gen(args.model, args.prompt, t, Path(work) / f"{hogs}-{t}") for t in args.threads]
            for worker in workers:
                worker.kill()
            print(f"{hogs:>4}  " + "  ".join(f"{s:>10.1f}" for s in seconds) + f"  {chose}")


if __name__ == "__main__":
    main()
