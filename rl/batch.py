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
    targets: torch.Tensor  # (n,) the response token ids predicted at those positions (Sample.response_mask: the
    # sampled ones; a tool's output tokens are inputs only)
    seq_index: torch.Tensor  # (n,) which row of the micro-batch each packed token belongs to
    advantages: torch.Tensor  # (n,) per-token advantage (the sample's scalar, broadcast)
    rollout_logprobs: torch.Tensor  # (n,) behaviour-policy logprobs from the engine
    old_logprobs: torch.Tensor | None  # (n,) proximal-policy logprobs (None: on-policy, use detached current)
    num_seqs: int  # rows with at least one trained token
    sample_ids: list[int]  # indices of the samples (into the step's list) held by this micro-batch
    is_weights: torch.Tensor | None = None  # (n,) per-sample Sample.is_weight broadcast; None when all are 1
    replayed: torch.Tensor | None = None  # (n,) bool, token of a replayed sample; None when none is
    # shared-prompt rows (collate_shared): per position 0 = the prompt, k >= 1 = the row's k-th response,
    # -1 = padding; the policy turns it into a block attention mask. None: one sequence per row.
    segment_ids: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        """Logical sequences (what `seq_index` counts): rows, or the responses of shared-prompt rows."""
        return self.input_ids.shape[0] if self.segment_ids is None else len(self.sample_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())


def split_by_token_budget(samples: list[Sample], budget: int) -> list[list[int]]:
    """Greedy first-fit of samples (by padded cost = rows × longest row) into micro-batches.

    Sorting by length keeps padding low; a sample longer than the budget gets a micro-batch alone.
    """
    return first_fit(list(range(len(samples))), lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids),
                     budget)


def first_fit(items: list, length, budget: int) -> list[list]:
    """Items sorted by `length(item)`, packed greedily while rows × longest row stays within `budget`
    (an item longer than the budget gets a micro-batch alone)."""
    batches: list[list] = []
    current: list = []
    longest = 0
    for item in sorted(items, key=length):
        n = length(item)
        if current and max(longest, n) * (len(current) + 1) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(item)
        longest = max(longest, n)
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
        trained = s.trained_positions() if loss_mask[i] else []
        if not trained:
            continue
        num_seqs += 1
        p, r = len(s.prompt_ids), len(trained)
        # position c predicts token c+1; response token k sits at column p+k (tool tokens: context only)
        token_index += [row * width + p - 1 + k for k in trained]
        targets += [s.response_ids[k] for k in trained]
        seq_index += [row] * r
        adv += [0.0 if s.advantage is None else float(s.advantage)] * r  # None: a logprob-only pass
        rollout_lp += [s.rollout_logprobs[k] for k in trained]
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


def split_shared(samples: list[Sample], budget: int) -> list[list[list[int]]]:
    """Micro-batches of shared-prompt rows: [[row, ...], ...], each row the indices of samples with the
    same prompt tokens, laid out as one sequence `prompt + response_1 + response_2 + ...`.

    A row is capped at `budget` tokens (a group too long for one row is split over several, each with its
    own copy of the prompt; one response always fits a row alone). Rows are then first-fit by padded cost
    (rows × longest row) as in `split_by_token_budget`."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(samples):
        by_prompt.setdefault(tuple(s.prompt_ids), []).append(i)
    rows: list[list[int]] = []
    for members in by_prompt.values():
        p = len(samples[members[0]].prompt_ids)
        row, length = [], p
        for i in sorted(members, key=lambda j: len(samples[j].response_ids)):
            r = len(samples[i].response_ids)
            if row and length + r > budget:
                rows.append(row)
                row, length = [], p
            row.append(i)
            length += r
        rows.append(row)
    row_len = lambda row: len(samples[row[0]].prompt_ids) + sum(len(samples[i].response_ids) for i in row)
    return first_fit(rows, row_len, budget)


def collate_shared(samples: list[Sample], rows: list[list[int]], pad_id: int, loss_mask: list[bool],
                   old_logprobs: dict[int, list[float]] | None = None) -> MicroBatch:
    """One micro-batch of shared-prompt rows (`split_shared`): each row's prompt is computed once and
    every response in the row attends to it and to its own earlier tokens only (`segment_ids` → the block
    mask built by `attention_bias`). Positions restart after the prompt for each response, so every token
    sees exactly the context and position it had in generation: logprobs equal `collate`'s up to float
    summation order. The packed tokens follow `sample_ids` order; `seq_index` is the index into it."""
    if any(len({tuple(samples[i].prompt_ids) for i in row}) != 1 for row in rows):
        raise ValueError("collate_shared: every row must hold samples of one prompt")
    lengths = [len(samples[row[0]].prompt_ids) + sum(len(samples[i].response_ids) for i in row) for row in rows]
    width, b = max(lengths), len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    segment_ids = torch.full((b, width), -1, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    token_index, targets, seq_index, adv, rollout_lp, old_lp, is_w, replayed = [], [], [], [], [], [], [], []
    sample_ids: list[int] = []
    num_seqs = 0
    for row_no, row in enumerate(rows):
        prompt = samples[row[0]].prompt_ids
        p = len(prompt)
        input_ids[row_no, :p] = torch.tensor(prompt, dtype=torch.long)
        segment_ids[row_no, :p] = 0
        position_ids[row_no, :p] = torch.arange(p)
        start = p
        for k, i in enumerate(row, start=1):
            s = samples[i]
            r = len(s.response_ids)
            sample_ids.append(i)
            if r:
                input_ids[row_no, start:start + r] = torch.tensor(s.response_ids, dtype=torch.long)
                segment_ids[row_no, start:start + r] = k
                position_ids[row_no, start:start + r] = torch.arange(p, p + r)
            trained = s.trained_positions() if loss_mask[i] else []
            if trained:
                n = len(trained)
                num_seqs += 1
                base = row_no * width
                # the first response token is predicted by the prompt's last position (shared by the row),
                # token j > 0 by the response's own token j-1
                token_index += [base + p - 1 if j == 0 else base + start + j - 1 for j in trained]
                targets += [s.response_ids[j] for j in trained]
                seq_index += [len(sample_ids) - 1] * n
                adv += [0.0 if s.advantage is None else float(s.advantage)] * n
                rollout_lp += [s.rollout_logprobs[j] for j in trained]
                is_w += [float(s.is_weight)] * n
                replayed += [bool(s.replayed)] * n
                if old_logprobs is not None:
                    old_lp += old_logprobs[i]
            start += r
    as_float = lambda x: torch.tensor(x, dtype=torch.float32)
    return MicroBatch(
        input_ids=input_ids, attention_mask=(segment_ids >= 0).long(), position_ids=position_ids,
        token_index=torch.tensor(token_index, dtype=torch.long), targets=torch.tensor(targets, dtype=torch.long),
        seq_index=torch.tensor(seq_index, dtype=torch.long), advantages=as_float(adv),
        rollout_logprobs=as_float(rollout_lp), old_logprobs=as_float(old_lp) if old_logprobs is not None else None,
        num_seqs=num_seqs, sample_ids=sample_ids,
        is_weights=as_float(is_w) if any(w != 1.0 for w in is_w) else None,
        replayed=torch.tensor(replayed, dtype=torch.bool) if any(replayed) else None,
        segment_ids=segment_ids,
    )


def attention_bias(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, 1, L, L) additive attention mask of shared-prompt rows: a query attends causally to the prompt
    (segment 0) and to its own segment; a padding position attends to itself only (no all-masked row)."""
    seg = segment_ids
    L = seg.shape[-1]
    pos = torch.arange(L, device=seg.device)
    causal = pos[None, :] <= pos[:, None]  # (q, k)
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = causal & (k >= 0) & ((k == 0) | (k == q)) & (q >= 0)
    allowed |= torch.eye(L, dtype=torch.bool, device=seg.device)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
