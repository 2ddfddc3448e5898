"""`dalle interp` and `dalle diff`: the paper's interpolations and text diffs (Ramesh et al. 2022, §3.2, §3.3).

Each run makes one sequence of frames, written as they are made, batch by batch, each PNG with its record: the
inputs (prompts, or pictures with their sha256), the frame's θ and place in the sequence, the seed, the model and
its settings. A record names the command that makes its frame again (`again`). After the frames come a contact
sheet and an animation of them. Errors are one line, as everywhere in the CLI.
"""

import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import UsageError
from ..settings import DIFF_AMOUNT
from .display import Display
from .options import Common, begin_run, default_model, flag

ANIMATIONS = ("webp", "gif")
FRAME_MS = 250  # how long the animation shows each frame


@dataclass(frozen=True)
class Input:
    """One input of a manipulation: a picture (`path` and its sha256) or a prompt."""

    prompt: str | None = None
    path: Path | None = None
    digest: str | None = None

    def record(self) -> dict[str, str]:
        if self.path is None:
            return {"prompt": self.prompt or ""}
        return {"source": str(self.path), "source_sha256": self.digest or ""}

    def argument(self) -> str:
        return str(self.path) if self.path is not None else self.prompt or ""

    @property
    def label(self) -> str:
        return self.path.stem if self.path is not None else self.prompt or ""


def read_input(argument: str, where: str, pictures_only: bool = False) -> Input:
    """An argument as an `Input`: an existing file is a picture (it must be one Pillow reads), anything else a
    prompt, refused when empty or when only pictures may be given."""
    from PIL import Image

    from .runs import file_digest

    path = Path(argument)
    if path.is_file():
        try:
            with Image.open(path):
                pass
            return Input(path=path, digest=file_digest(path))
        except Exception as e:  # Pillow raises many error types for files it cannot identify
            raise UsageError(f"cannot read image {argument}: {e}") from None
    if pictures_only:
        raise UsageError(f"{where} {argument!r} is not a picture file")
    if not argument.strip():
        raise UsageError(f"{where} is empty")
    return Input(prompt=argument.strip())


def check_frames(frames: int | None) -> None:
    if frames is not None and frames < 2:
        raise UsageError(f"--frames must be at least 2 (both ends of a segment), got {frames}")


def check_amount(amount: float) -> None:
    if not 0 <= amount <= 1:
        raise UsageError(f"--amount must be between 0 and 1, got {amount}")


def command_line(words: Sequence[Any]) -> str:
    """A shell command line for `words`."""
    return " ".join(shlex.quote(str(word)) for word in words)


class Run:
    """One manipulation run: the model loaded for `operation` with the checked settings, and how frames are named,
    recorded and written into `common.out`."""

    def __init__(self, display: Display, common: Common, operation: str, given: dict[str, Any]) -> None:
        from .. import load
        from ..sources import locate
        from .batch import chosen
        from .commands import _quiet_downloads

        _quiet_downloads(common.quiet)
        begin_run(common, display.note)
        self.display, self.common, self.operation = display, common, operation
        spec = common.model or default_model()
        source = locate(spec, offline=common.offline, on_notice=display.note, parts=common.parts)
        base = source.fast if common.fast else source.defaults
        self.settings = chosen(source, operation, base, given, "options", name=flag)
        self.model = load(source, device=common.device.value, dtype=common.dtype.value, low_vram=common.low_vram,
                          low_memory=common.low_memory, compile=common.compile, on_notice=display.note)
        self.model.prepare(operation)
        self.written: list[Path] = []
        # What a frame's command must repeat besides the inputs: the model, its parts and the settings given. --fast
        # is spelled out as the settings its preset changes, so the command still makes the frame after a later
        # version of the model or of dalle chooses another preset.
        preset: dict[str, Any] = {}
        if common.fast:
            preset = {name: getattr(base, name) for name in base.knobs()
                      if getattr(base, name) not in (None, getattr(source.defaults, name))}
        self.options = ["-m", common.model or spec,
                        *(w for role, other in sorted(common.parts.items()) for w in (flag(role), other)),
                        *(w for name, value in {**preset, **given}.items() for w in (flag(name), value))]

    def seed(self) -> int:
        """The run's seed: --seed, else a random one, announced so that the run can be repeated."""
        if self.common.seed is not None:
            return self.common.seed
        seed = secrets.randbelow(2**31)
        self.display.note(f"seed {seed} (random; --seed {seed} makes the same frames again)")
        return seed

    def write(self, images: list[Any], first: int, slug: str, seed: int, facts: list[dict[str, Any]],
              again: list[str], seconds: float, only: int | None = None,
              used: dict[str, Any] | None = None) -> None:
        """Write frames `first`, `first + 1`, ... (just frame `only`, when given) with their records (`facts` per
        frame, on top of the run's). `used` is the settings the frames read, when they are fewer than every stage
        of the operation reads."""
        from .naming import render_name, slugify
        from .outputs import write_png

        info = self.model.info
        where = {"repo_id": info.repo_id, "revision": info.revision} if info.repo_id else {"model_path": info.path}
        if used is None:
            used = self.settings.used(self.operation, self.model.family.operations[self.operation])
        self.common.out.mkdir(parents=True, exist_ok=True)
        for k, (image, fact) in enumerate(zip(images, facts, strict=True)):
            index = first + k
            if only is not None and index != only:
                continue
            name = render_name(self.common.name, index=index, item=0, i=index, seed=seed, slug=slugify(slug),
                               model=slugify(info.name))
            record = {**fact, "seed": seed, "index": index, "model": info.name, **where, **info.extras,
                      "settings": used,
                      "seconds": round(seconds / len(images), 3),
                      "again": command_line([*again, "--batch-size", self.common.batch_size, "--only", index]),
                      "dalle": __version__}
            path = write_png(image, self.common.out / name, record)
            self.written.append(path)
            self.display.result({**record, "path": str(path)})

    def finish(self, animation: str | None, stem: str, noun: str = "frame") -> None:
        """The contact sheet and the animation (unless None) of every frame written, then the summary line."""
        from PIL import Image

        from .outputs import contact_sheet, write_png

        frames = []
        for path in self.written:
            with Image.open(path) as image:
                frames.append(image.convert("RGB"))
        if len(frames) > 1:
            sheet = write_png(contact_sheet(frames, len(frames) if len(frames) <= 8 else 8),
                              self.common.out / f"{stem}-grid.png", {"grid": [str(p) for p in self.written],
                                                                     "dalle": __version__})
            self.display.note(f"contact sheet: {sheet}")
        if len(frames) > 1 and animation is not None:
            moving = self.common.out / f"{stem}.{animation}"
            options = {"lossless": True} if animation == "webp" else {}
            frames[0].save(moving, save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0, **options)
            self.display.note(f"animation: {moving}")
        self.display.note(f"{len(self.written)} {noun}{'s' * (len(self.written) != 1)} written to {self.common.out}")


def frames_in_batches(count: int, size: int, only: int | None) -> list[list[int]]:
    """The frame indices to make, in batches of at most `size`; with `only`, just the batch that holds that frame.
    A frame is made again in the batch it was first made in, since batched convolutions round differently."""
    every = [list(range(k, min(k + size, count))) for k in range(0, count, size)]
    if only is None:
        return every
    if not 0 <= only < count:
        raise UsageError(f"--only must be a frame from 0 to {count - 1}, got {only}")
    return [batch for batch in every if only in batch]


def timed(call: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return call(), time.perf_counter() - start


def planned_events(run: Run, batches: int, pictures: int = 0, prompts: int = 0) -> int:
    """The progress events of a manipulation: each picture's inversion (with its encoding event), each prompt's
    prior, and each batch's decoding, counted from the family's declared stages."""
    family, s = run.model.family, run.settings
    decoding = family.events("text_diff", s) - 1  # its stages but the encoding, which reports one event
    inverting = family.events("vary", s.updated({"eta": 0.0}, "settings")) - family.events("vary", s) + 1
    prior = family.events("generate", s) - decoding
    return batches * decoding + pictures * inverting + prompts * prior


def interp(
    inputs: list[str], frames: int, noise: str, noise_seed: int | None, only: int | None, animation: str, *,
    common: Common, settings: dict[str, Any],
) -> None:
    """The body of `dalle interp` (see `commands.interp`)."""
    from ..images import load_image, to_pil
    from .display import guarded

    display = Display(common.quiet, common.json_lines)
    with guarded(display, common.debug, out=common.out):
        if len(inputs) < 2:
            raise UsageError(f"interp needs at least two inputs (pictures or prompts), got {len(inputs)}")
        check_frames(frames)
        items = [read_input(a, f"input {k + 1}") for k, a in enumerate(inputs)]
        prompts = [k + 1 for k, item in enumerate(items) if item.prompt is not None]
        if noise == "inverted" and prompts:
            raise UsageError(f"--noise inverted needs pictures: input {prompts[0]} is a prompt, which has no "
                             "inverted noise (use --noise fixed)")
        if noise == "inverted" and (settings.get("noise_candidates") is not None or noise_seed is not None):
            raise UsageError(f"{'--noise-seed' if noise_seed is not None else '--noise-candidates'} is for a fixed "
                             "noise: --noise inverted decodes from the pictures' own")
        from ..engine.latent import path_frames

        path = path_frames(len(items), frames)
        todo = frames_in_batches(len(path), common.batch_size, only)
        run = Run(display, common, "interpolate", settings)
        seed = run.seed()
        again = ["dalle", "interp", *(item.argument() for item in items), "--frames", frames, "--noise", noise,
                 "--seed", seed, *run.options]
        pictures = sum(item.path is not None for item in items) if noise == "inverted" else 0
        count = sum(map(len, todo))
        candidates = run.settings.noise_candidates  # type: ignore[attr-defined]
        picking = noise == "fixed" and noise_seed is None and candidates > 1
        # Picking the noise decodes every candidate's whole path, in the batches its frames are made in.
        decodings = len(frames_in_batches(len(path), common.batch_size, None)) * candidates if picking else len(todo)
        # The record holds what the path reads: no prior without a prompt, no inversion for fixed noise, no noise
        # candidates for inverted noise or a noise given.
        stages = tuple(stage for stage in run.model.family.operations["interpolate"] if prompts or stage != "prior")
        used = {name: value for name, value in run.settings.used("interpolate", stages,
                                                                 inverting=noise == "inverted").items()
                if noise == "fixed" and noise_seed is None or name != "noise_candidates"}
        with display.progress(count, planned_events(run, decodings, pictures, len(prompts))) as meter:
            report = meter.batch(list(range(count)))
            latents = run.model.path_latents([load_image(i.path) if i.path is not None else i.prompt for i in items],
                                             seed, run.settings, noise=noise, progress=report)
            picked = (seed if noise_seed is None else noise_seed) if noise == "fixed" else None
            if picking:
                (picked, decoded), spent = timed(lambda: run.model.pick_noise(
                    latents, frames, seed, run.settings, batch=common.batch_size, progress=report))
            fixed = {} if picked is None else {"noise_seed": picked}
            # A frame's command names the noise kept, so it makes the frame without trying the candidates again.
            again_frame = again if picked is None else [*again, "--noise-seed", picked]
            for batch in todo:
                if picking:
                    images, seconds = to_pil(decoded[batch]), spent * len(batch) / count
                else:
                    images, seconds = timed(lambda: run.model.interpolate(
                        latents, frames, seed, run.settings, noise=noise, only=batch, noise_seed=picked,
                        progress=report))
                facts = [{"interpolate": [item.record() for item in items], "frame": k, "frames": frames,
                          "segment": path[k][0], "theta": round(path[k][1], 6), "noise": noise, **fixed}
                         for k in batch]
                run.write(images, batch[0], "-to-".join(item.label for item in items), seed, facts, again_frame,
                          seconds, only, used)
        run.finish(animation, "interp")


def diff(
    image: str, to: str, baseline: str | None, amount: float | None, frames: int | None, only: int | None,
    animation: str, *, common: Common, settings: dict[str, Any],
) -> None:
    """The body of `dalle diff` (see `commands.diff`)."""
    from ..images import load_image
    from .display import guarded

    display = Display(common.quiet, common.json_lines)
    with guarded(display, common.debug, out=common.out):
        theta = DIFF_AMOUNT if amount is None else amount
        check_amount(theta)
        check_frames(frames)
        if not to.strip():
            raise UsageError("--to is empty: give the caption to move the picture towards")
        picture = read_input(image, "the picture", pictures_only=True)
        amounts = [theta * k / (frames - 1) for k in range(frames)] if frames is not None else [theta]
        todo = frames_in_batches(len(amounts), common.batch_size, only)
        run = Run(display, common, "text_diff", settings)
        again = ["dalle", "diff", image, "--to", to, *(["--from", baseline] if baseline is not None else []),
                 "--amount", theta, *(["--frames", frames] if frames is not None else []), *run.options]
        with display.progress(len(amounts), planned_events(run, len(todo), 1)) as meter:
            report = meter.batch(list(amounts))
            latent = run.model.invert([load_image(picture.path)], run.settings, progress=report)
            for batch in todo:
                images, seconds = timed(lambda: run.model.text_diff(
                    [latent], to, baseline=baseline or "", amounts=[amounts[k] for k in batch],
                    settings=run.settings, progress=report))
                facts = [{"text_diff": picture.record(), "to": to, "from": baseline or "",
                          "amount": round(amounts[k], 6), "frame": k, "frames": len(amounts)} for k in batch]
                run.write(images, batch[0], f"{picture.label}-to-{to}", 0, facts, again, seconds, only)
        run.finish(animation, "diff")
