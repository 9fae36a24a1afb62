"""The running batch's KV cache: one buffer per layer, a row per sequence, one column clock for all rows.

Sequences are left-padded so that every row's newest token sits in the same column, as in the
engine's batches. transformers' DynamicCache concatenates on every step, copying the whole cache;
here a decoding step writes one column of the buffers in place, and attention reads the window
[start, end) as a view. A sequence that joins takes the next free row, its prompt's keys written
right-aligned to the window's end; one that leaves gives its row to the last row (one row copied,
not the batch). The window's left edge follows the oldest live token; when the window reaches the
end of the buffer it is moved back to column 0, or the buffer doubles. Rows and columns grow on
demand, so memory follows the batch actually served, not the model's context.
"""

from __future__ import annotations

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_COLUMNS = 64


class _SlotLayer(DynamicLayer):
    """One layer's keys and values, stored in the slot cache's buffers (transformers calls `update`)."""

    def __init__(self, cache: SlotCache, index: int) -> None:
        super().__init__()
        self.cache, self.index = cache, index
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cache
        end = c.end + key_states.shape[-2]
        c.keys[self.index][: c.rows, :, c.end : end] = key_states
        c.values[self.index][: c.rows, :, c.end : end] = value_states
        return c.keys[self.index][: c.rows, :, c.start : end], c.values[self.index][: c.rows, :, c.start : end]

    def get_seq_length(self) -> int:
        return self.cache.end - self.cache.start


class SlotCache(Cache):
    """Keys and values of the running batch; `mask` (rows, window) is 1 over real tokens, 0 over left padding."""

    def __init__(self) -> None:
        super().__init__(layers=[])
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self.rows = self.start = self.end = 0

    @property
    def mask(self) -> torch.Tensor:
        return self._mask[: self.rows, self.start : self.end]

    def admit(self, joined: DynamicCache, mask: torch.Tensor) -> None:
        """Append the rows of a prefilled batch (its own cache and (n, width) mask), right-aligned to `end`."""
        n, width = mask.shape
        if not self.keys:
            first = joined.layers[0].keys
            self.keys = [first.new_zeros(0, first.shape[1], 0, first.shape[3]) for _ in joined.layers]
            self.values = [t.clone() for t in self.keys]
            self.layers = [_SlotLayer(self, i) for i in range(len(joined.layers))]
        if self.rows == 0:  # an empty batch starts where the prompt fits, without moving anything
            self.start = self.end = width if width < self._mask.shape[1] else 0
        self._make_room(self.rows + n, width, 0)
        lo, rows = self.end - width, slice(self.rows, self.rows + n)
        # a prompt longer than the window opens it to the left, where a live row's mask is 0; the columns that
        # come into view, the live rows' there and the new rows' left of their prompts, are zeroed: a masked
        # column still reaches attention as 0 x value, and what a departed row left there may be NaN
        start, self.start = self.start, min(self.start, lo)
        for t in (*self.keys, *self.values) if self.start < max(start, lo) else ():  # else nothing came into view
            t[: self.rows, :, self.start : start] = 0
            t[rows, :, self.start : lo] = 0
        for i, layer in enumerate(joined.layers):
            self.keys[i][rows, :, lo : self.end] = layer.keys
            self.values[i][rows, :, lo : self.end] = layer.values
        self._mask[rows] = 0
        self._mask[rows, lo : self.end] = mask
        self.rows += n

    def open_column(self) -> torch.Tensor:
        """Make room for one more token in every row; the attention mask of the step that writes it."""
        self._make_room(self.rows, 0, 1)
        self._mask[: self.rows, self.end] = 1
        return self._mask[: self.rows, self.start : self.end + 1]

    def advance(self, columns: int = 1) -> None:
        """The step's forward has written `columns` new columns."""
        self.end += columns

    def drop(self, gone: list[int]) -> list[int]:
        """Free the rows in `gone`, each filled by the last row; returns, for each row now, the row it was."""
        order = list(range(self.rows))
        for row in sorted(gone, reverse=True):
            last = len(order) - 1
            if row != last:
                for t in (*self.keys, *self.values):
                    t[row, :, self.start : self.end] = t[last, :, self.start : self.end]
                self._mask[row, self.start : self.end] = self._mask[last, self.start : self.end]
                order[row] = order[last]
            order.pop()
        self.rows = len(order)
        if self.rows:  # columns that only the departed used
            self.start += int(self.mask.any(0).int().argmax())
        return order

    def _make_room(self, rows: int, before: int, after: int) -> None:
        """At least `rows` rows, `end` at column `before` or later, and `after` free columns past `end`: the window
        is moved back to the left when the buffer is at most half full, or the buffers double."""
        have_rows, have_cols = self._mask.shape
        if rows <= have_rows and self.end >= before and self.end + after <= have_cols:
            return
        width = self.end - self.start
        start = max(0, before - width)
        need = start + width + after
        new_rows = have_rows if rows <= have_rows else max(rows, 2 * have_rows)
        new_cols = have_cols if 2 * need <= have_cols else max(MIN_COLUMNS, 2 * need)

        def moved(t: torch.Tensor, columns: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[0], shape[columns] = new_rows, new_cols
            window = t[: self.rows].narrow(columns, self.start, width)
            if shape == list(t.shape) and columns == 2:  # keys and values move within their buffer: what lies
                # outside the window is masked, so only the window is copied (a copy of it where the two overlap)
                out = t
                window = window.clone() if abs(start - self.start) < width else window
            else:
                out = t.new_zeros(shape)
            out[: self.rows].narrow(columns, start, width).copy_(window)
            return out

        self.keys = [moved(t, 2) for t in self.keys]
        self.values = [moved(t, 2) for t in self.values]
        self._mask = moved(self._mask, 1)  # small, and zero outside the window: made anew
        self.start, self.end = start, start + width
