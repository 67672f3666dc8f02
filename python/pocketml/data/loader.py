"""TokenLoader: batches of packed token sequences, built on native threads.

Samples (sequences of seq_len + 1 tokens) and their shuffled order are a pure
function of (dataset, seq_len, packing, seed, epoch) computed by the core
(`EpochPlan`). Global step s covers the order's positions
[origin + s * G, origin + (s + 1) * G), G = batch_size * world_size, and rank r
reads rows [r * batch_size, (r + 1) * batch_size) of it, so the ranks' samples
are disjoint and together complete. The loader's state is the epoch and the
position reached in that order: small, JSON-able, and valid for any world size.
"""

from __future__ import annotations

import math
import os
import threading
import weakref

import numpy as np

from pocketml._arguments import bool_argument, integer_argument
from pocketml._native import core
from pocketml.data.dataset import TokenDataset
from pocketml.runtime import get_num_threads

try:  # a torch DataLoader only treats subclasses of IterableDataset as iterable
    from torch.utils.data import IterableDataset as _IterableBase
except ImportError:  # pragma: no cover - torch is optional
    _IterableBase = object

PACKINGS = ("concat", "best_fit")
STATE_VERSION = 2
_NO_ITERATION = -1
_LAST_EPOCH = 2**63 - 1  # its end would be epoch 2^63, past the int64 counter


def _shared_counters(count: int):
    """int64 counters in memory that torch DataLoader workers share with this
    process, forked or spawned (a shared torch tensor), as (tensor, NumPy view);
    plain NumPy memory without torch, where there are no workers."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        return None, np.zeros(count, np.int64)
    tensor = torch.zeros(count, dtype=torch.int64).share_memory_()
    return tensor, tensor.numpy()


class _SharedCounter:
    """A loader attribute kept in slot `index` of its shared counters."""

    def __init__(self, index: int):
        self.index = index

    def __get__(self, loader, owner=None):
        return self if loader is None else int(loader._cursor[self.index])

    def __set__(self, loader, value: int) -> None:
        loader._cursor[self.index] = value


def _worker_info():
    """torch's DataLoader worker info in a worker process, else None."""
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover - torch is optional
        return None
    return get_worker_info()


def _distributed_rank_and_size() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is optional
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TokenLoader(_IterableBase):
    """Iterates batches of `batch_size` rows for this rank, each a dict of
    `input_ids`, `labels` (input_ids shifted by one, -100 where padded),
    `position_ids` (restarting at 0 at each document start and each row start),
    `cu_seqlens` (int32 segment starts in the flattened batch, then its size: what
    varlen attention takes) and `sample_ids` (the plan's sample of each row, -1
    for a padding row), as torch tensors (`return_tensors="pt"`) or NumPy arrays.

    Remainder: an epoch whose samples do not fill the last global batch drops
    them (`drop_last=True`, the default) or pads that batch with rows of EOS
    tokens whose labels are all -100 (`drop_last=False`), so every rank yields
    the same number of batches either way.

    Inside a torch DataLoader (`DataLoader(loader, batch_size=None,
    num_workers=k)`), worker w builds batches w, w + k, ...; the DataLoader's
    round-robin returns them in the same order as iterating the loader itself.
    The workers iterate copies, so this object does not see the batches go by:
    call `set_epoch(e)` before each epoch, and take a resumable state with
    `state_dict(batches_consumed=n)`. The epoch, the position and where the
    latest iteration began live in memory shared with the workers, so this
    holds for `persistent_workers=True` too.

    One iterator at a time advances the loader: a new `iter()` supersedes the
    previous one (its `next()` then raises, also in a thread that was waiting in
    it). `set_epoch` and `load_state_dict` set where the next iteration starts:
    an open iterator goes on with its batches but no longer moves the position.
    An iterator may be read from several threads (each batch is handed out
    once). A process forked from this one, other than a DataLoader worker,
    continues on its own copy of the position and makes its own iterators.
    """

    def __init__(self, dataset, seq_len: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 packing: str = "concat", rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = True, prefetch: int = 4, num_threads: int | None = None, window: int = 0,
                 return_tensors: str = "pt", pin_memory: bool = False):
        self.dataset = dataset if isinstance(dataset, TokenDataset) else TokenDataset(dataset)
        # cu_seqlens is int32 (what varlen attention kernels take): it ends at batch_size * seq_len.
        self.seq_len = integer_argument(seq_len, "seq_len", 1, 2**31)
        self.batch_size = integer_argument(batch_size, "batch_size", 1, 2**31)
        if self.batch_size * self.seq_len >= 2**31:
            raise ValueError(f"argument 'batch_size': expected batch_size * seq_len < 2^31 tokens (int32 cu_seqlens), "
                             f"got {self.batch_size} * {self.seq_len}")
        self.seed = integer_argument(seed, "seed", 0, 2**64)
        self.window = integer_argument(window, "window", 0, 2**31)
        self.prefetch = integer_argument(prefetch, "prefetch", 0, 2**16)
        if packing not in PACKINGS:
            raise ValueError(f"argument 'packing': expected one of {PACKINGS}, got {packing!r}")
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"argument 'return_tensors': expected 'pt' or 'np', got {return_tensors!r}")
        self.packing, self.shuffle = packing, bool_argument(shuffle, "shuffle")  # "no" was True
        self.drop_last = bool_argument(drop_last, "drop_last")
        self.return_tensors, self.pin_memory = return_tensors, bool_argument(pin_memory, "pin_memory")
        if self.pin_memory:
            import torch

            if return_tensors != "pt" or not torch.cuda.is_available():
                raise ValueError("argument 'pin_memory': expected torch tensors (return_tensors='pt') and a CUDA "
                                 f"device to pin for, got return_tensors={return_tensors!r}, CUDA available: "
                                 f"{torch.cuda.is_available()}")
        default_rank, default_size = _distributed_rank_and_size()
        self.world_size = integer_argument(default_size if world_size is None else world_size, "world_size", 1)
        self.rank = integer_argument(default_rank if rank is None else rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"argument 'rank': expected a rank in [0, {self.world_size}), got {self.rank}")
        if num_threads is None:
            num_threads = max(1, min(self.prefetch, get_num_threads(), 1024))
        self.num_threads = integer_argument(num_threads, "num_threads", 1, 1025)
        # epoch, position (samples of the epoch's order consumed by all ranks together),
        # and the (epoch, position) where the latest iteration began
        self._shared, self._cursor = _shared_counters(4)
        self._iteration_start = None
        self._plan = None
        self._open_iterator = None  # weakref to the open iterator, which advances the position
        self._generation = 0  # bumped by set_epoch / load_state_dict: older iterators stop advancing
        self._counters_pid = os.getpid()
        self._restored = False  # load_state_dict ran, and no set_epoch or iteration since

    epoch = _SharedCounter(0)
    position = _SharedCounter(1)  # samples of this epoch's order consumed by all ranks together

    @property
    def _iteration_start(self) -> tuple[int, int] | None:
        epoch, position = int(self._cursor[2]), int(self._cursor[3])
        return None if epoch == _NO_ITERATION else (epoch, position)

    @_iteration_start.setter
    def _iteration_start(self, value: tuple[int, int] | None) -> None:
        self._cursor[2:4] = (_NO_ITERATION, 0) if value is None else value

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def plan(self, epoch: int | None = None):
        """The native EpochPlan of `epoch` (default: the current one), cached."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, core.EpochPlan(self.dataset.store, self.packing, self.seq_len, self.seed, epoch,
                                                self.shuffle, self.window))
        return self._plan[1]

    def _num_steps(self, epoch: int | None = None, position: int | None = None) -> int:
        """Global steps left in the epoch from the position (default: the current ones)."""
        position = self.position if position is None else position
        left = max(0, self.plan(epoch).num_samples - position)
        g = self.global_batch_size
        return left // g if self.drop_last else math.ceil(left / g)

    def __len__(self) -> int:
        return self._num_steps()

    def set_epoch(self, epoch: int) -> None:
        """Starts `epoch` from its beginning at the next iteration; right after
        load_state_dict, the restored epoch keeps its restored position (a resumed
        run that calls set_epoch(e) before each epoch would repeat its start)."""
        epoch = integer_argument(epoch, "epoch", 0, 2**63)
        self._own_counters()
        self._generation += 1  # an open iterator goes on without moving the position set here
        if not (self._restored and epoch == self.epoch):  # the restored epoch may be set several times over
            self.epoch, self.position = epoch, 0
            self._restored = False
        self._iteration_start = None

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """The position to resume from: after the batches this object yielded, or,
        with `batches_consumed`, after that many batches of the latest iteration
        (inside a torch DataLoader with workers, which iterate copies of this
        object, the training loop counts the batches it took)."""
        epoch, position = self.epoch, self.position
        if batches_consumed is not None:
            epoch, position = self._iteration_start or (epoch, position)
            steps = self._num_steps(epoch, position)
            consumed = integer_argument(batches_consumed, "batches_consumed", 0)
            if consumed > steps:
                raise ValueError(f"argument 'batches_consumed': expected at most the {steps} batches of the "
                                 f"iteration, got {consumed}")
            if consumed == steps:
                epoch, position = epoch + 1, 0
            else:
                position += consumed * self.global_batch_size
        return {"version": STATE_VERSION, "epoch": epoch, "position": position, "seed": self.seed,
                "seq_len": self.seq_len, "packing": self.packing, "shuffle": self.shuffle, "window": self.window,
                "num_documents": len(self.dataset), "num_tokens": self.dataset.num_tokens,
                "dataset": self.dataset.manifest.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        """Continues where `state` was taken, with any world size or batch size:
        the next global step starts at the saved position of the same order.
        Everything is checked before anything changes."""
        if not isinstance(state, dict):
            raise TypeError(f"argument 'state': expected a dict from state_dict(), got {type(state).__name__}")
        version = state.get("version")
        if type(version) is not int or version != STATE_VERSION:  # not 2.0, not True
            raise ValueError(f"argument 'state': expected version {STATE_VERSION}, got {version!r}")
        self._own_counters()
        mine = self.state_dict()
        for key in ("seed", "seq_len", "packing", "shuffle", "window", "num_documents", "num_tokens", "dataset"):
            theirs = state.get(key)
            if type(theirs) is not type(mine[key]) or theirs != mine[key]:  # shuffle=1 is no True
                raise ValueError(f"argument 'state': expected {key}={mine[key]!r} (this loader and dataset), "
                                 f"got {theirs!r}: the saved position belongs to another sample order")
        missing = [key for key in ("epoch", "position") if key not in state]
        if missing:
            raise ValueError(f"argument 'state': expected keys epoch and position, got none for {missing}")
        epoch = integer_argument(state["epoch"], "state['epoch']", 0, 2**63)
        position = integer_argument(state["position"], "state['position']", 0, 2**63)
        self._generation += 1
        self.epoch, self.position = epoch, position
        self._iteration_start = None
        self._restored = True

    def _own_counters(self) -> None:
        """In a process forked from the loader's own, other than a DataLoader worker (whose
        progress the shared counters carry back), the loader continues on a copy of them."""
        if os.getpid() == self._counters_pid:
            return
        self._counters_pid = os.getpid()
        if self._shared is not None and _worker_info() is None:
            self._shared = self._shared.clone()
            self._cursor = self._shared.numpy()

    def __iter__(self):
        self._own_counters()
        info = _worker_info()
        worker = info is not None
        # Two open iterators would both advance the loader's one position (a checkpoint then skipped
        # samples, the epoch moved by 2): the new one supersedes the old, whose next() then raises, as
        # a training loop that re-creates its iterator after a break expects.
        previous = self._open_iterator() if self._open_iterator is not None else None
        if previous is not None and not worker:
            previous.supersede()
        if self.epoch == _LAST_EPOCH and not worker:
            raise ValueError(f"TokenLoader: epoch {_LAST_EPOCH} is the last value of the int64 epoch counter; an "
                             "iteration of it could not end (set_epoch to an earlier one)")
        self._restored = False
        plan = self.plan()
        steps = self._num_steps()
        first_step, stride = (info.id, info.num_workers) if worker else (0, 1)
        num_batches = max(0, math.ceil((steps - first_step) / stride))
        self._iteration_start = (self.epoch, self.position)  # every worker writes the same
        prefetcher = core.BatchPrefetcher(
            self.dataset.store, plan, first_step=first_step, step_stride=stride, num_batches=num_batches,
            global_batch=self.global_batch_size, row_offset=self.rank * self.batch_size, batch_size=self.batch_size,
            capacity=self.prefetch, num_threads=self.num_threads, origin=self.position)
        iterator = _BatchIterator(self, prefetcher, advance=not worker)
        self._open_iterator = weakref.ref(iterator)
        return iterator

    def _convert(self, arrays: dict) -> dict:
        if self.return_tensors == "np":
            return arrays
        import torch

        out = {k: torch.from_numpy(v) for k, v in arrays.items()}
        if self.pin_memory:
            out = {k: v.pin_memory() for k, v in out.items()}
        return out

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plan"] = None  # native; rebuilt on demand in the other process
        state["_open_iterator"] = None
        if self._shared is not None:  # rebuilt from _shared, whose pickling keeps (workers) or ends the sharing
            del state["_cursor"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._shared is not None:
            if not self._shared.is_shared():  # a copy or an unpickled loader: its own counters, shared with its workers
                self._shared.share_memory_()
            self._cursor = self._shared.numpy()

    def __copy__(self):
        clone = type(self).__new__(type(self))
        state = self.__getstate__()
        if self._shared is not None:
            state["_shared"] = self._shared.clone()
        else:
            state["_cursor"] = self._cursor.copy()
        clone.__setstate__(state)
        return clone


class _BatchIterator:
    """Hands out the prefetcher's batches and advances the loader's position as
    each is taken. Closing it (exhaustion, `break` then garbage collection, an
    exception or KeyboardInterrupt) stops and joins the native threads."""

    def __init__(self, loader: TokenLoader, prefetcher, advance: bool):
        self._loader, self._prefetcher, self._advance = loader, prefetcher, advance
        self._generation = loader._generation
        self._pid = os.getpid()
        # One consumer at a time for the native prefetcher, and closing waits for a
        # batch being taken: the loader's position moves with each batch handed out.
        self._lock = threading.Lock()
        self._superseded = False

    def __iter__(self):
        return self

    def supersede(self) -> None:
        """Closes this iterator for a newer one of its loader: next() then raises. A batch
        being taken in another thread is handed out first, so the newer iterator starts
        after it; the flag goes up before the wait, so that thread cannot take more."""
        if os.getpid() != self._pid or self._prefetcher is None:
            return
        self._superseded = True
        with self._lock:
            self.close()

    def __next__(self) -> dict:
        if self._prefetcher is not None and os.getpid() != self._pid:  # the prefetch threads stayed in the parent
            raise RuntimeError(f"TokenLoader: this iterator's prefetch threads run in process {self._pid}; "
                               "create a new iterator in this process")
        with self._lock:
            return self._next_batch()

    def _next_batch(self) -> dict:
        if self._superseded:
            raise RuntimeError("TokenLoader: a newer iterator of this loader took over its position; "
                               "read from that one")
        if self._prefetcher is None:
            raise StopIteration
        try:
            arrays = self._prefetcher.next()
        except BaseException:
            self.close()
            raise
        advance = self._advance and self._generation == self._loader._generation
        if arrays is None:
            if advance:
                self._loader.epoch += 1
                self._loader.position = 0
            self.close()
            raise StopIteration
        if advance:
            self._loader.position += self._loader.global_batch_size
        return self._loader._convert(arrays)

    def close(self) -> None:
        if self._prefetcher is None:
            return
        if os.getpid() == self._pid:
            self._prefetcher.close()
        # In a forked copy the producer threads stayed in the parent: the native
        # object is then left allocated when dropped (DeleteUnlessForked).
        self._prefetcher = None

    def __del__(self):
        self.close()
