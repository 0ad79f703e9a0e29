#!/usr/bin/env python3
"""Writes the GGUF seed files of tests/fuzz/corpus/gguf (run once; the outputs are committed).

Built from the spec (docs/gguf.md of ggml-org/ggml) with struct only, so the seeds do not
depend on qpk's writer: every value type, string arrays, several ggml tensor types, both
versions, a non-default alignment and an empty tensor.
"""
import os
import struct
import sys

def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b

SCALARS = [(0, "B", 7), (1, "b", -7), (2, "H", 700), (3, "h", -700), (4, "I", 70000), (5, "i", -70000),
           (6, "f", 1.5), (7, "?", True), (10, "Q", 1 << 40), (11, "q", -(1 << 40)), (12, "d", 0.25)]
BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34)}

def gguf(version, kvs, tensors, alignment=None):
    body = b""
    n_kv = len(kvs) + (alignment is not None)
    if alignment is not None:
        body += s("general.alignment") + struct.pack("<II", 4, alignment)
    for key, raw in kvs:
        body += s(key) + raw
    align = alignment or 32
    infos, data, off = b"", b"", 0
    for name, ttype, ne in tensors:
        elems, size = BLOCK[ttype]
        n = ne[0] // elems * size
        for d in ne[1:]:
            n *= d
        infos += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        infos += struct.pack("<IQ", ttype, off)
        blob = bytes((i * 37 + 11) & 0x3f for i in range(n))
        data += blob + b"\0" * (-(len(blob)) % align)
        off += n + (-n % align)
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + body + infos
    return head + b"\0" * (-len(head) % align) + data

def scalar_kvs():
    return [("test.%s" % fmt, struct.pack("<I", t) + struct.pack("<" + fmt, v)) for t, fmt, v in SCALARS]

def arrays():
    out = [("test.str", struct.pack("<I", 8) + s("hello"))]
    for t, fmt, v in SCALARS:
        out.append(("test.arr_%s" % fmt, struct.pack("<IIQ", 9, t, 3) + struct.pack("<" + fmt, v) * 3))
    out.append(("test.strings", struct.pack("<IIQ", 9, 8, 4) + s("a") + s("") + s("Ġthe") + s("<|endoftext|>")))
    out.append(("test.empty", struct.pack("<IIQ", 9, 4, 0)))
    return out

def main(folder):
    seeds = {
        "all-types.gguf": gguf(3, scalar_kvs() + arrays(),
                               [("a", 0, [8]), ("b", 8, [32, 2]), ("c", 3, [32]), ("d", 2, [64, 1, 1, 2])], 32),
        "v2-default-alignment.gguf": gguf(2, [("general.architecture", struct.pack("<I", 8) + s("qwen2"))],
                                          [("x", 30, [4, 4]), ("y", 1, [16])]),
        "align64-empty-tensor.gguf": gguf(3, [("k", struct.pack("<I", 7) + b"\x01")],
                                          [("e", 0, [0]), ("f", 0, [3, 5])], 64),
        "qwen2-like.gguf": gguf(3, [
            ("general.architecture", struct.pack("<I", 8) + s("qwen2")),
            ("qwen2.block_count", struct.pack("<II", 4, 1)),
            ("tokenizer.ggml.tokens", struct.pack("<IIQ", 9, 8, 3) + s("!") + s("Ġ") + s("[PAD2]")),
            ("tokenizer.ggml.token_type", struct.pack("<IIQ", 9, 5, 3) + struct.pack("<iii", 1, 1, 5)),
        ], [("token_embd.weight", 8, [32, 3]), ("output_norm.weight", 0, [32])], 32),
        "no-tensors.gguf": gguf(3, [("general.name", struct.pack("<I", 8) + s("x"))], []),
    }
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "gguf"))
