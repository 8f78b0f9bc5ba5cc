"""`multiview`: read several views / adjacent slices together (SURVEY.md family C).

Radiologists read a lesion in several views (two mammography projections, several ultrasound
planes) or scroll through neighbouring CT slices. Representative methods: 3DCE (Yan et al.,
"3D context enhanced region-based convolutional neural network for end-to-end lesion
detection", MICCAI 2018: neighbouring slices fed as the channels of a 2D network, feature maps
of several slice groups concatenated) and CVR-RCNN (Ma et al., "Cross-view relation networks for
mammogram mass detection", 2019: one branch per view, fused features).

Two sources of views (``options.source``, default ``auto``: views when the dataset provides
them, else the volume):

* ``views``: the dataset's ``views`` extra, (B, V, C, H, W), view 0 being the image itself;
  ``options.n_views`` keeps the first n (null: all);
* ``volume``: a 3D volume (B, C, D, H, W) turned 2.5D: ``options.slices`` adjacent slices around
  the centre of ``options.axis`` (0 = D, 1 = H, 2 = W), in order; or, with ``options.n_slabs``,
  the axis split into n equal slabs, each averaged into one slice (evenly spaced thick slices
  covering the whole volume). The backbone is then 2D.

Fusion (``options.fusion``):

* ``channels`` (3DCE's input): the V views stacked as the V·C input channels of one 2D
  backbone (built with ``in_chans = V·C``), view 0's channels first;
* ``late`` (CVR-RCNN-like, without the relation module): each view through a backbone — one
  shared backbone (``options.shared: true``, a single batched pass) or one per view — and the
  pooled features concatenated (``options.pool: concat``, head input V·F) or averaged
  (``mean``, F) before the linear head.

Detection (``fusion: late``, shared backbone; the probe's second view): the views are not
registered to the image (the probe re-renders its lesion at another position and tilt), so no
box-to-box correspondence exists for CVR-RCNN's relation module. The other views enter as global
context instead (`SecondViewContext`): views 1..V-1 go through the detector's own encoder (shared
weights), are pooled and averaged, projected to the FPN width and added to every pyramid level
before the RetinaNet heads (`DetectorNet.level_context`), so every anchor's score can read "what
the second view shows" (a lesion, or normal tissue only). The projection starts at zero: the
untrained network is the plain detector.

Simplified: no cross-view relation module (classification: pooled features fused; detection: a
global context vector, not RoI-to-RoI relations); in volume mode each view is one slice (or
slab), not 3DCE's groups of three slices per view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import DatasetSpec
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, DETECTION_TASKS, BuildContext, Strategy, task_net
from dkbench.strategies.options import Bounds, Count, StrategyOptions
from dkbench.strategies.registry import register_strategy

Source = Literal["auto", "views", "volume"]
Fusion = Literal["late", "channels"]
Pool = Literal["concat", "mean"]


def centre_slices(size: int, k: int) -> list[int]:
    """Indices of the k adjacent slices around the centre of an axis of `size` slices, in order
    (for odd k the middle one is size // 2)."""
    if not 1 <= k <= size:
        raise ValueError(f"multiview: slices must be in [1, {size}], got {k}")
    start = size // 2 - k // 2
    return list(range(start, start + k))


def slab_bounds(size: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) of n equal, contiguous slabs covering an axis of `size` slices."""
    if not 1 <= n <= size:
        raise ValueError(f"multiview: n_slabs must be in [1, {size}], got {n}")
    edges = [round(i * size / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def volume_to_views(volume: torch.Tensor, axis: int = 0, slices: int = 3, n_slabs: int | None = None) -> torch.Tensor:
    """(B, C, D, H, W) → (B, V, C, h, w): the chosen slices (or slab means) along spatial `axis`."""
    if volume.ndim != 5:
        raise ValueError(f"multiview: a volume is (B, C, D, H, W), got shape {tuple(volume.shape)}")
    dim = 2 + axis
    size = volume.shape[dim]
    moved = volume.movedim(dim, 1)  # (B, S, C, h, w)
    if n_slabs:
        return torch.stack([moved[:, lo:hi].mean(1) for lo, hi in slab_bounds(size, n_slabs)], 1)
    idx = torch.tensor(centre_slices(size, slices), device=volume.device)
    return moved.index_select(1, idx)


class MultiViewNet(nn.Module):
    """Views (B, V, C, H, W) → channels-stacked backbone, or per-view backbones + late fusion."""

    def __init__(
        self,
        backbones: list[Backbone],
        num_out: int,
        n_views: int,
        *,
        fusion: Fusion = "late",
        pool: Pool = "concat",
        source: Source = "views",
        axis: int = 0,
        slices: int = 3,
        n_slabs: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbones = nn.ModuleList(backbones)
        self.n_views, self.fusion, self.pool, self.source = n_views, fusion, pool, source
        self.axis, self.slices, self.n_slabs = axis, slices, n_slabs
        f = backbones[0].num_features
        in_features = f * n_views if (fusion == "late" and pool == "concat") else f
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(in_features, num_out)

    def views(self, batch: dict) -> torch.Tensor:
        """The (B, V, C, H, W) views this network reads."""
        if self.source == "volume":
            return volume_to_views(batch["image"], self.axis, self.slices, self.n_slabs)
        views = batch["views"][:, : self.n_views]
        if views.shape[1] != self.n_views:
            raise ValueError(f"multiview: expected {self.n_views} views, the batch has {views.shape[1]}")
        return views

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        views = self.views(batch)
        b, v = views.shape[:2]
        if self.fusion == "channels":
            backbone = self.backbones[0]
            fmap = backbone.forward_features(views.flatten(1, 2))  # view 0's channels first
            emb = backbone.pool(fmap)
            out = {"embedding": emb, "feature_map": fmap}
        else:
            if len(self.backbones) == 1:  # shared: one batched pass over all views
                backbone = self.backbones[0]
                fmaps = backbone.forward_features(views.flatten(0, 1))
                per_view = backbone.pool(fmaps).view(b, v, -1)
                fmap0 = fmaps.view(b, v, *fmaps.shape[1:])[:, 0]
            else:
                fmaps = [bb.forward_features(views[:, i]) for i, bb in enumerate(self.backbones)]
                per_view = torch.stack([bb.pool(fm) for bb, fm in zip(self.backbones, fmaps)], 1)
                fmap0 = fmaps[0]
            emb = per_view.flatten(1) if self.pool == "concat" else per_view.mean(1)
            out = {"embedding": emb, "feature_map": fmap0, "view_embeddings": per_view}
        out["logits"] = self.head(self.dropout(out["embedding"]))
        return out


class SecondViewContext(nn.Module):
    """The other views of each image as global context for a detector (`DetectorNet.level_context`):
    views 1..V-1 through the detector's encoder (the same weights), pooled, averaged over the views
    and projected to the FPN width. The projection is zero-initialised, so training starts from the
    plain detector and the context term grows only as far as it helps the loss."""

    def __init__(self, num_features: int, channels: int, n_views: int):
        super().__init__()
        if n_views < 2:
            raise ValueError(f"multiview: detection reads views 1..V-1 as context; n_views={n_views} leaves none")
        self.n_views = int(n_views)
        self.project = nn.Linear(num_features, channels)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, batch: dict, backbone: Backbone) -> torch.Tensor:
        others = batch["views"][:, 1: self.n_views]
        b, v = others.shape[:2]
        if v != self.n_views - 1:
            raise ValueError(f"multiview: expected {self.n_views} views, the batch has {v + 1}")
        embedding = backbone.pool(backbone.forward_features(others.flatten(0, 1))).view(b, v, -1).mean(1)
        return self.project(embedding)


@register_strategy("multiview")
class MultiView(Strategy):
    """Several views or adjacent slices read together (3DCE / CVR-RCNN; module docstring)."""

    name = "multiview"
    family = "C"
    knowledge = "a second view (train + **test**)"
    requires = frozenset()  # views OR a 3D volume: checked in `incompatibility`
    #: not segmentation: the probe's second view re-renders the lesion elsewhere (no pixel
    #: correspondence with the mask), and no 3D segmentation set ships for 2.5D slices; detection
    #: reads the other views as global context (module docstring)
    tasks = CLASSIFICATION_TASKS | DETECTION_TASKS
    citation = (
        "Yan et al., 3D context enhanced region-based CNN for end-to-end lesion detection (3DCE), "
        "MICCAI 2018; Ma et al., Cross-view relation networks for mammogram mass detection (CVR-RCNN), 2019"
    )

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: auto: the dataset's views when provided, else a 3D volume as 2.5D; views | volume: force one
        source: Source = "auto"
        #: late: one backbone pass per view, pooled features fused; channels: views as input channels
        fusion: Fusion = "late"
        #: late fusion: one backbone shared by all views (False: one backbone per view)
        shared: bool = True
        #: late fusion: concat (head input V × features) or mean of the view features
        pool: Pool = "concat"
        #: views source: the first n views (None: all the dataset has)
        n_views: Count | None = None
        #: volume source: adjacent slices around the centre of `axis`
        slices: Count = 3
        #: volume source: instead of `slices`, n equal slabs along `axis`, each averaged
        n_slabs: Count | None = None
        #: volume source: slice axis of (D, H, W)
        axis: Annotated[int, Bounds(ge=0, le=2)] = 0

    def __init__(self, **options: Any):
        super().__init__(**options)
        #: the view layout of the built network (metadata.json); set by `build_net`
        self.layout: dict[str, Any] | None = None

    # --- which views ----------------------------------------------------------------------
    def resolve_source(self, spec: DatasetSpec) -> str | None:
        """'views' or 'volume' for this dataset, None if it has neither."""
        has_views, is_3d = "views" in spec.provides, spec.spatial_dims == 3
        source = self.options.source
        if source == "views":
            return "views" if has_views else None
        if source == "volume":
            return "volume" if is_3d else None
        return "views" if has_views else ("volume" if is_3d else None)

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.resolve_source(spec) is None:
            wanted = {
                "auto": "several views (the dataset extra 'views') or a 3D volume (spatial_dims 3)",
                "views": "several views (the dataset extra 'views'; source=views)",
                "volume": "a 3D volume (spatial_dims 3; source=volume)",
            }[self.options.source]
            return (
                f"strategy '{self.name}' needs {wanted}; dataset '{spec.name}' is a single "
                f"{spec.spatial_dims}D view per sample and provides "
                f"{sorted(spec.provides) or 'nothing beyond images and labels'}"
            )
        if spec.task in DETECTION_TASKS and (self.options.fusion != "late" or not self.options.shared):
            return (f"strategy '{self.name}' on detection reads the other views through the detector's own encoder "
                    f"(fusion=late, shared=true); fusion={self.options.fusion}, shared={self.options.shared} "
                    f"is classification only")
        return None

    def _declared_views(self, spec: DatasetSpec) -> int | None:
        """The number of views known from the options alone (None: the data says, `build_net`)."""
        if self.resolve_source(spec) == "volume":
            return self.options.n_slabs or self.options.slices
        return self.options.n_views

    def backbone_kwargs(self, spec: DatasetSpec) -> dict[str, Any]:
        """2D backbone on volumes; V·C input channels for channel fusion (when V is known
        before the data is: volume slices/slabs, or `n_views`)."""
        source = self.resolve_source(spec)
        kwargs: dict[str, Any] = {"spatial_dims": 2} if source == "volume" else {}
        v = self._declared_views(spec)
        if self.options.fusion == "channels" and v is not None:
            kwargs["in_chans"] = v * spec.in_chans
        return kwargs

    def _views_count(self, ctx: BuildContext, source: str) -> int:
        if source == "volume":
            return self.options.n_slabs or self.options.slices
        views = ctx.arrays.splits["train"].extras.get("views")
        if views is None:
            if self.options.n_views is None:
                raise ValueError(f"multiview: dataset '{ctx.spec.name}' has no 'views' array; set options.n_views")
            return self.options.n_views
        available = int(views.shape[1])
        wanted = self.options.n_views or available
        if not 1 <= wanted <= available:
            raise ValueError(f"multiview: n_views={wanted}, dataset '{ctx.spec.name}' has {available} views")
        return wanted

    def build_net(self, ctx: BuildContext) -> nn.Module:
        o, spec = self.options, ctx.spec
        source = self.resolve_source(spec)
        if source is None:
            raise ValueError(self.incompatibility(spec))
        v = self._views_count(ctx, source)
        if spec.task in DETECTION_TASKS:  # the plain detector + the other views as context of every level
            why = self.incompatibility(spec)
            if why:
                raise ValueError(why)
            net = task_net(ctx.make_backbone(), spec, o.dropout, ctx)
            net.level_context = SecondViewContext(net.backbone.num_features, net.settings.fpn_channels, v)
            self.layout = {**self._describe(spec, source, v),
                           "detection": "views 1..V-1 through the shared encoder, pooled, averaged, projected "
                                        "(zero-initialised) and added to every FPN level"}
            return net
        # the run's backbone first (`backbone_kwargs` already makes it 2D for volumes); the
        # random stream of every run depends on the backbones being built in this order
        backbone = ctx.make_backbone()
        if o.fusion == "channels":
            need = v * spec.in_chans
            if getattr(backbone, "in_chans", None) != need:  # None: the backbone does not say
                # the view count came from the data, after `backbone_kwargs` set the factory's
                # channels: rebuild with V·C input channels. The discarded first build has drawn
                # its weights from the global RNG; kept, so a seed trains the same run as before
                backbone = ctx.make_backbone(in_chans=need)
            backbones = [backbone]
        elif o.shared:
            backbones = [backbone]
        else:
            backbones = [backbone, *(ctx.make_backbone() for _ in range(v - 1))]
        self.layout = self._describe(spec, source, v)
        return MultiViewNet(
            backbones, num_outputs(spec.task, spec.num_classes), v, fusion=o.fusion, pool=o.pool,
            source=source, axis=o.axis, slices=o.slices, n_slabs=o.n_slabs, dropout=o.dropout,
        )

    def _describe(self, spec: DatasetSpec, source: str, v: int) -> dict[str, Any]:
        o = self.options
        layout: dict[str, Any] = {"source": source, "n_views": v, "fusion": o.fusion}
        if o.fusion == "late":
            layout.update(shared=o.shared, pool=o.pool)
        if source == "volume":
            layout["axis"] = ["D", "H", "W"][o.axis]
            if o.n_slabs:
                layout["slabs"] = [list(b) for b in slab_bounds(spec.size, o.n_slabs)]
            else:
                layout["slices"] = centre_slices(spec.size, o.slices)
        return layout

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        if self.layout is not None:
            meta["views"] = self.layout
        return meta
