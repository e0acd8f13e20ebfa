"""Student image towers: a half-width resnet10t registered with timm, and narrowing a teacher ResNet into it.

A student that is the teacher's own ResNet at fewer channels can start from the teacher's weights: every layer keeps
its channels with the largest batch-norm scale (|gamma|, as in network slimming), and channels tied together by a
residual sum are kept together. At full width the copy reproduces the teacher exactly.
"""
from __future__ import annotations

from collections import defaultdict
from itertools import accumulate

import torch
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models.resnet import BasicBlock, ResNet

Pair = tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]


@register_model
def resnet10t_050(pretrained: bool = False, **kwargs) -> ResNet:
    """resnet10t at half width (stem 12/16/32, stages 32-256): a quarter of its MACs, about 3x its images/s on a
    2-core CPU at 64 px (model_zoo.md, "Distilled students")."""
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=16,
                stem_type="deep_tiered", avg_down=True)
    if kwargs.get("pretrained_cfg") is None:  # no released weights: give timm an empty config, not a warning
        kwargs["pretrained_cfg"] = {"num_classes": 1000, "input_size": (3, 224, 224)}
    return build_model_with_cfg(ResNet, "resnet10t_050", pretrained, **dict(args, **kwargs))


def _pairs(convs: list[torch.nn.Module], norms: list[torch.nn.Module], where: str) -> list[Pair]:
    if len(convs) != len(norms) or any(c.groups != 1 for c in convs):
        raise ValueError(f"narrowing needs every conv of the {where} followed by a batch norm and no grouped convs")
    return list(zip(convs, norms))


def _of_type(module: torch.nn.Module, kind: type) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def _layout(trunk: ResNet) -> tuple[list[Pair], list[tuple[list[Pair], Pair | None]]]:
    """The stem's conv/bn pairs, and per block its main-path pairs and its downsample pair (or None)."""
    if not isinstance(trunk, ResNet):
        raise ValueError(f"initialising from the teacher needs timm ResNets on both sides, got {type(trunk).__name__}")
    stem_parts = torch.nn.ModuleList([trunk.conv1, trunk.maxpool])  # maxpool: a strided conv with replace_stem_pool
    stem = _pairs(_of_type(stem_parts, torch.nn.Conv2d), _of_type(trunk.conv1, torch.nn.BatchNorm2d) + [trunk.bn1]
                  + _of_type(trunk.maxpool, torch.nn.BatchNorm2d), "stem")
    blocks = []
    for block in (b for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4) for b in stage):
        main = torch.nn.ModuleList(m for name, m in block.named_children() if name != "downsample")
        short = block.downsample
        blocks.append((_pairs(_of_type(main, torch.nn.Conv2d), _of_type(main, torch.nn.BatchNorm2d), "block"),
                       None if short is None else _pairs(_of_type(short, torch.nn.Conv2d),
                                                         _of_type(short, torch.nn.BatchNorm2d), "downsample")[0]))
    return stem, blocks


def narrow_copy(teacher: ResNet, student: ResNet) -> torch.Tensor:
    """Copy ``teacher``'s weights into ``student`` (the same ResNet layout at equal or fewer channels per layer).

    Returns the teacher channel indices kept at the trunk's output (to slice a projection that follows it).
    """
    (t_stem, t_blocks), (s_stem, s_blocks) = _layout(teacher), _layout(student)
    kernels = [[c.kernel_size for c, _ in s] + [short[0].kernel_size if short else None for _, short in b]
               for s, b in ((t_stem, t_blocks), (s_stem, s_blocks))]
    if kernels[0] != kernels[1] or [len(m) for m, _ in t_blocks] != [len(m) for m, _ in s_blocks]:
        raise ValueError("the student is not a narrower copy of the teacher's ResNet (different blocks or kernels); "
                         "train it from scratch instead")

    # Residual streams: the stem output and the outputs of the blocks after it share channels until a block with a
    # downsample starts a new stream; a stream keeps the channels with the largest summed |gamma| of its members.
    stream_of = list(accumulate((short is not None for _, short in t_blocks), initial=0))
    members, width = defaultdict(list), {0: s_stem[-1][0].out_channels}
    members[0].append(t_stem[-1][1])
    for (main, short), (s_main, _), stream in zip(t_blocks, s_blocks, stream_of[1:]):
        members[stream] += [main[-1][1]] + ([short[1]] if short else [])
        width[stream] = s_main[-1][0].out_channels

    def top(score: torch.Tensor, n: int) -> torch.Tensor:
        if n > len(score):
            raise ValueError(f"the student has a layer wider than the teacher's ({n} > {len(score)} channels)")
        return torch.sort(torch.topk(score, n).indices).values

    kept = {s: top(sum(bn.weight.abs() for bn in bns), width[s]) for s, bns in members.items()}

    def copy(t_pair: Pair, s_pair: Pair, inputs: torch.Tensor, outputs: torch.Tensor) -> None:
        (t_conv, t_bn), (s_conv, s_bn) = t_pair, s_pair
        s_conv.weight.copy_(t_conv.weight[outputs][:, inputs])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(s_bn, name).copy_(getattr(t_bn, name)[outputs])

    def copy_chain(t_pairs: list[Pair], s_pairs: list[Pair], inputs: torch.Tensor, last: torch.Tensor) -> None:
        for k, (t_pair, s_pair) in enumerate(zip(t_pairs, s_pairs)):
            outputs = last if k == len(t_pairs) - 1 else top(t_pair[1].weight.abs(), s_pair[0].out_channels)
            copy(t_pair, s_pair, inputs, outputs)
            inputs = outputs

    with torch.no_grad():
        copy_chain(t_stem, s_stem, torch.arange(3), kept[0])
        for (main, short), (s_main, s_short), before, after in zip(t_blocks, s_blocks, stream_of, stream_of[1:]):
            copy_chain(main, s_main, kept[before], kept[after])
            if short:
                copy(short, s_short, kept[before], kept[after])
    return kept[stream_of[-1]]
