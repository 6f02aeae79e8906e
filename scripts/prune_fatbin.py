"""Zero the GPU code of every architecture but one in a CUDA library's fatbinary, so that
the library compresses to a fraction of its size (the layout and every offset stay).

    python scripts/prune_fatbin.py libonnxruntime_providers_cuda.so pruned.so --keep 90

Used by scripts/gpu_kit.sh: onnxruntime-gpu's CUDA provider is 284 MB (cubins for sm_75 to
sm_120); kept for sm_90 alone (H100/H200) it xz-compresses to 52 MB, small enough to travel
to a lent GPU machine. The driver loads the cubin of the device's own architecture, so the
zeroed ones are never read there; the output runs on that architecture only.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
from pathlib import Path

MAGIC = 0xBA55ED50  # a fatbinary's header: magic, version (u16), header size (u16), payload size (u64)


def section(path: Path, name: str = ".nv_fatbin") -> tuple[int, int]:
    """(file offset, size) of an ELF section, read with readelf."""
    try:
        listing = subprocess.check_output(["readelf", "-S", "-W", str(path)], text=True, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SystemExit("readelf is missing: install binutils") from None
    except subprocess.CalledProcessError:
        raise SystemExit(f"{path} is not an ELF library") from None
    for line in listing.splitlines():
        if f" {name} " in line:
            fields = line.split("]", 1)[1].split()
            return int(fields[3], 16), int(fields[4], 16)
    raise SystemExit(f"{path} has no {name} section: not a CUDA library")


def entries(data: bytes | bytearray, start: int, end: int):
    """(payload offset, payload size, kind, sm) of every entry of every fatbinary in [start, end)."""
    pos = start
    while pos < end:
        magic, _, header, size = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:  # padding between fatbinaries
            pos += 8
            continue
        entry, stop = pos + header, pos + header + size
        while entry < stop:
            kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, entry)
            sm = struct.unpack_from("<I", data, entry + 28)[0]
            yield entry + entry_header, entry_size, kind, sm
            entry += entry_header + entry_size
        pos = stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--keep", type=int, default=90, help="the SM architecture kept (default 90: H100/H200)")
    args = ap.parse_args()
    if not args.library.is_file():
        raise SystemExit(f"{args.library} does not exist; pass the CUDA library to prune")
    data = bytearray(args.library.read_bytes())
    offset, size = section(args.library)
    kept = zeroed = 0
    for start, length, _, sm in list(entries(data, offset, offset + size)):
        if sm == args.keep:
            kept += length
        else:
            data[start:start + length] = bytes(length)
            zeroed += length
    if not kept:
        raise SystemExit(f"{args.library} has no code for sm_{args.keep}; refusing to write a library that cannot run")
    args.out.write_bytes(data)
    print(f"kept {kept / 1e6:.1f} MB of sm_{args.keep} code, zeroed {zeroed / 1e6:.1f} MB of other architectures")


if __name__ == "__main__":
    main()
