"""What every family's loaded model shares: where it came from, its device and low-VRAM residency, the span of a
stage, the prompt's token limit, and the picture forms of the tensor operations."""

import threading
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image

from ..api import ModelInfo, ProgressCallback
from ..diffusion.slerp import slerp
from ..errors import CompileError, OutOfMemoryError, UsageError
from ..images import fit, to_pil
from ..masks import feather, feather_width, fit_mask, has_transparency, paste, read_mask
from ..settings import DIFF_AMOUNT, Settings
from ..sources import ModelSource
from .latent import Latent, best_path, check_amount, diff_target, noise_seeds, path_blends, path_frames, stack
from .offload import Residency

# How many graphs torch.compile keeps for one network class before it runs the class eagerly: the instances of a class
# share dynamo's cache (Karlo's decoder and two super-resolution UNets), and each takes a graph per batch size (1 is
# always its own) and one more when its timestep turns from a constant into an input; dynamo's 8 is too few for that.
RECOMPILE_LIMIT = 64


def _compile_failure(e: Exception) -> None:
    """Raise a `CompileError` of one line for torch.compile's failure to compile (torch._dynamo is imported by then)."""
    import torch._dynamo

    if isinstance(e, torch._dynamo.exc.BackendCompilerFailed):
        inner = str(e.inner_exception).strip()
        raise CompileError(f"torch.compile could not compile a network: "
                           f"{inner.splitlines()[0] if inner else type(e.inner_exception).__name__}",
                           hint="info") from None


class Model:
    """A loaded model: `parts` (the family's components, a tokenizer among them), its default settings (`defaults`;
    `fast` is its fast preset's, from its source, else the defaults), the device and dtype it runs in. `source`,
    when given, is where its parts come from, so a part needed later (an image encoder) can be fetched (announced
    through `on_notice`); `info` is then read from it, else `info` is given. A family's
    model subclasses this with its stages and the methods under "What each family implements"; the operations
    (generate, vary, interpolate, text_diff, edit) are composed here from those."""

    def __init__(self, parts: Any, info: ModelInfo | None, defaults: Settings, device: torch.device,
                 dtype: torch.dtype, low_vram: bool = False, source: ModelSource | None = None,
                 on_notice: Callable[[str], None] | None = None, low_memory: bool = False) -> None:
        if info is None and source is None:
            raise ValueError("a model needs its info or its source")
        if low_vram and low_memory:
            raise UsageError("low-VRAM and low-memory modes exclude each other: choose one")
        self.parts = parts
        self.defaults = defaults
        self.fast = source.fast if source is not None else defaults
        self.device = device
        self.dtype = dtype
        self.residency = Residency(device, low_vram, low_memory)
        self._info = info
        self._source = source
        self._on_notice = on_notice
        self._loading = threading.Lock()  # parts loaded on first use are loaded once, whichever thread asks
        self._compiled: list[torch.nn.Module] | None = None  # the networks compiled so far, once `compile` is asked

    @property
    def info(self) -> ModelInfo:
        """Where the model came from, including the parts fetched so far."""
        return self._source.info() if self._source is not None else self._info  # type: ignore[return-value]

    @property
    def low_vram(self) -> bool:
        return self.residency.low_vram

    @property
    def low_memory(self) -> bool:
        return self.residency.low_memory

    @property
    def compiled(self) -> bool:
        """Whether `compile` was asked: the networks run as TorchInductor code."""
        return self._compiled is not None

    def compile(self) -> None:
        """Run the networks through torch.compile (TorchInductor), in place: a network compiles on its first call
        for each new input shape (its first batch, a smaller last batch), and later calls of that shape run the
        compiled code. The images equal the eager networks' to float rounding. A part loaded later (an image
        encoder) compiles when it is first used. Compiled networks stay where they were loaded, so low-VRAM and
        low-memory modes refuse it (`UsageError`). On the CPU, TorchInductor needs a C++ compiler; a failure to
        compile is raised at the first call, as a `DalleError`."""
        if self.low_vram or self.low_memory:
            raise UsageError("compiled networks stay where they were loaded: low-VRAM and low-memory modes cannot "
                             "compile")
        if self._compiled is None:
            self._compiled = []
        self._compile_new(self._compiled)

    def _compile_new(self, done: list[torch.nn.Module]) -> None:
        """Compile the networks among `parts` that are not in `done` (those loaded since), adding them to it."""
        for module in vars(self.parts).values():
            if isinstance(module, torch.nn.Module) and not any(module is d for d in done):
                module.compile()
                done.append(module)

    @property
    def max_tokens(self) -> int:
        """The longest prompt in tokens, start and end tokens included (77 for CLIP)."""
        return self.parts.tokenizer.model_max_length

    def prompt_overflow(self, prompt: str) -> str:
        """The part of `prompt` that truncation to `max_tokens` cuts off, or "" when the prompt fits."""
        return self.parts.tokenizer.encode([prompt]).overflow[0]

    @contextmanager
    def _running(self) -> Iterator[None]:
        """The span of a stage or an operation: no autograd, the accelerator taken in turn in low-VRAM mode, an
        out-of-memory error reported as a `DalleError` with the "low_vram" hint and, once `compile` is asked, the
        networks loaded since compiled and a failure to compile reported as a `CompileError`."""
        compiling: Any = nullcontext()
        if self._compiled is not None:
            self._compile_new(self._compiled)
            compiling = torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
        try:
            with compiling, self.residency.call(), torch.inference_mode():
                yield
        except torch.OutOfMemoryError:
            raise OutOfMemoryError(f"{self.device.type} ran out of memory", hint="low_vram") from None
        except Exception as e:
            if self._compiled is not None:
                _compile_failure(e)
            raise

    @staticmethod
    def _captions(captions: Sequence[str] | None, seeds: Sequence[int]) -> list[str]:
        """`render`'s captions, one per image: the empty caption for each when None."""
        captions = [""] * len(seeds) if captions is None else list(captions)
        if len(captions) != len(seeds):
            raise UsageError(f"{len(seeds)} images but {len(captions)} captions: give one caption per image")
        return captions

    @staticmethod
    def _pair(inputs: list, seeds: list[int]) -> None:
        """Refuse a call whose inputs and seeds do not pair up, before any network runs."""
        if len(inputs) != len(seeds):
            raise UsageError(f"{len(inputs)} inputs but {len(seeds)} seeds: give one seed per image")
        if not inputs:
            raise UsageError("nothing to make: no prompts or images were given")

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], settings: Settings | None = None, *,
                 progress: ProgressCallback | None = None) -> list[Image.Image]:
        """One image for each (prompt, seed) pair, made in one batch (see the family's seed contract)."""
        return to_pil(self.generate_tensors(prompts, seeds, settings, progress=progress))

    def vary(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: Settings | None = None, *,
             eta: float | None = None, progress: ProgressCallback | None = None) -> list[Image.Image]:
        """One variation for each (image, seed) pair: without η (`eta` here, else `settings.eta`) the decoder
        starts from fresh noise (Karlo's image variations); with η the picture's latent is inverted and decoded by
        DDIM at η (paper §3.1), which at η = 0 gives the picture back."""
        return to_pil(self.vary_tensors(images, seeds, settings, eta=eta, progress=progress))

    def vary_tensors(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: Settings | None = None,
                     *, eta: float | None = None, progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `vary`, the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        s = self._settings(settings, eta=eta)
        if s.eta is None:  # type: ignore[attr-defined]
            return self.noise_variation(images, seeds, s, progress=progress)
        _by_ddim(s, "a variation at η")
        self._pair(list(images), list(seeds))
        latent = self.invert(images, s, progress=progress)
        return self.render(latent.embeds, latent.noises, seeds, s, eta=s.eta, progress=progress)  # type: ignore

    def interpolate(self, inputs: Sequence[Image.Image | str | Latent], frames: int, seed: int,
                    settings: Settings | None = None, *, noise: str = "fixed", only: Sequence[int] | None = None,
                    noise_seed: int | None = None, progress: ProgressCallback | None = None) -> list[Image.Image]:
        """The frames of a path through the inputs' embeddings (paper §3.2): pictures (or their latents from
        `invert`) and prompts, whose embedding the prior samples with `seed`. Each segment between two inputs has
        `frames` frames at θ = k / (frames - 1), the embedding slerp(z_a, z_b, θ) (`diffusion.slerp`); a frame
        shared by two segments is made once, so a path of n inputs has (n - 1)(frames - 1) + 1 frames. They are
        decoded from the same draws of `seed` by the decoder's own sampler (noise "fixed": one x_T and the same
        step noises for every frame, the paper's Figure 4 "decoder seed fixed across each row"), or by DDIM at
        η = 0 from slerp(x_T a, x_T b, θ) of the pictures' inversions (noise "inverted", pictures only: its end
        frames give the pictures back). Fixed noise is drawn from `noise_seed`, by default the one `pick_noise`
        keeps, which decodes every candidate's whole path (pass the seed it gives when making a path's frames in
        several calls). `only` picks frames by their index (default: all)."""
        return to_pil(self.interpolate_tensors(inputs, frames, seed, settings, noise=noise, only=only,
                                               noise_seed=noise_seed, progress=progress))

    def interpolate_tensors(self, inputs: Sequence[Image.Image | str | Latent], frames: int, seed: int,
                            settings: Settings | None = None, *, noise: str = "fixed",
                            only: Sequence[int] | None = None, noise_seed: int | None = None,
                            progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `interpolate`, the frames as one float tensor [F, 3, H, W] in [-1, 1] on the model's device."""
        s = self._settings(settings)
        path = path_frames(len(inputs), frames)
        which = list(range(len(path))) if only is None else list(only)
        if noise not in ("fixed", "inverted"):
            raise UsageError(f"noise must be fixed or inverted, got {noise!r}")
        if noise == "inverted" and any(isinstance(x, str) for x in inputs):
            raise UsageError("inverted noise needs pictures at both ends of every segment: a prompt has no "
                             "inversion (use fixed noise)")
        if any(not 0 <= k < len(path) for k in which) or not which:
            raise UsageError(f"frames are numbered 0 to {len(path) - 1}, got {which}")
        if noise == "inverted":
            _by_ddim(s, "an interpolation of inverted noise")
        latents = self.path_latents(inputs, seed, s, noise=noise, progress=progress)
        if noise == "fixed" and noise_seed is None and s.noise_candidates > 1:  # type: ignore[attr-defined]
            return self.pick_noise(latents, frames, seed, s, progress=progress)[1][which]
        blends = path_blends(latents, [path[k] for k in which])
        if noise == "inverted":
            batch = stack(blends)
            return self.render(batch.embeds, batch.noises, [seed] * len(which), s, progress=progress)
        embeds = torch.cat([b.embeds for b in blends])  # [F, D]
        return self.render(embeds, None, [seed if noise_seed is None else noise_seed] * len(which), s, eta=None,
                           progress=progress)

    def pick_noise(self, latents: Sequence[Latent], frames: int, seed: int, settings: Settings | None = None, *,
                   batch: int | None = None, progress: ProgressCallback | None = None) -> tuple[int, torch.Tensor]:
        """The fixed noise of a path through `latents` (from `path_latents`) with `frames` frames per segment, and
        the path's frames decoded from it [F, 3, H, W]: of the K = `settings.noise_candidates` seeds
        `noise_seeds(seed, K)`, the one whose path goes most steadily from input to input (`best_path`: no frame
        turning back towards the input it leaves or away from the one it nears, then the ends closest to the
        inputs), since a noise alone can draw the next frame nearer an input than the end frame. Each candidate's
        whole path is decoded, in batches of `batch` frames from the first (default: all at once), which are the
        batches a frame is made in; with one candidate that path is `seed`'s."""
        s = self._settings(settings)
        path = path_frames(len(latents), frames)
        embeds = torch.cat([blend.embeds for blend in path_blends(latents, path)])  # [F, D]
        seeds = noise_seeds(seed, s.noise_candidates)  # type: ignore[attr-defined]
        decoded = [torch.cat([self.render(chunk, None, [candidate] * len(chunk), s, eta=None, progress=progress)
                              for chunk in embeds.split(batch or len(path))])
                   for candidate in seeds]  # K x [F, 3, H, W]
        if len(seeds) == 1:
            return seed, decoded[0]
        pick = best_path(self.encode_image(to_pil(torch.cat(decoded))), torch.cat([x.embeds for x in latents]), path)
        return seeds[pick], decoded[pick]

    def text_diff(self, images: Sequence[Image.Image | Latent], to: str, *, baseline: str = "",
                  amounts: Sequence[float] = (DIFF_AMOUNT,), settings: Settings | None = None,
                  progress: ProgressCallback | None = None) -> list[Image.Image]:
        """Each picture moved towards the caption `to` (paper §3.3): z_d = norm(z_t - z_t0) of the CLIP text
        embeddings of `to` and of `baseline` (the caption of what the picture shows, or "" for none), decoded as
        slerp(z_i, z_d, θ) by DDIM at η = 0 from the picture's own inverted noise, once per θ in `amounts` (each in
        [0, 1]). A decoder that reads text is conditioned on `to` as well, as `generate` conditions it on its
        prompt (without it a partly moved embedding often recoloured an object only in part); θ = 0 is the
        picture's own latent, decoded as it was inverted, with the empty caption, and gives the picture back.
        Returns len(images) x len(amounts) images, picture by picture."""
        return to_pil(self.text_diff_tensors(images, to, baseline=baseline, amounts=amounts, settings=settings,
                                             progress=progress))

    def text_diff_tensors(self, images: Sequence[Image.Image | Latent], to: str, *, baseline: str = "",
                          amounts: Sequence[float] = (DIFF_AMOUNT,), settings: Settings | None = None,
                          progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `text_diff`, the images as one float tensor [B x len(amounts), 3, H, W] in [-1, 1]."""
        s = self._settings(settings)
        _by_ddim(s, "a text diff")
        for theta in amounts:
            check_amount(theta)
        if not amounts or not images:
            raise UsageError("nothing to make: a text diff needs a picture and at least one amount")
        self.prepare("text_diff")
        latents = [x if isinstance(x, Latent) else self.invert([x], s, progress=progress) for x in images]
        captions = self.text_embeddings([to, baseline])  # [2, D]
        frames = []
        for latent in latents:
            target = diff_target(latent.embeds, captions[:1], captions[1:])
            frames += [Latent(slerp(latent.embeds, target, theta), latent.noises) for theta in amounts]
        batch = stack(frames)
        read = [to if theta > 0 else "" for theta in amounts] * len(latents)
        return self.render(batch.embeds, batch.noises, [0] * len(batch), s, captions=read, progress=progress)

    def edit(self, images: Sequence[Image.Image], prompts: Sequence[str], seeds: Sequence[int],
             settings: Settings | None = None, *, masks: Sequence[Image.Image] | None = None,
             invert_mask: bool = False, progress: ProgressCallback | None = None) -> list[Image.Image]:
        """Each picture edited towards its prompt with its seed (one generator per image, drawn in the family's
        order): repainted where its mask says (`dalle_cli.masks` reads both conventions; `invert_mask` flips it),
        or, without masks, noised to `settings.strength` and denoised (image to image). Without masks, pictures
        with transparency are their own masks, as OpenAI's images API reads them. Pictures are centre-cropped to
        the model's aspect ratio and resized to its edit size (`edit_size`); outside the mask the result is the
        picture itself, blended over a band `masks.feather_width` pixels wide inside the mask's edge."""
        return to_pil(self.edit_pixels(images, prompts, seeds, settings, masks=masks, invert_mask=invert_mask,
                                       progress=progress))

    def edit_pixels(self, images: Sequence[Image.Image], prompts: Sequence[str], seeds: Sequence[int],
                    settings: Settings | None = None, *, masks: Sequence[Image.Image] | None = None,
                    invert_mask: bool = False, progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `edit`, the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        images = list(images)
        if len(images) != len(prompts):
            raise UsageError(f"{len(images)} pictures but {len(prompts)} prompts: give one prompt per picture")
        self._pair(images, list(seeds))
        if masks is None:
            own = [has_transparency(image) for image in images]
            if any(own) and not all(own):
                raise UsageError("some pictures have transparency and some do not: give masks, or edit them apart")
            masks = images if all(own) else None
        if masks is not None and len(masks) != len(images):
            raise UsageError(f"{len(images)} pictures but {len(masks)} masks: give one mask per picture")
        s = self.edit_settings(settings, masks is not None)
        width, height = self.edit_size(s)
        pixels = fit(images, width, height)  # [B, 3, H, W]
        if masks is None:
            return self.edit_tensors(pixels, None, prompts, seeds, s, progress=progress)
        repaint = torch.cat([fit_mask(read_mask(m, invert_mask), image.size, width, height)
                             for m, image in zip(masks, images)])  # [B, 1, H, W], 1 = repaint
        edited = self.edit_tensors(pixels, repaint, prompts, seeds, s, progress=progress)
        return paste(edited, pixels, feather(repaint, feather_width(width, height)))

    def edit_settings(self, settings: Settings | None, masked: bool) -> Settings:
        """The settings an edit runs with: `settings` (else the defaults), with the family's image-to-image
        strength (`img2img_strength`) when there is no mask and no strength: what an edit's record holds."""
        s = self._settings(settings)
        if s.sampler is not None:  # type: ignore[attr-defined]
            raise UsageError("an edit runs each stage's own sampler: it takes no other")
        if not masked and s.strength is None:  # type: ignore[attr-defined]
            return s.updated({"strength": self.img2img_strength}, "settings")
        return s

    def path_latents(self, inputs: Sequence[Image.Image | str | Latent], seed: int, settings: Settings | None = None,
                     *, noise: str = "fixed", progress: ProgressCallback | None = None) -> list[Latent]:
        """The latents `interpolate` blends, one row each, to pass to it again for more frames of the same path:
        a latent as given, a picture inverted (noise "inverted") or encoded, a prompt sampled by the prior."""
        s = self._settings(settings)
        self.prepare("interpolate")
        return [self._latent_of(x, seed, s, noise == "inverted", progress) for x in inputs]

    def _latent_of(self, item: Image.Image | str | Latent, seed: int, settings: Settings, inverted: bool,
                   progress: ProgressCallback | None) -> Latent:
        if isinstance(item, Latent):
            if inverted and not item.noises:
                raise UsageError("inverted noise needs latents with their inverted noises")
            return item
        if isinstance(item, str):
            return Latent(self.prompt_embeddings([item], [seed], settings, progress=progress))
        if inverted:
            return self.invert([item], settings, progress=progress)
        return Latent(self.encode_image([item]))

    def _settings(self, settings: Settings | None, **overrides: Any) -> Settings:
        """`settings` (else the model's defaults) with the overrides that are not None."""
        s = settings or self.defaults
        given = {k: v for k, v in overrides.items() if v is not None}
        return s.updated(given, "settings") if given else s

    # What each family implements.

    def generate_tensors(self, prompts: Sequence[str], seeds: Sequence[int], settings: Settings | None = None, *,
                         progress: ProgressCallback | None = None) -> torch.Tensor:
        """As `generate`, the images as one float tensor [B, 3, H, W] in [-1, 1] on the model's device."""
        raise NotImplementedError

    def noise_variation(self, images: Sequence[Image.Image], seeds: Sequence[int], settings: Settings, *,
                        progress: ProgressCallback | None = None) -> torch.Tensor:
        """Variations decoded from fresh noise, [B, 3, H, W] in [-1, 1] (`vary` without η)."""
        raise NotImplementedError

    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:
        """The CLIP image embeddings z_i [B, D] of pictures."""
        raise NotImplementedError

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """The CLIP text embeddings z_t [B, D] of prompts (in the space of `encode_image`)."""
        raise NotImplementedError

    def prompt_embeddings(self, prompts: list[str], seeds: list[int], settings: Settings, *,
                          progress: ProgressCallback | None = None) -> torch.Tensor:
        """Image embeddings [B, D] the prior samples for prompts, each from its seed as `generate` samples them."""
        raise NotImplementedError

    def invert(self, images: Sequence[Image.Image], settings: Settings | None = None, *,
               progress: ProgressCallback | None = None) -> Latent:
        """The pictures' latents: their embeddings and their noises found by DDIM inversion (paper §3)."""
        raise NotImplementedError

    img2img_strength: float  # the strength of an edit without a mask or a strength: each family sets its own

    def edit_size(self, settings: Settings | None = None) -> tuple[int, int]:
        """(width, height) the pictures of an edit are fitted to."""
        raise NotImplementedError

    def edit_tensors(self, pixels: torch.Tensor, masks: torch.Tensor | None, prompts: Sequence[str],
                     seeds: Sequence[int], settings: Settings | None = None, *,
                     progress: ProgressCallback | None = None) -> torch.Tensor:
        """The family's edit of pictures [B, 3, H, W] in [-1, 1] at `edit_size`, where `masks` [B, 1, H, W] is 1
        (None: image to image at `settings.strength`), before the picture is pasted back: [B, 3, H, W]."""
        raise NotImplementedError

    def edit_events(self, settings: Settings, masked: bool) -> int:
        """The progress events one batch of `edit` reports, with a mask or without."""
        raise NotImplementedError

    def render(self, embeds: torch.Tensor, noises: tuple[torch.Tensor, ...] | None, seeds: Sequence[int],
               settings: Settings | None = None, *, eta: float | None = 0.0, captions: Sequence[str] | None = None,
               progress: ProgressCallback | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] decoded from embeddings [B, D] by DDIM at η, from `noises` or, when None,
        from x_Ts drawn from the seeds' generators; η None (with no `noises`) decodes by the family's own
        samplers, as `generate` does. `captions` (one per image) condition a decoder that reads text; None is the
        empty caption, which variations and inversions use. A decoder that reads no text ignores them."""
        raise NotImplementedError


def _by_ddim(settings: Settings, what: str) -> None:
    """Refuse a sampler for an operation that decodes an inverted latent, which only DDIM inverts."""
    if settings.sampler is not None:  # type: ignore[attr-defined]
        raise UsageError(f"{what} decodes by DDIM from a DDIM inversion: it takes no other sampler")

