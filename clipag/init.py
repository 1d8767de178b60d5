"""Starting images: a compact Gaussian mixture over low-resolution images (best-of-N scored
by the guide), a CrossFlow draft of the prompt, a user's image, or plain noise; and the choice
between them (`init_source`, `initial_images`), so the optimiser never needs to know.

The mixture stores, per component, a weight, a mean, a low-rank factor and a diagonal:
covariance = F F^T + diag(d). Fitted by k-means then per-cluster PCA, it is a few hundred KB
where the reference's 200 full covariances took 472 MB.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint import file_problem, read_meta, what_else
from .device import autocast
from .errors import ClipagError
from .fileio import write_atomic
from .flow.crossflow import FlowInit, load_flow_init
from .flow.crossflow import SampleConfig  # noqa: F401  (GenerateConfig.flow: the draft's settings)
from .images import IMAGE_EXTS, decode_image
from .models import Guide
from .prompts import WeightedPrompt
from .targets import Targets, similarity

if TYPE_CHECKING:
    from .generate import GenerateConfig

ASSETS = Path(__file__).parent / "assets"
DEFAULT_GMM = ASSETS / "gmm-photos16.safetensors"


@dataclass
class GaussianMixture:
    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    factors: torch.Tensor  # (K, D, R)
    diag: torch.Tensor  # (K, D)
    resolution: int

    @property
    def components(self) -> int:
        return self.weights.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` images (n, 3, r, r) clamped to [0, 1]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        rank = self.factors.shape[-1]
        z = torch.randn(n, rank, 1, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator)
        x = self.means[k] + (self.factors[k] @ z).squeeze(-1) + self.diag[k].sqrt() * eps
        r = self.resolution
        return x.view(n, 3, r, r).clamp(0, 1)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Mean log-likelihood per image of flattened images (N, D): for checking a fit."""
        scores = []
        for k in range(self.components):
            cov = self.factors[k] @ self.factors[k].t() + torch.diag(self.diag[k])
            dist = torch.distributions.MultivariateNormal(self.means[k], covariance_matrix=cov)
            scores.append(dist.log_prob(x) + self.weights[k].log())
        return torch.logsumexp(torch.stack(scores), 0).mean()

    def save(self, path: str | os.PathLike) -> Path:
        tensors = {"weights": self.weights, "means": self.means, "factors": self.factors,
                   "diag": self.diag}
        meta = {"clipag": json.dumps({"kind": "gmm", "resolution": self.resolution})}
        tensors = {k: v.contiguous().float() for k, v in tensors.items()}
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GaussianMixture":
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            raise ClipagError(f"initializer file not found: {path}")
        problem = file_problem(path)  # a folder, no permission: say so
        if problem is not None:
            raise ClipagError(f"initializer file {path} {problem}")
        meta = read_meta(path)
        if meta is None or meta.get("kind") != "gmm":
            raise ClipagError(what_else(path, meta, "gmm")
                              or f"{path} is not a clipag Gaussian-mixture initializer")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ClipagError(f"corrupt initializer file {path}: {exc}") from None
        if set(tensors) != {"weights", "means", "factors", "diag"}:
            raise ClipagError(f"{path} is not a clipag Gaussian-mixture initializer")
        return cls(*check_mixture(tensors, meta.get("resolution"), path))


def check_mixture(t: dict[str, torch.Tensor], resolution, path) -> tuple:
    """A mixture file's fields checked like flags: shapes that agree with each other and with
    the resolution, finite numbers, weights >= 0 with a positive sum, variances >= 0."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or \
            not 1 <= resolution <= 256:
        raise ClipagError(f"{path}: resolution must be a whole number in 1..256, got "
                          f"{resolution!r}")
    w, m, f, d = (t[k].float() for k in ("weights", "means", "factors", "diag"))
    k, dim = w.shape[0] if w.dim() == 1 else -1, 3 * resolution * resolution
    if (w.dim() != 1 or k < 1 or m.shape != (k, dim) or f.dim() != 3
            or f.shape[:2] != (k, dim) or d.shape != (k, dim)):
        raise ClipagError(f"{path}: mixture shapes do not fit together (weights "
                          f"{tuple(w.shape)}, means {tuple(m.shape)}, factors {tuple(f.shape)}, "
                          f"diag {tuple(d.shape)}, resolution {resolution})")
    for name, x in (("weights", w), ("means", m), ("factors", f), ("diag", d)):
        if not torch.isfinite(x).all():
            raise ClipagError(f"{path}: the mixture's {name} hold NaN or infinite numbers")
    if (w < 0).any() or w.sum() <= 0:
        raise ClipagError(f"{path}: the mixture's weights must be >= 0 with a positive sum")
    if (d < 0).any():
        raise ClipagError(f"{path}: the mixture's variances (diag) must be >= 0")
    return w, m, f, d, resolution


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster index per row of `x` (k-means++ seeding, Lloyd iterations)."""
    n = x.shape[0]
    centers = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):
        d = torch.cdist(x, centers).min(dim=1).values.pow(2)
        centers = torch.cat([centers, x[torch.multinomial(d + 1e-12, 1, generator=generator)]])
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(dim=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centers[j] = members.mean(0)
    return torch.cdist(x, centers).argmin(dim=1)


def fit(images: torch.Tensor, components: int = 16, rank: int = 16, seed: int = 0,
        iters: int = 20, min_var: float = 1e-4) -> GaussianMixture:
    """Fit a mixture to images (N, 3, r, r) in [0, 1]."""
    n, _, r, _ = images.shape
    if n < components * 2:
        raise ClipagError(f"{n} images are too few for {components} components")
    x = images.reshape(n, -1).double()
    g = torch.Generator().manual_seed(seed)
    assign = kmeans(x, components, iters, g)
    weights, means, factors, diags = [], [], [], []
    for j in range(components):
        members = x[assign == j]
        if len(members) < 2:
            continue
        mean = members.mean(0)
        centered = members - mean
        cov = centered.t() @ centered / (len(members) - 1)
        evals, evecs = torch.linalg.eigh(cov)
        top = evals.flip(0)[:rank].clamp_min(0)
        vecs = evecs.flip(1)[:, :rank]
        factor = vecs * top.sqrt()
        diag = (cov.diagonal() - (factor * factor).sum(1)).clamp_min(0) + min_var
        weights.append(len(members) / n)
        means.append(mean)
        factors.append(factor)
        diags.append(diag)
    return GaussianMixture(torch.tensor(weights).float(), torch.stack(means).float(),
                           torch.stack(factors).float(), torch.stack(diags).float(), r)


def images_for_fit(folder: str | os.PathLike, resolution: int, crops_per_image: int = 1,
                   seed: int = 0) -> tuple[torch.Tensor, int]:
    """Every image of `folder` (recursively) at `resolution`, plus random square crops
    (a quarter to all of the shorter side) when `crops_per_image` > 1; and how many files
    were unreadable."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ClipagError(f"no images in {folder}")
    g = torch.Generator().manual_seed(seed)
    out, skipped = [], 0
    for path in files:
        big = decode_image(path, 256)
        if big is None:
            skipped += 1
            continue
        out.append(F.interpolate(big[None], size=resolution, mode="area")[0])
        for _ in range(crops_per_image - 1):
            side = int(torch.randint(64, 257, (1,), generator=g))
            top, left = (int(torch.randint(0, 257 - side, (1,), generator=g)) for _ in range(2))
            crop = big[:, top:top + side, left:left + side]
            out.append(F.interpolate(crop[None], size=resolution, mode="area")[0])
    if not out:
        raise ClipagError(f"no readable images in {folder}")
    return torch.stack(out), skipped


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def best_of(candidates: torch.Tensor, score: "callable", chunk: int = 256) -> torch.Tensor:
    """The candidate with the highest score; `score` maps a chunk to one score each."""
    scores = torch.cat([score(candidates[i:i + chunk]) for i in range(0, len(candidates), chunk)])
    return candidates[int(scores.argmax().item())]


def noise(size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth low-frequency noise around mid-grey."""
    low = torch.rand(1, 3, 8, 8, generator=generator) * 0.4 + 0.3
    return upsample(low, size)[0]


def from_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    image = decode_image(Path(path), size)
    if image is None:
        raise ClipagError(f"cannot read init image {path}")
    return image


InitSource = GaussianMixture | FlowInit | None


def check_init(init: str) -> None:
    """A clear error for an init that names nothing usable: a missing file, one that cannot
    be read (a folder, no permission, truncated), or another of clipag's files (a CrossFlow
    given as a mixture, or the other way round)."""
    if init in ("gmm", "noise", "crossflow"):
        return
    flow = init.startswith("crossflow:")
    path = init.split(":", 1)[1] if flow else init
    problem = file_problem(path)
    if problem == "does not exist":
        raise ClipagError(f"--init {init}: CrossFlow checkpoint not found" if flow else
                          f"--init must be gmm, noise, crossflow[:FILE] or a mixture file; "
                          f"{init!r} not found")
    if problem is not None:
        raise ClipagError(f"--init {init}: {path} {problem}")
    wrong = what_else(path, read_meta(path), "crossflow" if flow else "gmm")
    if wrong is not None:
        raise ClipagError(f"--init {init}: {wrong}")


def init_source(config: GenerateConfig, guide: Guide) -> InitSource:
    """What starting images are drawn from: a Gaussian mixture, a CrossFlow, or nothing
    (noise or an init image)."""
    if config.init_image or config.init == "noise":
        return None
    if config.init.startswith("crossflow"):
        return load_flow_init(config.init, guide.device, guide, config.flow)
    path = DEFAULT_GMM if config.init == "gmm" else Path(config.init)
    if config.init == "gmm" and not path.is_file():
        return None
    return GaussianMixture.load(path)


def init_name(config: GenerateConfig, source: InitSource) -> str:
    """What the start images were, for the records: image, crossflow, gmm (the embedded
    mixture), the mixture file's path, or noise."""
    if config.init_image:
        return "image"
    if isinstance(source, FlowInit):
        return "crossflow"
    if source is None:
        return "noise"
    return "gmm" if config.init == "gmm" else config.init


def initial_images(guide: Guide, targets: Targets, config: GenerateConfig, size: int,
                   seeds: list[int], source: InitSource,
                   prompts: list[list[WeightedPrompt]] | None = None) -> torch.Tensor:
    """One starting image per seed, each drawn from its own seeded generator: a CrossFlow
    draft of the prompt, the best of N mixture samples, noise, or the init image."""
    out = []
    for b, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(seed)
        if config.init_image:
            image = from_image(config.init_image, size)
        elif isinstance(source, FlowInit):
            if prompts is None:
                raise ValueError("a CrossFlow init needs the prompts")
            # at temperature 0 every draft of a prompt is the same: draw one
            count = source.sampling.candidates if source.sampling.temperature > 0 else 1
            drafts = source.drafts(prompts[b], seed, count)
            best = drafts[0] if len(drafts) == 1 else best_of(drafts, scorer(guide, targets, b))
            image = upsample(best[None].cpu(), size)[0]
        elif config.init == "noise" or source is None:
            image = noise(size, g)
        else:
            candidates = source.sample(config.init_candidates, g)
            image = upsample(best_of(candidates, scorer(guide, targets, b))[None], size)[0]
        out.append(image)
    return torch.stack(out).to(guide.device)


def scorer(guide: Guide, targets: Targets, b: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Scores candidate start images (N, 3, r, r) for image b: the guide's weighted cosine
    similarity to its prompts, read at the guide's input side."""
    one = targets.select(slice(b, b + 1))

    def score(chunk: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(guide.device):
            emb = guide.encode_images(upsample(chunk.to(guide.device), guide.image_size))
        return similarity(emb, Targets(one.texts.expand(len(chunk), -1, -1),
                                       one.weights.expand(len(chunk), -1)))

    return score
