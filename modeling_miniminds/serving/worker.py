"""The batch worker: the one thread that touches the model, decoding queued requests as batches.

It takes up to `max_batch_size` queued jobs, decodes them together with `inference.Generator.stream`, and hands each
job its own deltas back on the event loop; jobs that arrive meanwhile wait for the next batch, and a job whose client
went away is dropped from its batch at the next token.
"""

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from ..inference import FINISH_CANCELLED, Delta, SamplingParams


@dataclass
class Job:
    """One request between the event loop and the worker: deltas flow back through `deltas`."""

    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item):
        self.loop.call_soon_threadsafe(self.deltas.put_nowait, item)


class BatchWorker:
    """The only thread that touches the model: decodes queued jobs in batches of up to `max_batch_size`."""

    def __init__(self, generator, max_batch_size: int = 8):
        self.generator, self.max_batch_size = generator, max_batch_size
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stats = {"batches": 0, "largest_batch": 0, "cancelled": 0, "running": 0}
        self.thread = threading.Thread(target=self.run, name="miniminds-decoder", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job):
        self.jobs.put(job)

    def next_batch(self) -> list[Job] | None:
        """Block for one job, then take whatever else is already queued (None when told to stop)."""
        first = self.jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch_size:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)
                break
            batch.append(job)
        return batch

    def run(self):
        while (batch := self.next_batch()) is not None:
            for job in batch:
                if job.cancelled.is_set():
                    self.stats["cancelled"] += 1
                    job.put(Delta(0, "", FINISH_CANCELLED))
            batch = [job for job in batch if not job.cancelled.is_set()]
            if batch:
                self.decode(batch)

    def decode(self, batch: list[Job]):
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        self.stats["running"] = len(batch)
        try:
            stream = self.generator.stream(
                [job.prompt_ids for job in batch],
                [job.params for job in batch],
                cancelled=lambda i: batch[i].cancelled.is_set(),
            )
            for deltas in stream:
                for delta in deltas:
                    if delta.finish_reason == FINISH_CANCELLED:
                        self.stats["cancelled"] += 1
                    batch[delta.index].put(delta)
        except Exception as err:  # the batch fails, the server does not: each request gets the error
            for job in batch:
                job.put(err)
        finally:
            self.stats["running"] = 0
