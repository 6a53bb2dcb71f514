"""The chunk budget: how many chunks one registry node's reads and uploads may hold.

Each read and each upload holds at most its window of chunks in memory. The budget
bounds their sum, so many slow or paused clients cannot take a node's memory: a chunk
fetch or put first takes room in the budget, and gives it back once its bytes are
written out or stored. A fetch or put that finds the budget spent waits for room, in
the order they asked.
"""

from twisted.internet.defer import Deferred, DeferredSemaphore


# Shortcoming: room is first come, first served. A read holds up to its window
# (plus the chunk its client has not taken) for as long as its client does not
# read, so buffer_chunks / (window + 1) stalled clients (7 by default) make
# every other transfer wait until the idle timeouts drop them. A fair share per
# transfer would keep the others going.
class ChunkBudget:
    """Room for `chunks` chunks, shared by every read and upload of one node."""

    def __init__(self, chunks: int) -> None:
        if chunks < 1:
            raise ValueError("a chunk budget needs room for at least one chunk")
        self.size = chunks
        self._room = DeferredSemaphore(chunks)

    @property
    def free(self) -> int:
        return self._room.tokens

    def take(self) -> "Deferred[None]":
        """Fire once room for one chunk is taken; cancel it to stop waiting."""
        taken: Deferred[None] = self._room.acquire().addCallback(lambda _: None)
        return taken

    def give_back(self) -> None:
        """Return the room of one chunk taken before."""
        self._room.release()
