"""How fast dalle plans a run, and how soon a huge prompt file gives its first image.

    python benchmarks/planning.py [--sizes 10000 100000 1000000] [--first-image 1000000]

1. Planning alone: the checking pass of `dalle gen` (every job's settings, seed and file name, and the batches) over
   N jobs from a prompt file of N lines, without making images: jobs per second, for each N.
2. The time from starting `dalle gen -f FILE -m shapes` on a FILE of --first-image lines to its first image on
   stdout, and the process's peak memory (VmHWM) then, next to the same for a file a tenth as long: with prompt files
   read as streams, the memory does not grow with the file.
The reference is dalle before the hardening issue: 1,000 jobs 0.12 s, 10,000 jobs 7.2 s, 20,000 jobs 32 s (planning
was quadratic), and 1.4 GB RSS with nothing made after minutes for a 1.5-million-line file.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dalle_cli.cli.batch import Planner, batches, chosen, read_prompt_file
from dalle_cli.cli.outputs import looks_complete
from dalle_cli.sources import locate

ROOT = Path(__file__).resolve().parent.parent


def write_prompts(path: Path, lines: int) -> None:
    colours, shapes = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle")
    with open(path, "w", encoding="utf-8") as f:
        for k in range(lines):
            f.write(f"a {colours[k % 4]} {shapes[k // 4 % 3]} number {k}\n")


def plan_rate(path: Path, jobs: int) -> float:
    """Jobs per second of the checking pass over the prompt file at `path`."""
    source = locate("shapes")
    base = chosen(source, "generate", source.defaults, {}, "options")
    planner = Planner("{index:07d}-{slug}-{seed}", 1, 0, lambda item: ("shapes", source), lambda spec, op: base)
    out = Path(tempfile.gettempdir()) / "dalle-planning-nowhere"
    start = time.perf_counter()
    counted = 0
    for batch in batches((job for job in planner.jobs(read_prompt_file(path, path.name))
                          if not looks_complete(out / job.name)), 4):
        counted += len(batch)
    seconds = time.perf_counter() - start
    assert counted == jobs
    return jobs / seconds


def first_image(path: Path) -> tuple[float, float]:
    """(seconds to the first image, peak RSS in MB then) of `dalle gen -f path -m shapes`."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "dalle_cli.cli", "gen", "-f", str(path), "-m", "shapes",
                                    "--seed", "1", "-o", out, "--quiet", "--json"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        process.stdout.readline()
        seconds = time.perf_counter() - start
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
        process.kill()
        process.wait()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--first-image", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("planning (checking pass, no images):")
        for size in args.sizes:
            path = Path(tmp) / f"p{size}.txt"
            write_prompts(path, size)
            print(f"  {size:>9,} jobs: {plan_rate(path, size):>9,.0f} jobs/s")
        print("first image of `dalle gen -f FILE -m shapes` (reference: none after minutes, 1.4 GB RSS):")
        for size in (args.first_image // 10, args.first_image):
            path = Path(tmp) / f"f{size}.txt"
            write_prompts(path, size)
            seconds, peak = first_image(path)
            print(f"  {size:>9,} lines: first image after {seconds:5.1f} s, peak RSS {peak:6.0f} MB")


if __name__ == "__main__":
    main()
