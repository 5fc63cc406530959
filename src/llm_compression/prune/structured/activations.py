"""Importance from calibration activations (forward passes only, no gradients).

Depth (``layer`` level), one score per decoder block or run of blocks, from the hidden states
entering and leaving the decoder blocks (the residual stream ``h_i`` = input of block ``i``,
``h_{i+1}`` = its output; ``h_0`` = token embeddings; no final norm):

- ``block-influence`` -- ShortGPT (Men et al. 2024, Sec. 3.1, Eq. 2):
  ``BI_i = 1 - (1/|X|) sum_{x,t} cos(h_{i,t}, h_{i+1,t})``, the mean over every calibration token
  ``t`` of every sample ``x``. Blocks with the lowest BI change the stream least and go first.
- ``angular`` -- Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the Deeper Layers",
  Sec. 3.2, Eq. 7): for a run of ``n`` consecutive blocks starting at ``l``,
  ``d(h_l, h_{l+n}) = (1/pi) arccos(cos(h_{l,T}, h_{l+n,T}))``; the run of ``n`` blocks with the
  smallest distance is removed. The paper uses the last token ``T`` of each sample; with the small
  calibration budgets of this study (10 samples) that is 10 numbers, so here the distance is averaged
  over *every* calibration token (``(1/|X|) sum_{x,t} d(h_{l,t}, h_{l+n,t})``), as ShortGPT averages
  its cosine. ``token="last"`` gives the paper's variant.

Width (``block`` and ``channel`` levels), ``activation`` -- Minitron (Muralidharan et al. 2024,
Sec. 2.2 "Importance Analysis", Eq. 1-3), per calibration sample ``x`` of ``T`` tokens:

- attention head ``i`` of a layer: ``||a_{x,t,i}||_2``, the L2 norm over ``head_dim`` of the head's
  attention output (the ``o_proj`` input slice of the head, before ``o_proj``);
- MLP channel ``i``: ``|m_{x,t,i}|``, the intermediate activation (``act(gate) * up``, the input
  of ``down_proj``);
- embedding (hidden) channel ``i``: ``sum_N |LN_N(h)_{x,t,i}|`` over every hidden-size
  LayerNorm/RMSNorm ``N`` of the model (inputs of attention and MLP, final norm);

aggregated over the sequence by the mean over tokens, then over the batch (the calibration
samples) by the L2 norm: ``F_i = sqrt(sum_x (mean_t f_{x,t,i})^2)`` (Minitron's batch=L2,
sequence=mean pairing). Heads of a key/value group add up their query heads' scores.

Width, ``block`` level only, ``contribution`` -- the same statistic and aggregation taken on what a head
or MLP channel *adds to the residual stream*, i.e. after the projection that writes it there:

- attention head ``i``: ``f_{x,t,i} = ||W_O[:, i] a_{x,t,i}||_2``, the head's slice of ``o_proj``
  (columns ``[i*d, (i+1)*d)``) applied to its attention output;
- MLP channel ``i``: ``f_{x,t,i} = ||W_down[:, i] m_{x,t,i}||_2 = |m_{x,t,i}| * ||W_down[:, i]||_2``.

Minitron's ``activation`` ranks units by the size of their activation *before* that projection, which
ignores how strongly the projection passes each unit on; NVIDIA Model Optimizer's "independent channel
contribution" score (``||W[:, i]||_2 * mean |x_i|`` on a linear layer's input channels) weights the
activation by that column norm for the same reason. ``contribution`` applies it to heads and MLP
channels alike (for a head, exactly, per token), with Minitron's aggregation. Measured on the embedded
model (README, "Structured criteria"): ranking heads by their raw output norm is what makes
``activation`` fall behind Taylor at block 0.5.
"""

from __future__ import annotations

import math

import torch

from ...modules import decoder_layers
from .groups import GroupSet, StructuredPruningError, hidden_norms

#: depth criteria (``layer`` level only) and width criteria (``block``/``channel`` only) read from activations
DEPTH_IMPORTANCES = ("block-influence", "angular")
WIDTH_ACTIVATION_IMPORTANCES = ("activation", "contribution")


def _check_calib(calib_ids) -> None:
    if not (isinstance(calib_ids, torch.Tensor) and calib_ids.dim() == 2 and calib_ids.numel() > 0):
        raise StructuredPruningError("activation importance needs calib_ids, a LongTensor [samples, seqlen]")


def _batches(calib_ids: torch.Tensor, batch_size: int):
    for s in range(0, calib_ids.shape[0], max(1, int(batch_size))):
        yield calib_ids[s:s + max(1, int(batch_size))]


def _hidden_of(args, kwargs):
    h = kwargs.get("hidden_states") if kwargs else None
    return h if h is not None else args[0]


@torch.no_grad()
def residual_states(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream at every decoder-block boundary for one batch.

    Args:
        ids: LongTensor ``[B, T]``.

    Returns:
        ``n_layers + 1`` float64 tensors ``[B, T, hidden]``: entry ``i`` is the input of decoder block
        ``i``, entry ``n_layers`` the output of the last block (before the final norm).
    """
    layers = decoder_layers(model)
    states: list[torch.Tensor | None] = [None] * (len(layers) + 1)
    hooks = []

    def pre(i):
        def f(_mod, args, kwargs):
            states[i] = _hidden_of(args, kwargs).detach().double().cpu()
        return f

    def post(i):
        def f(_mod, _args, out):
            h = out[0] if isinstance(out, (tuple, list)) else out
            states[i + 1] = h.detach().double().cpu()
        return f

    try:
        for i, blk in enumerate(layers):
            hooks.append(blk.register_forward_pre_hook(pre(i), with_kwargs=True))
            hooks.append(blk.register_forward_hook(post(i)))
        model(input_ids=ids.to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return states  # type: ignore[return-value]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last dimension (``[..., H]`` -> ``[...]``), float64, 0 for a zero vector."""
    a, b = a.double(), b.double()
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp_min(1e-300), torch.zeros_like(den))


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``arccos(cos(a, b)) / pi`` over the last dimension, in [0, 1] (Gromov et al. 2024, Eq. 7)."""
    return torch.arccos(cosine(a, b).clamp(-1.0, 1.0)) / math.pi


@torch.no_grad()
def block_influence(model, calib_ids: torch.Tensor, *, batch_size: int = 1) -> torch.Tensor:
    """ShortGPT block influence ``[n_layers]`` (float64) of every decoder block: ``1 - mean cos(h_i, h_{i+1})``
    over all calibration tokens (Men et al. 2024, Eq. 2). Higher = the block changes the stream more = keep.

    Raises:
        StructuredPruningError: ``calib_ids`` is not a non-empty 2-D LongTensor.
    """
    _check_calib(calib_ids)
    n = len(decoder_layers(model))
    total = torch.zeros(n, dtype=torch.float64)
    count = 0
    for ids in _batches(calib_ids, batch_size):
        h = residual_states(model, ids)
        for i in range(n):
            total[i] += cosine(h[i], h[i + 1]).sum()
        count += ids.numel()
    return 1.0 - total / count


@torch.no_grad()
def angular_distances(model, calib_ids: torch.Tensor, n: int, *, batch_size: int = 1,
                      token: str = "all") -> torch.Tensor:
    """Angular distance ``[n_layers - n + 1]`` (float64) between the input of block ``l`` and the output of
    block ``l + n - 1`` (``d(h_l, h_{l+n})``, Gromov et al. 2024, Eq. 7), averaged over all calibration
    tokens (``token="all"``) or over the last token of each sample (``token="last"``, as the paper).

    Raises:
        StructuredPruningError: ``n`` outside ``[1, n_layers]``, bad ``token``, bad ``calib_ids``.
    """
    _check_calib(calib_ids)
    layers = len(decoder_layers(model))
    if not 1 <= int(n) <= layers:
        raise StructuredPruningError(f"angular distance over n={n} blocks needs 1 <= n <= {layers}")
    if token not in ("all", "last"):
        raise StructuredPruningError(f"angular distance token {token!r} is not 'all' or 'last'")
    total = torch.zeros(layers - n + 1, dtype=torch.float64)
    count = 0
    for ids in _batches(calib_ids, batch_size):
        h = residual_states(model, ids)
        if token == "last":
            h = [x[:, -1:] for x in h]
        for l in range(layers - n + 1):
            total[l] += angular_distance(h[l], h[l + n]).sum()
        count += h[0].shape[0] * h[0].shape[1]
    return total / count


class ActivationStatistics:
    """Accumulates the Minitron head and MLP-channel statistics (module docstring) of the decoder blocks it is
    attached to, batch by batch: per layer the sum over calibration samples of ``(mean_t f_{x,t})^2``.

    Args:
        contribution: score what each head / MLP channel adds to the residual stream (through its ``o_proj`` /
            ``down_proj`` columns) instead of its activation (``contribution`` criterion).
    """

    def __init__(self, contribution: bool = False):
        self.contribution = contribution
        self.acc_heads: dict[int, torch.Tensor | None] = {}
        self.acc_mlp: dict[int, torch.Tensor | None] = {}

    @staticmethod
    def _add(store, key, per_sample):  # per_sample [B, units]: sequence-mean values; accumulate sum of squares
        sq = (per_sample.double() ** 2).sum(0).cpu()
        store[key] = sq if store.get(key) is None else store[key] + sq

    def attach(self, i: int, block) -> list:
        """Hook decoder block ``block`` (layer ``i``): its ``o_proj`` and ``down_proj`` inputs feed the
        statistics. Returns the hook handles (``.remove()`` them when done)."""
        attn, down = block.self_attn, block.mlp.down_proj
        d = int(attn.head_dim)
        contribution = self.contribution
        self.acc_heads.setdefault(i, None)
        self.acc_mlp.setdefault(i, None)
        # down_proj column norms [intermediate]: |m_i| * ||W_down[:, i]|| is channel i's output norm
        w_col = down.weight.detach().double().norm(dim=0) if contribution else None  # on the weight's device

        def head_hook(mod, args):
            x = args[0]  # [B, T, n_q * d], the attention output before o_proj
            b, t, _ = x.shape
            a = x.double().reshape(b, t, -1, d)  # [B, T, n_q, d]
            if contribution:  # each head's o_proj output [B, T, n_q, hidden]; o_proj [hidden, n_q * d]
                w_o = mod.weight.detach().double().reshape(mod.weight.shape[0], -1, d)
                a = torch.einsum("bthd,ohd->btho", a, w_o)
            self._add(self.acc_heads, i, a.norm(dim=-1).mean(1))

        def mlp_hook(_mod, args):
            v = args[0].double().abs().mean(1)  # [B, intermediate]
            self._add(self.acc_mlp, i, v * w_col if w_col is not None else v)

        return [attn.o_proj.register_forward_pre_hook(head_hook), down.register_forward_pre_hook(mlp_hook)]

    def heads(self, i: int) -> torch.Tensor:
        """Head scores ``[n_q]`` of layer ``i`` (float64)."""
        return self.acc_heads[i].sqrt()

    def mlp(self, i: int) -> torch.Tensor:
        """MLP channel scores ``[intermediate]`` of layer ``i`` (float64)."""
        return self.acc_mlp[i].sqrt()


@torch.no_grad()
def activation_statistics(model, calib_ids: torch.Tensor, *, layers: list[int] | None = None,
                          hidden: bool = False, batch_size: int = 1, contribution: bool = False) -> dict:
    """Minitron activation statistics (module docstring): per decoder layer in ``layers`` the head scores
    ``[n_q]`` and MLP channel scores ``[intermediate]``, and with ``hidden`` the embedding channel scores
    ``[hidden]``; each ``sqrt(sum_x (mean_t f_{x,t})^2)`` over calibration samples ``x``, float64.

    Args:
        contribution: see :class:`ActivationStatistics`.

    Returns:
        ``{"heads": {layer: Tensor}, "mlp": {layer: Tensor}, "hidden": Tensor | None}``.

    Raises:
        StructuredPruningError: ``calib_ids`` is not a non-empty 2-D LongTensor; ``contribution`` with
            ``hidden`` (a hidden channel is the residual stream itself).
    """
    _check_calib(calib_ids)
    if contribution and hidden:
        raise StructuredPruningError("contribution scores heads and MLP channels, not hidden channels")
    blocks = decoder_layers(model)
    layers = list(range(len(blocks))) if layers is None else list(layers)
    stats = ActivationStatistics(contribution)
    acc_hidden = {0: None}
    hooks = []
    cur = {}

    def norm_hook(_mod, _args, out):
        v = out.double().abs()
        cur["h"] = v if "h" not in cur else cur["h"] + v

    try:
        for i in layers:
            hooks += stats.attach(i, blocks[i])
        if hidden:
            for _, m in hidden_norms(model):
                hooks.append(m.register_forward_hook(norm_hook))
        dev = next(model.parameters()).device
        for ids in _batches(calib_ids, batch_size):
            cur.clear()
            model(input_ids=ids.to(dev), use_cache=False)
            if hidden:
                stats._add(acc_hidden, 0, cur["h"].mean(1))
    finally:
        for h in hooks:
            h.remove()
    return {"heads": {i: stats.heads(i) for i in layers},
            "mlp": {i: stats.mlp(i) for i in layers},
            "hidden": acc_hidden[0].sqrt() if hidden else None}


def width_scores(gs: GroupSet, heads: torch.Tensor | None, mlp: torch.Tensor | None,
                 hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Importance ``[n_groups]`` of one group set from the statistics of its layer (``heads`` ``[n_q]``,
    ``mlp`` ``[intermediate]``) or of the model (``hidden``): ``query_head``/``attention_head``: the head's
    score; ``kv_group``: the sum over its query heads; ``mlp_channel``: the channel's; ``hidden_channel``: the
    embedding channel's.

    Raises:
        StructuredPruningError: a group kind without a score, or a count that does not match.
    """
    if gs.kind in ("query_head", "attention_head"):
        s = heads
    elif gs.kind == "kv_group":
        s = heads.reshape(gs.n_groups, -1).sum(1)
    elif gs.kind == "mlp_channel":
        s = mlp
    elif gs.kind == "hidden_channel":
        s = hidden
    else:
        raise StructuredPruningError(f"no activation importance for group kind {gs.kind!r}")
    if s.numel() != gs.n_groups:
        raise StructuredPruningError(f"{gs.kind} of layer {gs.layer}: {s.numel()} scores for {gs.n_groups} groups")
    return s


def activation_group_importance(groupsets: list[GroupSet], model, calib_ids: torch.Tensor, *,
                                batch_size: int = 1, importance: str = "activation") -> list[torch.Tensor]:
    """Minitron importance ``[n_groups]`` (float64) of every group set of :mod:`.groups`; higher = keep.

    ``query_head``/``attention_head``: the head's score; ``kv_group``: the sum over its query heads;
    ``mlp_channel``: the channel's score; ``hidden_channel``: the embedding channel's score.
    ``importance="contribution"`` scores heads and channels by what they add to the residual stream
    (module docstring).

    Raises:
        StructuredPruningError: ``importance`` not in :data:`WIDTH_ACTIVATION_IMPORTANCES`, a group kind
            without a score of that criterion, bad ``calib_ids``.
    """
    if importance not in WIDTH_ACTIVATION_IMPORTANCES:
        raise StructuredPruningError(f"activation importance {importance!r} is not one of "
                                     f"{', '.join(WIDTH_ACTIVATION_IMPORTANCES)}")
    layers = sorted({gs.layer for gs in groupsets if gs.layer is not None})
    hidden = any(gs.kind == "hidden_channel" for gs in groupsets)
    if hidden and importance == "contribution":
        raise StructuredPruningError("importance 'contribution' scores heads and MLP channels (block level); "
                                     "for hidden channels use 'activation'")
    stats = activation_statistics(model, calib_ids, layers=layers, hidden=hidden, batch_size=batch_size,
                                  contribution=importance == "contribution")
    return [width_scores(gs, stats["heads"].get(gs.layer), stats["mlp"].get(gs.layer), stats["hidden"])
            for gs in groupsets]
