"""Drafting for copy-aware decoding: candidate continuations, merged into a token tree, sized by a pass cost model.

Pure Python (no torch), so the drafting replay benchmark runs exactly the engine's drafter on recorded
corrections. A row's candidates are what followed its last n-gram in the answer (every occurrence,
the one after the copy pointer first), in its own output and in what the model wrote for earlier
requests (`PhraseMemory`), and, after an edit, the answer resumed where the edit began or after as
many tokens as it wrote. The first is the primary draft; the others
branch off a shared token tree, verified in the same pass where a model takes a tree mask. How much
of it a pass verifies is the cost model's call (`PassCost`, `plan_trees`).

Worked example: answer ``a b c d a b e``, output so far ``x a b``. The last 2-gram ``a b`` occurs at
0 and 4, so the candidates are ``c d a b e`` (primary) and ``e``; the tree is the chain
``c d a b e`` with a branch ``e`` off its root. If the model writes ``e``, the branch is accepted
and the copy pointer moves to the second occurrence.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PassCost:
    """What a forward pass costs, in token positions: ``overhead`` plus the positions beyond ``free``.

    A CPU computes every position (``free=0``); a memory-bound accelerator computes up to about
    ``free`` positions in the time it takes to read the weights once, so a block that fits costs
    the same as a single token.
    """

    overhead: int
    free: int = 0

    def of(self, positions: int) -> int:
        """Cost of one pass over ``positions`` token positions (all rows together)."""
        return self.overhead + max(0, positions - self.free)

    def free_width(self, rows: int, fixed: int = 0) -> int:
        """The widest block a pass over ``rows`` rows (and ``fixed`` other positions) computes for free."""
        return max(0, self.free - fixed) // max(1, rows)


CPU_COST = PassCost(overhead=48)
ACCELERATOR_COST = PassCost(overhead=2048, free=2048)


@dataclass
class Row:
    """Per-row decoding state: the draft source, what was generated, n-gram indexes and statistics."""

    source: list[int]
    budget: int
    generated: list[int] = field(default_factory=list)
    draft_len: int = 4
    acceptance: float = 0.8  # running estimate of the chance that a draft token is accepted
    anchor: int | None = None  # index in ``source`` where the copy continues (None: not aligned yet)
    aligned_at: int = 0  # len(generated) when ``anchor`` was set
    done: bool = False
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    source_index: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    history_index: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    indexed: int = 0  # how many generated tokens ``history_index`` covers
    max_ngram: int = 0
    memory: PhraseMemory | None = None  # what the model wrote before, for drafts the answer cannot give

    def remaining(self) -> float:
        """Rough tokens still to come: the rest of the source after the copy pointer, within the budget."""
        left = len(self.source) - (self.anchor or 0)
        return float(max(1, min(left, self.budget - len(self.generated))))

    def room(self) -> int:
        """How many drafts a pass may verify before the row's budget (one token is the model's own)."""
        return self.budget - len(self.generated) - 1

    def build_index(self, max_ngram: int) -> None:
        """Index every n-gram (n <= max_ngram) of the source by its start positions, in order."""
        self.max_ngram = max_ngram
        self.source_index = {}
        for n in range(1, max_ngram + 1):
            for i in range(len(self.source) - n + 1):
                self.source_index.setdefault(tuple(self.source[i : i + n]), []).append(i)

    def update_history_index(self) -> None:
        """Add the n-grams of newly generated tokens to the history index."""
        history = self.generated
        for end in range(self.indexed + 1, len(history) + 1):
            for n in range(1, min(self.max_ngram, end) + 1):
                self.history_index.setdefault(tuple(history[end - n : end]), []).append(end - n)
        self.indexed = len(history)

    def emit(self, tokens: list[int], eos: set[int]) -> None:
        """Append tokens until an EOS or the budget ends the row."""
        for token in tokens:
            if self.done:
                return
            self.generated.append(token)
            if token in eos or len(self.generated) >= self.budget:
                self.done = True


@dataclass
class Candidate:
    """A draft continuation; ``start`` is the index in the source of its first token (None: from the output)."""

    tokens: list[int]
    start: int | None


@dataclass
class DraftTree:
    """Draft tokens as a tree under the row's last token (the root): node i has token ``tokens[i]`` and
    parent ``parents[i]`` (-1: the root); parents come before children, the primary chain first.

    In a verification block the root is position 0 and node i position i + 1.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)  # 1 for a child of the root
    owners: list[int] = field(default_factory=list)  # the candidate that added each node
    candidates: list[Candidate] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)  # per candidate, its nodes in order
    aligned_at: int = 0  # len(generated) when drafted

    @classmethod
    def build(cls, candidates: Sequence[Candidate], aligned_at: int = 0, limit: int | None = None) -> DraftTree:
        """Merge candidates into a prefix tree of at most ``limit`` nodes (earlier candidates first).

        A candidate shares the nodes of its longest common prefix with an earlier one and adds the
        rest as one run of new nodes.
        """
        tree = cls(candidates=list(candidates), aligned_at=aligned_at)
        room = len(tree.tokens) + sum(len(c.tokens) for c in candidates) if limit is None else limit
        for number, candidate in enumerate(tree.candidates):
            shared: list[int] = []
            for earlier, path in zip(tree.candidates, tree.paths, strict=False):
                length = _common_prefix(candidate.tokens, earlier.tokens, len(path))
                if length > len(shared):
                    shared = path[:length]
            new = candidate.tokens[len(shared) : len(shared) + room - len(tree.tokens)]
            start, depth = len(tree.tokens), len(shared)
            tree.tokens += new
            tree.parents += [shared[-1] if shared else -1, *range(start, start + len(new) - 1)][: len(new)]
            tree.depths += range(depth + 1, depth + 1 + len(new))
            tree.owners += [number] * len(new)
            tree.paths.append(shared + list(range(start, start + len(new))))
            if len(tree.tokens) >= room:
                break
        return tree

    def __len__(self) -> int:
        return len(self.tokens)

    def depth(self, position: int) -> int:
        """Depth of block position ``position`` (0: the root)."""
        return self.depths[position - 1] if position else 0

    def primary_length(self) -> int:
        """Nodes of the leading chain (the primary draft)."""
        return len(self.paths[0]) if self.paths else 0

    def is_chain(self) -> bool:
        return self.primary_length() == len(self.tokens)

    def trimmed(self, limit: int) -> DraftTree:
        """The first ``limit`` nodes (still a tree: parents come first)."""
        if limit >= len(self.tokens):
            return self
        paths = [[node for node in path if node < limit] for path in self.paths]
        return DraftTree(
            self.tokens[:limit],
            self.parents[:limit],
            self.depths[:limit],
            self.owners[:limit],
            self.candidates,
            paths,
            self.aligned_at,
        )

    def walk(self, predict: Callable[[int], int]) -> tuple[list[int], int]:
        """Greedy verification: from the root follow the child holding the model's choice.

        ``predict(position)`` is the model's next token after block position ``position``. Returns
        the accepted nodes (in order) and the model's token after the last of them.
        """
        alive = [path for path in self.paths if path]  # candidates that agree with the model so far
        accepted: list[int] = []
        while True:
            choice = predict(accepted[-1] + 1 if accepted else 0)
            depth = len(accepted)
            alive = [path for path in alive if len(path) > depth and self.tokens[path[depth]] == choice]
            if not alive:
                return accepted, choice
            accepted.append(alive[0][depth])


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    length, most = 0, min(len(a), len(b), limit)
    while length < most and a[length] == b[length]:
        length += 1
    return length


class PhraseMemory:
    """What one model wrote recently, indexed by n-gram: drafts for text a correction writes anew but
    the model has written before (a refusal, a placeholder such as ``[EMAIL]``).

    Holds up to ``max_tokens`` tokens, oldest out first; each n-gram keeps its ``per_key`` latest
    continuations. Drafts are verified, so it changes how many passes a correction takes, never its
    tokens; it does make that count (so latency) depend on earlier requests. ``phrases`` are pinned
    texts the checkpoint says its model writes (its ``draft_phrases``): never forgotten, and with
    ``max_tokens=0`` the memory learns nothing, so latency depends on no other request.
    """

    def __init__(
        self, max_tokens: int, max_ngram: int = 3, per_key: int = 4, phrases: Sequence[Sequence[int]] = ()
    ) -> None:
        self.max_tokens = max_tokens
        self.max_ngram = max_ngram
        self.per_key = per_key
        self._texts: dict[int, list[int]] = {}  # serial number -> tokens, oldest first
        self._pinned = {-number: list(text) for number, text in enumerate(phrases, start=1) if text}
        self._size = 0
        self._serial = 0
        self._index: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # n-gram -> (serial, continuation start)
        self._lock = threading.Lock()
        for serial, text in self._pinned.items():
            self._index_text(serial, text)

    @property
    def learns(self) -> bool:
        """Whether outputs are remembered (``max_tokens > 0``); pinned phrases alone learn nothing."""
        return self.max_tokens > 0

    def __len__(self) -> int:
        return self._size

    def add(self, tokens: Sequence[int]) -> None:
        """Remember one output (texts longer than the whole memory are skipped)."""
        text = list(tokens)
        if not text or len(text) > self.max_tokens:
            return
        with self._lock:
            self._serial += 1
            self._texts[self._serial] = text
            self._size += len(text)
            while self._size > self.max_tokens:
                self._size -= len(self._texts.pop(next(iter(self._texts))))
            if len(self._index) > 4 * self.max_tokens:  # mostly keys of forgotten texts: rebuild
                self._index = {}
                for serial, kept in [*self._pinned.items(), *self._texts.items()]:
                    self._index_text(serial, kept)
            else:
                self._index_text(self._serial, text)

    def continuations(self, tail: tuple[int, ...]) -> list[tuple[list[int], int]]:
        """(text, start) of each remembered continuation of ``tail``, latest first."""
        found = []
        for serial, start in reversed(list(self._index.get(tail, ()))):
            text = self._texts.get(serial) if serial > 0 else self._pinned.get(serial)
            if text is not None:
                found.append((text, start))
        return found

    def _index_text(self, serial: int, text: list[int]) -> None:
        for n in range(1, self.max_ngram + 1):
            for i in range(len(text) - n):  # n-grams with a continuation
                entries = self._index.setdefault(tuple(text[i : i + n]), [])
                entries.append((serial, i + n))
                if len(entries) > self.per_key:
                    del entries[0]


class Drafter:
    """Proposes each row's draft tree from its answer and its own output, and learns from verification.

    ``max_draft`` and ``min_draft`` bound the adaptive primary draft length; ``max_candidates`` how many
    continuations a tree holds; alternatives are at most ``max_draft`` long.
    """

    def __init__(self, max_draft: int = 24, min_draft: int = 8, max_ngram: int = 3, max_candidates: int = 8):
        self.max_draft = max_draft
        self.min_draft = min(min_draft, max_draft)
        self.max_ngram = max_ngram
        self.max_candidates = max_candidates

    def first_draft_length(self) -> int:
        """A new row's draft length, before any verification."""
        return min(self.max_draft, max(self.min_draft, 4))

    def row(self, source: list[int], budget: int, memory: PhraseMemory | None = None) -> Row:
        """A fresh row drafting from ``source`` (and ``memory``), writing at most ``budget`` tokens."""
        row = Row(list(source), budget, draft_len=self.first_draft_length(), memory=memory)
        row.build_index(self.max_ngram)
        return row

    def candidates(self, row: Row, room: int, branch_room: int, limit: int | None = None) -> list[Candidate]:
        """The row's continuations, primary first: up to ``room`` tokens for it, ``branch_room`` for the
        others, at most ``limit`` of them (default ``max_candidates``); see `spots` for the order.

        Before anything is generated the answer itself is the draft. The primary moves the copy
        pointer; `accept` moves it again if another candidate wins. Where the best spot runs past its
        text, the primary is empty and only the alternatives are drafted.
        """
        if room <= 0:
            return []
        if row.max_ngram != self.max_ngram:
            row.build_index(self.max_ngram)
        history = row.generated
        if not history:
            row.anchor, row.aligned_at = 0, 0
            return [Candidate(row.source[:room], 0)] if row.source else []
        row.update_history_index()
        limit = max(1, self.max_candidates if limit is None else limit)
        found: list[Candidate] = []
        seen: set[tuple[int, int]] = set()
        for text, start in self.spots(row):
            tokens = text[start : start + (branch_room if found else room)]
            if not found and not tokens:  # the first spot runs past its text: no primary draft
                found.append(Candidate([], None))
            elif tokens and (id(text), start) not in seen:
                seen.add((id(text), start))
                found.append(Candidate(tokens, start if text is row.source else None))
            if len(found) >= limit:
                break
        if found and found[0].start is not None:
            row.anchor, row.aligned_at = found[0].start, len(history)
        return found

    def spots(self, row: Row) -> Iterator[tuple[list[int], int]]:
        """Where continuations start, best first, as (text, index) pairs: in the answer, the output or memory.

        First the primary: after the longest recent n-gram found, its occurrence in the answer
        nearest from where the copy would go on, else its latest in the output, else its latest in the
        model's memory. Then, for every shorter n-gram, its nearest answer occurrence (the edit ended
        on a token the answer has a little further on: words were dropped); then the answer resumed
        as if the last edit replaced as many tokens as it wrote, or inserted them all; then the
        latest remembered continuation of each n-gram; then the other occurrences.
        """
        source, history = row.source, row.generated
        # Where the copy goes on if the tokens written since the pointer was set replaced as many.
        expected = 0 if row.anchor is None else row.anchor + len(history) - row.aligned_at
        matches = []  # per n, longest first: answer starts (nearest from the expected spot on), output
        for n in range(min(self.max_ngram, len(history)), 0, -1):  # starts (latest first), remembered (latest)
            tail = tuple(history[-n:])
            starts = [s + n for s in row.source_index.get(tail, ()) if s + n < len(source)]
            at = bisect.bisect_left(starts, expected)
            earlier = [s + n for s in reversed(row.history_index.get(tail, ())) if s < len(history) - n]
            recalled = row.memory.continuations(tail) if row.memory is not None else []
            matches.append(([*starts[at:], *starts[:at]], earlier, recalled))
        for near, earlier, recalled in matches:
            if near or earlier or recalled:
                yield (source, near[0]) if near else (history, earlier[0]) if earlier else recalled[0]
                break
        for near, _, _ in matches:
            yield from ((source, start) for start in near[:1])
        if row.anchor is not None:
            yield source, expected
            yield source, row.anchor
        for _, _, recalled in matches:
            yield from recalled[:1]
        for near, earlier, recalled in matches:
            yield from ((source, start) for start in near[1:])
            yield from ((history, start) for start in earlier)
            yield from recalled[1:]

    def draft(self, row: Row, room: int | None = None) -> list[int]:
        """The primary draft alone (up to the row's draft length)."""
        room = min(row.draft_len, row.room()) if room is None else room
        found = self.candidates(row, room, 0, limit=1)
        return found[0].tokens if found else []

    def tree(self, row: Row, room: int, limit: int, branch_room: int = 0) -> DraftTree:
        """The row's draft tree of at most ``limit`` nodes: the primary draft up to ``room`` tokens, then
        the alternatives up to ``branch_room`` tokens each (0: none)."""
        aligned_at = len(row.generated)
        found = self.candidates(row, room, branch_room, limit=None if branch_room > 0 else 1)
        return DraftTree.build(found, aligned_at, limit)

    def adapt(self, row: Row, drafted: int, accepted: int) -> None:
        """Update the row's acceptance estimate and draft length from one verification."""
        if drafted == 0:  # nothing verified: drift back towards even odds, so the row drafts again
            row.acceptance = 0.5 * row.acceptance + 0.4
            return
        # A run of ``accepted`` hits ended by a miss suggests p = a / (a + 1); no miss, at least (d + 1) / (d + 2).
        seen = accepted / (accepted + 1) if accepted < drafted else (drafted + 1) / (drafted + 2)
        row.acceptance = 0.5 * row.acceptance + 0.5 * seen
        if accepted == drafted:
            row.draft_len = min(self.max_draft, row.draft_len + 2)
        elif accepted < drafted // 2:
            row.draft_len = max(self.min_draft, row.draft_len // 2)

    def accept(self, row: Row, tree: DraftTree, path: list[int], token: int, eos: set[int]) -> None:
        """Record one verification of ``tree``: ``path`` accepted, then the model's ``token``."""
        owner = tree.owners[path[-1]] if path else 0
        drafted = len(tree.paths[owner]) if tree.paths else 0  # the winning candidate's draft
        start = tree.candidates[owner].start if path else None
        if start is not None:  # the copy stopped after the accepted drafts
            row.anchor, row.aligned_at = start + len(path), tree.aligned_at + len(path)
        row.passes += 1
        row.drafted += len(tree)
        row.accepted += len(path)
        self.adapt(row, drafted, len(path))
        row.emit([*(tree.tokens[node] for node in path), token], eos)


def block_width(
    drafts: list[int],
    acceptance: list[float],
    pass_cost: PassCost | int,
    weights: list[float] | None = None,
    fixed: int = 0,
) -> int:
    """The block width (1 + drafts verified per row) that yields the most expected tokens per cost.

    A row with ``d`` drafts and per-token acceptance ``p`` expects ``1 + p + ... + p**d`` tokens
    (times its weight, if given); a pass of width ``w`` over ``n`` rows costs ``pass_cost.of(n * w + fixed)``
    (``fixed``: other positions in the pass, a prompt). Rows with shorter drafts are padded to the
    width, so one row's long draft costs every row; on a CPU that is often not worth it, on an
    accelerator it nearly always is. Of equally good widths the narrowest wins.
    """
    cost = pass_cost if isinstance(pass_cost, PassCost) else PassCost(pass_cost)
    best, best_rate = 1, 0.0
    for width in sorted({1, *(1 + d for d in drafts)}):
        gain = 0.0
        for d, p, w in zip(drafts, acceptance, weights or [1.0] * len(drafts), strict=True):
            k = min(d, width - 1)
            gain += w * (1 + (k if p >= 1 else p * (1 - p**k) / (1 - p)))
        rate = gain / cost.of(len(drafts) * width + fixed)
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = width, rate
    return best


def plan_trees(
    drafter: Drafter,
    rows: list[Row],
    cost: PassCost,
    cap: int,
    branches: bool = True,
    fixed: int = 0,
) -> tuple[list[DraftTree], int]:
    """Each row's draft tree for one pass, and the block width (1 + the most nodes of a row).

    Primary drafts are as long as the row's adaptive draft length, or the rest of its answer where
    the cost model computes that for free (an accelerator); alternatives ``max_draft``, or their
    share of the free positions if longer. `block_width` picks the width from the primaries, and
    since every row is padded to it, alternatives fill the padding, and also the positions the pass
    computes for free. ``cap`` bounds a row's nodes; ``branches=False`` keeps primaries only (models
    without a tree mask); ``fixed`` counts other positions in the pass (the prompt pass's prompts).
    """
    free = cost.free_width(len(rows), fixed)
    trees = []
    for row in rows:
        room = min(row.room(), cap, max(row.draft_len, free - 1))
        branch = min(room, max(drafter.max_draft, free // max(1, drafter.max_candidates))) if branches else 0
        trees.append(drafter.tree(row, room, cap, branch))
    primaries = [tree.primary_length() for tree in trees]
    weights = [row.remaining() ** 2 for row in rows]  # rows with more to write decide how many passes it takes
    width = block_width(primaries, [row.acceptance for row in rows], cost, weights, fixed)
    width = max(width, min(free, 1 + max(len(tree) for tree in trees)))
    return [tree.trimmed(width - 1) for tree in trees], width
