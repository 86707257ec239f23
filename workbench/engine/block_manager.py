"""Paged KV-cache block accounting (pure Python: the simulator drives the same class).

A sequence owns a block table: the ids of fixed-size blocks that hold its K/V, in order. Blocks
carry reference counts, so several tables can point at one block: prefix caching.

Prefix caching (vLLM's automatic prefix caching, v1 shape): a block full of computed tokens is
registered under a key chained over (its parent block's key, its token ids), so a key names the
whole prefix up to the end of its block, never just one block's tokens. A new sequence reuses
every registered block its prompt starts with, by reference count, instead of computing it
again. Freed blocks go to the tail of one free queue and new blocks come from its head, so a
free block that still holds a registered prefix stays reusable until it is the least recently
freed one and is taken for new tokens (evicted). A key is (its parent key's hash, the block's
token ids): the dict compares a block's own tokens exactly and its parent by a 64-bit hash,
so hashing a key costs one block's tokens however long the prefix, and two prefixes could
share a block only if two parent hashes collided.

Swap (vLLM's preemption_mode="swap"): a second, host-memory pool of `num_swap_blocks` blocks.
Swapping a sequence out gives each of its device blocks a host block and releases the device
block; swapping in does the reverse. The manager only decides which block goes where and
returns the (source, destination) pairs; the engine copies the K/V (the simulator does not).

Sliding window (Mistral-style attention): once no query of a sequence can see a block any more,
the block is released and its table entry becomes NULL_BLOCK, so entries keep their positions
(entry i holds tokens i*block_size...) and K/V per sequence stops growing at the window.
"""

from __future__ import annotations

from workbench.engine.sequence import Sequence

NULL_BLOCK = -1  # a table entry whose block was released (outside the attention window)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, num_swap_blocks: int = 0):
        if num_blocks < 1:
            raise ValueError(f"num_kv_blocks: must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        # Free blocks in eviction order (a dict: ordered, and O(1) removal on a cache hit).
        self._free: dict[int, None] = dict.fromkeys(range(num_blocks))
        self._key_of: list[tuple | None] = [None] * num_blocks  # registered prefix key
        self._block_of: dict[tuple, int] = {}                   # prefix key -> block
        self.evictions = 0
        self.num_swap_blocks = num_swap_blocks
        self._free_host = list(range(num_swap_blocks - 1, -1, -1))  # a stack: pop() is O(1)
        self.queried_tokens = 0  # tokens of admitted sequences looked up in the cache
        self.hit_tokens = 0      # of those, found

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks holding a registered prefix, in use or free (evictable)."""
        return len(self._block_of)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Extra blocks `seq` needs to hold `num_new_tokens` more tokens of K/V."""
        total = self.blocks_for(seq.num_computed_tokens + num_new_tokens)
        return max(0, total - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int, keep_free: int = 0) -> bool:
        """Whether the tokens fit while still leaving `keep_free` blocks free."""
        return self.blocks_needed(seq, num_new_tokens) + keep_free <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        need = self.blocks_needed(seq, num_new_tokens)
        if need > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {need}, {len(self._free)} free")
        for _ in range(need):
            seq.block_table.append(self._take_free())

    def _take_free(self) -> int:
        """The least recently freed block, its cached prefix (if any) evicted."""
        block = next(iter(self._free))
        del self._free[block]
        self._evict(block)
        self.ref_counts[block] = 1
        return block

    def free(self, seq: Sequence) -> None:
        # Release in reverse so a prompt's tail blocks (the least likely to be shared) are
        # evicted before its head.
        for block in reversed(seq.block_table):
            if block != NULL_BLOCK:
                self._release(block)
        self._free_host.extend(h for h in seq.host_table if h != NULL_BLOCK)
        seq.block_table = []
        seq.block_keys = []
        seq.host_table = []

    def _release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._free[block] = None  # its registered prefix stays reusable until evicted

    # -- swap ----------------------------------------------------------------------------------
    @property
    def num_free_host_blocks(self) -> int:
        return len(self._free_host)

    def can_swap_out(self, seq: Sequence) -> bool:
        live = _live_blocks(seq.block_table)
        return 0 < live <= len(self._free_host)

    def swap_out(self, seq: Sequence) -> list[tuple[int, int]]:
        """Move `seq`'s blocks to host blocks; (device block, host block) pairs to copy. A
        block shared with other sequences (a cached prefix) is copied too and stays theirs;
        one left free keeps its prefix registered: its contents are intact until reused."""
        seq.host_table = [NULL_BLOCK if b == NULL_BLOCK else self._free_host.pop()
                          for b in seq.block_table]
        pairs = [(b, h) for b, h in zip(seq.block_table, seq.host_table, strict=True)
                 if b != NULL_BLOCK]
        for block, _ in reversed(pairs):
            self._release(block)
        seq.block_table = []
        seq.block_keys = []  # the blocks it gets back are registered anew as they are computed
        return pairs

    def can_swap_in(self, seq: Sequence, num_new_tokens: int, keep_free: int = 0) -> bool:
        """Whether `seq`'s swapped blocks plus room for `num_new_tokens` more fit the pool."""
        grow = self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.host_table)
        return _live_blocks(seq.host_table) + grow + keep_free <= len(self._free)

    def swap_in(self, seq: Sequence) -> list[tuple[int, int]]:
        """Give `seq` device blocks for its host blocks; (host block, device block) pairs."""
        hosts, seq.host_table = seq.host_table, []
        seq.block_table = [NULL_BLOCK if h == NULL_BLOCK else self._take_free() for h in hosts]
        pairs = [(h, b) for h, b in zip(hosts, seq.block_table, strict=True) if h != NULL_BLOCK]
        self._free_host.extend(h for h, _ in pairs)
        return pairs

    # -- sliding window ------------------------------------------------------------------------
    def release_out_of_window(self, seq: Sequence, window: int) -> int:
        """Release the blocks no later query of `seq` can attend to; how many were released.
        The next query sits at position num_computed_tokens and sees keys after
        num_computed_tokens - window, so every block ending at or before that is dead."""
        dead = max(0, seq.num_computed_tokens - window + 1) // self.block_size
        released = 0
        # Backwards from the last dead block: the ones before an already released entry were
        # released with it, so a step costs only what it releases.
        for i in range(min(dead, len(seq.block_table)) - 1, -1, -1):
            block = seq.block_table[i]
            if block == NULL_BLOCK:
                break
            self._release(block)
            seq.block_table[i] = NULL_BLOCK
            released += 1
        return released

    # -- prefix caching ------------------------------------------------------------------------
    def cached_prefix(self, seq: Sequence) -> list[int]:
        """The registered blocks `seq`'s tokens start with, at most all but its last token's
        block: a prefill must compute at least one token to sample from, and a block-aligned
        prefix keeps every block either shared whole or owned."""
        blocks: list[int] = []
        for key in self._keys(seq.token_ids, (seq.num_tokens - 1) // self.block_size):
            block = self._block_of.get(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def share(self, seq: Sequence, blocks: list[int]) -> None:
        """Start `seq` (no blocks yet) on cached `blocks`: their tokens count as computed."""
        for block in blocks:
            if self.ref_counts[block] == 0:
                del self._free[block]
            self.ref_counts[block] += 1
        seq.block_table = list(blocks)
        seq.block_keys = [self._key_of[b] for b in blocks]
        seq.num_computed_tokens = len(blocks) * self.block_size

    def register_full_blocks(self, seq: Sequence) -> None:
        """Register every block of `seq` that is full of computed tokens and not yet keyed, so
        later sequences can reuse it. A prefix already registered by another block (computed
        twice at once) keeps that block; this one stays private."""
        full = seq.num_computed_tokens // self.block_size
        if len(seq.block_keys) >= full:
            return
        parent = hash(seq.block_keys[-1]) if seq.block_keys else None
        bs = self.block_size
        for i in range(len(seq.block_keys), full):
            key = (parent, tuple(seq.token_ids[i * bs:(i + 1) * bs]))
            block = seq.block_table[i]
            if (block != NULL_BLOCK and key not in self._block_of
                    and self._key_of[block] is None):
                self._block_of[key] = block
                self._key_of[block] = key
            seq.block_keys.append(key)
            parent = hash(key)

    def reset_prefix_cache(self) -> int:
        """Forget the prefixes of every free block (vLLM's reset_prefix_cache), so the next
        requests compute their prompts again; blocks in use keep theirs. Returns how many
        were forgotten (not counted as evictions: nothing needed the room)."""
        forgotten = 0
        for block in self._free:
            key = self._key_of[block]
            if key is not None:
                del self._block_of[key]
                self._key_of[block] = None
                forgotten += 1
        return forgotten

    def count_lookup(self, seq: Sequence, hit_tokens: int) -> None:
        # All its tokens were looked up: a preempted sequence's output too (vLLM counts so).
        self.queried_tokens += seq.num_tokens
        self.hit_tokens += hit_tokens

    def _keys(self, token_ids: list[int], num_blocks: int):
        """The keys of the first `num_blocks` blocks of `token_ids`, one at a time (a lookup
        stops at its first miss)."""
        parent, bs = None, self.block_size
        for i in range(num_blocks):
            key = (parent, tuple(token_ids[i * bs:(i + 1) * bs]))
            yield key
            parent = hash(key)

    def _evict(self, block: int) -> None:
        key = self._key_of[block]
        if key is not None:
            del self._block_of[key]
            self._key_of[block] = None
            self.evictions += 1


def _live_blocks(table: list[int]) -> int:
    return sum(1 for b in table if b != NULL_BLOCK)
