"""How long the `dalle` command takes, process start included: `dalle --help`, `dalle models`, one `dalle gen` on
the tiny test checkpoint (built with the test oracles into a temporary folder) and one on the embedded `shapes`
model with its default settings (issue #4's 3-second figure) and with `--fast`.

    python3 benchmarks/cli_startup.py [--runs 5] [--steps 2]

Prints the median and the fastest of `--runs` runs of each command. The tiny gen run makes one image with
`--steps` sampler steps per stage on the CPU; for each gen run the time its record gives for sampling is printed
too, so the rest is start-up: importing torch and loading the model.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[str]]:
    """Wall-clock seconds of `runs` runs of `dalle args` in fresh processes, and what each printed on stdout."""
    times, outputs = [], []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "dalle_cli.cli", *args], env=env, check=True,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        outputs.append(done.stdout)
    return times, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_karlo import make_tiny_karlo

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_karlo(Path(tmp) / "tiny-karlo")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(Path(tmp) / "hf")}
        steps = [f"--{stage}-steps={options.steps}" for stage in ("prior", "decoder", "sr")]
        gen = ["gen", "a red circle", "--seed", "0", "--device", "cpu", "-o", str(Path(tmp) / "out"), "--json"]
        cases = {
            "dalle --help": ["--help"],
            "dalle models": ["models"],
            "dalle gen (tiny checkpoint, 1 image)": [*gen, "-m", str(model), *steps],
            "dalle gen -m shapes (1 image)": [*gen, "-m", "shapes"],
            "dalle gen -m shapes --fast (1 image)": [*gen, "-m", "shapes", "--fast"],
        }
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {options.runs} runs each, process start "
              "included")
        for label, args in cases.items():
            times, outputs = timed(args, env, options.runs)
            print(f"{label:<40} median {statistics.median(times):6.2f} s   fastest {min(times):6.2f} s")
            if args[0] == "gen":
                sampling = [json.loads(out)["seconds"] for out in outputs]
                print(f"{'  of which sampling the image':<40} median {statistics.median(sampling):6.2f} s   "
                      f"fastest {min(sampling):6.2f} s")


if __name__ == "__main__":
    main()
