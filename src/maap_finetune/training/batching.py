"""Token-budget batching: batches filled up to `max_tokens_per_batch` tokens instead of a fixed number of
examples, so a batch of short chats and a batch of long ones cost about the same memory and compute.

The batches are formed once (deterministic, so `len()` is exact and the Trainer's step count and
schedule are right) and their order is reshuffled every epoch; every example is in exactly one batch.
- padding-free batches cost the sum of their lengths and are filled best-fit-decreasing (few, full
  batches, each mixing one long example with short ones);
- padded batches (group_by_length, padded) cost `longest x count`, so examples are taken in length
  order and a batch is closed when the next example would push that over the budget.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def best_fit_decreasing(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped into bins whose length sums stay within `budget` (best fit, longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        size = lengths[i]
        at = bisect.bisect_left(free, (size, -1))
        if at == len(free):
            bins.append([i])
            room, b = budget - size, len(bins) - 1
        else:
            room, b = free.pop(at)
            bins[b].append(i)
            room -= size
        bisect.insort(free, (room, b))
    return bins


def padded_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Length-sorted runs whose padded size (longest x count) stays within `budget`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(i)  # sorted longest first: the batch's first example is its longest
        else:
            batches.append([i])
    return batches


class _Epoch:
    """Holds the epoch. Under data parallelism accelerate wraps the batch sampler and reaches the epoch only
    through `<batch sampler>.sampler.set_epoch`, so the batch sampler exposes this as its `sampler`."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices, each batch within `max_tokens` (see the module docstring)."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, padded: bool, seed: int, shuffle: bool = True):
        too_long = [n for n in lengths if n > max_tokens]
        if too_long:
            raise ValueError(f"{len(too_long)} examples are longer than max_tokens_per_batch {max_tokens}")
        self.max_tokens = max_tokens
        self.batches = (padded_batches if padded else best_fit_decreasing)(list(lengths), max_tokens)
        self.seed = seed
        self.shuffle = shuffle
        self.sampler = _Epoch()

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            yield from (list(b) for b in self.batches)
            return
        generator = torch.Generator().manual_seed(self.seed + self.sampler.epoch)
        for b in torch.randperm(len(self.batches), generator=generator).tolist():
            yield list(self.batches[b])


def token_budget_trainer(base: type) -> type:
    """`base` (SFTTrainer) whose training DataLoader draws batches from a `TokenBudgetBatchSampler`.

    accelerate shards the batches across data-parallel ranks (rank r takes every r-th batch; with
    even_batches, the last round is completed by repeating early batches, as for fixed-size batches).
    """

    class TokenBudgetTrainer(base):
        max_tokens_per_batch: int
        padded_budget: bool

        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            dataset = self._remove_unused_columns(self.train_dataset, description="Training")
            sampler = TokenBudgetBatchSampler(
                self.train_dataset[self.args.length_column_name], self.max_tokens_per_batch,
                padded=self.padded_budget, seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )
            loader = DataLoader(
                dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
            )
            return self.accelerator.prepare(loader)

    TokenBudgetTrainer.__name__ = f"TokenBudget{base.__name__}"
    return TokenBudgetTrainer
