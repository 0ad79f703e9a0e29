#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers, for `qverify MODEL --ref OUT`.

For users who have torch and transformers; nothing else in qpk needs Python.

    tools/hf_reference_logits.py MODEL_DIR TOKENS.i32 OUT.safetensors [-c 128] [-s 1]

TOKENS.i32 holds raw little-endian int32 token ids. The first S x T of them are cut
into S sequences of T tokens (-s, -c); each runs through Qwen2ForCausalLM from an
empty cache, in float32 with eager attention, and OUT.safetensors receives

    tokens  I32 [S, T]
    logits  F32 [S, T, V]      (S x T x V x 4 bytes: mind the size for long inputs)

which is the format qverify reads (qverify compares every position, and computes
the perplexity of positions 0..T-2 of each sequence).
"""
import argparse
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("tokens")
    ap.add_argument("out")
    ap.add_argument("-c", "--ctx", type=int, default=128, help="tokens per sequence (default 128)")
    ap.add_argument("-s", "--sequences", type=int, default=1, help="number of sequences (default 1)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = ap.parse_args()

    ids = np.fromfile(args.tokens, dtype="<i4")
    need = args.ctx * args.sequences
    if len(ids) < need:
        sys.exit(f"{args.tokens}: {len(ids)} tokens, {need} needed for {args.sequences} x {args.ctx}")
    seqs = torch.from_numpy(ids[:need].astype(np.int64).reshape(args.sequences, args.ctx))

    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, torch_dtype=torch.float32, attn_implementation="eager").to(args.device)
    model.eval()
    vocab = model.config.vocab_size
    if int(seqs.max()) >= vocab or int(seqs.min()) < 0:
        sys.exit(f"token ids outside [0, {vocab})")

    logits = torch.empty(args.sequences, args.ctx, vocab, dtype=torch.float32)
    with torch.no_grad():
        for s in range(args.sequences):
            out = model(seqs[s:s + 1].to(args.device), use_cache=False)
            logits[s] = out.logits[0].float().cpu()
    save_file({"tokens": seqs.to(torch.int32).contiguous(), "logits": logits.contiguous()}, args.out)
    print(f"wrote {args.out}: tokens [{args.sequences}, {args.ctx}], logits [{args.sequences}, {args.ctx}, {vocab}]")


if __name__ == "__main__":
    main()
