"""atheris harness: the bus frame decoder, fed arbitrary bytes in arbitrary pieces.

Properties: the decoder raises nothing but `FrameError`; once it has raised, it
keeps raising; every frame it returns encodes back to the bytes it came from, and
decodes again to itself.
"""

import sys

import atheris

with atheris.instrument_imports():
    from treescale.bus.frames import FrameDecoder, FrameError, Limits, encode

SMALL = Limits(max_payload=4096, max_meta=1024, max_route=16, max_buffer=8192)


def one_input(data: bytes) -> None:
    """Feed `data` to a decoder in pieces whose sizes the input also chooses."""
    provider = atheris.FuzzedDataProvider(data)
    limits = SMALL if provider.ConsumeBool() else Limits()
    decoder = FrameDecoder(limits)
    frames = []
    while provider.remaining_bytes():
        piece = provider.ConsumeBytes(provider.ConsumeIntInRange(1, 512))
        try:
            frames.extend(decoder.feed(piece))
        except FrameError:
            try:
                decoder.feed(b"")
            except FrameError:
                break
            raise AssertionError("the decoder recovered after an error") from None
    for frame in frames:
        wire = encode(frame, limits)
        again = FrameDecoder(limits).feed(wire)
        if again != [frame]:
            raise AssertionError(f"{frame!r} did not survive a round trip")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
