#!/usr/bin/env python3
"""Writes the seeds of tests/fuzz/corpus/hfquant (run once; the outputs are committed).

From the fixtures' GPTQ/AWQ/compressed-tensors folders: layer 0's q_proj (128 x 128) parts as a small
safetensors file behind fuzz_hfquant's 4-byte layout prefix, and each folder's
config.json behind the 0x80 byte that selects quantization_config parsing.
Usage: hfquant_seeds.py FIXTURES_DIR OUT_DIR
"""
import json
import os
import struct
import sys

fx, out = sys.argv[1], sys.argv[2]
LAYOUT = {"gptq-int4": 0b00100, "gptq-int4-actorder": 0b01000, "gptq-int8": 0b00101, "awq": 0b00011,
          # compressed-tensors: 0x60, bit 0 8-bit, bit 2 symmetric, bit 3 actorder group
          "ct-w4a16-asym-actorder": 0x68, "ct-w8a16": 0x65,
          # MLX: 0x40, bit 0 8-bit
          "mlx-4bit": 0x40}
GROUP = {"gptq-int4": 1, "gptq-int4-actorder": 0, "gptq-int8": 2, "awq": 1, "ct-w4a16-asym-actorder": 0, "ct-w8a16": 3,
         "mlx-4bit": 1}
PARTS = ("qweight", "qzeros", "scales", "g_idx")
CT_PARTS = ("weight_packed", "weight_zero_point", "weight_scale", "weight_g_idx", "weight_shape")
MLX_PARTS = ("weight", "scales", "biases")

def tensors(folder):
    found = {}
    for name in sorted(os.listdir(folder)):
        if not name.startswith("model") or not name.endswith(".safetensors"):
            continue
        path = os.path.join(folder, name)
        data = open(path, "rb").read()
        if len(data) < 512 and b"{" not in data:  # a link, as git stores it
            data = open(os.path.join(folder, data.decode().strip()), "rb").read()
        n = struct.unpack("<Q", data[:8])[0]
        head = json.loads(data[8:8 + n])
        for k, v in head.items():
            if k != "__metadata__":
                a, b = v["data_offsets"]
                found[k] = (v["dtype"], v["shape"], data[8 + n + a:8 + n + b])
    return found

os.makedirs(out, exist_ok=True)
for m, bits in LAYOUT.items():
    folder = os.path.join(fx, "qwen-tiny-a-" + m)
    t = tensors(folder)
    parts, header, off = [], {}, 0
    for p in CT_PARTS if m.startswith("ct-") else MLX_PARTS if m.startswith("mlx") else PARTS:
        k = "model.layers.0.self_attn.q_proj." + p
        if k in t:
            dtype, shape, raw = t[k]
            header["L." + p] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
            parts.append(raw)
            off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    blob = struct.pack("<Q", len(h)) + h + b"".join(parts)
    open(os.path.join(out, m + ".bin"), "wb").write(bytes([bits, GROUP[m], 15, 3]) + blob)
    open(os.path.join(out, m + "-config.bin"), "wb").write(b"\x80" + open(os.path.join(folder, "config.json"), "rb").read())
