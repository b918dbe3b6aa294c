"""Samples → training tensors, in one place: token-budget micro-batches, right padding, packing.

A micro-batch holds whole sequences (prompt + response), right-padded to the longest one, with
explicit position ids so that positions match the rollout engine's left-padded generation. The
loss side works on *packed* response tokens: `token_index` selects, from the flattened
`(b·L)` positions, the positions whose next token is a response token, so hidden states and
targets of prompt and padding tokens never reach the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.types import Sample


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (b, L) right-padded prompt+response
    attention_mask: torch.Tensor  # (b, L)
    position_ids: torch.Tensor  # (b, L)
    token_index: torch.Tensor  # (n,) flat positions in (b*(L)) whose next token is a trained response token
    targets: torch.Tensor  # (n,) the response token ids predicted at those positions
    seq_index: torch.Tensor  # (n,) which row of the micro-batch each packed token belongs to
    advantages: torch.Tensor  # (n,) per-token advantage (the sample's scalar, broadcast)
    rollout_logprobs: torch.Tensor  # (n,) behaviour-policy logprobs from the engine
    old_logprobs: torch.Tensor | None  # (n,) proximal-policy logprobs (None: on-policy, use detached current)
    num_seqs: int  # rows with at least one trained token
    sample_ids: list[int]  # indices of the samples (into the step's list) held by this micro-batch
    is_weights: torch.Tensor | None = None  # (n,) per-sample Sample.is_weight broadcast; None when all are 1
    replayed: torch.Tensor | None = None  # (n,) bool, token of a replayed sample; None when none is

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())


def split_by_token_budget(samples: list[Sample], budget: int) -> list[list[int]]:
    """Greedy first-fit of samples (by padded cost = rows × longest row) into micro-batches.

    Sorting by length keeps padding low; a sample longer than the budget gets a micro-batch alone.
    """
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = len(samples[i].prompt_ids) + len(samples[i].response_ids)
        if current and max(longest, length) * (len(current) + 1) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def collate(samples: list[Sample], ids: list[int], pad_id: int, loss_mask: list[bool],
            old_logprobs: dict[int, list[float]] | None = None) -> MicroBatch:
    """Build one micro-batch from `samples[i] for i in ids`; rows with loss_mask False train no token."""
    seqs = [samples[i].prompt_ids + samples[i].response_ids for i in ids]
    width = max(len(s) for s in seqs)
    b = len(ids)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    token_index, targets, seq_index, adv, rollout_lp, old_lp, is_w, replayed = [], [], [], [], [], [], [], []
    num_seqs = 0
    for row, (i, seq) in enumerate(zip(ids, seqs)):
        s = samples[i]
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
        if not loss_mask[i] or not s.response_ids:
            continue
        num_seqs += 1
        p, r = len(s.prompt_ids), len(s.response_ids)
        # position c predicts token c+1; response token k sits at column p+k
        token_index += [row * width + c for c in range(p - 1, p + r - 1)]
        targets += s.response_ids
        seq_index += [row] * r
        adv += [0.0 if s.advantage is None else float(s.advantage)] * r  # None: a logprob-only pass
        rollout_lp += s.rollout_logprobs
        is_w += [float(s.is_weight)] * r
        replayed += [bool(s.replayed)] * r
        if old_logprobs is not None:
            old_lp += old_logprobs[i]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    as_float = lambda x: torch.tensor(x, dtype=torch.float32)
    return MicroBatch(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        token_index=torch.tensor(token_index, dtype=torch.long), targets=torch.tensor(targets, dtype=torch.long),
        seq_index=torch.tensor(seq_index, dtype=torch.long), advantages=as_float(adv),
        rollout_logprobs=as_float(rollout_lp), old_logprobs=as_float(old_lp) if old_logprobs is not None else None,
        num_seqs=num_seqs, sample_ids=list(ids),
        is_weights=as_float(is_w) if any(w != 1.0 for w in is_w) else None,
        replayed=torch.tensor(replayed, dtype=torch.bool) if any(replayed) else None,
    )


def unpack(values: torch.Tensor, seq_index: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed per-token values (n,) → a right-padded (rows, T) matrix and its 0/1 mask."""
    counts = torch.bincount(seq_index, minlength=num_rows)
    width = int(counts.max()) if counts.numel() and counts.max() > 0 else 1
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(seq_index.numel(), device=seq_index.device) - starts[seq_index]
    out = values.new_zeros((num_rows, width))
    mask = values.new_zeros((num_rows, width))
    out = out.index_put((seq_index, col), values)
    mask = mask.index_put((seq_index, col), torch.ones_like(values))
    return out, mask
